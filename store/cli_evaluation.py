"""``lorafleet eval-sets`` and ``lorafleet eval-policy``: a namespace's evaluation sets and
its evaluation gate, through the registry API (rules in ``store.eval_sets`` and
``store.evaluation``). A version's scores are in ``lorafleet adapters show``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from store.cli_api import AsJson, Token, Url, api_client, out, print_json
from store.client import ApiError, RegistryClient

eval_sets_app = typer.Typer(
    help="Evaluation sets of a namespace (JSONL prompt/completion or chat rows).",
    no_args_is_help=True,
)
eval_policy_app = typer.Typer(
    help="The evaluation gate of a namespace: new versions are scored before they are ready.",
    no_args_is_help=True,
)
Namespace = Annotated[str, typer.Argument(help="The namespace.")]
SetName = Annotated[str, typer.Argument(help="Eval set name (a-z 0-9 - _ .).")]


def _sets(namespace: str) -> str:
    return f"/v1/namespaces/{quote(namespace)}/eval-sets"


def _policy(namespace: str) -> str:
    return f"/v1/namespaces/{quote(namespace)}/eval-policy"


@eval_sets_app.command("add")
def eval_sets_add(
    namespace: Namespace,
    name: SetName,
    file: Annotated[Path, typer.Argument(help="JSONL file.", exists=True, dir_okay=False)],
    description: Annotated[str | None, typer.Option(help="What the set measures.")] = None,
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Add an evaluation set (writer): each line {"prompt", "completion"} or {"messages"}."""
    body = {"name": name, "content": file.read_text(), "description": description}
    with api_client(url, token) as client:
        created = client.request("POST", _sets(namespace), json=body)
    if as_json:
        print_json(created)
        return
    out.print(
        f"added eval set [bold]{namespace}/{created['name']}[/bold]: {created['rows']} "
        f"{created['kind']} rows, sha256 {created['sha256'][:12]}"
    )


@eval_sets_app.command("list")
def eval_sets_list(
    namespace: Namespace, as_json: AsJson = False, url: Url = None, token: Token = None
) -> None:
    """The namespace's evaluation sets."""
    with api_client(url, token) as client:
        body = client.request("GET", _sets(namespace))
    if as_json:
        print_json(body)
        return
    table = Table("name", "kind", "rows", "bytes", "sha256", "created")
    for s in body["data"]:
        table.add_row(
            escape(s["name"]), s["kind"], str(s["rows"]), str(s["size"]), s["sha256"][:12],
            s["created_at"],
        )  # fmt: skip
    out.print(table)


@eval_sets_app.command("show")
def eval_sets_show(
    namespace: Namespace, name: SetName, url: Url = None, token: Token = None
) -> None:
    """One evaluation set with its first rows (JSON)."""
    with api_client(url, token) as client:
        print_json(client.request("GET", f"{_sets(namespace)}/{quote(name)}"))


@eval_sets_app.command("delete")
def eval_sets_delete(
    namespace: Namespace, name: SetName, url: Url = None, token: Token = None
) -> None:
    """Delete an evaluation set (refused while the policy names it)."""
    with api_client(url, token) as client:
        client.request("DELETE", f"{_sets(namespace)}/{quote(name)}")
    out.print(f"deleted eval set {namespace}/{name}")


@eval_policy_app.command("set")
def eval_policy_set(
    namespace: Namespace,
    eval_set: Annotated[str, typer.Option("--eval-set", help="The eval set to score on.")],
    metric: Annotated[
        list[str], typer.Option("--metric", help="loss or exact_match; repeat for both.")
    ],
    max_loss_ratio: Annotated[
        float | None, typer.Option(help="Candidate loss at most this x the base model's.")
    ] = None,
    min_exact_match: Annotated[
        float | None, typer.Option(help="At least this share of rows answered exactly.")
    ] = None,
    max_regression: Annotated[
        float | None, typer.Option(help="No worse than the comparison version by this fraction.")
    ] = None,
    compare_to: Annotated[
        str, typer.Option(help="'latest' (highest ready version) or '@alias'.")
    ] = "latest",
    url: Url = None,
    token: Token = None,
) -> None:
    """Set the namespace's evaluation gate (admin)."""
    gate = {
        "max_loss_ratio": max_loss_ratio,
        "min_exact_match": min_exact_match,
        "max_regression": max_regression,
        "compare_to": compare_to,
    }
    body = {"eval_set": eval_set, "metrics": metric, "gate": gate}
    with api_client(url, token) as client:
        print_json(client.request("PUT", _policy(namespace), json=body))


@eval_policy_app.command("show")
def eval_policy_show(namespace: Namespace, url: Url = None, token: Token = None) -> None:
    """The namespace's evaluation gate (JSON)."""
    with api_client(url, token) as client:
        print_json(client.request("GET", _policy(namespace)))


@eval_policy_app.command("delete")
def eval_policy_delete(namespace: Namespace, url: Url = None, token: Token = None) -> None:
    """Remove the evaluation gate: versions are approved as before."""
    with api_client(url, token) as client:
        client.request("DELETE", _policy(namespace))
    out.print(f"removed the evaluation policy of {namespace}")


def evaluation_of(client: RegistryClient, adapter_id: str) -> dict[str, Any] | None:
    """A version's evaluation, None when it was not evaluated."""
    try:
        return client.request("GET", f"/v1/adapters/{quote(adapter_id)}/evaluation")
    except ApiError as exc:
        if exc.status == 404 and exc.code == "not_evaluated":
            return None
        raise
