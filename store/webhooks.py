"""Signed webhooks: a namespace's subscriptions to adapter events, and their outbox.

* **Registration.** ``create_webhook`` stores ``url`` (http or https) and the ``events``
  (``EVENTS``); the secret is generated here and returned once. The URL's host is checked
  against the artifact-URL SSRF rules by the sender at every attempt (``workers.webhooks``),
  where the connection is made, so a name that later resolves inward is still refused.
* **Outbox.** ``fan_out`` (called by ``store.outbox.announce_status``) writes one
  ``WebhookDelivery`` per subscribed webhook in the transaction of the status change, so a
  delivery exists exactly when the change does, like the fleet refreshes.
* **Delivery.** The sender takes due rows (``due_deliveries``), leases them, posts them
  signed (``signature_headers``) and records each attempt (``record_attempt``): delivered on
  a 2xx, else retried with exponential back-off until ``max_attempts``. A sender killed
  mid-delivery leaves the row pending; it is due again when its lease ends (at-least-once:
  receivers dedup on the ``Lorafleet-Delivery`` id).
* **Signature.** ``v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` in
  ``Lorafleet-Signature`` with the Unix time in ``Lorafleet-Timestamp``; ``verify_signature``
  is the reference check receivers copy (docs/WEBHOOKS.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
import structlog
from sqlmodel import Session

from events.models import AdapterStatusChanged
from store.errors import BadRequest, NotFound
from store.models import Webhook, WebhookDelivery, utcnow

__all__ = [
    "EVENTS",
    "create_webhook",
    "delete_webhook",
    "due_deliveries",
    "fan_out",
    "get_webhook",
    "list_deliveries",
    "list_webhooks",
    "record_attempt",
    "replay",
    "signature_headers",
    "verify_signature",
]

log = structlog.get_logger(__name__)

EVENTS = (
    "adapter.pending",
    "adapter.ready",
    "adapter.rejected",
    "adapter.failed",
    "adapter.archived",
)
SIGNATURE_HEADER = "Lorafleet-Signature"
TIMESTAMP_HEADER = "Lorafleet-Timestamp"
DELIVERY_HEADER = "Lorafleet-Delivery"
EVENT_HEADER = "Lorafleet-Event"
MAX_WEBHOOKS_PER_NAMESPACE = 20


# --- registrations ----------------------------------------------------------------------


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"webhook url must be http(s)://host/...; got {url[:100]!r}")
    if parts.username or parts.password:
        raise BadRequest("webhook url must not carry credentials; the signature authenticates")


def create_webhook(
    session: Session, namespace: str, *, url: str, events: list[str], actor: str
) -> tuple[Webhook, str]:
    """Subscribe ``url`` to ``events`` of ``namespace``; returns the row and its secret (the
    only time the secret is shown). ``BadRequest`` for a bad URL, an unknown or empty event
    list, or more than ``MAX_WEBHOOKS_PER_NAMESPACE`` live webhooks."""
    _check_url(url)
    unknown = sorted(set(events) - set(EVENTS))
    if not events or unknown:
        raise BadRequest(f"events must be a non-empty subset of {list(EVENTS)}; unknown: {unknown}")
    if len(list_webhooks(session, namespace)) >= MAX_WEBHOOKS_PER_NAMESPACE:
        raise BadRequest(f"namespace {namespace!r} has {MAX_WEBHOOKS_PER_NAMESPACE} webhooks")
    secret = "whsec_" + secrets.token_urlsafe(32)
    row = Webhook(
        id=f"wh_{uuid.uuid4().hex}",
        namespace=namespace,
        url=url,
        events=sorted(set(events)),
        secret=secret,
        created_by=actor,
    )
    session.add(row)
    session.flush()
    log.info("webhook.created", webhook_id=row.id, namespace=namespace, actor=actor)
    return row, secret


def list_webhooks(session: Session, namespace: str) -> list[Webhook]:
    """The live (not deleted) webhooks of ``namespace``, oldest first."""
    return list(
        session.execute(
            sa.select(Webhook)
            .where(Webhook.namespace == namespace, Webhook.deleted_at.is_(None))
            .order_by(Webhook.created_at, Webhook.id)
        ).scalars()
    )


def get_webhook(session: Session, namespace: str, webhook_id: str) -> Webhook:
    """A live webhook of ``namespace``; ``NotFound`` otherwise (also for another
    namespace's id)."""
    row = session.get(Webhook, webhook_id)
    if row is None or row.namespace != namespace or row.deleted_at is not None:
        raise NotFound(f"webhook {webhook_id} not found")
    return row


def delete_webhook(session: Session, namespace: str, webhook_id: str) -> None:
    """Stop sending to a webhook; its pending deliveries are dropped (marked failed), its
    delivery log stays readable to nobody (the webhook is gone)."""
    row = get_webhook(session, namespace, webhook_id)
    row.deleted_at = utcnow()
    session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.status == "pending")
        .values(status="failed", last_error="webhook deleted")
        .execution_options(synchronize_session=False)
    )
    session.flush()


