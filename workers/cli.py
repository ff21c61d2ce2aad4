"""``lorafleet worker | bridge | beat | relay``: the pipeline's processes."""

from __future__ import annotations

import time

import typer

app = typer.Typer(help="Event pipeline processes.", no_args_is_help=True)

ALL_QUEUES = "ingest,fleet,maintenance"


@app.command()
def worker(
    queues: str = typer.Option(ALL_QUEUES, "--queues", "-Q", help="Comma-separated queues."),
    concurrency: int = typer.Option(2, "--concurrency", "-c", help="Worker processes."),
    pool: str = typer.Option("prefork", "--pool", help="prefork | solo | threads."),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Celery node name."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Run a Celery worker for the ingest chain, broadcasts and sweeps."""
    from workers.celery_app import app as celery_app

    argv = [
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "-l",
        loglevel,
    ]
    if hostname:
        argv += ["-n", hostname]
    celery_app.worker_main(argv)


@app.command()
def bridge(
    consumer: str | None = typer.Option(
        None, "--consumer", help="Consumer name (unique per replica)."
    ),
) -> None:
    """Run one ingest bridge replica: the jobs stream → Celery chains."""
    from workers.bridge import run_bridge
    from workers.celery_app import app as celery_app
    from workers.runtime import get_runtime

    run_bridge(get_runtime(), celery_app, consumer=consumer)


@app.command()
def beat(
    schedule: str = typer.Option(
        ".lorafleet/celerybeat-schedule", "--schedule", help="Beat state file."
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Run the periodic scheduler: outbox relay, stuck-work reclaim, blob GC."""
    from pathlib import Path

    from workers.celery_app import app as celery_app

    Path(schedule).parent.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", "--schedule", schedule, "-l", loglevel])


@app.command()
def relay(
    loop: bool = typer.Option(False, "--loop", help="Keep relaying every interval."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between passes with --loop."),
) -> None:
    """Publish pending outbox rows to their streams (once, or forever with --loop)."""
    from workers.relay import relay_outbox
    from workers.runtime import get_runtime

    rt = get_runtime()
    while True:
        sent = relay_outbox(rt.session, rt.redis, batch=rt.settings.relay_batch)
        typer.echo(f"relayed {sent} outbox rows")
        if not loop:
            return
        time.sleep(interval)
