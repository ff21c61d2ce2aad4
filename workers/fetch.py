"""Fetching a trainer's artifact into a local directory the formats layer can read.

``file://`` paths must lie under an allowed artifact root (after resolving symlinks);
``s3://bucket/prefix`` goes through the ``minio`` SDK; ``http(s)://`` downloads one file
with a size cap and a timeout, refusing loopback, link-local and private hosts unless
allowed. Final problems are ``AdapterInvalid`` (``artifact_not_allowed``,
``artifact_unreachable``, ``file_too_large``); faults that may pass are ``TransientError``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import httpx
import structlog

from store.errors import AdapterInvalid, TransientError
from store.settings import StoreSettings
from workers.settings import WorkerSettings

log = structlog.get_logger(__name__)


def fetch_artifact(uri: str, workdir: Path, settings: WorkerSettings, store: StoreSettings) -> Path:
    """Make the artifact at ``uri`` available as a local directory and return it.

    A ``file://`` directory under an allowed root is returned in place (not copied); a
    single file, an S3 prefix or an HTTP download is placed under ``workdir`` (which the
    caller owns and removes).
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


def _fetch_file(path: Path, workdir: Path, settings: WorkerSettings) -> Path:
    roots = settings.allowed_roots()
    resolved = path.resolve()
    if not _under(resolved, roots):
        raise AdapterInvalid(
            "artifact_not_allowed", f"{path} is outside the allowed artifact roots"
        )
    if not resolved.exists():
        raise AdapterInvalid("artifact_unreachable", f"{path} does not exist")
    if resolved.is_file():
        # The formats layer reads directories; link (or copy) the lone file into one.
        target = workdir / "artifact" / resolved.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(resolved, target)
        except OSError:
            import shutil

            shutil.copyfile(resolved, target)
        return target.parent
    # Every file inside must stay under the roots too: a symlink could reach /etc.
    for inner in resolved.rglob("*"):
        if inner.is_symlink() and not _under(inner.resolve(), roots):
            raise AdapterInvalid(
                "artifact_not_allowed", f"{inner.name} links outside the allowed artifact roots"
            )
    return resolved


def _fetch_s3(
    bucket: str, prefix: str, workdir: Path, settings: WorkerSettings, store: StoreSettings
) -> Path:
    from minio import Minio
    from minio.error import S3Error

    if not store.s3_endpoint:
        raise AdapterInvalid("artifact_unreachable", "s3:// artifacts need LORAFLEET_S3_ENDPOINT")
    client = Minio(
        store.s3_endpoint,
        access_key=store.s3_access_key,
        secret_key=store.s3_secret_key,
        secure=store.s3_secure,
        region=store.s3_region,
    )
    target = workdir / "artifact"
    target.mkdir(parents=True, exist_ok=True)
    total = 0
    count = 0
    try:
        base = f"{prefix}/" if prefix else ""
        for obj in client.list_objects(bucket, prefix=base, recursive=True):
            if obj.is_dir or obj.object_name is None:
                continue
            rel = PurePosixPath(obj.object_name[len(base) :])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise AdapterInvalid("unsafe_archive", f"unsafe object name {obj.object_name!r}")
            total += obj.size or 0
            if total > settings.artifact_max_bytes:
                raise AdapterInvalid(
                    "file_too_large", f"artifact is over {settings.artifact_max_bytes} bytes"
                )
            client.fget_object(bucket, obj.object_name, str(target / rel))
            count += 1
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


def _check_host(host: str, port: int, settings: WorkerSettings) -> None:
    """Refuse hosts that resolve to loopback, link-local, private or reserved addresses
    (cloud metadata endpoints, in-cluster services), unless explicitly allowed."""
    if settings.artifact_allow_private_hosts:
        return
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TransientError(f"cannot resolve {host}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
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


def _fetch_http(uri: str, workdir: Path, settings: WorkerSettings) -> Path:
    parsed = urlparse(uri)
    host = parsed.hostname or ""
    _check_host(host, parsed.port or (443 if parsed.scheme == "https" else 80), settings)
    name = PurePosixPath(unquote(parsed.path)).name or "artifact.bin"
    target = workdir / "artifact"
    target.mkdir(parents=True, exist_ok=True)
    dest = target / name
    limit = settings.artifact_max_bytes
    try:
        # No redirects: a redirect could point at a host the check above would refuse.
        with httpx.stream(
            "GET", uri, timeout=settings.artifact_http_timeout, follow_redirects=False
        ) as r:
            if r.status_code >= 500 or r.status_code == 429:
                raise TransientError(f"GET {uri}: HTTP {r.status_code}")
            if r.status_code != 200:
                raise AdapterInvalid("artifact_unreachable", f"GET {uri}: HTTP {r.status_code}")
            declared = int(r.headers.get("content-length") or 0)
            if declared > limit:
                raise AdapterInvalid("file_too_large", f"{uri} is {declared} bytes, over {limit}")
            size = 0
            with dest.open("wb") as fh:
                for chunk in r.iter_bytes(1 << 20):
                    size += len(chunk)
                    if size > limit:
                        raise AdapterInvalid("file_too_large", f"{uri} is over {limit} bytes")
                    fh.write(chunk)
    except httpx.TransportError as exc:
        raise TransientError(f"GET {uri}: {exc}") from exc
    log.info("artifact_downloaded", uri=uri, bytes=size)
    return target
