"""``lorafleet adapters``: upload, list, show, approve, reject, archive and pull adapter
versions through a running registry API (``RegistryClient``); and ``lorafleet pull``
(``fleet_pull``, mounted at the top level by ``store.cli``), which keeps a stock NIM's
adapter directory in step with the registry."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path, PurePosixPath
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from events.models import parse_coordinates
from store.cli_api import (
    AsJson,
    Token,
    Url,
    api_client,
    err,
    out,
    print_json,
    resolve_api,
    transfer_progress,
)
from store.client import upload_files
from store.client_download import download_adapter

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
    name: Annotated[
        str, typer.Option(help="Adapter name: lowercase letters, digits, '-', '_', '.'.")
    ],
    version: Annotated[str, typer.Option(help="Semantic version, e.g. 1.0.0.")],
    base_model: Annotated[str, typer.Option(help="Registered base model name.")],
    provenance: Annotated[
        str | None,
        typer.Option(help="JSON (or @file) with job_id, dataset, hyperparameters, metrics."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            help="Send files matching this glob even when they are trainer state or match "
            "--exclude (repeatable; a glob without '/' matches file names).",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Leave out files matching this glob (repeatable)."),
    ] = None,
    url: Url = None,
    token: Token = None,
    as_json: AsJson = False,
) -> None:
    """Upload an adapter directory (HF PEFT, NeMo or TensorRT-LLM) as a new version.

    Before any file is sent, the coordinates, the namespace, the base model and the token's
    role are checked (one request). An HF Trainer checkpoint's resuming state (optimizer.pt,
    scheduler.pt, scaler.pt, rng_state*.pth, training_args.bin, trainer_state.json) is left
    out, with a warning, unless --include names it.
    """
    coordinates = f"{namespace}/{name}@{version}"
    try:
        parse_coordinates(coordinates)
    except ValueError as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    prov = None
    if provenance:
        try:
            raw = Path(provenance[1:]).read_text() if provenance.startswith("@") else provenance
        except OSError as exc:
            why = escape(exc.strerror or str(exc))
            err.print(f"[red]error[/red] --provenance {escape(provenance)}: {why}")
            raise typer.Exit(1) from None
        try:
            prov = json.loads(raw)
        except json.JSONDecodeError as exc:
            err.print(f"[red]error[/red] --provenance is not JSON: {escape(str(exc))}")
            raise typer.Exit(1) from None
    with api_client(url, token) as client:
        files, left_out = upload_files(directory, include=include or (), exclude=exclude or ())
        for rel in left_out:
            err.print(
                f"[yellow]warning[/yellow] {escape(rel)} is trainer state, not adapter files: "
                f"left out (--include {escape(PurePosixPath(rel).name)} sends it)",
                highlight=False,
                soft_wrap=True,
            )
        target = {"namespace": namespace, "name": name, "version": version}
        client.check_upload(**target, base_model=base_model)
        with transfer_progress() as bar:
            total = sum(p.stat().st_size for _, p in files)
            task = bar.add_task(f"upload {coordinates}", total=total)
            entity = client.upload_adapter(
                directory,
                **target,
                base_model=base_model,
                provenance=prov,
                description=description,
                progress=lambda n: bar.advance(task, n),
                include=include or (),
                exclude=exclude or (),
                check_first=False,
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
    url: Url = None,
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
def adapters_show(ref: Ref, url: Url = None, token: Token = None) -> None:
    """Show one adapter version (JSON) with its files, provenance and, when the namespace
    has an evaluation gate, its evaluation (scores, comparison, checks)."""
    from store.cli_evaluation import evaluation_of

    with api_client(url, token) as client:
        entity = client.resolve(ref)
        print_json({**entity, "evaluation": evaluation_of(client, entity["id"])})


def _set_status(
    ref: str, status: str, reason: str | None, url: str | None, token: str | None, drop=False
) -> None:
    with api_client(url, token) as client:
        entity = client.set_status(
            client.resolve(ref)["id"], status, reason, drop_from_aliases=drop
        )
    out.print(f"{entity['coordinates']} -> [bold]{entity['status']}[/bold]")


@adapters_app.command("approve")
def adapters_approve(
    ref: Ref,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Approve a pending version: it becomes ready and engines load it."""
    _set_status(ref, "ready", reason, url, token)


