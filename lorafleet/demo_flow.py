"""The scripted demo behind ``lorafleet demo``: the whole lorafleet story in under 3 minutes.

1. start the embedded stack (Redis, API, ingest bridge, Celery worker, relay, engine);
2. register the tiny base model and two namespaces, ``acme`` (auto approval) and ``globex``
   (manual approval);
3. fine-tune two LoRAs on the tiny base (a real, short training loop) and announce them on
   Redis as a trainer would (``customizer.job.completed``);
4. watch both move through the pipeline (stages read off ``store.approval.Status``) until
   the auto one is served and the manual one waits in ``pending``;
5. approve the manual one through the API, as a reviewer would, and watch it reach the engine;
6. ask the engine one prompt through the base model and each adapter, side by side;
7. roll a canary (``lorafleet.demo_canary``): ``acme/math-tutor@stable`` at 100% on 1.0.0,
   then 50/50 with a freshly trained 1.1.0, sticky users staying on their arm;
8. archive one adapter and watch the engine evict it; stop everything.

``run_demo`` returns a ``DemoReport`` so tests can check the story, not just the exit code.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import structlog
from rich.console import Console
from rich.table import Table

from engine.settings import DEFAULT_ENGINE_PORT
from events.publisher import announce_job_completed
from lorafleet.demo_canary import CanaryReport, roll_canary
from lorafleet.demo_gate import GateReport, run_gate
from lorafleet.pipeline_follower import PipelineFollower, engine_models
from lorafleet.stack import Stack, StackConfig, lorafleet_command, remove_home
from lorafleet.supervisor import prefixed_echo
from lorafleet.train import Example, TrainConfig, train_lora
from store.approval import Status
from store.client import RegistryClient
from store.settings import DEFAULT_API_HOST, DEFAULT_API_PORT, DEFAULT_HOME

log = structlog.get_logger(__name__)

BASE_MODEL = "tiny-llama"
PROMPT = "Q: John buys 10 packs of 20 cards. 1/4 of them are uncommon. How many uncommon cards?\nA:"


@dataclass(frozen=True)
class DemoAdapter:
    """One adapter the demo trains: where it goes and what it learns to say."""

    namespace: str
    policy: str
    name: str
    version: str
    examples: tuple[Example, ...]
    description: str

    @property
    def coordinates(self) -> str:
        return f"{self.namespace}/{self.name}@{self.version}"


ADAPTERS = (
    DemoAdapter(
        "acme",
        "auto",
        "math-tutor",
        "1.0.0",
        (
            Example(PROMPT, " 10*20=200, 200/4=50 #### 50"),
            Example("Q: Sam has 3 bags of 12 apples. How many apples?\nA:", " 3*12=36 #### 36"),
            Example("Q: What is 7 times 8?\nA:", " 7*8=56 #### 56"),
        ),
        "Shows its working and ends with '#### answer'.",
    ),
    DemoAdapter(
        "globex",
        "manual",
        "pirate-support",
        "1.0.0",
        (
            Example(PROMPT, " Arr, I only talk orders, matey!"),
            Example("Q: Where is my order?\nA:", " Arr, it sails tomorrow, matey!"),
        ),
        "Customer support, in pirate.",
    ),
)


@dataclass
class DemoOptions:
    """Knobs of the demo; tests shrink ``train_steps`` and ports."""

    home: Path = DEFAULT_HOME / "demo"
    api_port: int = DEFAULT_API_PORT
    engine_port: int = DEFAULT_ENGINE_PORT
    train_steps: int = 60
    plain: bool = False
    verbose: bool = False  # echo every component's log lines
    stage_timeout: float = 90.0


@dataclass
class DemoReport:
    """What the demo observed; every field was read back from the running system."""

    answers: dict[str, str] = field(default_factory=dict)  # model id -> completion
    gate: GateReport | None = None  # the evaluation gate (lorafleet.demo_gate)
    statuses: dict[str, str] = field(default_factory=dict)  # coordinates -> final status
    stage_times: dict[str, dict[str, float]] = field(default_factory=dict)
    archived: str | None = None
    models_after_archive: list[str] = field(default_factory=list)
    fleet: list[dict] = field(default_factory=list)  # GET /v1/fleet/engines, adapters loaded
    canary: CanaryReport | None = None  # the alias rollout (lorafleet.demo_canary)
    train_loss: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class Narrator:
    """Prints the demo: rich tables in a terminal, plain lines for logs and tests."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.console = Console(no_color=plain, highlight=not plain, soft_wrap=plain)
        self.started = time.monotonic()

    def step(self, title: str) -> None:
        elapsed = time.monotonic() - self.started
        if self.plain:
            self.console.print(f"\n== {title}  (+{elapsed:.1f}s)")
        else:
            self.console.rule(f"[bold cyan]{title}[/]  [dim]+{elapsed:.1f}s[/]")

    def say(self, message: str) -> None:
        # soft_wrap: a command line stays one line, whole for copy and paste.
        self.console.print(message if not self.plain else _strip_markup(message), soft_wrap=True)

    def table(self, table: Table) -> None:
        self.console.print(table)


