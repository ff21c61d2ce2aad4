"""``lorafleet events ...``: event schemas, announcing a finished job, the dead-letter queue."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

app = typer.Typer(
    help="Event contracts, publishing and the dead-letter queue.", no_args_is_help=True
)
dlq_app = typer.Typer(
    help="Inspect and re-drive dead-lettered ingest events.", no_args_is_help=True
)
app.add_typer(dlq_app, name="dlq")


def _redis_url(value: str | None) -> str:
    from events.streams import DEFAULT_REDIS_URL

    return value or os.environ.get("LORAFLEET_REDIS_URL") or DEFAULT_REDIS_URL


RedisOpt = typer.Option(None, "--redis-url", help="Default: LORAFLEET_REDIS_URL.")


@contextmanager
def _redis_reachable(url: str) -> Iterator[None]:
    """Turn "Redis is not there" into one line naming the URL and the setting, exit 1."""
    import redis

    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        typer.echo(
            f"error: cannot reach Redis at {url} ({exc}); is it running? "
            "Set LORAFLEET_REDIS_URL or --redis-url.",
            err=True,
        )
        raise typer.Exit(1) from None


@app.command()
def schemas(
    write: bool = typer.Option(False, "--write", help="Regenerate events/schemas/*.json."),
    directory: Path | None = typer.Option(None, "--dir", help="Where the schema files live."),
) -> None:
    """Check (default) or --write the JSON Schema files generated from the event models."""
    from events.contracts import SCHEMA_DIR, drifted_schemas, write_schemas

    target = directory or SCHEMA_DIR
    if write:
        for path in write_schemas(target):
            typer.echo(f"wrote {path}")
        return
    drifted = drifted_schemas(target)
    if drifted:
        typer.echo(
            f"out of date: {', '.join(drifted)} (run `lorafleet events schemas --write`)", err=True
        )
        raise typer.Exit(1)
    typer.echo("event schemas are up to date")


@app.command("publish-job-completed")
def publish_job_completed(
    job_id: str = typer.Option(..., "--job-id"),
    output_model: str = typer.Option(..., "--output-model", help="namespace/name@version"),
    base_model: str = typer.Option(..., "--base-model"),
    namespace: str | None = typer.Option(None, "--namespace", help="Default: from --output-model."),
    output_dir: Path | None = typer.Option(
        None, "--output-dir", help="The trainer's output directory."
    ),
    artifact_uri: str | None = typer.Option(
        None, "--artifact-uri", help="Already-uploaded artifact."
    ),
    upload_to: str | None = typer.Option(
        None, "--upload-to", help="file://DIR or s3://BUCKET/PREFIX."
    ),
    dataset: str | None = typer.Option(None, "--dataset"),
    hyperparameters: str | None = typer.Option(None, "--hyperparameters", help="JSON object."),
    metrics: str | None = typer.Option(None, "--metrics", help="JSON object."),
    description: str | None = typer.Option(None, "--description"),
    event_id: str | None = typer.Option(None, "--event-id", help="Default: a fresh id."),
    redis_url: str | None = RedisOpt,
) -> None:
    """Announce a finished LoRA fine-tune on the ingest stream; prints the event JSON."""
    from events.models import parse_coordinates
    from events.publisher import announce_job_completed

    url = _redis_url(redis_url)
    try:
        ns = namespace or parse_coordinates(output_model)[0]
        with _redis_reachable(url):
            event = announce_job_completed(
                url,
                job_id=job_id,
                namespace=ns,
                output_model=output_model,
                base_model=base_model,
                output_dir=output_dir,
                artifact_uri=artifact_uri,
                upload_to=upload_to,
                hyperparameters=json.loads(hyperparameters) if hyperparameters else None,
                metrics=json.loads(metrics) if metrics else None,
                dataset=dataset,
                description=description,
                event_id=event_id,
            )
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(event.model_dump_json())


@dlq_app.command("list")
def dlq_list(
    count: int = typer.Option(100, "--count", "-n"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    redis_url: str | None = RedisOpt,
) -> None:
    """List dead letters, oldest first, with the reason each was dead-lettered."""
    import redis
    from rich.console import Console
    from rich.table import Table

    from events.dlq import list_dead_letters

    url = _redis_url(redis_url)
    client = redis.Redis.from_url(url)
    with _redis_reachable(url):
        letters = list_dead_letters(client, count=count)
    if as_json:
        for letter in letters:
            typer.echo(json.dumps(letter.to_dict()))
        return
    table = Table("id", "at", "deliveries", "reason")
    for letter in letters:
        table.add_row(letter.id, letter.at or "", str(letter.deliveries or ""), letter.reason)
    Console().print(table)


@dlq_app.command("replay")
def dlq_replay(
    ids: list[str] = typer.Argument(None, help="DLQ entry ids; none with --all."),
    all_: bool = typer.Option(False, "--all", help="Replay every dead letter."),
    event_file: Path | None = typer.Option(
        None, "--event-file", help="Replace the event with this (corrected) JSON; one id only."
    ),
    redis_url: str | None = RedisOpt,
) -> None:
    """Re-drive dead letters: back onto the jobs stream, removed from the DLQ."""
    import redis

    from events.dlq import list_dead_letters, replay

    url = _redis_url(redis_url)
    client = redis.Redis.from_url(url)
    targets = list(ids or [])
    if all_:
        with _redis_reachable(url):
            targets = [letter.id for letter in list_dead_letters(client, count=100_000)]
    if not targets:
        typer.echo("nothing to replay: give DLQ ids or --all", err=True)
        raise typer.Exit(2)
    if event_file is not None and len(targets) != 1:
        typer.echo("--event-file replaces one dead letter's event: give exactly one id", err=True)
        raise typer.Exit(2)
    event_json = event_file.read_text() if event_file is not None else None
    for dlq_id in targets:
        try:
            with _redis_reachable(url):
                new_id = replay(client, dlq_id, event_json=event_json)
        except KeyError:
            typer.echo(f"no dead letter {dlq_id}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"replayed {dlq_id} as {new_id}")
