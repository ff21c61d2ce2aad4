"""``lorafleet demo``, ``lorafleet up`` and ``lorafleet pull``: thin commands over
``lorafleet.demo_flow``, ``lorafleet.stack`` and ``store.pull``."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from lorafleet.stack import Stack

app = typer.Typer(no_args_is_help=True)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    # SIGTERM (docker stop, systemd) takes the same clean path as Ctrl-C.
    raise KeyboardInterrupt


@app.command("demo")
def demo(
    non_interactive: Annotated[
        bool, typer.Option("--non-interactive", "--plain", help="Plain line output (CI, logs).")
    ] = False,
    home: Annotated[Path, typer.Option(help="State directory (wiped first).")] = Path(
        ".lorafleet/demo"
    ),
    steps: Annotated[int, typer.Option(help="Training steps per adapter.")] = 60,
    api_port: Annotated[int, typer.Option(help="Registry API port.")] = 8080,
    engine_port: Annotated[int, typer.Option(help="Engine port.")] = 8000,
    verbose: Annotated[bool, typer.Option(help="Echo every component's log lines.")] = False,
) -> None:
    """Run the whole story on an embedded stack: register, train two LoRAs, announce,
    approve, serve side by side, archive, stop. Takes under 3 minutes on 2 CPU cores."""
    import importlib.util

    # Fail before starting anything: the demo's trainer needs transformers + peft.
    missing = [m for m in ("transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        typer.echo(
            f"the demo trains LoRAs with {' and '.join(missing)}: "
            "pip install -e '.[bench]' (or run `make demo`)",
            err=True,
        )
        raise typer.Exit(2)
    from lorafleet.demo_flow import DemoOptions, run_demo
    from lorafleet.logging import configure_logging

    # The narration is the demo's output; component logs go to HOME/logs (or, with
    # --verbose, to the terminal, prefixed), our own process logs only warnings.
    if not verbose:
        configure_logging("WARNING")
        logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    options = DemoOptions(
        home=home,
        api_port=api_port,
        engine_port=engine_port,
        train_steps=steps,
        plain=non_interactive or not sys.stdout.isatty(),
        verbose=verbose,
    )
    try:
        run_demo(options)
    except KeyboardInterrupt:
        typer.echo("interrupted; everything the demo started has been stopped", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        typer.echo(f"demo failed: {exc}\nlogs: {home}/logs/", err=True)
        raise typer.Exit(1) from None


@app.command("up")
def up(
    home: Annotated[Path, typer.Option(help="State directory.")] = Path(".lorafleet"),
    api_port: Annotated[int, typer.Option(help="Registry API port.")] = 8080,
    engine_port: Annotated[int, typer.Option(help="Engine port.")] = 8000,
    base_model: Annotated[str, typer.Option(help="Served base model name.")] = "tiny-llama",
    model_dir: Annotated[
        Path | None, typer.Option(help="HF model dir; default a tiny random Llama.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Celery worker concurrency.")] = 1,
) -> None:
    """Start the embedded stack (Redis, API, bridge, worker, relay, engine) and keep it
    running with every component's logs prefixed by its name; Ctrl-C stops it all."""
    from lorafleet.stack import Stack, StackConfig, StackError, prefixed_echo

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # The supervisor's health probes would log every poll; component logs are what matter.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = StackConfig(
        home=home,
        api_port=api_port,
        engine_port=engine_port,
        base_model=base_model,
        model_dir=model_dir,
        worker_concurrency=workers,
        echo=prefixed_echo(),
    )
    stack = Stack(config)
    try:
        stack.start()
        typer.echo(
            f"\nlorafleet is up: api {stack.api_url}/docs · engine {stack.engine_url}/v1/models\n"
            f"  export LORAFLEET_API_URL={stack.api_url} LORAFLEET_REDIS_URL={stack.redis_url}\n"
            f"  export LORAFLEET_TOKEN=$(cat {stack.home}/admin-token)\n"
            "Ctrl-C to stop.",
            err=True,
        )
        _wait_until_a_component_exits(stack)
    except KeyboardInterrupt:
        typer.echo("stopping…", err=True)
    except StackError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        stack.stop()


def _wait_until_a_component_exits(stack: Stack) -> None:
    while True:
        stack.check_alive()
        threading.Event().wait(1.0)


@app.command("pull")
def pull(
    dest: Annotated[Path, typer.Option(help="NIM's LOCAL_PEFT_DIRECTORY (created).")],
    base_model: Annotated[str, typer.Option(help="Pull the ready adapters of this base model.")],
    adapter: Annotated[
        list[str] | None,
        typer.Option(help="Only these (repeatable): id, ns/name@version, ns/name or ns."),
    ] = None,
    url: Annotated[
        str, typer.Option("--url", envvar="LORAFLEET_API_URL", help="Registry API base URL.")
    ] = "http://127.0.0.1:8080",
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
) -> None:
    """Materialise ready adapters as one directory each (``ns--name--version``, HF PEFT
    files, 0644), atomically, removing the ones no longer ready. For stock NIM and vLLM.

    An unregistered base model, or a directory already pulled for another base model, is an
    error (exit 1) and nothing is removed."""
    from store.client import ApiError, RegistryClient
    from store.pull import PullError, PullResult, pull_adapters, watch_adapters

    selectors = set(adapter) if adapter else None
    reported: dict[str, str] = {}

    def show(result: PullResult) -> None:
        for name in result.added:
            typer.echo(f"+ {dest / name}")
        for name in result.removed:
            typer.echo(f"- {dest / name}")
        for name, reason in sorted(result.skipped.items()):
            typer.echo(f"! {dest / name} skipped: {reason}")
        reported.clear()
        reported.update(result.skipped)
        skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
        typer.echo(
            f"{len(result.added) + len(result.kept)} adapter(s) in {dest} "
            f"(generation {result.generation}){skipped}"
        )

    def fail(exc: ApiError | PullError) -> typer.Exit:
        typer.echo(f"error: {exc}", err=True)
        return typer.Exit(1)

    with RegistryClient(url, token=token) as client:
        if not watch:
            try:
                show(
                    pull_adapters(
                        client, base_model, dest, selectors=selectors, max_rank=max_lora_rank
                    )
                )
            except (ApiError, PullError) as exc:
                raise fail(exc) from None
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
                on_result=lambda r: show(r) if r.changed or r.skipped != reported else None,
                max_rank=max_lora_rank,
            )
        except (ApiError, PullError) as exc:
            raise fail(exc) from None
        except KeyboardInterrupt:
            stop.set()
