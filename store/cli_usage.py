"""``lorafleet usage``: metered engine usage as a table or JSON (``GET /v1/usage``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from store.cli_api import AsJson, Token, Url, api_client, out, print_json

__all__ = ["usage"]


def usage(
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    adapter: Annotated[
        str | None, typer.Option(help="Only this adapter: ns/name or ns/name@version.")
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="Only requests that named this alias: ns/name@alias.")
    ] = None,
    since: Annotated[str | None, typer.Option("--from", help="From this hour (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--to", help="Before this hour (ISO 8601).")] = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="version, adapter, token, hour or alias (per arm).")
    ] = "version",
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Requests and tokens the engines served, per adapter version (or adapter, token, hour,
    or alias arm: the alias named and the version served, with its mean latency)."""
    filters = {
        "namespace": namespace,
        "adapter": adapter,
        "alias": alias,
        "from": since,
        "to": until,
        "group_by": group_by,
    }
    params = {k: v for k, v in filters.items() if v is not None}
    with api_client(url, token) as client:
        body = client.request("GET", "/v1/usage", params=params)
    if as_json:
        print_json(body)
        return
    keys = {
        "version": ("namespace", "adapter"),
        "adapter": ("namespace", "adapter"),
        "token": ("token_id",),
        "hour": ("hour",),
        "alias": ("namespace", "alias", "adapter"),
    }[body["group_by"]]
    counters = ("requests", "prompt_tokens", "completion_tokens", "errors", "cancelled")
    if body["group_by"] == "alias":
        counters = (*counters, "mean_latency_ms")
    table = Table(*keys, *counters)
    for row in body["data"]:
        labels = [escape(str(row.get(k) if row.get(k) is not None else "-")) for k in keys]
        table.add_row(*labels, *(str(row[c]) for c in counters))
    out.print(table)
