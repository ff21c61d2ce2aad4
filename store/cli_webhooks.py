"""``lorafleet webhooks``: register, list and delete a namespace's signed webhooks, read
their delivery log and replay a delivery, through the registry API. The sender itself is
``lorafleet webhook-sender`` (``workers``)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from store.cli_api import AsJson, Token, Url, api_client, out, print_json

webhooks_app = typer.Typer(
    help="Signed webhooks of a namespace: adapter events POSTed to your URL.",
    no_args_is_help=True,
)
Namespace = Annotated[str, typer.Argument(help="The namespace.")]
HookId = Annotated[str, typer.Argument(help="Webhook id (wh_...).")]


def _base(namespace: str) -> str:
    return f"/v1/namespaces/{quote(namespace)}/webhooks"


@webhooks_app.command("create")
def webhooks_create(
    namespace: Namespace,
    endpoint: Annotated[str, typer.Argument(help="http(s) URL to POST events to.")],
    event: Annotated[
        list[str],
        typer.Option(
            "--event",
            help="adapter.pending, adapter.ready, adapter.rejected, adapter.failed or "
            "adapter.archived; repeat for several.",
        ),
    ],
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Register a webhook (namespace admin). Prints the signing secret: this once only."""
    with api_client(url, token) as client:
        hook = client.request("POST", _base(namespace), json={"url": endpoint, "events": event})
    if as_json:
        print_json(hook)
        return
    out.print(f"created webhook [bold]{hook['id']}[/bold] for {', '.join(hook['events'])}")
    out.print(f"secret (shown once, keep it to verify signatures): {hook['secret']}")


@webhooks_app.command("list")
def webhooks_list(
    namespace: Namespace, as_json: AsJson = False, url: Url = None, token: Token = None
) -> None:
    """The namespace's webhooks."""
    with api_client(url, token) as client:
        body = client.request("GET", _base(namespace))
    if as_json:
        print_json(body)
        return
    table = Table("id", "url", "events", "created_by")
    for h in body["data"]:
        table.add_row(h["id"], escape(h["url"]), ", ".join(h["events"]), escape(h["created_by"]))
    out.print(table)


@webhooks_app.command("delete")
def webhooks_delete(
    namespace: Namespace, webhook_id: HookId, url: Url = None, token: Token = None
) -> None:
    """Stop sending to a webhook."""
    with api_client(url, token) as client:
        client.request("DELETE", f"{_base(namespace)}/{quote(webhook_id)}")
    out.print(f"deleted webhook {webhook_id}")


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    namespace: Namespace,
    webhook_id: HookId,
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """The delivery log, newest first."""
    with api_client(url, token) as client:
        body = client.request("GET", f"{_base(namespace)}/{quote(webhook_id)}/deliveries")
    if as_json:
        print_json(body)
        return
    table = Table("id", "event", "status", "attempts", "last", "created_at")
    for d in body["data"]:
        last = str(d["last_status_code"] or escape(d["last_error"] or "-"))
        table.add_row(
            d["id"], d["event_type"], d["status"], str(d["attempts"]), last, d["created_at"]
        )
    out.print(table)


@webhooks_app.command("replay")
def webhooks_replay(
    namespace: Namespace,
    webhook_id: HookId,
    delivery_id: Annotated[str, typer.Argument(help="Delivery id (dl_...).")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Send a logged delivery again (a new delivery id)."""
    path = f"{_base(namespace)}/{quote(webhook_id)}/deliveries/{quote(delivery_id)}/replay"
    with api_client(url, token) as client:
        body = client.request("POST", path)
    out.print(f"queued {body['id']} (replay of {delivery_id})")
