"""``lorafleet demo`` and ``lorafleet up``: thin commands over ``lorafleet.demo_flow`` and
``lorafleet.stack``. Options left out fall back to ``store.settings`` (home, API port) and
``engine.settings`` (engine port)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from lorafleet.stack import Stack

app = typer.Typer(no_args_is_help=True)

Home = Annotated[
    Path | None, typer.Option(help="State directory (default LORAFLEET_HOME, else .lorafleet).")
]
ApiPort = Annotated[
    int | None, typer.Option(help="Registry API port (default LORAFLEET_API_PORT).")
]
EnginePort = Annotated[
    int | None, typer.Option(help="Engine port (default LORAFLEET_ENGINE_PORT).")
]


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM (Ctrl-C, ``kill``, docker stop) take the same clean path.
    Installed whatever was inherited: a script's ``lorafleet up &`` starts with SIGINT
    ignored, and Python then leaves it ignored."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise_keyboard_interrupt)


def _ports(api_port: int | None, engine_port: int | None) -> tuple[int, int]:
    from engine.settings import EngineSettings
    from store.settings import StoreSettings

    api = api_port if api_port is not None else StoreSettings().api_port
    engine = engine_port if engine_port is not None else EngineSettings().port
    return api, engine


@app.command("demo")
def demo(
    non_interactive: Annotated[
        bool, typer.Option("--non-interactive", "--plain", help="Plain line output (CI, logs).")
    ] = False,
    home: Annotated[
        Path | None,
        typer.Option(help="State directory, wiped first (default <LORAFLEET_HOME>/demo)."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Training steps per adapter.")] = 60,
    api_port: ApiPort = None,
    engine_port: EnginePort = None,
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
    from store.settings import StoreSettings

    # The narration is the demo's output; component logs go to HOME/logs (or, with
    # --verbose, to the terminal, prefixed), our own process logs only warnings.
    if not verbose:
        configure_logging("WARNING")  # also keeps httpx's per-request lines quiet
    _stop_on_signals()
    home = home or StoreSettings().home / "demo"
    api_port, engine_port = _ports(api_port, engine_port)
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
    home: Home = None,
    api_port: ApiPort = None,
    engine_port: EnginePort = None,
    base_model: Annotated[str, typer.Option(help="Served base model name.")] = "tiny-llama",
    model_dir: Annotated[
        Path | None, typer.Option(help="HF model dir; default a tiny random Llama.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Celery worker concurrency.")] = 1,
) -> None:
    """Start the embedded stack (Redis, API, bridge, worker, relay, engine) and keep it
    running with every component's logs prefixed by its name; Ctrl-C (SIGINT) or SIGTERM
    stops it all.

    It registers the served base model and the ``default`` namespace (auto approval: what
    you upload is served at once), writes an example adapter to HOME/examples/example-lora
    and describes itself in HOME/stack.json, so commands in another shell reach it with no
    exports."""
    from lorafleet.stack import Stack, StackConfig
    from lorafleet.supervisor import SupervisorError, prefixed_echo
    from store.settings import StoreSettings

    _stop_on_signals()
    api_port, engine_port = _ports(api_port, engine_port)
    config = StackConfig(
        home=home or StoreSettings().home,
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
        typer.echo(_banner(stack), err=True)
        _wait_until_a_component_exits(stack)
    except KeyboardInterrupt:
        typer.echo("stopping…", err=True)
    except SupervisorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        # A second signal must not cut the stop short and leave children behind.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()


def _banner(stack: Stack) -> str:
    """What is up and the next three commands, runnable as printed in another shell from
    this directory (they find the stack through HOME/stack.json)."""
    from lorafleet.stack import DEFAULT_NAMESPACE, lorafleet_command
    from store.settings import StoreSettings

    lf, ns, base = lorafleet_command(), DEFAULT_NAMESPACE, stack.config.base_model
    coords = f"{ns}/example@1.0.0"
    example = os.path.relpath(stack.example_adapter) if _under_cwd(stack.home) else None
    upload = (
        f"{lf} adapters upload {shlex.quote(example or str(stack.example_adapter))} "
        f"--namespace {ns} --name example --version 1.0.0 --base-model {base}"
    )
    if stack.namespace_policy == "manual":
        second = f"{lf} adapters approve {coords}"
    else:
        second = f"{lf} adapters list --namespace {ns}"
    body = {"model": coords, "prompt": "Hello", "max_tokens": 8}
    # The engine checks registry tokens (LORAFLEET_ENGINE_AUTH=registry): send the admin one.
    secret = (
        f"$(cat {shlex.quote(str(stack.token_file))})" if stack.token_file else "$LORAFLEET_TOKEN"
    )
    curl = (
        f"curl -s {stack.engine_url}/v1/completions -H 'Content-Type: application/json' "
        f'-H "Authorization: Bearer {secret}" -d {shlex.quote(json.dumps(body))}'
    )
    lines = [
        "",
        f"lorafleet is up: api {stack.api_url}/docs · engine {stack.engine_url}/v1/models",
        f"namespace {ns!r} ({stack.namespace_policy} approval), base model {base!r}; "
        f"{stack.home}/stack.json tells other shells where everything is.",
    ]
    if stack.home != StoreSettings().home.resolve():
        lines.append(
            f"In another shell, first: export LORAFLEET_HOME={shlex.quote(str(stack.home))}"
        )
    lines += ["Next, in another shell:", f"  {upload}", f"  {second}", f"  {curl}"]
    lines.append("Ctrl-C to stop.")
    return "\n".join(lines)


def _under_cwd(path: Path) -> bool:
    return path.is_relative_to(Path.cwd().resolve())


def _wait_until_a_component_exits(stack: Stack) -> None:
    while True:
        stack.check_alive()
        threading.Event().wait(1.0)
