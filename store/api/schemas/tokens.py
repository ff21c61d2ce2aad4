"""Schemas of tokens: minting, listing, revoking, and the introspection answer engines use."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime
from pydantic import BaseModel as Body

from store.api.schemas.common import EXAMPLE_TIME, StrictBody, Timestamp, entity_config
from store.api.schemas.text import NamespaceText, TokenNameText
from store.auth import Principal
from store.models import ApiToken

Role = Literal["reader", "writer", "admin"]


class TokenCreate(StrictBody):
    role: Role
    namespace: NamespaceText | None = None
    name: TokenNameText
    # When the token stops authenticating (RFC 3339 with a timezone); omitted: never.
    expires_at: AwareDatetime | None = None


TOKEN_EXAMPLE: dict[str, Any] = {
    "object": "token",
    "id": 7,
    "role": "reader",
    "namespace": "acme",
    "name": "nim-llama3-8b",
    "created_at": EXAMPLE_TIME,
    "created_by": "admin",
    "expires_at": None,
    "revoked_at": None,
}


class TokenInfo(Body):
    """A token as listed: never its secret nor its hash."""

    model_config = entity_config(TOKEN_EXAMPLE)

    object: Literal["token"] = "token"
    id: int
    role: Role
    namespace: str | None = None
    name: str
    created_at: Timestamp
    created_by: str | None = None
    expires_at: Timestamp | None = None
    revoked_at: Timestamp | None = None


class TokenOut(TokenInfo):
    """A minted token; ``token`` (the plaintext) is shown in this answer only."""

    model_config = entity_config(
        {**TOKEN_EXAMPLE, "token": "lft_3q0Zb7XH1c2d3e4f5g6h7i8j9k0l1m2n3o4p5q6r7s8"}
    )

    token: str


class TokenList(Body):
    model_config = entity_config({"object": "list", "data": [TOKEN_EXAMPLE]})

    object: Literal["list"] = "list"
    data: list[TokenInfo]


class WhoAmI(Body):
    """Who a bearer token is: what engines cache to decide what a caller may use."""

    model_config = entity_config(
        {
            "object": "principal",
            "actor": "token:support-app@acme",
            "token_id": 7,
            "role": "reader",
            "scope": "acme",
            "all_namespaces": False,
            "namespaces": ["acme"],
            "roles": {"acme": "reader"},
            "expires_at": None,
        }
    )

    object: Literal["principal"] = "principal"
    actor: str
    token_id: int | None = None  # None: the bootstrap admin token
    role: Role
    scope: str | None = None  # the token's namespace; None: global
    all_namespaces: bool  # global token: every namespace, present and future
    namespaces: list[str]  # the namespaces it may read now
    roles: dict[str, Role]
    expires_at: Timestamp | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def token_info(row: ApiToken) -> dict[str, Any]:
    return {
        "object": "token",
        "id": row.id,
        "role": row.role,
        "namespace": row.namespace,
        "name": row.name,
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        "expires_at": _iso(row.expires_at),
        "revoked_at": _iso(row.revoked_at),
    }


def whoami_out(principal: Principal, namespaces: list[str]) -> dict[str, Any]:
    return {
        "object": "principal",
        "actor": principal.actor,
        "token_id": principal.token_id,
        "role": principal.role,
        "scope": principal.namespace,
        "all_namespaces": principal.namespace is None,
        "namespaces": namespaces,
        "roles": {ns: principal.role for ns in namespaces},
        "expires_at": _iso(principal.expires_at),
    }
