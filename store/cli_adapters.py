"""``lorafleet adapters``: upload, list, show, approve, reject, archive and pull adapter
versions through a running registry API (``RegistryClient``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from store.cli_api import (
    DEFAULT_URL,
    AsJson,
    Token,
    Url,
    api_client,
    err,
    out,
    print_json,
    transfer_progress,
)
from store.client import adapter_files

adapters_app = typer.Typer(
    help="Upload, list, approve, archive and pull adapter versions.", no_args_is_help=True
)
Ref = Annotated[str, typer.Argument(help="Adapter id (ad_...) or namespace/name@version.")]


def _adapter_table(rows: list[dict]) -> Table:
    table = Table("id", "coordinates", "base_model", "status", "rank", "bytes", "created_at")
    for a in rows:
        table.add_row(
            a["id"],
            a["coordinates"],
            a["base_model"],
            a["status"],
            str(a.get("rank") or "-"),
            str(a.get("total_bytes") or 0),
            str(a["created_at"]),
        )
    return table


@adapters_app.command("upload")
def adapters_upload(
    directory: Annotated[Path, typer.Argument(help="Adapter directory.", file_okay=False)],
    namespace: Annotated[str, typer.Option(help="Target namespace.")],
    name: Annotated[str, typer.Option(help="Adapter name.")],
    version: Annotated[str, typer.Option(help="Semantic version, e.g. 1.0.0.")],
    base_model: Annotated[str, typer.Option(help="Registered base model name.")],
    provenance: Annotated[
        str | None,
        typer.Option(help="JSON (or @file) with job_id, dataset, hyperparameters, metrics."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Upload an adapter directory (HF PEFT, NeMo or TensorRT-LLM) as a new version."""
    prov = None
    if provenance:
        raw = Path(provenance[1:]).read_text() if provenance.startswith("@") else provenance
        try:
            prov = json.loads(raw)
        except json.JSONDecodeError as exc:
            err.print(f"[red]error[/red] --provenance is not JSON: {exc}")
            raise typer.Exit(1) from None
    with api_client(url, token) as client:
        total = sum(p.stat().st_size for _, p in adapter_files(directory))
        with transfer_progress() as bar:
            task = bar.add_task(f"upload {namespace}/{name}@{version}", total=total)
            entity = client.upload_adapter(
                directory,
                namespace=namespace,
                name=name,
                version=version,
                base_model=base_model,
                provenance=prov,
                description=description,
                progress=lambda n: bar.advance(task, n),
            )
    if as_json:
        return print_json(entity)
    out.print(f"{entity['coordinates']} [bold]{entity['status']}[/bold] id={entity['id']}")


@adapters_app.command("list")
def adapters_list(
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Only this base model.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    search: Annotated[str | None, typer.Option(help="Name contains.")] = None,
    sort: Annotated[
        str, typer.Option(help="created_at, -created_at, name, -name.")
    ] = "-created_at",
    page: Annotated[int, typer.Option(help="Page number (from 1).")] = 1,
    page_size: Annotated[int, typer.Option(help="Rows per page.")] = 50,
    url: Url = DEFAULT_URL,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List adapter versions visible to this token."""
    with api_client(url, token) as client:
        data = client.list_adapters(
            namespace=namespace,
            base_model=base_model,
            status=status,
            search=search,
            sort=sort,
            page=page,
            page_size=page_size,
        )
    if as_json:
        return print_json(data)
    out.print(_adapter_table(data["data"]))
    p = data["pagination"]
    out.print(f"page {p['page']}/{max(p['total_pages'], 1)}, {p['total']} total")


@adapters_app.command("show")
def adapters_show(ref: Ref, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Show one adapter version (JSON) with its files and provenance."""
    with api_client(url, token) as client:
        print_json(client.resolve(ref))


def _set_status(ref: str, status: str, reason: str | None, url: str, token: str | None) -> None:
    with api_client(url, token) as client:
        entity = client.set_status(client.resolve(ref)["id"], status, reason)
    out.print(f"{entity['coordinates']} -> [bold]{entity['status']}[/bold]")


@adapters_app.command("approve")
def adapters_approve(
    ref: Ref,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Approve a pending version: it becomes ready and engines load it."""
    _set_status(ref, "ready", reason, url, token)


@adapters_app.command("reject")
def adapters_reject(
    ref: Ref,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Reject a pending version."""
    _set_status(ref, "rejected", reason, url, token)


@adapters_app.command("archive")
def adapters_archive(
    ref: Ref,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Archive a ready version: engines evict it."""
    _set_status(ref, "archived", reason, url, token)


@adapters_app.command("pull")
def adapters_pull(
    ref: Ref,
    directory: Annotated[
        Path, typer.Argument(help="Where to write the files (absent or an empty directory).")
    ],
    original: Annotated[
        bool, typer.Option("--original", help="The uploaded files instead of canonical HF PEFT.")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Download an adapter version's files, each verified against its sha256.

    The directory appears complete or not at all (files are staged beside it, then renamed
    into place); files are 0644, directories 0755."""
    role = "original" if original else "canonical"
    with api_client(url, token) as client:
        entity = client.resolve(ref)
        total = sum(f["size"] for f in entity["files"] if f["role"] == role)
        with transfer_progress() as bar:
            task = bar.add_task(f"pull {entity['coordinates']}", total=total)
            client.download_adapter(
                entity["id"],
                directory,
                canonical=not original,
                progress=lambda n: bar.advance(task, n),
            )
    out.print(f"{entity['coordinates']} -> {directory}")
