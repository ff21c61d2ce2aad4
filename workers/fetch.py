"""Fetching a trainer's artifact into a local directory the formats layer can read.

``file://`` paths must lie under an allowed artifact root: the artifact is copied from
descriptors checked after opening (no check-then-read window), symlinks included;
``s3://bucket/prefix`` goes through the ``minio`` SDK; ``http(s)://`` downloads one file
with a size cap and a timeout, refusing loopback, link-local and private hosts unless
allowed. Final problems are ``AdapterInvalid`` (``artifact_not_allowed``,
``artifact_unreachable``, ``file_too_large``); faults that may pass are ``TransientError``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import httpx
import structlog

from store.errors import AdapterInvalid, TransientError
from store.placement import clashing_paths, file_name_problem, path_problem
from store.settings import StoreSettings
from workers.settings import WorkerSettings

log = structlog.get_logger(__name__)


def fetch_artifact(uri: str, workdir: Path, settings: WorkerSettings, store: StoreSettings) -> Path:
    """Make the artifact at ``uri`` available as a local directory and return it.

    Whatever the scheme, the result is a snapshot placed under ``workdir`` (which the caller
    owns and removes): a ``file://`` source changed after this returns cannot affect it.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return _fetch_file(Path(unquote(parsed.path)), workdir, settings)
    if parsed.scheme == "s3":
        return _fetch_s3(parsed.netloc, parsed.path.strip("/"), workdir, settings, store)
    if parsed.scheme in ("http", "https"):
        return _fetch_http(uri, workdir, settings)
    raise AdapterInvalid("artifact_not_allowed", f"unsupported artifact URI scheme in {uri!r}")


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _opened_path(fd: int) -> Path:
    """Where the open file ``fd`` really is: the kernel's own answer, after every symlink
    and rename (Linux ``/proc``; the workers run on Linux)."""
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


def _open_checked(path: Path, roots: list[Path]) -> tuple[int, Path, os.stat_result]:
    """Open ``path`` and verify what was opened, not what was looked at before.

    Checking a path and then reading it leaves a window (a component swapped for a symlink
    in between). Here the check is made on the open descriptor: its real location must lie
    under ``roots`` and it must be a regular file or a directory (``O_NONBLOCK`` so a FIFO
    cannot stall the open). Returns ``(fd, real_path, stat)``; the caller closes ``fd``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        if not _under(path.resolve(), roots):
            raise AdapterInvalid(
                "artifact_not_allowed", f"{path} is outside the allowed artifact roots"
            ) from exc
        raise AdapterInvalid("artifact_unreachable", f"{path} does not exist") from exc
    except OSError as exc:
        raise AdapterInvalid("artifact_unreachable", f"cannot open {path}: {exc}") from exc
    try:
        real = _opened_path(fd)
        info = os.fstat(fd)
        if not _under(real, roots):
            raise AdapterInvalid(
                "artifact_not_allowed", f"{path} is outside the allowed artifact roots"
            )
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise AdapterInvalid(
                "artifact_not_allowed", f"{path} is not a regular file or directory"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd, real, info


class _Budget:
    """The artifact's size cap and file count, shared by every file of one snapshot."""

    def __init__(self, max_bytes: int, max_files: int) -> None:
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes = self.files = 0

    def add_file(self, name: str) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise AdapterInvalid(
                "file_too_large", f"artifact has over {self.max_files} files (at {name})"
            )

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise AdapterInvalid("file_too_large", f"artifact is over {self.max_bytes} bytes")


def _copy_fd(fd: int, dest: Path, budget: _Budget) -> None:
    with os.fdopen(os.dup(fd), "rb") as src, dest.open("xb") as out:
        while chunk := src.read(1 << 20):
            budget.add_bytes(len(chunk))
            out.write(chunk)


def _snapshot(
    fd: int,
    real: Path,
    info: os.stat_result,
    dest: Path,
    roots: list[Path],
    budget: _Budget,
    ancestors: frozenset[tuple[int, int]] = frozenset(),
) -> None:
    """Copy the verified open file or directory ``fd`` to ``dest``, verifying every entry
    the same way (a symlink inside may point elsewhere under the roots, never outside)."""
    if stat.S_ISREG(info.st_mode):
        budget.add_file(real.name)
        _copy_fd(fd, dest, budget)
        return
    here = (info.st_dev, info.st_ino)
    if here in ancestors:
        raise AdapterInvalid("artifact_not_allowed", f"{real.name} links back to its own parent")
    dest.mkdir(parents=True)
    for name in sorted(os.listdir(fd)):
        child_fd, child_real, child_info = _open_checked(real / name, roots)
        try:
            _snapshot(
                child_fd, child_real, child_info, dest / name, roots, budget, ancestors | {here}
            )
        finally:
            os.close(child_fd)


