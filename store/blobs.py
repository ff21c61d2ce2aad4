"""Content-addressed blob storage: one namespace of ``sha256/<hex>`` keys, identical bytes
stored once. Backends: a local directory and S3/MinIO through the ``minio`` SDK.

Write order is hash -> upload -> verify -> return ``BlobRef``; a crash leaves at most an
orphan blob (or a temp file), which ``collect_garbage`` removes after a grace period.
Reads verify the digest: a mismatch raises ``BlobCorrupt`` (code ``digest_mismatch``).
``run_blob_gc`` is the registry's GC: ``collect_garbage`` of every blob no file row names.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, runtime_checkable

import sqlalchemy as sa
import structlog

from store.errors import BadRequest, LorafleetError, NotFound, TransientError
from store.models import AdapterFile, EvalSet
from store.settings import StoreSettings

if TYPE_CHECKING:
    from sqlmodel import Session

log = structlog.get_logger(__name__)

CHUNK = 1 << 20
DEFAULT_PART_SIZE = 16 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's floor for every part but the last
# A deduplicated blob older than this gets its timestamp refreshed, so GC's grace period
# counts from the latest upload and cannot delete it under a registration in flight.
TOUCH_AFTER = timedelta(minutes=1)
_KEY = re.compile(r"^sha256/[0-9a-f]{64}$")


class BlobCorrupt(LorafleetError):
    """A stored blob's bytes do not hash to its key (or to the expected digest)."""

    code = "digest_mismatch"
    http_status = 500


@dataclass(frozen=True)
class BlobRef:
    """Where a blob lives and what it is: ``key == f"sha256/{sha256}"``."""

    key: str
    sha256: str
    size: int


def blob_key(sha256: str) -> str:
    """The storage key of a digest (``sha256/<hex>``)."""
    return f"sha256/{sha256}"


