"""Bearer-token auth: who is calling, and what they may see and change.

Tokens are random strings handed out once; only their sha256 is stored (``ApiToken``).
A token has a role (``admin`` > ``writer`` > ``reader``) and a scope: one namespace, or
global (``namespace`` None). Rules, enforced by ``Principal``:

* a reader reads its namespace (global: every namespace);
* a writer also uploads, approves, rejects, archives and edits metadata there;
* a namespace admin also mints tokens for its namespace, edits it and purges its adapters;
* only a global admin creates namespaces and base models and mints global tokens.

Engines use a global ``reader`` token: they need every tenant's ready adapters.

A caller who may not read a namespace is told "not found", never "forbidden", so a wrong
tenant never learns that another tenant's adapter or namespace exists.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog
from sqlmodel import Session, select

from events.revocations import TokenRevoked
from events.streams import REVOCATIONS_STREAM
from store.errors import BadRequest, Forbidden, NotFound, Unauthorized
from store.models import ApiToken, utcnow
from store.outbox import enqueue
from store.settings import StoreSettings

log = structlog.get_logger(__name__)

ROLES = ("reader", "writer", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
TOKEN_PREFIX = "lft_"
ADMIN_TOKEN_FILE = "admin-token"


def hash_token(token: str) -> str:
    """The sha256 hex digest under which ``token`` is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``actor`` is what audit rows record."""

    actor: str
    role: str
    namespace: str | None  # None: every namespace
    token_id: int | None = None  # None: the bootstrap admin token
    expires_at: datetime | None = None

    @property
    def is_global_admin(self) -> bool:
        return self.role == "admin" and self.namespace is None

    def _has(self, namespace: str | None, role: str) -> bool:
        in_scope = self.namespace is None or self.namespace == namespace
        return in_scope and _RANK[self.role] >= _RANK[role]

    def can_read(self, namespace: str) -> bool:
        """True when this caller may see ``namespace`` and everything in it."""
        return self._has(namespace, "reader")

    def visible_namespaces(self) -> set[str] | None:
        """The namespaces listings are limited to; None means all."""
        return None if self.namespace is None else {self.namespace}

    def require_read(self, namespace: str, not_found: str) -> None:
        """Raise ``NotFound(not_found)`` unless readable: the same answer as for a thing that
        does not exist, so nothing leaks across tenants."""
        if not self.can_read(namespace):
            raise NotFound(not_found)

    def require_role(self, namespace: str, role: str, not_found: str) -> None:
        """Raise ``NotFound`` if the namespace is invisible, ``Forbidden`` if the role is short."""
        self.require_read(namespace, not_found)
        if not self._has(namespace, role):
            raise Forbidden(f"{self.role} token may not do this; needs {role} of {namespace!r}")

    def require_global_admin(self) -> None:
        """Raise ``Forbidden`` unless this is a global admin."""
        if not self.is_global_admin:
            raise Forbidden("needs a global admin token")


def create_token(
    session: Session,
    role: str,
    namespace: str | None,
    name: str,
    *,
    created_by: str | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Mint a token, store only its hash (the caller's unit of work commits it), and return
    the plaintext once. ``expires_at`` (timezone-aware) ends its validity; None: never.

    Raises ``BadRequest`` for an unknown role, an empty name, or an ``expires_at`` that is
    naive or not in the future.
    """
    if role not in _RANK:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if not name or not name.strip():
        raise BadRequest("token name must not be empty")
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise BadRequest("expires_at must carry a timezone (e.g. 2027-01-01T00:00:00Z)")
        if expires_at <= utcnow():
            raise BadRequest("expires_at must be in the future")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        token_hash=hash_token(plaintext),
        name=name.strip(),
        namespace=namespace,
        role=role,
        created_by=created_by,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    log.info("token.created", role=role, namespace=namespace, name=row.name, by=created_by)
    return plaintext


def authenticate(session: Session, authorization: str | None, admin_token: str | None) -> Principal:
    """Resolve an ``Authorization: Bearer`` header to a ``Principal``.

    The bootstrap ``admin_token`` (from settings) is a global admin. Raises ``Unauthorized``
    for a missing, malformed, unknown, revoked or expired token.
    """
    if not authorization:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return Principal(actor="admin", role="admin", namespace=None)
    row = session.execute(
        select(
            ApiToken.id,
            ApiToken.name,
            ApiToken.namespace,
            ApiToken.role,
            ApiToken.revoked_at,
            ApiToken.expires_at,
        ).where(ApiToken.token_hash == hash_token(token))
    ).first()  # columns, not the entity: every request pays for this lookup
    if row is None or row.revoked_at is not None:
        raise Unauthorized("unknown or revoked token")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise Unauthorized("token expired")
    scope = row.namespace or "*"
    return Principal(
        actor=f"token:{row.name}@{scope}",
        role=row.role,
        namespace=row.namespace,
        token_id=row.id,
        expires_at=row.expires_at,
    )


def list_tokens(session: Session, caller: Principal, namespace: str | None) -> list[ApiToken]:
    """The tokens of ``namespace`` (a namespace admin's own namespace when None), or, for a
    global admin without ``namespace``, every token; newest first. ``NotFound`` for a
    namespace the caller may not see, ``Forbidden`` below admin."""
    query = select(ApiToken).order_by(ApiToken.id.desc())  # type: ignore[union-attr]
    scope = namespace if namespace is not None else caller.namespace
    if scope is None:
        caller.require_global_admin()
        return list(session.exec(query).all())
    caller.require_role(scope, "admin", f"namespace {scope!r} not found")
    return list(session.exec(query.where(ApiToken.namespace == scope)).all())


def revoke_token(session: Session, caller: Principal, token_id: int) -> ApiToken:
    """Revoke token ``token_id`` (admin of its namespace; a global token: global admin) and
    write the ``TokenRevoked`` outbox row in the same transaction, so engines drop it at
    once. Revoking a revoked token changes nothing (no second event). A token the caller
    may not administer answers ``NotFound``, as a missing one does."""
    missing = f"token {token_id} not found"
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(missing)
    if row.namespace is None:
        if not caller.is_global_admin:
            raise NotFound(missing)
    else:
        caller.require_role(row.namespace, "admin", missing)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        enqueue(
            session, REVOCATIONS_STREAM, TokenRevoked(token_id=token_id, namespace=row.namespace)
        )
        session.flush()
        log.info("token.revoked", token_id=token_id, namespace=row.namespace, by=caller.actor)
    return row


def ensure_admin_token(settings: StoreSettings) -> tuple[str, bool]:
    """The bootstrap admin token and whether it was just generated.

    ``LORAFLEET_ADMIN_TOKEN`` wins. Otherwise (embedded mode) the token saved in
    ``<home>/admin-token`` is reused, or a new one is saved there: the file appears whole
    and with mode 0600 (never briefly readable by others, never half-written), and of two
    processes generating at once both end up with the one that landed first.
    """
    if settings.admin_token:
        return settings.admin_token, False
    path = Path(settings.home) / ADMIN_TOKEN_FILE
    token = _read_token(path)
    if token:
        return token, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    staged = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():  # an empty file left by an older version: replace it
            os.replace(staged, path)
        else:
            try:
                os.link(staged, path)  # fails if another process got there first
            except FileExistsError:
                return _read_token(path) or token, False
    finally:
        staged.unlink(missing_ok=True)
    log.info("token.admin_generated", path=str(path))
    return token, True


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