# --- the outbox -------------------------------------------------------------------------


def fan_out(session: Session, namespace: str, event: AdapterStatusChanged) -> int:
    """Write one delivery per webhook of ``namespace`` subscribed to ``event``'s type
    (``adapter.<to_status>``), in the caller's transaction; returns how many."""
    event_type = f"adapter.{event.to_status}"
    if event_type not in EVENTS:
        return 0
    count = 0
    for hook in list_webhooks(session, namespace):
        if event_type not in hook.events:
            continue
        delivery_id = f"dl_{uuid.uuid4().hex}"
        body = {
            "id": delivery_id,
            "type": event_type,
            "event_id": event.event_id,
            "occurred_at": event.occurred_at.isoformat(),
            "namespace": namespace,
            "adapter_id": event.adapter_id,
            "adapter": event.adapter,
            "base_model": event.base_model,
            "from_status": event.from_status,
            "to_status": event.to_status,
            "reason": event.reason,
            "actor": event.actor,
        }
        session.add(
            WebhookDelivery(
                id=delivery_id,
                webhook_id=hook.id,
                event_type=event_type,
                payload=json.dumps(body, sort_keys=True),
            )
        )
        count += 1
    return count


def due_deliveries(session: Session, now: datetime, limit: int, lease_s: float) -> list[str]:
    """Lease up to ``limit`` pending deliveries due at ``now`` (oldest first): their
    ``next_attempt_at`` moves ``lease_s`` ahead, so a sender that dies holding them leaves
    them due again then. Returns their ids; the caller commits before sending."""
    rows = list(
        session.execute(
            sa.select(WebhookDelivery)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    for row in rows:
        row.next_attempt_at = now + timedelta(seconds=lease_s)
    session.flush()
    return [row.id for row in rows]


def record_attempt(
    session: Session,
    delivery_id: str,
    *,
    status_code: int | None,
    error: str | None,
    now: datetime,
    max_attempts: int,
    backoff_s: float,
) -> WebhookDelivery:
    """Record one attempt: ``delivered`` on a 2xx; otherwise due again after
    ``backoff_s * 2**(attempts-1)``, or ``failed`` once ``max_attempts`` are spent."""
    row = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if row is None:
        raise NotFound(f"delivery {delivery_id} not found")
    if row.status != "pending":  # a replayed lease, or the webhook was deleted meanwhile
        return row
    row.attempts += 1
    row.last_status_code = status_code
    row.last_error = error[:1024] if error else None
    if status_code is not None and 200 <= status_code < 300:
        row.status, row.delivered_at = "delivered", now
    elif row.attempts >= max_attempts:
        row.status = "failed"
    else:
        row.next_attempt_at = now + timedelta(seconds=backoff_s * 2 ** (row.attempts - 1))
    session.flush()
    return row


def list_deliveries(
    session: Session, webhook_id: str, *, page: int = 1, page_size: int = 50
) -> tuple[list[WebhookDelivery], int]:
    """A webhook's delivery log, newest first, and its total."""
    query = sa.select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
    total = session.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(
        query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).scalars()
    return list(rows), int(total)


def replay(session: Session, hook: Webhook, delivery_id: str) -> WebhookDelivery:
    """Send a logged delivery again: a new delivery (new id, ``replay_of`` the old one) with
    the same event, due now."""
    old = session.get(WebhookDelivery, delivery_id)
    if old is None or old.webhook_id != hook.id:
        raise NotFound(f"delivery {delivery_id} not found")
    new_id = f"dl_{uuid.uuid4().hex}"
    body = json.loads(old.payload)
    body["id"] = new_id
    row = WebhookDelivery(
        id=new_id,
        webhook_id=hook.id,
        event_type=old.event_type,
        payload=json.dumps(body, sort_keys=True),
        replay_of=old.id,
    )
    session.add(row)
    session.flush()
    return row


# --- signatures -------------------------------------------------------------------------


def _digest(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_headers(secret: str, delivery_id: str, event_type: str, body: bytes) -> dict:
    """The headers a delivery is sent with (the timestamp is now)."""
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery_id,
        EVENT_HEADER: event_type,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: f"v1={_digest(secret, timestamp, body)}",
    }


def verify_signature(
    secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300
) -> bool:
    """The reference receiver check: the signature is HMAC-SHA256 of ``timestamp.body``
    under the secret (compared in constant time) and the timestamp is within
    ``tolerance_s`` of now (a replayed old request is refused)."""
    lower = {k.lower(): v for k, v in headers.items()}
    timestamp = lower.get(TIMESTAMP_HEADER.lower(), "")
    signature = lower.get(SIGNATURE_HEADER.lower(), "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    expected = f"v1={_digest(secret, timestamp, body)}"
    return hmac.compare_digest(expected, signature)