def check_key(key: str) -> str:
    """Return ``key`` if it is a well-formed ``sha256/<64 hex>``; ``BadRequest`` otherwise
    (so no caller-supplied key can name a path outside the store)."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise BadRequest(f"not a blob key: {key!r}")
    return key


def _digest_of(key: str) -> str:
    return check_key(key).split("/", 1)[1]


@runtime_checkable
class BlobStore(Protocol):
    def put_file(self, path: Path) -> BlobRef: ...
    def put_bytes(self, data: bytes) -> BlobRef: ...
    def exists(self, key: str) -> bool: ...
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...
    def download(self, key: str, dest: Path, sha256: str) -> None: ...
    def delete(self, key: str) -> None: ...
    def list_blobs(self) -> Iterator[tuple[str, datetime]]: ...
    def check(self) -> None: ...


def _hash_stream(fh: IO[bytes], part_size: int | None = None) -> tuple[str, int, str]:
    """sha256 hex, size and the S3 ETag the bytes get when uploaded in ``part_size`` parts."""
    sha, whole, parts, size = hashlib.sha256(), hashlib.md5(), [], 0  # noqa: S324 (ETag, not security)
    part, in_part = hashlib.md5(), 0  # noqa: S324
    while chunk := fh.read(CHUNK):
        sha.update(chunk)
        whole.update(chunk)
        size += len(chunk)
        view = memoryview(chunk)
        while part_size and view:
            take = min(len(view), part_size - in_part)
            part.update(view[:take])
            in_part += take
            view = view[take:]
            if in_part == part_size:
                parts.append(part.digest())
                part, in_part = hashlib.md5(), 0  # noqa: S324
    if part_size and in_part:
        parts.append(part.digest())
    if part_size and len(parts) > 1:
        etag = f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"  # noqa: S324
    else:
        etag = whole.hexdigest()
    return sha.hexdigest(), size, etag


def _verified(chunks: Iterator[bytes], key: str, expected: str) -> Iterator[bytes]:
    """Pass chunks through, raising ``BlobCorrupt`` at the end if they do not hash right."""
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
        yield chunk
    if sha.hexdigest() != expected:
        raise BlobCorrupt(f"blob {key} hashes to {sha.hexdigest()}, expected {expected}")


class StreamedBlobStore(ABC):
    """What every backend shares: uploads go through ``_put`` (a seekable byte stream, hashed
    first, then stored and verified); downloads stream ``iter_chunks`` into a temp file."""

    def put_file(self, path: Path) -> BlobRef:
        """Store ``path``'s bytes (no-op if a blob of that size is stored); verified before
        it is visible."""
        with Path(path).open("rb") as fh:
            return self._put(fh)

    def put_bytes(self, data: bytes) -> BlobRef:
        """Store ``data``; see ``put_file``."""
        return self._put(io.BytesIO(data))

    @abstractmethod
    def _put(self, fh: IO[bytes]) -> BlobRef: ...

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...

    def download(self, key: str, dest: Path, sha256: str) -> None:
        """Write the blob to ``dest`` only if it hashes to ``sha256`` (else ``BlobCorrupt``);
        it streams through a temp file, so ``dest`` appears only once verified."""
        if sha256 != _digest_of(key):
            raise BlobCorrupt(f"blob {key} was asked for with a different digest {sha256}")
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            with tmp.open("wb") as fh:
                for chunk in self.iter_chunks(key):
                    fh.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)


class FileBlobStore(StreamedBlobStore):
    """Blobs as files under ``root/sha256/<hex>``; uploads land in ``root/tmp`` and are
    renamed into place, so a visible blob is always complete."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    def path_for(self, key: str) -> Path:
        """The file that holds ``key`` (which need not exist)."""
        return self.root / check_key(key)

    def _put(self, fh: IO[bytes]) -> BlobRef:
        # One pass: copy into tmp while hashing what is written, so the blob is exactly the
        # bytes its name says (a source changing meanwhile cannot slip in), then fsync and
        # rename into place. A blob already stored keeps its file; the copy is dropped.
        tmp = self.root / "tmp" / f"put.{uuid.uuid4().hex}"
        try:
            with tmp.open("wb") as out:
                sha, size = hashlib.sha256(), 0
                while chunk := fh.read(CHUNK):
                    sha.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                ref = BlobRef(blob_key(sha.hexdigest()), sha.hexdigest(), size)
                final = self.path_for(ref.key)
                if final.is_file() and final.stat().st_size == size:
                    self._touch(final)
                    return ref
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            raise TransientError(f"filesystem error storing a blob: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        log.debug("blob_stored", key=ref.key, size=size, backend="file")
        return ref

    @staticmethod
    def _touch(path: Path) -> None:
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        if datetime.now(UTC) - mtime > TOUCH_AFTER:
            os.utime(path)

    def exists(self, key: str) -> bool:
        """True if a blob is stored under ``key``."""
        return self.path_for(key).is_file()

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the blob's bytes; ``BlobCorrupt`` after the last chunk if they do not hash
        to the key, ``NotFound`` if absent."""
        path = self.path_for(key)

        def chunks() -> Iterator[bytes]:
            try:
                fh = path.open("rb")
            except FileNotFoundError:
                raise NotFound(f"blob {key} not found") from None
            with fh:
                while chunk := fh.read(chunk_size):
                    yield chunk

        return _verified(chunks(), key, _digest_of(key))

    def delete(self, key: str) -> None:
        """Remove the blob (no error if absent)."""
        self.path_for(key).unlink(missing_ok=True)

    def list_blobs(self) -> Iterator[tuple[str, datetime]]:
        """Every stored key with its last-modified time (UTC)."""
        for path in (self.root / "sha256").iterdir():
            if _KEY.match(f"sha256/{path.name}"):
                yield f"sha256/{path.name}", datetime.fromtimestamp(path.stat().st_mtime, UTC)

    def sweep_temp(self, grace: timedelta) -> list[Path]:
        """Delete upload temp files older than ``grace`` (left by crashed writers)."""
        cutoff = datetime.now(UTC) - grace
        removed = []
        for path in (self.root / "tmp").iterdir():
            if datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def check(self) -> None:
        """``TransientError`` unless the root is a writable directory."""
        if not (self.root / "sha256").is_dir() or not os.access(self.root / "tmp", os.W_OK):
            raise TransientError(f"blob directory {self.root} is missing or not writable")


def open_blob_store(url: str, settings: StoreSettings) -> BlobStore:
    """A blob store for ``file://DIR`` or ``s3://BUCKET`` (S3 endpoint and keys from
    ``settings``); ``BadRequest`` for any other URL."""
    if url.startswith("file://"):
        return FileBlobStore(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        bucket = url.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise BadRequest(f"blob URL {url!r} must be s3://BUCKET")
        if not settings.s3.endpoint:
            raise BadRequest("an s3:// blob URL needs LORAFLEET_S3_ENDPOINT")
        # Lazy on purpose (the one documented import circle): store.blobs_s3 builds on this
        # module's base class, and the minio SDK loads only for an S3 store.
        from store.blobs_s3 import S3BlobStore

        return S3BlobStore.connect(
            endpoint=settings.s3.endpoint,
            bucket=bucket,
            access_key=settings.s3.access_key,
            secret_key=settings.s3.secret_key,
            secure=settings.s3.secure,
            region=settings.s3.region,
        )
    raise BadRequest(f"unsupported blob URL {url!r} (use file://DIR or s3://BUCKET)")


def collect_garbage(
    store: BlobStore, referenced: set[str], grace: timedelta, *, now: datetime | None = None
) -> list[str]:
    """Delete blobs not in ``referenced`` whose last modification is older than ``grace``;
    return the deleted keys. Younger orphans are kept: an upload whose row is not yet
    committed must survive."""
    now = now or datetime.now(UTC)
    deleted = []
    for key, modified in list(store.list_blobs()):
        if key in referenced or now - modified <= grace:
            continue
        store.delete(key)
        deleted.append(key)
    sweep = getattr(store, "sweep_temp", None)
    if callable(sweep):
        sweep(grace)
    log.info("blob_gc", deleted=len(deleted), kept_referenced=len(referenced))
    return deleted


def referenced_blob_keys(session: Session) -> set[str]:
    """Every blob key some file row or evaluation set points at."""
    keys = set(session.execute(sa.select(AdapterFile.blob_key).distinct()).scalars())
    return keys | set(session.execute(sa.select(EvalSet.blob_key).distinct()).scalars())


def run_blob_gc(
    session: Session, blobs: BlobStore, grace: timedelta, *, now: datetime | None = None
) -> list[str]:
    """Delete blobs no file row references and older than ``grace``; returns their keys.
    The grace period protects blobs uploaded by a registration not yet committed.
    ``now`` (default: the current time) is what blob ages are measured against."""
    removed = collect_garbage(blobs, referenced_blob_keys(session), grace, now=now)
    log.info("blobs.collected", removed=len(removed), grace_s=grace.total_seconds())
    return removed
