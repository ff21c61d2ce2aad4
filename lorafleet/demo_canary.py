"""The demo's canary (issue 13): roll ``acme/math-tutor@1.1.0`` out behind an alias without
changing a client.

1. fine-tune 1.1.0 (another answer style) and publish it through the REST API;
2. ``acme/math-tutor@stable`` at 100% on 1.0.0: every user is served 1.0.0;
3. 50/50 between 1.0.0 and 1.1.0: each user (the OpenAI ``user`` field) is sent to one arm
   and stays there on every request, which the engine's ``x-lorafleet-served-model``
   header shows.

Every figure is read back from the running engine and registry; nothing is simulated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from rich.table import Table

from lorafleet.pipeline_follower import engine_models
from lorafleet.train import Example, TrainConfig, train_lora
from store.client import RegistryClient

if TYPE_CHECKING:
    from lorafleet.demo_flow import DemoOptions, Narrator
    from lorafleet.stack import Stack

NAMESPACE, NAME, ALIAS = "acme", "math-tutor", "stable"
STABLE, CANARY = "1.0.0", "1.1.0"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")
ASKS_PER_USER = 3
SERVED_HEADER = "x-lorafleet-served-model"


@dataclass
class CanaryReport:
    """What each user was served at each split: ``served[split][user]`` lists (served
    coordinates, completion) of each request, ``answers[coordinates]`` the completions seen
    for them."""

    served: dict[str, dict[str, list[tuple[str, str]]]] = field(default_factory=dict)
    answers: dict[str, set[str]] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)


def roll_canary(
    narrator: Narrator,
    client: RegistryClient,
    stack: Stack,
    options: DemoOptions,
    prompt: str,
) -> CanaryReport:
    """Publish 1.1.0, then route ``acme/math-tutor@stable`` 100/0 and 50/50 through the
    engine; raises when a user changes arm under unchanged weights or an arm goes unused."""
    from lorafleet.demo_flow import BASE_MODEL

    report = CanaryReport()
    coordinates = f"{NAMESPACE}/{NAME}@{CANARY}"
    narrator.step(f"7. A canary: {coordinates} behind {NAMESPACE}/{NAME}@{ALIAS}")
    examples = (
        Example(prompt, " A quarter of 200 is 50. #### 50"),
        Example("Q: Sam has 3 bags of 12 apples. How many apples?\nA:", " Three twelves: 36"),
    )
    out_dir = stack.home / "training" / f"{NAME}-{CANARY}"
    # Half the steps: it only has to answer differently from 1.0.0, which it does early.
    config = TrainConfig(steps=max(10, options.train_steps // 2))
    trained = train_lora(stack.model_dir, examples, out_dir, config)
    client.upload_adapter(
        trained.output_dir, namespace=NAMESPACE, name=NAME, version=CANARY, base_model=BASE_MODEL
    )
    _wait(lambda: coordinates in engine_models(stack), options, f"{coordinates} served")
    narrator.say(f"trained and published [bold]{coordinates}[/] (loss {trained.final_loss:.3f})")

    for label, split in (("100/0", [(STABLE, 100)]), ("50/50", [(STABLE, 50), (CANARY, 50)])):
        alias = client.set_alias(NAMESPACE, NAME, ALIAS, split, reason=f"demo canary {label}")
        report.generations[label] = alias["generation"]
        shown = " ".join(f"{v}={w}" for v, w in split)
        narrator.say(
            f"lorafleet aliases set {NAMESPACE}/{NAME} {ALIAS} {shown}  "
            f"[dim]# revision {alias['revision']}, generation {alias['generation']}[/]"
        )
        _wait(lambda g=alias["generation"]: _engine_at(client, g), options, "engine at generation")
        report.served[label] = _ask_everyone(stack, prompt, report)
        _show(narrator, label, report.served[label])
    _check(report)
    return report


def _ask_everyone(
    stack: Stack, prompt: str, report: CanaryReport
) -> dict[str, list[tuple[str, str]]]:
    served: dict[str, list[tuple[str, str]]] = {}
    model = f"{NAMESPACE}/{NAME}@{ALIAS}"
    for user in USERS:
        for _ in range(ASKS_PER_USER):
            body = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0}
            response = httpx.post(
                f"{stack.engine_url}/v1/completions",
                json={**body, "user": user},
                headers=stack.engine_headers(),
                timeout=60.0,
            )
            response.raise_for_status()
            version = response.headers[SERVED_HEADER]
            text = response.json()["choices"][0]["text"]
            served.setdefault(user, []).append((version, text))
            report.answers.setdefault(version, set()).add(text)
    return served


def _show(narrator: Narrator, label: str, served: dict[str, list[tuple[str, str]]]) -> None:
    from lorafleet.demo_flow import _printable

    table = Table(f"user ({label})", f"served, {ASKS_PER_USER} requests", "answer")
    for user, seen in served.items():
        versions = sorted({v for v, _ in seen})
        answers = sorted({_printable(t) for _, t in seen})
        same = f"each time ({len(seen)}x)" if len(versions) == 1 else "CHANGED"
        table.add_row(user, f"{', '.join(versions)} {same}", " | ".join(answers))
    narrator.table(table)


def _check(report: CanaryReport) -> None:
    for label, served in report.served.items():
        moved = {u: seen for u, seen in served.items() if any(x != seen[0] for x in seen)}
        if moved:
            raise RuntimeError(f"at {label} users changed arm or answer: {ascii(moved)}")
    stable = f"{NAMESPACE}/{NAME}@{STABLE}"
    if {seen[0][0] for seen in report.served["100/0"].values()} != {stable}:
        raise RuntimeError(f"at 100/0 not every user got {stable}: {report.served['100/0']}")
    arms = {seen[0][0] for seen in report.served["50/50"].values()}
    if arms != {stable, f"{NAMESPACE}/{NAME}@{CANARY}"}:
        raise RuntimeError(f"at 50/50 the users did not split over both arms: {arms}")


def _engine_at(client: RegistryClient, generation: int) -> bool:
    engines = client.request("GET", "/v1/fleet/engines")["data"]
    return bool(engines) and all(e["generation"] >= generation for e in engines)


def _wait(done, options: DemoOptions, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + options.stage_timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {options.stage_timeout:.0f}s for {what}")
        time.sleep(0.2)
