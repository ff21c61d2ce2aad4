"""Downloads from the registry: one file (``download_file``) or a whole adapter
(``download_adapter``), and the modes downloaded files and directories get.

A file streams to a temp file beside its destination that is verified against its sha256
before it is moved into place, so a partial or corrupt download never looks like an adapter.
A whole adapter is downloaded into a hidden staging directory next to its destination and
renamed into place once every file is verified: on any failure nothing is left at the
destination.

Downloaded files are world-readable (``0644``) and directories ``0755``, set explicitly
(whatever the umask): the reader is often another uid (a stock NIM runs as uid 1000, the
lorafleet image as 10001).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from store.client import ApiError, Progress, RegistryClient

FILE_MODE = 0o644  # downloaded files: readable by the serving process, whichever its uid
DIR_MODE = 0o755
ROLES = ("canonical", "original")


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


def download_file(
    client: RegistryClient,
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
            client.stream("GET", url, params=params) as response,
        ):
            expected = sha256 or response.headers.get("etag", "").strip('"')
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                if progress:
                    progress(len(chunk))
        if expected and digest.hexdigest() != expected:
            raise ApiError(0, "digest_mismatch", f"{path}: got {digest.hexdigest()}")
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return dest


def download_adapter(
    client: RegistryClient,
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
    entity = client.get_adapter(adapter_id)
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
            download_file(
                client,
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
