"""The console's sign-in: the pasted token lives in an ``HttpOnly``, ``SameSite=Strict``
cookie scoped to ``/ui``, so no script can read it and no other site's request carries it.

CSRF: every form carries a token a cross-site page cannot know. Signed in, it is an HMAC of
the session token under a key only this process holds (``ConsoleKeys``); before sign-in
the login form is double-submit (a random value both in a ``SameSite=Strict`` cookie and in
the form). A POST whose token does not match is refused (403) before anything runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

SESSION_COOKIE = "lf_session"
LOGIN_COOKIE = "lf_login"
FLASH_COOKIE = "lf_flash"
COOKIE_PATH = "/ui"
SESSION_MAX_AGE_S = 8 * 3600


@dataclass(frozen=True)
class ConsoleKeys:
    """The process's CSRF key (a restart only invalidates forms already on screen)."""

    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def csrf_for(self, session_token: str) -> str:
        """The CSRF token of the session holding ``session_token``."""
        return hmac.new(self.csrf_key, session_token.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session_token: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf_for(session_token), str(given))


def login_ok(request: Request, given: str | None) -> bool:
    """The login form's double-submit check."""
    expected = request.cookies.get(LOGIN_COOKIE)
    return bool(expected and given) and hmac.compare_digest(expected, str(given))


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    """An ``HttpOnly``, ``SameSite=Strict`` cookie on ``/ui`` (``Secure`` over HTTPS)."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path=COOKIE_PATH, httponly=True, samesite="strict")
