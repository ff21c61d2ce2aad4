"""What the engine tenancy suite shares: its tenants, their adapter names, and ``Fleet`` (a
live registry, its engine and one reader token per tenant). Test modules import it as
``from tenancy_fixtures import ...`` (pytest puts this directory on ``sys.path``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from support.live_api import LiveRegistry

from engine.runtime import EngineRuntime
from store.db import session_scope
from workers.relay import relay_outbox

TENANTS = ("acme", "globex", "initech")


def adapter_of(tenant: str) -> str:
    return f"{tenant}/bot@1.0.0"


@dataclass
class Fleet:
    """A registry, its engine, and one reader token per tenant."""

    registry: LiveRegistry
    runtime: EngineRuntime
    engine_url: str
    redis_url: str
    readers: dict[str, str] = field(default_factory=dict)

    def relay(self) -> int:
        """Publish pending outbox rows (what beat's relay tick does)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            return relay_outbox(lambda: session_scope(self.registry.engine), client, wait_s=5.0)
        finally:
            client.close()

    def revoke(self, token: str) -> None:
        """Revoke ``token`` through the API (admin) and relay the event."""
        with self.registry.client(token) as client:
            token_id = client.whoami()["token_id"]
        self.registry.admin.revoke_token(token_id)
        self.relay()
