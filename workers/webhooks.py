"""The webhook sender: posts the deliveries the registry wrote to its webhook outbox
(``store.webhooks``), signed, with retries and back-off, at least once.

Each pass leases due rows in one transaction (they are due again when the lease ends),
then posts each and records the attempt in another. A sender killed mid-delivery loses
nothing: the row is still ``pending`` and another pass (this sender restarted, or another
replica) sends it after the lease. Receivers dedup on ``Lorafleet-Delivery``.

Every attempt checks the URL's host with the artifact-URL SSRF rules (``workers.fetch``:
loopback, private, link-local ... refused unless ``LORAFLEET_ARTIFACT_ALLOW_PRIVATE_HOSTS`` or
``LORAFLEET_ARTIFACT_ALLOWED_HOSTS`` allow it) and connects to the very address it checked;
a refused URL fails the delivery at once (``url_not_allowed``), without retries. Redirects
are not followed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import structlog
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlmodel import Session

from store import webhooks
from store.errors import AdapterInvalid, LorafleetError
from store.models import Webhook, WebhookDelivery, utcnow
from workers.fetch import _checked_address, _pinned
from workers.settings import WorkerSettings

log = structlog.get_logger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]


class WebhookSettings(BaseSettings):
    """How the sender works (``LORAFLEET_WEBHOOK_*``)."""

    model_config = SettingsConfigDict(env_prefix="LORAFLEET_WEBHOOK_", extra="ignore")

    lease_s: float = Field(default=30.0, gt=0, description="a leased delivery is due again after")
    max_attempts: int = Field(default=8, ge=1, description="attempts before a delivery fails")
    backoff_s: float = Field(default=2.0, ge=0, description="first retry delay; doubles")
    timeout_s: float = Field(default=10.0, gt=0, description="per-request timeout")
    poll_s: float = Field(default=1.0, gt=0, description="seconds between passes")
    batch: int = Field(default=20, ge=1, description="deliveries leased per pass")


def _post(
    client: httpx.Client, hook_url: str, secret: str, row: WebhookDelivery, workers: WorkerSettings
) -> tuple[int | None, str | None, bool]:
    """Send one delivery: (status code, error, final)."""
    url = httpx.URL(hook_url)
    try:
        address = _checked_address(
            url.host, url.port or (443 if url.scheme == "https" else 80), workers
        )
    except AdapterInvalid as exc:
        return None, f"url_not_allowed: {exc.message}", True
    except LorafleetError as exc:
        return None, exc.message, False
    target, host_header, extensions = _pinned(hook_url, address)
    body = row.payload.encode()
    headers = {**webhooks.signature_headers(secret, row.id, row.event_type, body), **host_header}
    try:
        answer = client.post(target, content=body, headers=headers, extensions=extensions)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:1024], False
    error = None if answer.is_success else f"HTTP {answer.status_code}"
    return answer.status_code, error, False


def deliver_due(
    session_factory: SessionFactory,
    client: httpx.Client,
    settings: WebhookSettings,
    workers: WorkerSettings,
) -> int:
    """One pass: lease the due deliveries, send each, record each attempt; returns how
    many were attempted."""
    with session_factory() as session:
        ids = webhooks.due_deliveries(session, utcnow(), settings.batch, settings.lease_s)
    for delivery_id in ids:
        with session_factory() as session:
            row = session.get(WebhookDelivery, delivery_id)
            hook = session.get(Webhook, row.webhook_id) if row else None
            if row is None or hook is None:
                continue
            session.expunge(row)
            url, secret = hook.url, hook.secret
        status, error, final = _post(client, url, secret, row, workers)
        with session_factory() as session:
            done = webhooks.record_attempt(
                session,
                delivery_id,
                status_code=status,
                error=error,
                now=utcnow(),
                max_attempts=1 if final else settings.max_attempts,
                backoff_s=settings.backoff_s,
            )
            log.info(
                "webhook.attempt",
                delivery_id=delivery_id,
                status=done.status,
                attempts=done.attempts,
                code=status,
                error=error,
            )
    return len(ids)


def run_sender(
    session_factory: SessionFactory,
    settings: WebhookSettings | None = None,
    workers: WorkerSettings | None = None,
    stop: threading.Event | None = None,
    alive_file: Path | None = None,
) -> None:
    """Deliver forever (until ``stop`` is set), a pass every ``poll_s`` when idle.
    ``alive_file`` is touched after every pass that reached the database: a health check
    (compose's) reads its age."""
    settings = settings or WebhookSettings()
    workers = workers or WorkerSettings()
    stop = stop or threading.Event()
    log.info("webhook.sender_started", poll_s=settings.poll_s, batch=settings.batch)
    with httpx.Client(timeout=settings.timeout_s, follow_redirects=False) as client:
        while not stop.is_set():
            try:
                sent = deliver_due(session_factory, client, settings, workers)
                if alive_file is not None:
                    alive_file.touch()
            except LorafleetError as exc:  # the database went away: try again next pass
                log.warning("webhook.pass_failed", error=exc.message)
                sent = 0
            if not sent:
                stop.wait(settings.poll_s)