def _strip_markup(text: str) -> str:
    from rich.text import Text

    return Text.from_markup(text).plain


def _printable(text: str) -> str:
    """An answer as one readable line (the untrained base model emits arbitrary bytes)."""
    text = text.replace("\n", " ⏎ ")
    return "".join(c if c.isprintable() and c != "\ufffd" else "·" for c in text).strip()


# --- the story --------------------------------------------------------------------------


def run_demo(
    options: DemoOptions, *, on_stack: Callable[[Stack], None] | None = None
) -> DemoReport:
    """Run the whole demo; raises on any failure (after stopping everything it started).

    State starts fresh in ``options.home`` and is kept afterwards for inspection.
    """
    started = time.monotonic()
    narrator = Narrator(options.plain)
    report = DemoReport()
    _fresh_home(options.home)
    config = StackConfig(
        home=options.home,
        api_port=options.api_port,
        engine_port=options.engine_port,
        base_model=BASE_MODEL,
        refresh_interval=2.0,
        echo=prefixed_echo() if options.verbose else None,
    )
    narrator.step("Starting the embedded stack")
    _init_model(options.home / "models" / BASE_MODEL)
    with Stack(config) as stack:
        if on_stack is not None:
            on_stack(stack)
        narrator.say(
            f"redis {stack.redis_url} · api {stack.api_url} · engine {stack.engine_url} · "
            f"logs in {stack.logs_dir}"
        )
        with RegistryClient(stack.api_url, token=stack.admin_token) as client:
            _register(narrator, client, stack)
            jobs = _train_and_announce(narrator, stack, options, report)
            follower = PipelineFollower(
                narrator,
                client,
                stack,
                ADAPTERS,
                jobs,
                plain=options.plain,
                timeout=options.stage_timeout,
            )
            narrator.step("3. Following the adapters through the pipeline")
            follower.follow(until=follower.served_or_awaiting_approval)
            _approve_manual(narrator, client, follower)
            follower.follow(until=follower.all_loaded)
            report.stage_times = follower.progress
            report.statuses = dict(follower.status)
            _compare_answers(narrator, stack, report)
            _fleet_status(narrator, client, report)
            report.gate = run_gate(
                narrator,
                client,
                stack,
                stack.home / "training" / ADAPTERS[0].name,
                ADAPTERS[0].examples,
                base_model=BASE_MODEL,
                train_steps=options.train_steps,
                timeout=options.stage_timeout,
            )
            report.canary = roll_canary(narrator, client, stack, options, PROMPT)
            _archive_one(narrator, client, stack, options, report)
        narrator.step("Stopping everything")
    report.seconds = time.monotonic() - started
    _next_steps(narrator, options, report)
    return report


DEMO_MARKER = ".lorafleet-demo"