def _fetch_file(path: Path, workdir: Path, settings: WorkerSettings) -> Path:
    """Snapshot a ``file://`` artifact under ``workdir`` from descriptors verified after
    opening: whatever the path, ``..`` or symlinks lead to, only what lies under the allowed
    roots is read, and later changes to the source cannot reach the formats layer."""
    roots = settings.allowed_roots()
    if not _under(path.resolve(), roots):
        raise AdapterInvalid(
            "artifact_not_allowed", f"{path} is outside the allowed artifact roots"
        )
    fd, real, info = _open_checked(path, roots)
    budget = _Budget(settings.artifact_max_bytes, settings.artifact_max_files)
    try:
        if stat.S_ISREG(info.st_mode):
            # The formats layer reads directories: place the lone file in one.
            target = workdir / "artifact"
            target.mkdir(parents=True, exist_ok=True)
            _snapshot(fd, real, info, target / (path.name or real.name), roots, budget)
            return target
        target = workdir / "artifact"
        _snapshot(fd, real, info, target, roots, budget)
        return target
    finally:
        os.close(fd)


def _fetch_s3(
    bucket: str, prefix: str, workdir: Path, settings: WorkerSettings, store: StoreSettings
) -> Path:
    from xml.etree.ElementTree import ParseError

    from minio import Minio
    from minio.error import InvalidResponseError, S3Error, ServerError

    if not store.s3.endpoint:
        raise AdapterInvalid("artifact_unreachable", "s3:// artifacts need LORAFLEET_S3_ENDPOINT")
    client = Minio(
        store.s3.endpoint,
        access_key=store.s3.access_key,
        secret_key=store.s3.secret_key,
        secure=store.s3.secure,
        region=store.s3.region,
    )
    target = workdir / "artifact"
    target.mkdir(parents=True, exist_ok=True)
    total = 0
    count = 0
    placed: list[PurePosixPath] = []
    try:
        base = f"{prefix}/" if prefix else ""
        for obj in client.list_objects(bucket, prefix=base, recursive=True):
            if obj.is_dir or obj.object_name is None:
                continue
            raw = obj.object_name[len(base) :]
            problem = path_problem(raw)
            if problem is not None:
                raise AdapterInvalid(
                    "unsafe_archive", f"object {obj.object_name[:128]!r}: {problem}"
                )
            rel = PurePosixPath(raw)
            placed.append(rel)
            clash = clashing_paths(placed)
            if clash is not None:
                raise AdapterInvalid(
                    "unsafe_archive", f"objects {clash[0][:128]!r} and {clash[1][:128]!r} clash"
                )
            total += obj.size or 0
            if total > settings.artifact_max_bytes:
                raise AdapterInvalid(
                    "file_too_large", f"artifact is over {settings.artifact_max_bytes} bytes"
                )
            client.fget_object(bucket, obj.object_name, str(target / rel))
            count += 1
    except ValueError as exc:
        # The SDK's own checks (a bucket name S3 does not allow, an empty object name).
        raise AdapterInvalid(
            "artifact_not_allowed", f"s3://{bucket[:128]}/{prefix[:128]}: {str(exc)[:200]}"
        ) from None
    except ServerError as exc:
        raise TransientError(f"object store error fetching s3://{bucket}/{prefix}: {exc}") from exc
    except (InvalidResponseError, ParseError) as exc:
        # Something answered that is not S3 (an HTML page, a proxy's error): not retried.
        raise AdapterInvalid(
            "artifact_unreachable",
            f"s3://{bucket[:128]}/{prefix[:128]}: the endpoint's answer is not S3's "
            f"({str(exc)[:200]})",
        ) from None
    except S3Error as exc:
        if exc.code in ("NoSuchBucket", "NoSuchKey", "AccessDenied"):
            raise AdapterInvalid(
                "artifact_unreachable", f"s3://{bucket}/{prefix}: {exc.code}"
            ) from exc
        raise TransientError(f"object store error fetching s3://{bucket}/{prefix}: {exc}") from exc
    except OSError as exc:  # urllib3 connection errors are OSError subclasses
        raise TransientError(
            f"object store unreachable fetching s3://{bucket}/{prefix}: {exc}"
        ) from exc
    if count == 0:
        raise AdapterInvalid("artifact_unreachable", f"s3://{bucket}/{prefix} holds no objects")
    return target


def _allowed_hosts(settings: WorkerSettings) -> set[str]:
    return {h.strip().lower() for h in settings.artifact_allowed_hosts.split(",") if h.strip()}


