"""``lorafleet engine ...``: the engine's commands. The wiring is ``engine/runtime.py``; the
HTTP API is ``engine/server.py``."""

from __future__ import annotations

from pathlib import Path

import typer

from engine.settings import EngineSettings

app = typer.Typer(help="The multi-LoRA inference engine.", no_args_is_help=True)


@app.command()
def serve(
    model_dir: Path | None = typer.Option(None, "--model-dir", help="HF-layout model directory."),
    host: str | None = typer.Option(None, help="Bind address (LORAFLEET_ENGINE_HOST)."),
    port: int | None = typer.Option(None, help="Port (LORAFLEET_ENGINE_PORT)."),
) -> None:
    """Serve the OpenAI-compatible API for the base model and its adapters (NIM_* settings)."""
    import uvicorn
    from pydantic import ValidationError

    from engine.runtime import build_runtime
    from engine.server import create_app
    from engine.source import UnknownBaseModel
    from engine.threads import in_passing_thread, serial_openmp
    from store.heap import freeze_startup_heap
    from store.settings import settings_error

    overrides = {k: v for k, v in {"model_dir": model_dir, "host": host, "port": port}.items() if v}
    try:
        settings = EngineSettings(**overrides)
    except ValidationError as exc:  # e.g. LORAFLEET_ENGINE_PREPACK=maybe, NIM_MAX_GPU_LORAS=0
        typer.echo(f"error: invalid setting: {settings_error(exc)}", err=True)
        raise typer.Exit(2) from None
    if settings.model_dir is None:
        raise typer.BadParameter("LORAFLEET_ENGINE_MODEL_DIR is not set")
    if not (Path(settings.model_dir) / "config.json").is_file():
        raise typer.BadParameter(f"{settings.model_dir} has no config.json (a HF model directory)")
    try:
        settings.resolved_device()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        # Loaded in a passing thread and then torch on one thread here: the scheduler's
        # OpenMP team is to be the process's only one (engine.threads).
        runtime = in_passing_thread(build_runtime, settings, verify_source=True)
    except UnknownBaseModel as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    serial_openmp()
    app = create_app(runtime)
    freeze_startup_heap("engine")  # the model's and the imports' objects (store.heap)
    # log_config=None: uvicorn's records go through lorafleet.logging (JSON under json format).
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,
    )


@app.command("init-tiny")
def init_tiny_command(
    directory: Path = typer.Argument(..., help="Where to write the tiny model."),
    seed: int = typer.Option(0, help="Weight seed."),
) -> None:
    """Write a tiny random Llama (HF layout + tokenizer) for demos and tests."""
    from engine.tiny import init_tiny

    path = init_tiny(directory, seed=seed)
    typer.echo(str(path))
