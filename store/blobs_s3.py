"""The S3/MinIO backend of the blob store (through the ``minio`` SDK).

Same contract as ``store.blobs.FileBlobStore``: content-addressed keys, verified uploads
(multipart above ``part_size``), verified downloads, transport faults as ``TransientError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import IO

import structlog
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import InvalidResponseError, S3Error, ServerError

from store.blobs import (
    _KEY,
    CHUNK,
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    TOUCH_AFTER,
    BlobRef,
    StreamedBlobStore,
    _digest_of,
    _hash_stream,
    _verified,
    blob_key,
    check_key,
)
from store.errors import NotFound, TransientError

log = structlog.get_logger(__name__)


class S3BlobStore(StreamedBlobStore):
    """Blobs as objects ``sha256/<hex>`` in one S3/MinIO bucket (created if missing).

    S3 makes an object visible only once its upload completes, so no temp key is needed;
    each upload is verified against the ETag computed locally (MD5, or the multipart form
    for ``part_size`` parts). Transport faults become ``TransientError``.
    """

    def __init__(self, client: Minio, bucket: str, *, part_size: int = DEFAULT_PART_SIZE) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be >= {MIN_PART_SIZE} (S3's minimum)")
        self.client, self.bucket, self.part_size = client, bucket, part_size
        with _s3_errors(f"bucket {bucket}"):
            if not client.bucket_exists(bucket):
                try:
                    client.make_bucket(bucket)
                except S3Error as exc:  # another process created it first
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

    @classmethod
    def connect(
        cls,
        *,
        endpoint: str,
        bucket: str,
        access_key: str | None,
        secret_key: str | None,
        secure: bool = False,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> S3BlobStore:
        """A store on ``endpoint`` (``host:port``) with bounded timeouts and retries, so a
        dead endpoint surfaces as ``TransientError`` in seconds, not minutes."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
            maxsize=8,
        )
        client = Minio(
            endpoint.removeprefix("http://").removeprefix("https://"),
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        return cls(client, bucket, part_size=part_size)

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r})"

    def _put(self, fh: IO[bytes]) -> BlobRef:
        sha, size, etag = _hash_stream(fh, self.part_size)
        ref = BlobRef(blob_key(sha), sha, size)
        with _s3_errors(ref.key):
            existing = self._stat(ref.key)
            if existing is not None and existing.size == size:
                self._touch(ref.key, existing.last_modified)
                return ref
            fh.seek(0)
            result = self.client.put_object(
                self.bucket, ref.key, fh, size, part_size=self.part_size,
                metadata={"x-amz-meta-sha256": sha},
            )  # fmt: skip
            stored = self._stat(ref.key)
        got = (result.etag or "").strip('"')
        if stored is None or stored.size != size or got != etag:
            raise TransientError(
                f"upload of {ref.key} did not verify (size {stored and stored.size} vs {size}, "
                f"etag {got} vs {etag})"
            )
        log.debug("blob_stored", key=ref.key, size=size, backend="s3", etag=etag)
        return ref

    def _stat(self, key: str):  # noqa: ANN202 (minio's Object type)
        try:
            return self.client.stat_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in _MISSING:
                return None
            raise

    def _touch(self, key: str, modified: datetime | None) -> None:
        if modified is not None and datetime.now(UTC) - modified <= TOUCH_AFTER:
            return
        # Copying an object onto itself with REPLACE is S3's way to renew last-modified.
        self.client.copy_object(
            self.bucket, key, CopySource(self.bucket, key),
            metadata={"x-amz-meta-sha256": _digest_of(key)}, metadata_directive=REPLACE,
        )  # fmt: skip

    def exists(self, key: str) -> bool:
        """True if an object is stored under ``key``."""
        check_key(key)
        with _s3_errors(key):
            return self._stat(key) is not None

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the object's bytes; ``BlobCorrupt`` after the last chunk on a digest
        mismatch, ``NotFound`` if absent."""
        expected = _digest_of(key)

        def chunks() -> Iterator[bytes]:
            with _s3_errors(key):
                response = self.client.get_object(self.bucket, key)
                try:
                    yield from response.stream(chunk_size)
                finally:
                    response.close()
                    response.release_conn()

        return _verified(chunks(), key, expected)

    def presigned_get(self, key: str, expires: timedelta) -> str:
        """A URL that GETs the object without credentials until ``expires`` has passed (the
        Hugging Face–compatible API redirects downloads to it)."""
        check_key(key)
        with _s3_errors(key):
            return self.client.presigned_get_object(self.bucket, key, expires=expires)

    def delete(self, key: str) -> None:
        """Remove the object (no error if absent)."""
        check_key(key)
        with _s3_errors(key):
            self.client.remove_object(self.bucket, key)

    def list_blobs(self) -> Iterator[tuple[str, datetime]]:
        """Every stored key with its last-modified time (UTC)."""
        with _s3_errors(f"bucket {self.bucket}"):
            for obj in self.client.list_objects(self.bucket, prefix="sha256/", recursive=True):
                if obj.object_name and _KEY.match(obj.object_name):
                    modified = obj.last_modified or datetime.now(UTC)
                    yield obj.object_name, modified.astimezone(UTC)

    def check(self) -> None:
        """``TransientError`` unless the bucket answers."""
        with _s3_errors(f"bucket {self.bucket}"):
            if not self.client.bucket_exists(self.bucket):
                raise TransientError(f"bucket {self.bucket} does not exist")


_MISSING = ("NoSuchKey", "NoSuchObject", "ResourceNotFound")


@contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    """Map minio/urllib3 faults: a missing object is ``NotFound``, the rest ``TransientError``."""
    try:
        yield
    except S3Error as exc:
        if exc.code in _MISSING:
            raise NotFound(f"{what}: not found") from exc
        raise TransientError(f"object store error on {what}: {exc.code} {exc.message}") from exc
    except (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(f"object store unreachable on {what}: {exc}") from exc