def _checked_address(host: str, port: int, settings: WorkerSettings) -> str | None:
    """Resolve ``host`` once and return the address to connect to, after refusing hosts
    that resolve to loopback, link-local, private or reserved addresses (cloud metadata
    endpoints, in-cluster services), unless explicitly allowed (then None: connect by name).

    The request then goes to this very address (``_fetch_http`` pins it), so a name that
    resolves differently a moment later (DNS rebinding) cannot reach what was refused."""
    if settings.artifact_allow_private_hosts or host.lower() in _allowed_hosts(settings):
        return None
    if not host:
        raise AdapterInvalid("artifact_not_allowed", "artifact URL has no host")
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TransientError(f"cannot resolve {host}: {exc}") from exc
    except (UnicodeError, ValueError) as exc:  # a label the IDNA codec refuses
        raise AdapterInvalid("artifact_not_allowed", f"invalid host name: {exc}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if (
            address.is_loopback
            or address.is_link_local
            or address.is_private
            or address.is_reserved
            or address.is_multicast
            or address.is_unspecified
        ):
            raise AdapterInvalid(
                "artifact_not_allowed", f"{host} resolves to a non-public address ({address})"
            )
        addresses.append(str(address))
    if not addresses:
        raise TransientError(f"{host} resolves to no address")
    return addresses[0]


def _pinned(url: str, address: str | None) -> tuple[str, dict[str, str], dict[str, str]]:
    """``(url to request, headers, extensions)``: the URL with its host replaced by the
    checked ``address``, the original ``Host`` header, and for https the original name for
    SNI and certificate verification (``sni_hostname``)."""
    parsed = httpx.URL(url)
    if address is None:
        return url, {}, {}
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    return str(parsed.copy_with(host=address)), {"Host": parsed.netloc.decode()}, extensions


def _fetch_http(uri: str, workdir: Path, settings: WorkerSettings) -> Path:
    """Download one file. Redirects are followed by hand, at most
    ``artifact_max_redirects``, each target checked like the first URL (a public server
    must not be able to bounce the worker to a metadata endpoint or an internal service)."""
    parsed = urlparse(uri)
    name = unquote(parsed.path).rsplit("/", 1)[-1] or "artifact.bin"
    problem = file_name_problem(name)
    if problem is not None:
        # e.g. a last segment %2e%2e: the file would be written as the directory itself.
        raise AdapterInvalid("artifact_not_allowed", f"artifact URL's file name: {problem}")
    target = workdir / "artifact"
    target.mkdir(parents=True, exist_ok=True)
    dest = target / name
    limit = settings.artifact_max_bytes
    url = uri
    size = 0
    try:
        with httpx.Client(timeout=settings.artifact_http_timeout, follow_redirects=False) as http:
            for _hop in range(settings.artifact_max_redirects + 1):
                here = urlparse(url)
                if here.scheme not in ("http", "https"):
                    raise AdapterInvalid(
                        "artifact_not_allowed", f"redirect to a non-http URL {url!r}"
                    )
                address = _checked_address(
                    here.hostname or "",
                    here.port or (443 if here.scheme == "https" else 80),
                    settings,
                )
                target_url, headers, extensions = _pinned(url, address)
                with http.stream("GET", target_url, headers=headers, extensions=extensions) as r:
                    if r.is_redirect:
                        location = r.headers.get("location")
                        if not location:
                            raise AdapterInvalid(
                                "artifact_unreachable", f"GET {url}: redirect without Location"
                            )
                        url = str(httpx.URL(url).join(location))
                        continue
                    if r.status_code >= 500 or r.status_code == 429:
                        raise TransientError(f"GET {url}: HTTP {r.status_code}")
                    if r.status_code != 200:
                        raise AdapterInvalid(
                            "artifact_unreachable", f"GET {url}: HTTP {r.status_code}"
                        )
                    length = r.headers.get("content-length") or "0"
                    declared = int(length) if length.isdigit() and len(length) < 20 else 0
                    if declared > limit:
                        raise AdapterInvalid(
                            "file_too_large", f"{uri} is {declared} bytes, over {limit}"
                        )
                    with dest.open("wb") as fh:
                        for chunk in r.iter_bytes(1 << 20):
                            size += len(chunk)
                            if size > limit:
                                raise AdapterInvalid(
                                    "file_too_large", f"{uri} is over {limit} bytes"
                                )
                            fh.write(chunk)
                    break
            else:
                raise AdapterInvalid(
                    "artifact_unreachable",
                    f"GET {uri}: more than {settings.artifact_max_redirects} redirects",
                )
    except httpx.TransportError as exc:
        raise TransientError(f"GET {url}: {exc}") from exc
    log.info("artifact_downloaded", uri=uri, bytes=size)
    return target
