"""``lorafleet aliases set|show|list|history|delete`` and ``lorafleet adapters pin|unpin``:
aliases (``namespace/name@alias`` -> a weighted split of ready versions) and pins, through
the registry API. ``show`` puts each arm's figures from ``GET /v1/usage?group_by=alias``
beside the split. Mounted by ``store.cli``."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from events.models import NAME_PART, NAMESPACE_PART
from store.cli_adapters import Ref
from store.cli_api import AsJson, Token, Url, api_client, err, out, print_json
from store.client import ApiError, RegistryClient

__all__ = ["adapters_pin", "adapters_unpin", "aliases_app"]

aliases_app = typer.Typer(
    help="Aliases (namespace/name@alias): a movable name for a weighted split of versions.",
    no_args_is_help=True,
)
Adapter = Annotated[str, typer.Argument(help="The adapter: namespace/name.")]
AliasArg = Annotated[str, typer.Argument(help="The alias name, e.g. stable or canary.")]
ARM_FIGURES = ("requests", "prompt_tokens", "completion_tokens", "errors", "mean_latency_ms")


def _adapter(value: str) -> tuple[str, str]:
    match = re.fullmatch(f"({NAMESPACE_PART})/({NAME_PART})", value, re.ASCII)
    if match is None:
        err.print(f"[red]{escape(value)!s} is not namespace/name (e.g. acme/support-bot)[/red]")
        raise typer.Exit(2)
    return match[1], match[2]


def _targets(specs: list[str]) -> list[tuple[str, int]]:
    """``1.2.0=90`` -> ("1.2.0", 90); a bare version weighs 100."""
    targets = []
    for spec in specs:
        version, sep, weight = spec.partition("=")
        if sep and not weight.isdigit():
            err.print(f"[red]{escape(spec)}: the weight after '=' must be a whole number[/red]")
            raise typer.Exit(2)
        targets.append((version, int(weight) if sep else 100))
    return targets


def _split_table(alias: dict[str, Any]) -> Table:
    table = Table("version", "weight", "adapter_id")
    for t in alias["targets"]:
        table.add_row(t["version"], f"{t['weight']}%", t["adapter_id"])
    return table


def _heading(alias: dict[str, Any]) -> str:
    kind = "implicit, the highest ready version" if alias["implicit"] else "revision"
    pinned = ", pinned" if alias["pinned"] else ""
    return (
        f"{escape(alias['coordinates'])} ({kind} {alias['revision']}, generation "
        f"{alias['generation']}{pinned})"
    )


@aliases_app.command("set")
def aliases_set(
    adapter: Adapter,
    alias: AliasArg,
    targets: Annotated[
        list[str],
        typer.Argument(
            help="VERSION=WEIGHT for each arm (weights sum to 100); VERSION alone: 100."
        ),
    ],
    pin: Annotated[bool, typer.Option("--pin", help="Keep every target resident.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Create or move an alias to a weighted split of ready versions.

    `lorafleet aliases set acme/bot stable 1.2.0=90 1.3.0=10`: every engine switches at the
    alias's new fleet generation."""
    namespace, name = _adapter(adapter)
    with api_client(url, token) as client:
        body = client.set_alias(
            namespace, name, alias, _targets(targets), pinned=pin, reason=reason
        )
    out.print(_heading(body))
    out.print(_split_table(body))


def _arm_figures(client: RegistryClient, coordinates: str, since: str | None, until: str | None):
    """Usage rows of the alias's arms by served coordinates, or the reason there are none."""
    params = {"group_by": "alias", "alias": coordinates, "from": since, "to": until}
    try:
        body = client.request(
            "GET", "/v1/usage", params={k: v for k, v in params.items() if v is not None}
        )
    except ApiError as exc:
        return None, f"{exc.status} {exc.code}: {exc.message}"
    return {row["adapter"]: row for row in body["data"]}, None


