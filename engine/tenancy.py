"""Who may use this engine, and which adapters: the registry's tokens, checked at the edge.

With ``LORAFLEET_ENGINE_AUTH=registry`` (the default when ``NIM_PEFT_SOURCE`` is a registry
URL) every request carries ``Authorization: Bearer <registry token>``. ``TokenVerifier``
asks the registry about a token once (``GET /v1/auth/whoami``), caches the answer for
``LORAFLEET_ENGINE_AUTH_CACHE_SECONDS`` and drops it at once when a ``token.revoked`` event
arrives (``events.revocations``). A caller sees the base model and the adapters of the
namespaces it may read; another tenant's adapter is the same 404 as a missing one.

During a registry outage a token already cached keeps working (for at most
``LORAFLEET_ENGINE_AUTH_STALE_SECONDS`` since the registry last vouched for it); an uncached
one gets 503, never a silent allow. With ``none`` (a local directory, or an explicit opt-out)
every caller may use everything, and ``/v1/health/ready`` says so.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import structlog

from engine.protocol import OpenAIError
from engine.source import UnknownAdapter

log = structlog.get_logger(__name__)

AUTH_MODES = ("registry", "none")


@dataclass(frozen=True)
class Caller:
    """What one bearer token may use: every namespace (a global token, or auth ``none``) or
    the listed ones. ``token_id`` None: the bootstrap admin token or auth ``none``."""

    all_namespaces: bool
    namespaces: frozenset[str] = frozenset()
    token_id: int | None = None
    expires_at: datetime | None = None
    actor: str = "anonymous"

    def may_use(self, model: str, base_model: str) -> bool:
        """True for the base model and for adapters (``namespace/name@version``) of a
        namespace this caller may read; a name without a namespace only for all-namespace
        callers (local directories hold no tenants)."""
        if model == base_model or self.all_namespaces:
            return True
        namespace, slash, _ = model.partition("/")
        return bool(slash) and namespace in self.namespaces

    def require_model(self, model: str, base_model: str) -> None:
        """Raise exactly what an unknown model raises (``UnknownAdapter``, 404) unless this
        caller may use ``model``: another tenant's adapter does not exist for it."""
        if not self.may_use(model, base_model):
            raise UnknownAdapter(f"The model `{model}` does not exist.")


EVERYONE = Caller(all_namespaces=True, actor="anonymous (LORAFLEET_ENGINE_AUTH=none)")


def unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key")


@dataclass
class _Cached:
    caller: Caller
    checked_at: float  # time.monotonic() of the registry's last answer


class TokenVerifier:
    """Resolves ``Authorization`` headers to ``Caller``s through the registry, with a
    bounded-time cache that revocations empty at once. Thread-safe; a token missing from
    the cache is asked about once even when many requests bring it at the same time."""

    def __init__(
        self,
        registry_url: str,
        *,
        cache_seconds: float = 30.0,
        stale_seconds: float = 600.0,
        timeout: float = 5.0,
    ) -> None:
        self.registry_url = registry_url.rstrip("/")
        self.cache_seconds = cache_seconds
        self.stale_seconds = max(stale_seconds, cache_seconds)
        self._http = httpx.Client(base_url=self.registry_url, timeout=timeout)
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._asking: dict[str, threading.Lock] = {}
        self.registry_calls = 0

    # -- the request path ----------------------------------------------------------------

    def cached(self, authorization: str | None) -> Caller | None:
        """The caller from a fresh cache entry, without any I/O; None when the registry
        must be asked (``resolve``). Raises 401 for a missing or malformed header."""
        key = _key(authorization)
        with self._lock:
            hit = self._cache.get(key)
        if hit is None or time.monotonic() - hit.checked_at >= self.cache_seconds:
            return None
        return self._unexpired(key, hit)

    def resolve(self, authorization: str | None) -> Caller:
        """The caller for ``authorization``: the cache, else one question to the registry.
        401 for no, a bad, an expired or a revoked token; 503 when the registry cannot be
        asked and the token is not cached (or cached too long ago)."""
        key = _key(authorization)
        token = authorization.partition(" ")[2].strip()  # type: ignore[union-attr]
        with self._lock:
            asking = self._asking.setdefault(key, threading.Lock())
        with asking:
            caller = self.cached(authorization)
            if caller is not None:  # another request asked while this one waited
                return caller
            with self._lock:
                stale = self._cache.get(key)
            try:
                caller = self._ask(token)
            except _RegistryUnavailable as exc:
                age = time.monotonic() - stale.checked_at if stale else None
                if stale is not None and age is not None and age < self.stale_seconds:
                    log.warning("auth_registry_unavailable_serving_cached", error=str(exc))
                    return self._unexpired(key, stale)
                log.warning("auth_registry_unavailable", error=str(exc))
                raise OpenAIError(
                    503,
                    "The registry that checks tokens cannot be reached; try again shortly.",
                    code="auth_unavailable",
                ) from exc
            except OpenAIError:
                self.forget(key)
                raise
            with self._lock:
                self._cache[key] = _Cached(caller, time.monotonic())
            return self._unexpired(key, self._cache[key])

    # -- revocation ----------------------------------------------------------------------

    def drop_token(self, token_id: int) -> int:
        """Forget every cached answer about token ``token_id``; returns how many."""
        with self._lock:
            keys = [k for k, v in self._cache.items() if v.caller.token_id == token_id]
            for key in keys:
                del self._cache[key]
        log.info("auth_token_dropped", token_id=token_id, entries=len(keys))
        return len(keys)

    def clear(self) -> None:
        """Forget every cached answer (after missing revocations, e.g. a Redis reconnect)."""
        with self._lock:
            self._cache.clear()

    def forget(self, key: str) -> None:
        with self._lock:
            self._cache.pop(key, None)

    def close(self) -> None:
        self._http.close()

    # -- internals -----------------------------------------------------------------------

    def _unexpired(self, key: str, hit: _Cached) -> Caller:
        expires = hit.caller.expires_at
        if expires is not None and datetime.now(UTC) >= expires:
            self.forget(key)
            raise unauthorized("The API key has expired.")
        return hit.caller

    def _ask(self, token: str) -> Caller:
        self.registry_calls += 1
        try:
            response = self._http.get(
                "/v1/auth/whoami", headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise _RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 401:
            raise unauthorized("Invalid, expired or revoked API key.")
        if response.status_code != 200:
            raise _RegistryUnavailable(f"whoami answered HTTP {response.status_code}")
        try:
            me = response.json()
            expires = me.get("expires_at")
            return Caller(
                all_namespaces=bool(me["all_namespaces"]),
                namespaces=frozenset(me["namespaces"]),
                token_id=me.get("token_id"),
                expires_at=datetime.fromisoformat(expires) if expires else None,
                actor=str(me.get("actor", "?")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise _RegistryUnavailable(f"whoami answer unreadable: {exc}") from exc


class _RegistryUnavailable(Exception):
    """The registry could not answer (network, 5xx, garbage): not the token's fault."""


def _key(authorization: str | None) -> str:
    """The cache key of a header (sha256 of the token: plaintext is never kept); 401 for a
    missing or malformed header."""
    if not authorization:
        raise unauthorized("Missing API key: send Authorization: Bearer <registry token>.")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("The Authorization header must be 'Bearer <registry token>'.")
    return hashlib.sha256(token.encode()).hexdigest()
