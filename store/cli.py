"""The registry's commands: ``lorafleet db``, ``api``, ``namespaces``, ``base-models``,
``tokens``, ``adapters``, ``aliases``, ``eval-sets``, ``eval-policy`` and ``pull``, and
``events_status`` (mounted by
``lorafleet.cli`` as ``lorafleet events status``, since ``events`` imports nothing of ours).
Everything except ``db`` and ``api`` talks to a running API through ``RegistryClient``
(``--url``/``LORAFLEET_API_URL``, ``--token``/``LORAFLEET_TOKEN``).
The ``adapters`` group lives in ``store.cli_adapters``, ``aliases`` (and ``adapters
pin|unpin``) in ``store.cli_aliases``; the shared options and client plumbing in
``store.cli_api``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from store.cli_adapters import adapters_app, fleet_pull
from store.cli_aliases import adapters_pin, adapters_unpin, aliases_app
from store.cli_api import AsJson, Token, Url, api_client, err, out, print_json
from store.cli_evaluation import eval_policy_app, eval_sets_app
from store.cli_fleet import fleet_app
from store.cli_governance import adapters_history, adapters_restore, audit
from store.cli_usage import usage
from store.cli_webhooks import webhooks_app
from store.client import ApiError, RegistryClient

app = typer.Typer(help="Adapter registry commands.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
ns_app = typer.Typer(help="Namespaces (tenants): approval policy and quotas.", no_args_is_help=True)
bm_app = typer.Typer(help="Base models adapters are trained against.", no_args_is_help=True)
tokens_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(ns_app, name="namespaces")
app.add_typer(bm_app, name="base-models")
app.add_typer(tokens_app, name="tokens")
app.add_typer(adapters_app, name="adapters")
app.command("pull")(fleet_pull)
adapters_app.command("history")(adapters_history)
adapters_app.command("restore")(adapters_restore)
adapters_app.command("pin")(adapters_pin)
adapters_app.command("unpin")(adapters_unpin)
app.add_typer(aliases_app, name="aliases")
app.command("audit")(audit)
app.command("usage")(usage)
app.add_typer(fleet_app, name="fleet")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(eval_sets_app, name="eval-sets")
app.add_typer(eval_policy_app, name="eval-policy")


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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes (LORAFLEET_API_WORKERS, default 1): one process uses one "
            "core; each holds its own database pool.",
        ),
    ] = None,
    upgrade_db: Annotated[
        bool, typer.Option("--upgrade-db", help="Migrate the database first.")
    ] = False,
) -> None:
    """Serve the registry's REST API (uvicorn). Refuses an unmigrated database.

    Without LORAFLEET_ADMIN_TOKEN an admin token is generated, saved to <home>/admin-token
    (mode 0600) and printed here.
    """
    import logging
    import os

    import uvicorn
    from pydantic import ValidationError

    from store.multiprocess_metrics import MULTIPROC_ENV, enable_multiprocess
    from store.settings import StoreSettings, settings_error

    try:
        settings = StoreSettings()
    except ValidationError as exc:  # e.g. LORAFLEET_API_WORKERS=0
        err.print(f"error: invalid setting: {settings_error(exc)}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    workers = workers or settings.api_workers
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Before prometheus_client is imported (by store.api): the workers count into one
        # directory that /metrics sums (store.metrics); removed when this process exits.
        enable_multiprocess()

    from store.api import create_app
    from store.auth import ADMIN_TOKEN_FILE, ensure_admin_token
    from store.db import upgrade
    from store.errors import LorafleetError
    from store.heap import freeze_startup_heap

    if upgrade_db:
        upgrade(settings.resolved_database_url())
    token, generated = ensure_admin_token(settings)
    settings = settings.model_copy(update={"admin_token": token})
    if not StoreSettings().admin_token:
        where = Path(settings.home) / ADMIN_TOKEN_FILE
        state = "generated" if generated else "read from"
        # stdout, like `tokens create`: stderr is for log lines (JSON ones under
        # LORAFLEET_LOG_FORMAT=json), and a secret does not belong in shipped logs.
        out.print(f"admin token ({state} {where}): {token}", soft_wrap=True, highlight=False)
    try:
        # Built here even with workers: a database that is not migrated (or not reachable)
        # exits 2 now, not once per worker process in a restart loop.
        application = create_app(settings)
    except LorafleetError as exc:
        err.print(f"[red]error[/red] {exc.code}: {escape(exc.message)}", highlight=False)
        raise typer.Exit(2) from None
    host, port = host or settings.api_host, port or settings.api_port
    if workers == 1:
        freeze_startup_heap("api")
        uvicorn.run(application, host=host, port=port, log_config=None)
        return
    application.state.lorafleet.engine.dispose()
    # Each worker process builds its own app from the environment, with the token and the
    # log level this process resolved.
    os.environ["LORAFLEET_ADMIN_TOKEN"] = token
    os.environ["LORAFLEET_LOG_LEVEL"] = logging.getLevelName(logging.getLogger().level)
    uvicorn.run(
        "lorafleet.api_workers:app_from_environment",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_config=None,
    )


# --- namespaces, base models, tokens ---------------------------------------------------------


@ns_app.command("create")
def namespaces_create(
    name: Annotated[str, typer.Argument(help="Namespace name, e.g. acme.")],
    policy: Annotated[
        str,
        typer.Option(
            help="Approval policy: manual (uploads wait for `lorafleet adapters approve`) or "
            "auto (validated uploads are served at once).",
        ),
    ] = "manual",
    max_bytes: Annotated[int | None, typer.Option(help="Quota: bytes stored.")] = None,
    max_versions: Annotated[int | None, typer.Option(help="Quota: adapter versions.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    four_eyes: Annotated[
        bool,
        typer.Option(
            "--require-distinct-approver",
            help="Four-eyes: an uploader may not approve their own version (manual policy).",
        ),
    ] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Create a namespace (global admin). Without --policy it is manual: nothing uploaded
    to it is served until someone approves it."""
    with api_client(url, token) as client:
        ns = client.create_namespace(
            name,
            approval_policy=policy,
            max_bytes=max_bytes,
            max_versions=max_versions,
            description=description,
            require_distinct_approver=four_eyes,
        )
    out.print(f"created namespace [bold]{ns['name']}[/bold] (policy {ns['approval_policy']})")