@aliases_app.command("show")
def aliases_show(
    adapter: Adapter,
    alias: AliasArg,
    since: Annotated[str | None, typer.Option("--from", help="Figures from (ISO 8601).")] = None,
    until: Annotated[str | None, typer.Option("--to", help="Figures before (ISO 8601).")] = None,
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """An alias's split with each arm's metered figures side by side.

    Requests, tokens, errors and mean latency per arm from `GET /v1/usage?group_by=alias`;
    an arm no longer in the split that still has figures in the window is `former`."""
    namespace, name = _adapter(adapter)
    with api_client(url, token) as client:
        body = client.get_alias(namespace, name, alias)
        figures, problem = _arm_figures(client, body["coordinates"], since, until)
    if as_json:
        print_json({**body, "arms": figures, "figures_unavailable": problem})
        return
    out.print(_heading(body))
    table = Table("version", "weight", *ARM_FIGURES)
    served = {f"{namespace}/{name}@{t['version']}": t for t in body["targets"]}
    for coordinates, t in served.items():
        row = (figures or {}).get(coordinates, {})
        table.add_row(
            t["version"],
            f"{t['weight']}%",
            *(str(row.get(k, "-" if figures is None else 0)) for k in ARM_FIGURES),
        )
    for coordinates, row in (figures or {}).items():
        if coordinates not in served:
            version = coordinates.rpartition("@")[2]
            table.add_row(version, "former", *(str(row.get(k, 0)) for k in ARM_FIGURES))
    out.print(table)
    if problem is not None:
        out.print(f"per-arm figures unavailable: {escape(problem)}")


@aliases_app.command("list")
def aliases_list(
    adapter: Adapter, as_json: AsJson = False, url: Url = None, token: Token = None
) -> None:
    """Every alias of an adapter and its split, then the implicit `latest`."""
    namespace, name = _adapter(adapter)
    with api_client(url, token) as client:
        body = client.list_aliases(namespace, name)
    if as_json:
        print_json(body)
        return
    table = Table("alias", "targets", "revision", "generation", "pinned")
    for a in body["data"]:
        split = ", ".join(f"{t['version']}={t['weight']}" for t in a["targets"])
        revision = "implicit" if a["implicit"] else str(a["revision"])
        table.add_row(a["alias"], split, revision, str(a["generation"]), str(a["pinned"]).lower())
    out.print(table)


@aliases_app.command("history")
def aliases_history(
    adapter: Adapter, alias: AliasArg, as_json: AsJson = False, url: Url = None, token: Token = None
) -> None:
    """Every revision of an alias, also once it is deleted.

    What it pointed at, who changed it, why, at which generation."""
    namespace, name = _adapter(adapter)
    with api_client(url, token) as client:
        body = client.alias_history(namespace, name, alias)
    if as_json:
        print_json(body)
        return
    table = Table("revision", "action", "targets", "actor", "reason", "generation", "at")
    for r in body["data"]:
        split = ", ".join(f"{t['version']}={t['weight']}" for t in r["targets"] or []) or "-"
        table.add_row(
            str(r["revision"]),
            r["action"],
            split,
            escape(r["actor"]),
            escape(r["reason"] or ""),
            str(r["generation"]),
            r["at"],
        )
    out.print(table)


@aliases_app.command("delete")
def aliases_delete(adapter: Adapter, alias: AliasArg, url: Url = None, token: Token = None) -> None:
    """Delete an alias; its history stays readable."""
    namespace, name = _adapter(adapter)
    with api_client(url, token) as client:
        client.delete_alias(namespace, name, alias)
    out.print(f"{escape(namespace)}/{escape(name)}@{escape(alias)} deleted")


def _pin(ref: str, pinned: bool, url: str | None, token: str | None) -> None:
    with api_client(url, token) as client:
        entity = client.set_pinned(client.resolve(ref)["id"], pinned)
    out.print(f"{entity['coordinates']} {'pinned' if entity['pinned'] else 'unpinned'}")


def adapters_pin(ref: Ref, url: Url = None, token: Token = None) -> None:
    """Pin a version: engines preload it and never LRU-evict it."""
    _pin(ref, True, url, token)


def adapters_unpin(ref: Ref, url: Url = None, token: Token = None) -> None:
    """Unpin a version: engines may evict it again when slots are short."""
    _pin(ref, False, url, token)
