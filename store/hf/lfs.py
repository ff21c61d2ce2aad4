"""Git LFS uploads for the Hugging Face–compatible API (``LORAFLEET_HF_UPLOAD_MODE=lfs``):
the batch answer, the signed PUT URL a client sends a file's bytes to, and what a commit's
``lfsFile`` may point at.

A PUT carries no credentials (the Hub's client sends none), so its URL is signed: an HMAC
over namespace, name, sha256, size and expiry, keyed by the registry's admin token (the
one secret every registry process holds). A PUT stores the bytes as a blob only if they
hash to the signed sha256 and size; until a commit names it, the blob is an orphan the GC
removes after its grace period.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from store.errors import BadRequest, Forbidden

SIGNED_FOR_SECONDS = 3600
_OID = re.compile(r"^[0-9a-f]{64}$")


def check_oid(oid: object) -> str:
    """``oid`` if it is a lowercase sha256 hex; ``BadRequest`` otherwise."""
    if not isinstance(oid, str) or not _OID.match(oid):
        raise BadRequest(f"not a sha256 object id: {str(oid)[:80]!r}")
    return oid


def _key(secret: str) -> bytes:
    return hashlib.sha256(b"lorafleet-hf-lfs-upload\0" + secret.encode()).digest()


def signature(secret: str, namespace: str, name: str, oid: str, size: int, expires: int) -> str:
    """The signature of an upload URL for these values."""
    message = f"{namespace}/{name}\0{oid}\0{size}\0{expires}".encode()
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def signed_query(secret: str, namespace: str, name: str, oid: str, size: int) -> str:
    """``size=..&expires=..&sig=..`` for an upload URL valid ``SIGNED_FOR_SECONDS``."""
    expires = int(time.time()) + SIGNED_FOR_SECONDS
    sig = signature(secret, namespace, name, oid, size, expires)
    return f"size={size}&expires={expires}&sig={sig}"


def check_signed(
    secret: str, namespace: str, name: str, oid: str, size: int, expires: int, sig: str
) -> None:
    """``Forbidden`` unless ``sig`` signs these values and ``expires`` has not passed."""
    good = signature(secret, namespace, name, oid, size, expires)
    if not hmac.compare_digest(good, sig) or expires < time.time():
        raise Forbidden("the upload URL is not valid (wrong signature or expired)")
