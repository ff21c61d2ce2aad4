"""Webhooks of a namespace (its admin): register (the secret is in that answer only), list,
delete, read the delivery log, replay a delivery. Rules in ``store.webhooks``."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel as Body
from pydantic import Field

from store import catalog, webhooks
from store.api.deps import Caller, State, audited
from store.api.errors import error_responses
from store.api.schemas.common import (
    EXAMPLE_TIME,
    Pagination,
    StrictBody,
    entity_config,
    list_example,
    page_of,
)
from store.auth import Principal
from store.db import session_scope
from store.models import Webhook, WebhookDelivery

router = APIRouter(prefix="/v1/namespaces/{namespace}/webhooks", responses=error_responses(401))
EventName = Literal[
    "adapter.pending", "adapter.ready", "adapter.rejected", "adapter.failed", "adapter.archived"
]


WEBHOOK_EXAMPLE: dict[str, Any] = {
    "object": "webhook",
    "id": "wh_2b1f0c6e9d4a4e1f8c3b7a2d1e0f9a8b",
    "namespace": "acme",
    "url": "https://hooks.example.com/lorafleet",
    "events": ["adapter.pending", "adapter.ready"],
    "created_at": EXAMPLE_TIME,
    "created_by": "token:ops@acme",
    "secret": None,
}
DELIVERY_EXAMPLE: dict[str, Any] = {
    "object": "webhook_delivery",
    "id": "dl_7c3e2b6e9d4a4e1f8c3b7a2d1e0f9a8b",
    "webhook_id": WEBHOOK_EXAMPLE["id"],
    "event_type": "adapter.pending",
    "status": "delivered",
    "attempts": 1,
    "next_attempt_at": EXAMPLE_TIME,
    "last_status_code": 200,
    "last_error": None,
    "replay_of": None,
    "created_at": EXAMPLE_TIME,
    "delivered_at": EXAMPLE_TIME,
    "payload": {"id": "dl_7c3e2b6e9d4a4e1f8c3b7a2d1e0f9a8b", "type": "adapter.pending"},
}


class WebhookCreate(StrictBody):
    url: str = Field(min_length=8, max_length=2048, description="http(s) URL to POST events to")
    events: list[EventName] = Field(min_length=1, max_length=len(webhooks.EVENTS))


class WebhookOut(Body):
    model_config = entity_config(WEBHOOK_EXAMPLE)

    object: Literal["webhook"] = "webhook"
    id: str
    namespace: str
    url: str
    events: list[str]
    created_at: str
    created_by: str
    secret: str | None = Field(default=None, description="only in the answer to the POST")


class WebhookList(Body):
    model_config = entity_config(list_example(WEBHOOK_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[WebhookOut]
    pagination: Pagination


class DeliveryOut(Body):
    model_config = entity_config(DELIVERY_EXAMPLE)

    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: str
    webhook_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: str
    last_status_code: int | None = None
    last_error: str | None = None
    replay_of: str | None = None
    created_at: str
    delivered_at: str | None = None
    payload: dict[str, Any]


class DeliveryList(Body):
    model_config = entity_config(list_example(DELIVERY_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[DeliveryOut]
    pagination: Pagination


class WebhookDeleted(Body):
    model_config = entity_config(
        {"object": "webhook", "id": WEBHOOK_EXAMPLE["id"], "deleted": True}
    )

    object: Literal["webhook"] = "webhook"
    id: str
    deleted: bool


def _hook_out(row: Webhook, secret: str | None = None) -> dict[str, Any]:
    body = row.model_dump(mode="json", exclude={"secret", "deleted_at"})
    return {"object": "webhook", **body, "secret": secret}


def _delivery_out(row: WebhookDelivery) -> dict[str, Any]:
    body = row.model_dump(mode="json", exclude={"payload"})
    return {"object": "webhook_delivery", **body, "payload": json.loads(row.payload)}


def _admin(caller: Principal, namespace: str) -> None:
    caller.require_role(namespace, "admin", f"namespace {namespace!r} not found")


@router.post(
    "", status_code=201, response_model=WebhookOut, responses=error_responses(400, 403, 404, 422)
)
def create_webhook(
    namespace: str, body: WebhookCreate, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Subscribe a URL to adapter events of the namespace; the answer holds the signing
    secret, shown this once."""
    with audited(request, caller, "webhook.create", target=body.url, namespace=namespace):
        _admin(caller, namespace)
        with session_scope(state.engine) as session:
            catalog.get_namespace(session, namespace)
            row, secret = webhooks.create_webhook(
                session, namespace, url=body.url, events=list(body.events), actor=caller.actor
            )
            return _hook_out(row, secret)


@router.get("", response_model=WebhookList, responses=error_responses(403, 404))
def list_webhooks(namespace: str, caller: Caller, state: State) -> dict[str, Any]:
    """The namespace's webhooks (no secrets)."""
    _admin(caller, namespace)
    with session_scope(state.engine) as session:
        data = [_hook_out(w) for w in webhooks.list_webhooks(session, namespace)]
    return page_of(data, page=1, page_size=max(1, len(data)), total=len(data))


@router.delete("/{webhook_id}", response_model=WebhookDeleted, responses=error_responses(403, 404))
def delete_webhook(
    namespace: str, webhook_id: str, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Stop sending to a webhook; its pending deliveries are dropped."""
    with audited(request, caller, "webhook.delete", target=webhook_id, namespace=namespace):
        _admin(caller, namespace)
        with session_scope(state.engine) as session:
            webhooks.delete_webhook(session, namespace, webhook_id)
    return {"object": "webhook", "id": webhook_id, "deleted": True}


@router.get(
    "/{webhook_id}/deliveries", response_model=DeliveryList, responses=error_responses(403, 404)
)
def list_deliveries(
    namespace: str,
    webhook_id: str,
    caller: Caller,
    state: State,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """The delivery log, newest first: each event, its attempts and outcome."""
    _admin(caller, namespace)
    with session_scope(state.engine) as session:
        webhooks.get_webhook(session, namespace, webhook_id)
        rows, total = webhooks.list_deliveries(session, webhook_id, page=page, page_size=page_size)
        data = [_delivery_out(r) for r in rows]
    return page_of(data, page=page, page_size=page_size, total=total)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/replay",
    status_code=202,
    response_model=DeliveryOut,
    responses=error_responses(403, 404),
)
def replay_delivery(
    namespace: str,
    webhook_id: str,
    delivery_id: str,
    request: Request,
    caller: Caller,
    state: State,
) -> dict[str, Any]:
    """Send a logged delivery again (a new delivery id, ``replay_of`` the old one)."""
    with audited(request, caller, "webhook.replay", target=delivery_id, namespace=namespace):
        _admin(caller, namespace)
        with session_scope(state.engine) as session:
            hook = webhooks.get_webhook(session, namespace, webhook_id)
            return _delivery_out(webhooks.replay(session, hook, delivery_id))
