"""``lorafleet aliases set|show|list|history|delete`` and ``lorafleet adapters pin|unpin`` /
``archive --drop-from-aliases`` against a live registry (real HTTP, SQLite and
PostgreSQL). ``aliases show`` prints each arm's figures as ``GET /v1/usage?group_by=alias``
reports them, folded by the usage worker's own ``store.usage.fold_flush``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlmodel import Session
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config
from typer.testing import CliRunner

from events.usage import UsageCount, UsageFlush
from lorafleet.logging import configure_logging
from store import registry
from store.cli import app
from store.models import Provenance
from store.tenancy import create_namespace, register_base_model
from store.usage import fold_flush

runner = CliRunner()
BASE = "tiny-llama"


@pytest.fixture(autouse=True)
def _logs_to_real_stderr() -> None:
    configure_logging("WARNING")


def cli(reg: LiveRegistry, *args: str) -> tuple[int, str]:
    env = {
        "LORAFLEET_API_URL": reg.base_url,
        "LORAFLEET_TOKEN": reg.admin_token,
        "COLUMNS": "200",
    }
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.stderr


@pytest.fixture
def versions(live_registry: LiveRegistry, make_package) -> dict[str, str]:
    ids = {}
    with Session(live_registry.engine) as session:
        register_base_model(session, BASE, tiny_hf_config(), actor="admin")
        create_namespace(session, "acme", approval_policy="auto", actor="admin")
        for seed, version in enumerate(["1.2.0", "1.3.0"], start=1):
            row, _ = registry.commit_version(
                session,
                make_package(seed),
                namespace="acme",
                name="bot",
                version=version,
                base_model=BASE,
                provenance=Provenance(),
                actor="trainer",
            )
            ids[version] = row.id
        session.commit()
    return ids


def rows(output: str) -> list[list[str]]:
    """The cells of a rich table's header and body rows."""
    return [
        [cell.strip() for cell in line.strip().strip("│┃").split("│" if "│" in line else "┃")]
        for line in output.splitlines()
        if line.lstrip()[:1] in ("│", "┃")
    ]


def _meter(reg: LiveRegistry, arms: dict[str, tuple[int, int, int]]) -> None:
    """Fold one engine flush: per served version (requests, errors, latency_ms) of
    acme/bot@stable."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    counts = [
        UsageCount(
            hour=hour,
            namespace="acme",
            adapter=f"acme/bot@{version}",
            alias="acme/bot@stable",
            requests=requests,
            prompt_tokens=requests * 5,
            completion_tokens=requests * 2,
            errors=errors,
            latency_ms=latency,
        )
        for version, (requests, errors, latency) in arms.items()
    ]
    with Session(reg.engine) as session:
        flush = UsageFlush(engine_id="e1", flush_id="boot-1", base_model=BASE, counts=counts)
        assert fold_flush(session, flush)
        session.commit()


def test_aliases_set_show_list_history_delete(live_registry, versions):
    code, output = cli(live_registry, "aliases", "set", "acme/bot", "stable", "1.2.0")
    assert code == 0, output
    assert "acme/bot@stable (revision 1" in output and "100%" in output
    code, output = cli(
        live_registry, "aliases", "set", "acme/bot", "stable", "1.2.0=90", "1.3.0=10", "--pin"
    )
    assert code == 0, output
    assert "revision 2" in output and "pinned" in output

    code, output = cli(live_registry, "aliases", "show", "acme/bot", "stable")
    assert code == 0, output
    assert rows(output)[1][:3] == ["1.2.0", "90%", "0"]  # no traffic yet: zero, not missing

    _meter(live_registry, {"1.2.0": (9, 1, 180), "1.3.0": (1, 0, 50)})
    code, output = cli(live_registry, "aliases", "show", "acme/bot", "stable")
    assert code == 0, output
    assert rows(output)[1:] == [
        ["1.2.0", "90%", "9", "45", "18", "1", "20.0"],
        ["1.3.0", "10%", "1", "5", "2", "0", "50.0"],
    ]

    code, output = cli(live_registry, "aliases", "list", "acme/bot")
    assert code == 0, output
    assert rows(output)[1:] == [
        ["stable", "1.2.0=90, 1.3.0=10", "2", rows(output)[1][3], "true"],
        ["latest", "1.3.0=100", "implicit", rows(output)[2][3], "false"],
    ]

    code, output = cli(live_registry, "aliases", "delete", "acme/bot", "stable")
    assert code == 0 and "acme/bot@stable deleted" in output
    code, output = cli(live_registry, "aliases", "history", "acme/bot", "stable")
    assert code == 0, output
    assert [(r[0], r[1]) for r in rows(output)[1:]] == [("1", "set"), ("2", "set"), ("3", "delete")]
    code, output = cli(live_registry, "aliases", "show", "acme/bot", "stable")
    assert code == 1 and "404 not_found" in output


def test_a_former_arm_with_figures_is_shown_as_former(live_registry, versions):
    cli(live_registry, "aliases", "set", "acme/bot", "stable", "1.2.0=50", "1.3.0=50")
    _meter(live_registry, {"1.2.0": (4, 0, 40), "1.3.0": (4, 0, 80)})
    cli(live_registry, "aliases", "set", "acme/bot", "stable", "1.3.0")
    code, output = cli(live_registry, "aliases", "show", "acme/bot", "stable")
    assert code == 0, output
    assert rows(output)[1:] == [
        ["1.3.0", "100%", "4", "20", "8", "0", "20.0"],
        ["1.2.0", "former", "4", "20", "8", "0", "10.0"],
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stable", "1.2.0=60", "1.3.0=30"], "invalid_alias_target: weights must sum to 100"),
        (["1.2.0", "1.2.0"], "invalid_alias: alias '1.2.0' reads as a version"),
        (["latest", "1.2.0"], "invalid_alias: alias 'latest' is reserved"),
        (["stable", "1.2.0=x"], "the weight after '=' must be a whole number"),
    ],
)
def test_aliases_set_refusals_exit_non_zero(live_registry, versions, args, message):
    code, output = cli(live_registry, "aliases", "set", "acme/bot", *args)
    assert code != 0
    assert message in " ".join(output.split())


def test_pin_unpin_and_archive_with_drop(live_registry, versions):
    code, output = cli(live_registry, "adapters", "pin", "acme/bot@1.2.0")
    assert (code, output.strip()) == (0, "acme/bot@1.2.0 pinned")
    assert live_registry.admin.get_adapter(versions["1.2.0"])["pinned"] is True
    code, output = cli(live_registry, "adapters", "unpin", "acme/bot@1.2.0")
    assert (code, output.strip()) == (0, "acme/bot@1.2.0 unpinned")

    cli(live_registry, "aliases", "set", "acme/bot", "stable", "1.2.0=50", "1.3.0=50")
    code, output = cli(live_registry, "adapters", "archive", "acme/bot@1.2.0")
    assert code == 1
    assert "409 alias_target" in output and "acme/bot@stable" in output
    code, output = cli(
        live_registry, "adapters", "archive", "acme/bot@1.2.0", "--drop-from-aliases"
    )
    assert code == 0 and "archived" in output
    code, output = cli(live_registry, "aliases", "list", "acme/bot")
    assert rows(output)[1][:2] == ["stable", "1.3.0=100"]