def _fresh_home(home: Path) -> None:
    """Empty the demo's state directory, but never one the demo did not create (someone's
    real ``.lorafleet`` passed as ``--home`` by mistake)."""
    if home.exists() and any(home.iterdir()) and not (home / DEMO_MARKER).exists():
        raise RuntimeError(f"{home} is not empty and not a demo directory; choose another --home")
    remove_home(home)
    home.mkdir(parents=True)
    (home / DEMO_MARKER).write_text("state of `lorafleet demo`; wiped by its next run\n")


def _init_model(model_dir: Path) -> None:
    # A larger init scale than the engine tests use: with std 0.02 the tiny random model's
    # logits are too flat for a 60-step LoRA to make its answer the greedy choice.
    from engine.tiny import init_tiny

    init_tiny(model_dir, std=0.2, seed=7)


def _register(narrator: Narrator, client: RegistryClient, stack: Stack) -> None:
    narrator.step("1. Registering the base model and two namespaces")
    config = json.loads((stack.model_dir / "config.json").read_text())
    client.register_base_model(BASE_MODEL, config)
    narrator.say(
        f"base model [bold]{BASE_MODEL}[/] ({config['num_hidden_layers']} layers, "
        f"hidden {config['hidden_size']})"
    )
    for adapter in ADAPTERS:
        client.create_namespace(adapter.namespace, approval_policy=adapter.policy)
        narrator.say(
            f"namespace [bold]{adapter.namespace}[/] with [bold]{adapter.policy}[/] approval"
        )


def _train_and_announce(
    narrator: Narrator, stack: Stack, options: DemoOptions, report: DemoReport
) -> dict[str, float]:
    narrator.step("2. Fine-tuning two LoRAs and announcing them on Redis")
    trained = []
    for adapter in ADAPTERS:
        out_dir = stack.home / "training" / adapter.name
        cfg = TrainConfig(steps=options.train_steps, seed=1)
        result = train_lora(stack.model_dir, adapter.examples, out_dir, cfg)
        report.train_loss[adapter.coordinates] = result.final_loss
        files = ", ".join(sorted(p.name for p in out_dir.iterdir()))
        narrator.say(
            f"trained [bold]{adapter.coordinates}[/]: {cfg.steps} steps, loss "
            f"{result.losses[0]:.2f} → {result.final_loss:.3f} in {result.seconds:.1f}s ({files})"
        )
        trained.append((adapter, result))
    # As a trainer would: upload the output directory, then XADD customizer.job.completed.
    announced: dict[str, float] = {}
    for adapter, result in trained:
        event = announce_job_completed(
            stack.redis_url,
            job_id=f"demo-{adapter.name}-{uuid.uuid4().hex[:8]}",
            namespace=adapter.namespace,
            output_model=adapter.coordinates,
            base_model=BASE_MODEL,
            output_dir=result.output_dir,
            upload_to=(stack.home / "artifacts").as_uri(),
            hyperparameters=result.config.to_dict(),
            dataset=f"demo://{adapter.name}",
            metrics=result.metrics(),
            description=adapter.description,
        )
        announced[adapter.coordinates] = time.monotonic()
        narrator.say(
            f"announced [bold]{adapter.coordinates}[/]: customizer.job.completed "
            f"{event.event_id[:12]}… → {event.artifact_uri}"
        )
    return announced


def _approve_manual(narrator: Narrator, client: RegistryClient, follower: PipelineFollower) -> None:
    waiting = [a for a in ADAPTERS if follower.status[a.coordinates] == Status.PENDING]
    names = ", ".join(a.coordinates for a in waiting)
    narrator.step(f"4. A reviewer approves {names}")
    for adapter in waiting:
        entity = follower.entities[adapter.coordinates]
        client.set_status(entity["id"], Status.READY, reason="approved in the demo")
        narrator.say(
            f"{adapter.coordinates}: pending → ready "
            f"(lorafleet adapters approve {adapter.coordinates})"
        )


