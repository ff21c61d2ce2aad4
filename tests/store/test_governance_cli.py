"""``lorafleet adapters history|restore``, ``lorafleet audit`` and four-eyes from the CLI,
as a user runs them against a live registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import run_cli
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config

BASE = "meta/tiny"


def test_history_restore_and_audit_from_the_cli(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    live_registry.admin.register_base_model(BASE, tiny_hf_config())
    made = run_cli(
        live_registry, tmp_path, "namespaces", "create", "bank", "--require-distinct-approver"
    )
    assert made.returncode == 0, made.stderr
    assert live_registry.admin.get_namespace("bank")["require_distinct_approver"] is True
    alice = live_registry.mint("writer", "bank", "alice")
    src = write_hf_peft(random_adapter(seed=3), tmp_path / "ad")
    up = run_cli(
        live_registry,
        tmp_path,
        *("adapters", "upload", str(src), "--namespace", "bank", "--name", "bot"),
        *("--version", "1.0.0", "--base-model", BASE),
        token=alice,
    )
    assert up.returncode == 0, up.stderr
    ref = "bank/bot@1.0.0"
    own = run_cli(live_registry, tmp_path, "adapters", "approve", ref, token=alice)
    assert own.returncode != 0 and "self_approval" in own.stdout + own.stderr
    assert run_cli(live_registry, tmp_path, "adapters", "approve", ref).returncode == 0
    assert run_cli(live_registry, tmp_path, "adapters", "archive", ref).returncode == 0
    restored = run_cli(live_registry, tmp_path, "adapters", "restore", ref, "--reason", "rollback")
    assert restored.returncode == 0, restored.stderr
    assert "ready" in restored.stdout and "generation" in restored.stdout

    history = run_cli(live_registry, tmp_path, "adapters", "history", ref, "--json")
    steps = json.loads(history.stdout)["data"]
    assert [(s["from_status"], s["to_status"]) for s in steps] == [
        ("validating", "pending"),
        ("pending", "ready"),
        ("ready", "archived"),
        ("archived", "ready"),
    ]
    assert steps[-1]["reason"] == "rollback" and steps[-1]["actor"] == "admin"
    table = run_cli(live_registry, tmp_path, "adapters", "history", ref, columns=200)
    assert "rollback" in table.stdout and "uploaded by token:alice@bank" in table.stdout

    audit = run_cli(
        live_registry, tmp_path, "audit", "--action", "adapter.ready", "--json", token=alice
    )
    rows = json.loads(audit.stdout)["data"]
    assert [(r["actor"], r["outcome"]) for r in rows] == [
        ("admin", "ok"),
        ("token:alice@bank", "self_approval"),
    ]
    page = run_cli(live_registry, tmp_path, "audit", "--namespace", "bank", columns=200)
    assert page.returncode == 0 and "adapter.restore" in page.stdout