@adapters_app.command("reject")
def adapters_reject(
    ref: Ref,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Reject a pending version."""
    _set_status(ref, "rejected", reason, url, token)


@adapters_app.command("archive")
def adapters_archive(
    ref: Ref,
    reason: Annotated[str | None, typer.Option(help="Why.")] = None,
    drop_from_aliases: Annotated[
        bool,
        typer.Option(help="Remove it from the aliases routing to it (else refused, 409)."),
    ] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Archive a ready version: engines evict it. One an alias routes to is refused
    (alias_target) unless --drop-from-aliases."""
    _set_status(ref, "archived", reason, url, token, drop_from_aliases)


@adapters_app.command("pull")
def adapters_pull(
    ref: Ref,
    directory: Annotated[
        Path, typer.Argument(help="Where to write the files (absent or an empty directory).")
    ],
    original: Annotated[
        bool, typer.Option("--original", help="The uploaded files instead of canonical HF PEFT.")
    ] = False,
    url: Url = None,
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
            download_adapter(
                client,
                entity["id"],
                directory,
                canonical=not original,
                progress=lambda n: bar.advance(task, n),
            )
    out.print(f"{entity['coordinates']} -> {directory}")


def fleet_pull(
    dest: Annotated[Path, typer.Option(help="NIM's LOCAL_PEFT_DIRECTORY (created).")],
    base_model: Annotated[str, typer.Option(help="Pull the ready adapters of this base model.")],
    adapter: Annotated[
        list[str] | None,
        typer.Option(help="Only these (repeatable): id, ns/name@version, ns/name or ns."),
    ] = None,
    url: Url = None,
    token: Annotated[
        str | None, typer.Option(envvar="LORAFLEET_TOKEN", help="Bearer token (reader).")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Keep in sync until stopped.")] = False,
    redis_url: Annotated[
        str | None,
        typer.Option(envvar="LORAFLEET_REDIS_URL", help="Refresh events (with --watch)."),
    ] = None,
    interval: Annotated[float, typer.Option(help="Resync period with --watch (s).")] = 30.0,
    max_lora_rank: Annotated[
        int | None,
        typer.Option(
            envvar="NIM_MAX_LORA_RANK",
            min=1,
            help="Skip (and report) adapters of a higher rank: the NIM's NIM_MAX_LORA_RANK. "
            "Default: no limit.",
        ),
    ] = None,
    vllm_url: Annotated[
        str | None,
        typer.Option(
            envvar="VLLM_URL",
            help="Also load the pulled adapters into this vLLM (runtime LoRA API) and unload "
            "archived ones before deleting them.",
        ),
    ] = None,
    vllm_model: Annotated[
        str | None,
        typer.Option(
            envvar="VLLM_MODEL",
            help="vLLM's --model value (required with --vllm-url): written as "
            "base_model_name_or_path so vLLM's resolvers accept the directories.",
        ),
    ] = None,
    vllm_api_key: Annotated[
        str | None, typer.Option(envvar="VLLM_API_KEY", help="vLLM's --api-key, if set.")
    ] = None,
) -> None:
    """Materialise ready adapters as one directory each (``ns--name--version``, or
    ``ns~name~version`` when a part holds ``--``; HF PEFT files, 0644), atomically, removing
    the ones no longer ready. For stock NIM and vLLM.

    An unregistered base model, or a directory already pulled for another base model, is an
    error (exit 1) and nothing is removed. An entry the registry sent that is unsafe to write
    (a name outside the coordinate pattern, a file path leaving its directory) is reported
    as refused and not written; the others are pulled.

    With --vllm-url (a sidecar of a vLLM started with --enable-lora and
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=true), each version is loaded into vLLM as
    ``namespace/name@version`` and unloaded before its directory is deleted; a vLLM that is
    down is retried and nothing is deleted meanwhile."""
    from store.client import ApiError, RegistryClient
    from store.pull import PullError, PullResult, pull_adapters, watch_adapters
    from store.vllm_sidecar import VllmTarget, VllmUnavailable

    if vllm_url and not vllm_model:
        typer.echo(
            "error: --vllm-model (vLLM's --model value) is required with --vllm-url", err=True
        )
        raise typer.Exit(2)
    target = (
        VllmTarget(vllm_url, vllm_model, api_key=vllm_api_key, report=typer.echo)
        if vllm_url and vllm_model
        else None
    )

    selectors = set(adapter) if adapter else None
    reported: dict[str, dict[str, str]] = {}

    def show(result: PullResult) -> None:
        for name in result.added:
            typer.echo(f"+ {dest / name}")
        for name in result.removed:
            typer.echo(f"- {dest / name}")
        for name, reason in sorted(result.skipped.items()):
            typer.echo(f"! {dest / name} skipped: {reason}")
        for sent, reason in sorted(result.refused.items()):
            typer.echo(f"! refused {sent} from the registry: {reason}", err=True)
        reported.update(skipped=result.skipped, refused=result.refused)
        skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
        refused = f", {len(result.refused)} refused" if result.refused else ""
        typer.echo(
            f"{len(result.added) + len(result.kept)} adapter(s) in {dest} "
            f"(generation {result.generation}){skipped}{refused}"
        )

    def news(result: PullResult) -> bool:
        return result.changed or {"skipped": result.skipped, "refused": result.refused} != (
            reported or {"skipped": {}, "refused": {}}
        )

    def fail(exc: ApiError | PullError | VllmUnavailable) -> typer.Exit:
        typer.echo(f"error: {exc}", err=True)
        return typer.Exit(1)

    with RegistryClient(*resolve_api(url, token)) as client:
        if not watch:
            try:
                show(
                    pull_adapters(
                        client,
                        base_model,
                        dest,
                        selectors=selectors,
                        max_rank=max_lora_rank,
                        target=target,
                    )
                )
                if target is not None:
                    target.sync(dest)
            except (ApiError, PullError, VllmUnavailable) as exc:
                raise fail(exc) from None
            if target is not None and target.refused:
                raise typer.Exit(1)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            watch_adapters(
                client,
                base_model,
                dest,
                redis_url=redis_url,
                selectors=selectors,
                interval=interval,
                stop=stop,
                on_result=lambda r: show(r) if news(r) else None,
                max_rank=max_lora_rank,
                target=target,
            )
        except (ApiError, PullError) as exc:
            raise fail(exc) from None
        except KeyboardInterrupt:
            stop.set()
