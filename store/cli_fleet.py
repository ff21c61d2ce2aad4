"""``lorafleet fleet status``: the live engines, their generation lag and residency."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from store.cli_api import AsJson, Token, Url, api_client, out, print_json

fleet_app = typer.Typer(help="The serving fleet: live engines.", no_args_is_help=True)


@fleet_app.command("status")
def fleet_status(
    adapter: Annotated[
        str | None, typer.Option(help="ns/name@version: only the engines that can serve it now.")
    ] = None,
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Every live engine (heartbeat within its TTL): base model, generation and lag behind
    the registry, adapters served, and those held in GPU slots and the CPU cache."""
    params = {"adapter": adapter} if adapter else None
    with api_client(url, token) as client:
        body = client.request("GET", "/v1/fleet/engines", params=params)
    if as_json:
        print_json(body)
        return
    table = Table("engine", "base model", "ready", "generation", "lag", "servable", "gpu", "cpu")
    for e in body["data"]:
        table.add_row(
            escape(e["engine_id"]),
            escape(e["base_model"]),
            "yes" if e["ready"] else "no",
            str(e["generation"] if e["generation"] is not None else "-"),
            str(e["lag"] if e["lag"] is not None else "-"),
            str(e["servable"]),
            escape(", ".join(e["gpu"]) or "-"),
            escape(", ".join(e["cpu"]) or "-"),
        )
    out.print(f"registry generation {body['generation']}; {len(body['data'])} live engine(s)")
    out.print(table)
