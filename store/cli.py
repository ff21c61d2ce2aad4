"""The registry's commands: ``lorafleet db``, ``api``, ``namespaces``, ``base-models``,
``tokens`` and ``adapters``. Everything except ``db`` and ``api`` talks to a running API
through ``RegistryClient`` (``--url``/``LORAFLEET_API_URL``, ``--token``/``LORAFLEET_TOKEN``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from store.client import ApiError, RegistryClient, adapter_files

app = typer.Typer(help="Adapter registry commands.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
ns_app = typer.Typer(help="Namespaces (tenants): approval policy and quotas.", no_args_is_help=True)
bm_app = typer.Typer(help="Base models adapters are trained against.", no_args_is_help=True)
tokens_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
adapters_app = typer.Typer(
    help="Upload, list, approve, archive and pull adapter versions.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(ns_app, name="namespaces")
app.add_typer(bm_app, name="base-models")
app.add_typer(tokens_app, name="tokens")
app.add_typer(adapters_app, name="adapters")

out = Console()
err = Console(stderr=True)

Url = Annotated[
    str,
    typer.Option(
        "--url", envvar="LORAFLEET_API_URL", help="Registry API base URL.", show_default=True
    ),
]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="LORAFLEET_TOKEN", help="Bearer token.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print raw JSON instead of a table.")]
Ref = Annotated[str, typer.Argument(help="Adapter id (ad_...) or namespace/name@version.")]
DEFAULT_URL = "http://127.0.0.1:8080"


@contextmanager
def _client(url: str, token: str | None) -> Iterator[RegistryClient]:
    """A client whose API errors end the command with a one-line message and exit code 1."""
    try:
        with RegistryClient(url, token, timeout=60.0) as client:
            yield client
    except ApiError as exc:
        err.print(f"[red]error[/red] {exc.status or ''} {exc.code}: {exc.message}")
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _transfer_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


# --- db and api --------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(
    database_url: Annotated[
        str | None,
        typer.Option(envvar="LORAFLEET_DATABASE_URL", help="Default: SQLite under home."),
    ] = None,
) -> None:
    """Apply the schema migrations (idempotent). Run before starting the API or workers."""
    from store.db import upgrade
    from store.settings import StoreSettings

    settings = StoreSettings(database_url=database_url) if database_url else StoreSettings()
    revision = upgrade(settings.resolved_database_url())
    out.print(f"database at revision [bold]{revision}[/bold]")


@app.command("api")
def api(
    host: Annotated[str | None, typer.Option(help="Bind address (LORAFLEET_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (LORAFLEET_API_PORT).")] = None,
    upgrade_db: Annotated[
        bool, typer.Option("--upgrade-db", help="Migrate the database first.")
    ] = False,
) -> None:
    """Serve the registry's REST API (uvicorn). Refuses an unmigrated database.

    Without LORAFLEET_ADMIN_TOKEN an admin token is generated, saved to <home>/admin-token
    (mode 0600) and printed here.
    """
    import uvicorn

    from store.api import create_app
    from store.auth import ensure_admin_token
    from store.db import upgrade
    from store.errors import LorafleetError
    from store.settings import StoreSettings

    settings = StoreSettings()
    if upgrade_db:
        upgrade(settings.resolved_database_url())
    token, generated = ensure_admin_token(settings)
    settings = settings.model_copy(update={"admin_token": token})
    if not StoreSettings().admin_token:
        where = Path(settings.home) / "admin-token"
        state = "generated" if generated else "read from"
        err.print(f"admin token ({state} {where}): {token}", soft_wrap=True, highlight=False)
    try:
        application = create_app(settings)
    except LorafleetError as exc:
        err.print(f"[red]error[/red] {exc.code}: {exc.message}")
        raise typer.Exit(2) from None
    uvicorn.run(
        application,
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_config=None,
    )


# --- namespaces, base models, tokens ---------------------------------------------------------


@ns_app.command("create")
def namespaces_create(
    name: Annotated[str, typer.Argument(help="Namespace name, e.g. acme.")],
    policy: Annotated[str, typer.Option(help="Approval policy: auto or manual.")] = "auto",
    max_bytes: Annotated[int | None, typer.Option(help="Quota: bytes stored.")] = None,
    max_versions: Annotated[int | None, typer.Option(help="Quota: adapter versions.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create a namespace (global admin)."""
    with _client(url, token) as client:
        ns = client.create_namespace(
            name,
            approval_policy=policy,
            max_bytes=max_bytes,
            max_versions=max_versions,
            description=description,
        )
    out.print(f"created namespace [bold]{ns['name']}[/bold] (policy {ns['approval_policy']})")