@ns_app.command("list")
def namespaces_list(url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """List the namespaces this token can see."""
    with api_client(url, token) as client:
        data = client.list_namespaces()
    if as_json:
        return print_json(data)
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
    config: Annotated[
        Path,
        typer.Argument(
            help="The model's HF config.json, or its directory (./tiny reads ./tiny/config.json).",
            exists=True,
        ),
    ],
    name: Annotated[str, typer.Option(help="Name adapters refer to, e.g. llama-3-8b.")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Register a base model (Llama family) from its HF config.json (global admin)."""
    if config.is_dir():
        config = config / "config.json"
    try:
        body = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        err.print(f"[red]error[/red] cannot read {escape(str(config))}: {escape(str(exc))}")
        raise typer.Exit(1) from None
    with api_client(url, token) as client:
        model = client.register_base_model(name, body)
    out.print(f"registered base model [bold]{model['name']}[/bold]")


@bm_app.command("list")
def base_models_list(url: Url = None, token: Token = None, as_json: AsJson = False) -> None:
    """List registered base models."""
    with api_client(url, token) as client:
        data = client.list_base_models()
    if as_json:
        return print_json(data)
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
    expires_at: Annotated[
        str | None,
        typer.Option(help="When it stops working, RFC 3339 with a timezone; omit: never."),
    ] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Mint a bearer token and print it (it is shown only once)."""
    with api_client(url, token) as client:
        plaintext = client.create_token(role, namespace, name, expires_at=expires_at)
    out.print(plaintext, highlight=False)


@tokens_app.command("list")
def tokens_list(
    namespace: Annotated[
        str | None, typer.Option(help="Whose tokens; omit: yours, or all for a global admin.")
    ] = None,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """List tokens (never their secrets), revoked and expired ones with their dates."""
    with api_client(url, token) as client:
        data = client.list_tokens(namespace)
    if as_json:
        return print_json(data)
    table = Table("id", "name", "role", "namespace", "created_at", "expires_at", "revoked_at")
    for t in data["data"]:
        table.add_row(
            str(t["id"]),
            escape(t["name"]),
            t["role"],
            t["namespace"] or "*",
            str(t["created_at"]),
            str(t["expires_at"] or "-"),
            str(t["revoked_at"] or "-"),
        )
    out.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (from `tokens list`).")],
    url: Url = None,
    token: Token = None,
) -> None:
    """Revoke a token: 401 at the registry at once, and at engines once they hear of it."""
    with api_client(url, token) as client:
        revoked = client.revoke_token(token_id)
    out.print(
        f"revoked token {revoked['id']} ({escape(revoked['name'])}) at {revoked['revoked_at']}"
    )


# --- ingest status (mounted as ``lorafleet events status`` by lorafleet.cli) ---------------

# Exit codes of ``events status``: the newest record's outcome, so scripts can branch on it.
STATUS_EXIT = {"done": 0, "failed": 3, "received": 4, "enqueued": 4}


def _ingest_records(client: RegistryClient, ref: str) -> list[dict]:
    """The ingest record with event id ``ref``, else those of job ``ref`` (newest first)."""
    try:
        return [client.request("GET", f"/v1/ingest/{quote(ref, safe='')}")]
    except ApiError as exc:
        if exc.status != 404:
            raise
    return client.request("GET", "/v1/ingest", params={"job_id": ref})["data"]


def _print_record(record: dict) -> None:
    line = (
        f"{record['status']:<8} event {record['event_id']}  job {record.get('job_id') or '-'}  "
        f"{record.get('output_model') or '-'}"
    )
    if record.get("adapter_id"):
        line += f"  adapter {record['adapter_id']}"
    out.print(line, markup=False, highlight=False)
    if record.get("error"):
        error = record["error"]
        out.print(f"  error {error['code']}: {error['message']}", markup=False, highlight=False)


def events_status(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="EVENT_ID|JOB_ID", help="An event id, or a job id (all its announcements)."
        ),
    ],
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """What became of an announced job: done, failed (with its error code) or in flight.

    Exit code (of the newest announcement): 0 done, 3 failed, 4 still in flight; 1 when no
    such event or job is visible to this token.
    """
    with api_client(url, token) as client:
        records = _ingest_records(client, ref)
    if not records:
        missing = escape(f"no ingest event or job {ref!r} visible to this token")
        err.print(f"[red]error[/red] 404 not_found: {missing}", highlight=False)
        raise typer.Exit(1)
    if as_json:
        print_json(records[0] if len(records) == 1 else records)
    else:
        for record in records:
            _print_record(record)
    raise typer.Exit(STATUS_EXIT.get(records[0]["status"], 1))
