"""``lorafleet adapters history|restore`` and ``lorafleet audit``: a version's status
history, restoring an archived version, and the access log, through the registry API.
Mounted by ``store.cli``."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from store.cli_adapters import Ref
from store.cli_api import AsJson, Token, Url, api_client, out, print_json

__all__ = ["adapters_history", "adapters_restore", "audit"]


def adapters_history(ref: Ref, as_json: AsJson = False, url: Url = None, token: Token = None):
    """Every status change of a version: from, to, who, why, generation, when."""
    with api_client(url, token) as client:
        adapter_id = client.resolve(ref)["id"]
        body = client.request("GET", f"/v1/adapters/{quote(adapter_id)}/history")
    if as_json:
        print_json(body)
        return
    out.print(
        f"{escape(body['coordinates'])} ({body['status']}), uploaded by "
        f"{escape(body['uploaded_by'])} at {body['uploaded_at']}"
    )
    table = Table("at", "from", "to", "actor", "reason", "generation")
    for step in body["data"]:
        table.add_row(
            step["at"],
            step["from_status"] or "-",
            step["to_status"],
            escape(step["actor"]),
            escape(step["reason"] or ""),
            str(step["generation"] or "-"),
        )
    out.print(table)


def adapters_restore(
    ref: Ref,
    reason: Annotated[str, typer.Option(help="Why it is served again (recorded).")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Serve an archived version again (namespace admin): engines load it."""
    with api_client(url, token) as client:
        adapter_id = client.resolve(ref)["id"]
        entity = client.request(
            "POST", f"/v1/adapters/{quote(adapter_id)}/restore", json={"reason": reason}
        )
    out.print(
        f"{entity['coordinates']} -> [bold]{entity['status']}[/bold] "
        f"(generation {entity['generation']})"
    )


def audit(
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    adapter: Annotated[str | None, typer.Option(help="Only this adapter id (the target).")] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor (token:name@ns).")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action (adapter.ready).")] = None,
    since: Annotated[str | None, typer.Option("--from", help="From this time (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--to", help="Before this time (ISO 8601).")] = None,
    page: Annotated[int, typer.Option(min=1)] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=200)] = 50,
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """The access log, newest first: who did what to which entity, and the outcome."""
    filters = {
        "namespace": namespace,
        "adapter": adapter,
        "actor": actor,
        "action": action,
        "from": since,
        "to": until,
        "page": page,
        "page_size": page_size,
    }
    params = {k: v for k, v in filters.items() if v is not None}
    with api_client(url, token) as client:
        body = client.request("GET", "/v1/audit", params=params)
    if as_json:
        print_json(body)
        return
    table = Table("at", "actor", "action", "target", "namespace", "outcome")
    for row in body["data"]:
        table.add_row(
            row["at"],
            escape(row["actor"]),
            row["action"],
            escape(row["target"] or "-"),
            row["namespace"] or "-",
            row["outcome"],
        )
    out.print(table)
    p = body["pagination"]
    out.print(f"page {p['page']} of {p['total_pages']} ({p['total']} entries)")