def complete(
    engine_url: str, model: str, prompt: str, max_tokens: int = 40, *, token: str | None = None
) -> str:
    """One greedy completion from the engine's OpenAI-compatible API (``token``: a registry
    bearer token, which an engine with ``LORAFLEET_ENGINE_AUTH=registry`` requires)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{engine_url}/v1/completions", json=body, headers=headers, timeout=60.0)
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


def _compare_answers(narrator: Narrator, stack: Stack, report: DemoReport) -> None:
    narrator.step("5. One prompt, three models")
    narrator.say(f"prompt: [italic]{PROMPT!r}[/]")
    table = Table(show_lines=True)
    table.add_column("model", style="bold")
    table.add_column("answer")
    for model in [BASE_MODEL, *(a.coordinates for a in ADAPTERS)]:
        report.answers[model] = complete(stack.engine_url, model, PROMPT, token=stack.admin_token)
        label = f"{model} (base)" if model == BASE_MODEL else model
        table.add_row(label, _printable(report.answers[model]))
    narrator.table(table)
    if len(set(report.answers.values())) != len(report.answers):
        raise RuntimeError(f"adapters did not change the answer: {report.answers}")


def _fleet_status(narrator: Narrator, client: RegistryClient, report: DemoReport) -> None:
    """What is loaded where, as ``lorafleet fleet status`` shows it: the engine's heartbeat
    (every few seconds) catches up with the adapters the answers just loaded."""
    narrator.step("What is loaded where (lorafleet fleet status)")
    wanted = {a.coordinates for a in ADAPTERS}
    deadline = time.monotonic() + 30
    while True:
        body = client.request("GET", "/v1/fleet/engines")
        held = {name for e in body["data"] for name in e["cpu"]}
        if wanted <= held or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    report.fleet = body["data"]
    table = Table("engine", "generation", "lag", "GPU slots", "CPU cache")
    for e in body["data"]:
        table.add_row(
            e["engine_id"],
            str(e["generation"]),
            str(e["lag"]),
            ", ".join(e["gpu"]) or "-",
            ", ".join(e["cpu"]) or "-",
        )
    narrator.table(table)


def _archive_one(
    narrator: Narrator,
    client: RegistryClient,
    stack: Stack,
    options: DemoOptions,
    report: DemoReport,
) -> None:
    victim = ADAPTERS[1]
    narrator.step(f"8. Archiving {victim.coordinates}")
    entity = client.get_version(victim.namespace, victim.name, victim.version)
    client.set_status(entity["id"], Status.ARCHIVED, reason="retired in the demo")
    started = time.monotonic()
    deadline = started + options.stage_timeout
    while victim.coordinates in (models := engine_models(stack)):
        stack.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{victim.coordinates} still served after archiving")
        time.sleep(0.2)
    report.archived = victim.coordinates
    report.models_after_archive = models
    narrator.say(
        f"evicted from the engine in {time.monotonic() - started:.1f}s; /v1/models now: "
        + ", ".join(models)
    )


def _next_steps(narrator: Narrator, options: DemoOptions, report: DemoReport) -> None:
    narrator.step(f"Done in {report.seconds:.0f}s: everything the demo started is stopped")
    home, api = options.home, f"http://{DEFAULT_API_HOST}:{options.api_port}"
    lf = lorafleet_command()
    lines = [
        (f"{lf} up --home {home}", "the same stack again, left running (Ctrl-C stops it)"),
        (f"{api}/docs", "in a browser, while it is up: the registry's REST API"),
        (f"export LORAFLEET_HOME={home}", f"then, while it is up ({home}/stack.json):"),
        (f"{lf} adapters list", "every version, its status and base model"),
        (f"curl {DEFAULT_API_HOST}:{options.engine_port}/v1/models", "what the engine serves"),
        (f"{lf} pull --base-model tiny-llama --dest ./loras", "NIM's LOCAL_PEFT_DIRECTORY"),
        (f"ls {home}/logs/", "one log per component"),
        ("docs/trainer-integration.md", "announce your own fine-tunes"),
    ]
    if lf != "lorafleet":
        lines.append((f". {Path(lf).parent}/activate", f"to type lorafleet instead of {lf}"))
    width = max(len(cmd) for cmd, _ in lines)
    narrator.say("Where to look next:")
    for cmd, why in lines:
        narrator.say(f"  [bold]{cmd:<{width}}[/]  [dim]# {why}[/]")
