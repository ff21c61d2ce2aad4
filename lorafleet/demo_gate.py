"""The demo's evaluation gate (issue 17): namespace ``initech`` (auto approval) scores every
new version on an eval set (examples/math.jsonl) before it may be ready. The math adapter
the demo trained passes with its exact-match score and is served; an adapter trained on the
same prompts with their answers shuffled is held back in ``pending`` with reason
``evaluation_failed`` and its scores, never loaded.

The ``evaluate`` step runs on the stack's ``eval`` worker (``lorafleet worker -Q evaluate``
holding the tiny base model), candidate, base model and comparison in the same batches.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from events.publisher import announce_job_completed
from lorafleet.train import Example, TrainConfig, train_lora
from store.client import RegistryClient

NAMESPACE = "initech"
EVAL_SET = Path(__file__).resolve().parents[1] / "examples" / "math.jsonl"
GATE = {"max_loss_ratio": 0.9, "min_exact_match": 0.5, "max_regression": 0.02}


@dataclass
class GateReport:
    """What the gate decided: coordinates -> status, status code, and the evaluation."""

    statuses: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_gate(
    narrator: Any,
    client: RegistryClient,
    stack: Any,
    math_dir: Path,
    examples: tuple[Example, ...],
    *,
    base_model: str,
    train_steps: int,
    timeout: float,
) -> GateReport:
    """Set the gate up, announce the math adapter (``math_dir``) and a shuffled-labels one,
    and report what the gate did with each."""
    narrator.step(f"An evaluation gate: namespace {NAMESPACE} scores every version first")
    client.create_namespace(NAMESPACE, approval_policy="auto")
    client.request(
        "POST",
        f"/v1/namespaces/{NAMESPACE}/eval-sets",
        json={"name": "math", "content": EVAL_SET.read_text()},
    )
    policy = {"eval_set": "math", "metrics": ["loss", "exact_match"], "gate": GATE}
    client.request("PUT", f"/v1/namespaces/{NAMESPACE}/eval-policy", json=policy)
    narrator.say(
        f"eval set [bold]{NAMESPACE}/math[/] ({EVAL_SET.name}); gate: loss <= 0.9 x base, "
        "exact match >= 0.5, no worse than the latest ready version by 2% "
        f"(lorafleet eval-policy show {NAMESPACE})"
    )
    answers = [e.answer for e in examples]
    shuffled = tuple(
        Example(e.prompt, answers[(i + 1) % len(examples)]) for i, e in enumerate(examples)
    )
    broken_dir = stack.home / "training" / "math-shuffled"
    train_lora(stack.model_dir, shuffled, broken_dir, TrainConfig(steps=train_steps, seed=1))
    report = GateReport()
    wanted = {
        f"{NAMESPACE}/math-tutor@1.0.0": math_dir,
        f"{NAMESPACE}/math-shuffled@1.0.0": broken_dir,
    }
    for coordinates, directory in wanted.items():
        announce_job_completed(
            stack.redis_url,
            job_id=f"demo-gate-{uuid.uuid4().hex[:8]}",
            namespace=NAMESPACE,
            output_model=coordinates,
            base_model=base_model,
            output_dir=directory,
            upload_to=(stack.home / "artifacts").as_uri(),
            dataset="demo://shuffled-labels" if "shuffled" in coordinates else "demo://math",
        )
    for coordinates in wanted:
        entity = _registered(client, stack, coordinates, timeout)
        report.statuses[coordinates] = (entity["status"], entity.get("status_code"))
        report.evaluations[coordinates] = client.request(
            "GET", f"/v1/adapters/{entity['id']}/evaluation"
        )
    _print(narrator, report)
    return report


def _registered(client: RegistryClient, stack: Any, coordinates: str, timeout: float) -> dict:
    """The version once the pipeline has registered it (evaluated first)."""
    from store.client import ApiError

    namespace, rest = coordinates.split("/")
    name, version = rest.split("@")
    deadline = time.monotonic() + timeout
    while True:
        stack.check_alive()
        try:
            entity = client.get_version(namespace, name, version)
            if entity["status"] in ("pending", "ready", "failed"):
                return entity
        except ApiError as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"{coordinates} was not registered in {timeout:.0f}s")
        time.sleep(0.3)


def _print(narrator: Any, report: GateReport) -> None:
    table = Table("version", "exact match", "loss (base)", "gate", "status")
    for coordinates, body in report.evaluations.items():
        cand, base = body["scores"]["candidate"], body["scores"]["base"]
        status, code = report.statuses[coordinates]
        table.add_row(
            coordinates,
            f"{cand['exact_match']:.2f}",
            f"{cand['loss']:.3f} ({base['loss']:.3f})",
            "pass" if body["passed"] else "fail",
            status + (f" ({code})" if code else ""),
        )
    narrator.table(table)
    for coordinates, body in report.evaluations.items():
        if not body["passed"]:
            failed = [c["detail"] for c in body["checks"] if c["passed"] is False]
            narrator.say(f"{coordinates} held back: {'; '.join(failed)}")
    narrator.say(f"scores per version: lorafleet adapters show {NAMESPACE}/math-shuffled@1.0.0")