@ns_app.command("list")
def namespaces_list(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """List the namespaces this token can see."""
    with _client(url, token) as client:
        data = client.list_namespaces()
    if as_json:
        return _print_json(data)
    table = Table("name", "policy", "max_bytes", "max_versions", "created_at")
    for ns in data["data"]:
        table.add_row(
            ns["name"],
            ns["approval_policy"],
            str(ns.get("max_bytes") or "-"),
            str(ns.get("max_versions") or "-"),
            str(ns["created_at"]),
        )
    out.print(table)


@bm_app.command("add")
def base_models_add(
    config: Annotated[Path, typer.Argument(help="The model's HF config.json.", exists=True)],
    name: Annotated[str, typer.Option(help="Name adapters refer to, e.g. llama-3-8b.")],
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Register a base model from its HF config.json (global admin)."""
    try:
        body = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        err.print(f"[red]error[/red] cannot read {config}: {exc}")
        raise typer.Exit(1) from None
    with _client(url, token) as client:
        model = client.register_base_model(name, body)
    out.print(f"registered base model [bold]{model['name']}[/bold]")


@bm_app.command("list")
def base_models_list(url: Url = DEFAULT_URL, token: Token = None, as_json: AsJson = False) -> None:
    """List registered base models."""
    with _client(url, token) as client:
        data = client.list_base_models()
    if as_json:
        return _print_json(data)
    table = Table("name", "architecture", "layers", "hidden", "heads/kv")
    for m in data["data"]:
        heads = f"{m['num_heads']}/{m['num_kv_heads']}"
        table.add_row(
            m["name"], m["architecture"], str(m["num_layers"]), str(m["hidden_size"]), heads
        )
    out.print(table)


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="reader, writer or admin.")],
    name: Annotated[str, typer.Option(help="Who or what uses the token.")],
    namespace: Annotated[
        str | None, typer.Option(help="Scope; omit for a global token (global admin only).")
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Mint a bearer token and print it (it is shown only once)."""
    with _client(url, token) as client:
        plaintext = client.create_token(role, namespace, name)
    out.print(plaintext, highlight=False)


# --- adapters ----------------------------------------------------------------------------


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
    with _client(url, token) as client:
        total = sum(p.stat().st_size for _, p in adapter_files(directory))
        with _transfer_progress() as bar:
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
        return _print_json(entity)
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
    with _client(url, token) as client:
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
        return _print_json(data)
    out.print(_adapter_table(data["data"]))
    p = data["pagination"]
    out.print(f"page {p['page']}/{max(p['total_pages'], 1)}, {p['total']} total")


@adapters_app.command("show")
def adapters_show(ref: Ref, url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Show one adapter version (JSON) with its files and provenance."""
    with _client(url, token) as client:
        _print_json(client.resolve(ref))


def _set_status(ref: str, status: str, reason: str | None, url: str, token: str | None) -> None:
    with _client(url, token) as client:
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
    directory: Annotated[Path, typer.Argument(help="Where to write the files.")],
    original: Annotated[
        bool, typer.Option("--original", help="The uploaded files instead of canonical HF PEFT.")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Download an adapter version's files, each verified against its sha256."""
    role = "original" if original else "canonical"
    with _client(url, token) as client:
        entity = client.resolve(ref)
        total = sum(f["size"] for f in entity["files"] if f["role"] == role)
        with _transfer_progress() as bar:
            task = bar.add_task(f"pull {entity['coordinates']}", total=total)
            client.download_adapter(
                entity["id"],
                directory,
                canonical=not original,
                progress=lambda n: bar.advance(task, n),
            )
    out.print(f"{entity['coordinates']} -> {directory}")
