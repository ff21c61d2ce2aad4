"""``RegistryClient``: the HTTP client of the registry API, used by engines, the CLI and tests.

Every non-2xx answer becomes ``ApiError(status, code, message)`` carrying the API's error
code. Uploads stream files from disk (httpx reads them in chunks) and downloads stream to a
temp file that is verified against its sha256 before it is moved into place, so a partial
or corrupt download never looks like an adapter. A whole adapter is downloaded into a hidden
staging directory next to its destination and renamed into place once every file is
verified: on any failure nothing is left at the destination.

Downloaded files are world-readable (``0644``) and directories ``0755``, set explicitly
(whatever the umask): the reader is often another uid (a stock NIM runs as uid 1000, the
lorafleet image as 10001).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote

import httpx

Progress = Callable[[int], None]  # called with the number of bytes just transferred

FILE_MODE = 0o644  # downloaded files: readable by the serving process, whichever its uid
DIR_MODE = 0o755
ROLES = ("canonical", "original")
# What an HF Trainer checkpoint holds besides the adapter: resuming state, never served.
# Left out of an upload unless an ``include`` pattern names it.
TRAINER_STATE_FILES = (
    "optimizer.pt",
    "optimizer.bin",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
    "rng_state_*.pth",
    "training_args.bin",
    "trainer_state.json",
)
TOKEN_HINT = "give a valid token with LORAFLEET_TOKEN or --token"


class ApiError(Exception):
    """An error answer from the registry API (or a transport failure, status 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def make_dirs(path: Path, mode: int = DIR_MODE) -> None:
    """``mkdir -p path``, every directory it creates set to ``mode`` (not left to the umask).
    ``NotADirectoryError`` when ``path`` or an ancestor is a file."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # created concurrently (or a file: caught below)
        os.chmod(directory, mode)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")


def _check_destination(dest: Path) -> None:
    """A whole-adapter destination must be absent or an empty directory (never merged into)."""
    if dest.is_dir():
        if any(dest.iterdir()):
            raise ApiError(
                0,
                "destination_not_empty",
                f"{dest} exists and is not empty: remove it or choose another directory",
            )
    elif dest.exists() or dest.is_symlink():
        raise ApiError(0, "not_a_directory", f"{dest} exists and is not a directory")


class _CountingReader:
    """A read-only file wrapper that reports how many bytes were read (for progress bars)."""

    def __init__(self, fh: IO[bytes], progress: Progress) -> None:
        self._fh = fh
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        if data:
            self._progress(len(data))
        return data

    def __getattr__(self, name: str) -> Any:  # seek/tell/fileno for httpx's length probing
        return getattr(self._fh, name)


def adapter_files(source_dir: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``source_dir`` as (relative POSIX path, absolute path), sorted."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise ApiError(0, "not_a_directory", f"{source_dir} is not a directory")
    return [
        (PurePosixPath(p.relative_to(source_dir).as_posix()).as_posix(), p)
        for p in sorted(source_dir.rglob("*"))
        if p.is_file()
    ]


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """A pattern with a ``/`` matches the relative path, one without it the file name."""
    name = PurePosixPath(rel).name
    return any(fnmatch.fnmatchcase(rel if "/" in p else name, p) for p in patterns)


def upload_files(
    source_dir: Path, *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> tuple[list[tuple[str, Path]], list[str]]:
    """The files of ``source_dir`` an upload sends, and the trainer-state files it leaves out.

    A file is sent when an ``include`` glob matches it; otherwise unless an ``exclude`` glob
    matches it or it is trainer state (``TRAINER_STATE_FILES``: optimizer, scheduler, RNG
    state, training arguments). A glob with a ``/`` matches the relative path, one without
    it the file name. ``ApiError("no_files")`` when nothing is left to send."""
    chosen: list[tuple[str, Path]] = []
    left_out: list[str] = []
    for rel, path in adapter_files(source_dir):
        if _matches(rel, include):
            chosen.append((rel, path))
        elif _matches(rel, TRAINER_STATE_FILES):
            left_out.append(rel)
        elif not _matches(rel, exclude):
            chosen.append((rel, path))
    if not chosen:
        raise ApiError(
            0, "no_files", f"no files to upload in {source_dir}: every file was left out"
        )
    return chosen, left_out


class RegistryClient:
    """A thin, typed client of the registry's REST API (``/v1``)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.is_success:
            return
        try:
            err = response.json()["error"]
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:500] or response.reason_phrase
        if response.status_code == 401:
            message = f"{message.rstrip('.')}: {TOKEN_HINT}"
        raise ApiError(response.status_code, code, message)

    def _unreachable(self, exc: httpx.TransportError) -> ApiError:
        return ApiError(
            0,
            "unreachable",
            f"cannot reach the registry API at {self.base_url} ({exc or type(exc).__name__}): "
            "check that it is up (lorafleet api, or lorafleet up) and that --url / "
            "LORAFLEET_API_URL names it",
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request and return its decoded JSON (None for an empty body)."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        self._raise_for(response)
        return response.json() if response.content else None

    # --- namespaces, base models, tokens ----------------------------------------------------

    def create_namespace(self, name: str, **fields: Any) -> dict:
        """Create a namespace (admin); fields: approval_policy, max_bytes, max_versions, ..."""
        return self.request("POST", "/v1/namespaces", json={"name": name, **fields})

    def list_namespaces(self) -> dict:
        return self.request("GET", "/v1/namespaces")

    def get_namespace(self, name: str) -> dict:
        return self.request("GET", f"/v1/namespaces/{quote(name)}")

    def update_namespace(self, name: str, **changes: Any) -> dict:
        return self.request("PATCH", f"/v1/namespaces/{quote(name)}", json=changes)

    def register_base_model(self, name: str, config: dict) -> dict:
        """Register a base model from its HF ``config.json`` (admin)."""
        return self.request("POST", "/v1/base-models", json={"name": name, "config": config})

    def list_base_models(self) -> dict:
        return self.request("GET", "/v1/base-models")

    def get_base_model(self, name: str) -> dict:
        return self.request("GET", f"/v1/base-models/{quote(name, safe='')}")

    def create_token(self, role: str, namespace: str | None, name: str) -> str:
        """Mint a bearer token; returns its plaintext (shown only once)."""
        body = {"role": role, "namespace": namespace, "name": name}
        return self.request("POST", "/v1/tokens", json=body)["token"]

    # --- adapters ----------------------------------------------------------------------

    def list_adapters(self, **filters: Any) -> dict:
        """One page of adapters; filters: namespace, base_model, status, search, sort, page,
        page_size."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self.request("GET", "/v1/adapters", params=params)

    def get_adapter(self, adapter_id: str) -> dict:
        return self.request("GET", f"/v1/adapters/{quote(adapter_id)}")

    def get_version(self, namespace: str, name: str, version: str) -> dict:
        return self.request("GET", f"/v1/adapters/{quote(namespace)}/{quote(name)}/{version}")

    def list_versions(self, namespace: str, name: str) -> dict:
        return self.request("GET", f"/v1/adapters/{quote(namespace)}/{quote(name)}")

    def resolve(self, ref: str) -> dict:
        """An adapter by id (``ad_...``) or coordinates (``namespace/name@version``)."""
        if "@" in ref and "/" in ref:
            path, version = ref.rsplit("@", 1)
            namespace, name = path.split("/", 1)
            return self.get_version(namespace, name, version)
        return self.get_adapter(ref)

    def set_status(self, adapter_id: str, status: str, reason: str | None = None) -> dict:
        """Approve (``ready``), reject or archive an adapter version."""
        body: dict[str, Any] = {"status": status}
        if reason is not None:
            body["reason"] = reason
        return self.request("PATCH", f"/v1/adapters/{quote(adapter_id)}", json=body)

    def update_adapter(self, adapter_id: str, **changes: Any) -> dict:
        """Edit metadata (description, custom_fields)."""
        return self.request("PATCH", f"/v1/adapters/{quote(adapter_id)}", json=changes)

    def delete_adapter(self, adapter_id: str, *, purge: bool = False) -> dict | None:
        """Archive an adapter, or with ``purge`` (admin) remove it."""
        params = {"purge": "true"} if purge else None
        return self.request("DELETE", f"/v1/adapters/{quote(adapter_id)}", params=params)

    def check_upload(self, *, namespace: str, name: str, version: str, base_model: str) -> dict:
        """What an upload to these coordinates would be refused for before its files: this
        token's role, the coordinates, the namespace, the base model (``ApiError`` with the
        upload's own status and code). Returns ``approval_policy`` and ``exists``."""
        params = {"namespace": namespace, "name": name, "version": version}
        return self.request(
            "GET", "/v1/adapters/upload-check", params={**params, "base_model": base_model}
        )

    def fleet(self, base_model: str) -> dict:
        """``{"generation": N, "adapters": [...]}``: the ready set engines reconcile with."""
        return self.request("GET", "/v1/fleet", params={"base_model": base_model})

    def upload_adapter(
        self,
        source_dir: Path,
        *,
        namespace: str,
        name: str,
        version: str,
        base_model: str,
        provenance: dict | None = None,
        description: str | None = None,
        progress: Progress | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        check_first: bool = True,
    ) -> dict:
        """Upload the files under ``source_dir`` (``upload_files``: trainer state left out
        unless ``include`` names it) as a new version; returns the entity.

        With ``check_first`` (the default) ``check_upload`` runs before any file is read, so a
        refusal for the token, coordinates, namespace or base model costs one small request.
        Re-uploading the same bytes returns the existing version; different bytes under the
        same coordinates raise ``ApiError(409, "version_conflict")``.
        """
        files, _ = upload_files(Path(source_dir), include=include, exclude=exclude)
        data = {"namespace": namespace, "name": name, "version": version, "base_model": base_model}
        if check_first:
            self.check_upload(**data)
        if provenance is not None:
            data["provenance"] = json.dumps(provenance)
        if description is not None:
            data["description"] = description
        handles = [open(path, "rb") for _, path in files]  # noqa: SIM115 - closed below
        try:
            parts = [
                ("files", (rel, _CountingReader(fh, progress) if progress else fh))
                for (rel, _), fh in zip(files, handles, strict=True)
            ]
            # Big adapters over a slow link: no read timeout while the body is sent.
            timeout = httpx.Timeout(self._http.timeout.connect, read=None, write=None, pool=None)
            return self.request("POST", "/v1/adapters", data=data, files=parts, timeout=timeout)
        finally:
            for fh in handles:
                fh.close()

    def download_file(
        self,
        adapter_id: str,
        path: str,
        dest: Path,
        *,
        sha256: str | None = None,
        role: str | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Stream one file to ``dest`` (mode 0644); verified against ``sha256`` (or the ETag)
        first. ``role`` (``canonical`` or ``original``) picks between the two files an
        adapter may have at one path; the server's default is canonical."""
        if role is not None and role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        dest = Path(dest)
        try:
            make_dirs(dest.parent)
        except (NotADirectoryError, FileExistsError):
            raise ApiError(0, "not_a_directory", f"{dest.parent} is not a directory") from None
        url = f"/v1/adapters/{quote(adapter_id)}/files/{quote(path)}"
        params = {"role": role} if role else None
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            # mkstemp creates 0600: the serving process (another uid) could not read it.
            os.fchmod(fd, FILE_MODE)
            with (
                os.fdopen(fd, "wb") as out,
                self._http.stream("GET", url, params=params) as response,
            ):
                if not response.is_success:
                    response.read()
                    self._raise_for(response)
                expected = sha256 or response.headers.get("etag", "").strip('"')
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    if progress:
                        progress(len(chunk))
            if expected and digest.hexdigest() != expected:
                raise ApiError(0, "digest_mismatch", f"{path}: got {digest.hexdigest()}")
            os.replace(tmp_name, dest)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        return dest

    def download_adapter(
        self,
        adapter_id: str,
        dest: Path,
        *,
        canonical: bool = True,
        progress: Progress | None = None,
    ) -> Path:
        """Download every file of one role (canonical HF PEFT by default, else the uploaded
        originals) into ``dest``, each verified against its sha256. Returns ``dest``.

        ``dest`` must not exist or be an empty directory. The files land in a hidden staging
        directory beside it that is renamed to ``dest`` once all are verified, so ``dest``
        appears complete or not at all (``ApiError`` and nothing left behind on failure).
        """
        entity = self.get_adapter(adapter_id)
        role = "canonical" if canonical else "original"
        files = [f for f in entity["files"] if f["role"] == role]
        for f in files:
            rel = PurePosixPath(f["path"])
            if rel.is_absolute() or ".." in rel.parts:  # never trust a server with our disk
                raise ApiError(0, "unsafe_path", f"server sent unsafe path {f['path']!r}")
        if not files:
            raise ApiError(0, "no_files", f"adapter {adapter_id} has no {role} files")
        dest = Path(dest)
        _check_destination(dest)
        try:
            make_dirs(dest.parent)
        except (NotADirectoryError, FileExistsError):
            raise ApiError(0, "not_a_directory", f"{dest.parent} is not a directory") from None
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
        try:
            os.chmod(staging, DIR_MODE)  # mkdtemp makes 0700; this becomes ``dest``
            for f in files:
                self.download_file(
                    adapter_id,
                    f["path"],
                    staging.joinpath(*PurePosixPath(f["path"]).parts),
                    sha256=f["sha256"],
                    role=role,
                    progress=progress,
                )
            _check_destination(dest)
            try:
                os.replace(staging, dest)  # replaces an empty directory atomically
            except OSError as exc:
                raise ApiError(0, "destination_not_empty", f"{dest}: {exc.strerror}") from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return dest
