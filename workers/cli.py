"""``lorafleet worker | bridge | beat | relay``: the pipeline's processes."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from events.streams import QUEUES

app = typer.Typer(help="Event pipeline processes.", no_args_is_help=True)

METRICS_PORT_HELP = "Serve Prometheus /metrics on this port (docs/METRICS.md); default: off."


def _metrics_port() -> int | None:
    return typer.Option(
        None, "--metrics-port", envvar="LORAFLEET_METRICS_PORT", help=METRICS_PORT_HELP
    )


@app.command()
def worker(
    queues: str = typer.Option(",".join(QUEUES), "--queues", "-Q", help="Comma-separated queues."),
    concurrency: int = typer.Option(2, "--concurrency", "-c", help="Worker processes."),
    pool: str = typer.Option("prefork", "--pool", help="prefork | solo | threads."),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Celery node name."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
    metrics_port: int | None = _metrics_port(),
) -> None:
    """Run a Celery worker for the ingest chain, broadcasts and sweeps."""
    if metrics_port is not None:
        from store.multiprocess_metrics import enable_multiprocess

        enable_multiprocess()  # before the pool forks, before prometheus_client loads
        from workers import metrics
        from workers.runtime import get_runtime

        metrics.install_ingest_hooks()
        metrics.serve_metrics(metrics_port, get_runtime(), multiprocess=True)
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
    metrics_port: int | None = _metrics_port(),
) -> None:
    """Run one ingest bridge replica: the jobs stream → Celery chains."""
    from workers.bridge import run_bridge
    from workers.celery_app import app as celery_app
    from workers.runtime import get_runtime

    if metrics_port is not None:
        from workers.metrics import serve_metrics

        serve_metrics(metrics_port, get_runtime())
    run_bridge(get_runtime(), celery_app, consumer=consumer)


@app.command()
def beat(
    schedule: str | None = typer.Option(
        None, "--schedule", help="Beat state file; default <home>/celerybeat-schedule."
    ),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
    metrics_port: int | None = _metrics_port(),
) -> None:
    """Run the periodic scheduler: outbox relay, stuck-work reclaim, blob GC."""
    from pathlib import Path

    from store.settings import get_settings
    from workers.celery_app import app as celery_app

    if metrics_port is not None:
        from workers.metrics import serve_metrics
        from workers.runtime import get_runtime

        serve_metrics(metrics_port, get_runtime())

    path = Path(schedule) if schedule else get_settings().home / "celerybeat-schedule"
    path.parent.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", "--schedule", str(path), "-l", loglevel])


@app.command()
def relay(
    loop: bool = typer.Option(False, "--loop", help="Keep relaying every interval."),
    interval: float | None = typer.Option(
        None, "--interval", help="Seconds between passes with --loop (LORAFLEET_RELAY_INTERVAL_S)."
    ),
) -> None:
    """Publish pending outbox rows to their streams (once, or forever with --loop)."""
    from workers.relay import relay_outbox
    from workers.runtime import get_runtime

    rt = get_runtime()
    interval = interval if interval is not None else rt.settings.relay_interval_s
    while True:
        sent = relay_outbox(rt.session, rt.redis, batch=rt.settings.relay_batch)
        typer.echo(f"relayed {sent} outbox rows")
        if not loop:
            return
        time.sleep(interval)


@app.command("webhook-sender")
def webhook_sender(
    once: bool = typer.Option(False, "--once", help="One pass, then exit."),
    alive_file: Path | None = typer.Option(
        None, "--alive-file", help="Touched after every pass that reached the database (health)."
    ),
) -> None:
    """Send the registry's signed webhook deliveries, with retries (LORAFLEET_WEBHOOK_*)."""
    from workers.runtime import get_runtime
    from workers.webhooks import WebhookSettings, deliver_due, run_sender

    rt = get_runtime()
    if once:
        import httpx

        settings = WebhookSettings()
        with httpx.Client(timeout=settings.timeout_s, follow_redirects=False) as client:
            sent = deliver_due(rt.session, client, settings, rt.settings)
        typer.echo(f"attempted {sent} webhook deliveries")
        return
    run_sender(rt.session, workers=rt.settings, alive_file=alive_file)
