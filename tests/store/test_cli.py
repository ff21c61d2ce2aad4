"""The store CLI end to end against a live API: namespaces, base models, tokens, upload,
list, approve, pull; errors exit non-zero with the API's code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import run_cli
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.processes import process_env
from support.stored import corrupt_canonical_weights, trainer_style_adapter
from support.tiny import tiny_hf_config
from typer.testing import CliRunner

from lorafleet.logging import configure_logging
from store.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _logs_to_real_stderr() -> None:
    # The API runs in this process: keep its structlog lines out of the captured stdout.
    configure_logging("WARNING")


def _run(reg: LiveRegistry, *args: str, token: str | None = None) -> tuple[int, str]:
    env = {"LORAFLEET_API_URL": reg.base_url, "LORAFLEET_TOKEN": token or reg.admin_token}
    result = runner.invoke(app, list(args), env=env)
    # JSON and tokens go to stdout; progress bars and errors to stderr.
    return result.exit_code, result.stdout if result.exit_code == 0 else result.stderr


def test_cli_manual_approval_flow(live_registry: LiveRegistry, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_hf_config()))
    assert _run(live_registry, "namespaces", "create", "acme", "--policy", "manual")[0] == 0
    code, output = _run(live_registry, "base-models", "add", str(config), "--name", "tiny")
    assert code == 0 and "tiny" in output
    code, writer = _run(
        live_registry,
        "tokens",
        "create",
        "--role",
        "writer",
        "--namespace",
        "acme",
        "--name",
        "ci",
    )
    assert code == 0, writer
    writer = writer.strip()
    assert writer.startswith("lft_")

    src = write_hf_peft(random_adapter(seed=2), tmp_path / "adapter")
    code, output = _run(
        live_registry,
        "adapters",
        "upload",
        str(src),
        "--namespace",
        "acme",
        "--name",
        "bot",
        "--version",
        "1.0.0",
        "--base-model",
        "tiny",
        "--provenance",
        '{"job_id": "j-9"}',
        "--json",
        token=writer,
    )
    assert code == 0, output
    uploaded = json.loads(output)
    assert uploaded["status"] == "pending" and uploaded["provenance"]["job_id"] == "j-9"

    code, output = _run(live_registry, "adapters", "list", "--status", "pending", "--json")
    listed = json.loads(output)
    assert code == 0 and [a["id"] for a in listed["data"]] == [uploaded["id"]]

    code, output = _run(live_registry, "adapters", "approve", "acme/bot@1.0.0", token=writer)
    assert code == 0 and "ready" in output
    code, output = _run(live_registry, "adapters", "pull", "acme/bot@1.0.0", str(tmp_path / "out"))
    assert code == 0, output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]

    code, output = _run(live_registry, "adapters", "reject", "acme/bot@1.0.0", token=writer)
    assert code == 1 and "illegal_transition" in output
    code, output = _run(live_registry, "adapters", "show", "acme/nope@1.0.0")
    assert code == 1 and "not_found" in output
    code, output = _run(live_registry, "namespaces", "list", token="lft_wrong")
    assert code == 1 and "unauthorized" in output


def test_root_cli_mounts_store_commands() -> None:
    from lorafleet.cli import app as root

    result = runner.invoke(root, ["--help"])
    assert result.exit_code == 0
    for group in ("adapters", "namespaces", "base-models", "tokens", "db", "api"):
        assert group in result.output
    upload_help = runner.invoke(root, ["adapters", "upload", "--help"])
    assert upload_help.exit_code == 0 and "--base-model" in upload_help.output


def test_cli_pull_original_gets_the_uploaded_files_and_fails_without_leftovers(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    import stat

    entity, src = trainer_style_adapter(live_registry, tmp_path, name="bot", seed=3)

    out = tmp_path / "original"
    code, output = _run(live_registry, "adapters", "pull", "acme/bot@1.0.0", str(out), "--original")
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
    for path in src.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes()
        assert stat.S_IMODE((out / path.name).stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o755

    # A download that fails (a corrupted blob) leaves no partial directory.
    corrupt_canonical_weights(live_registry, entity)
    broken = tmp_path / "broken"
    code, output = _run(live_registry, "adapters", "pull", "acme/bot@1.0.0", str(broken))
    assert code == 1 and "digest_mismatch" in output
    assert not broken.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --- mistakes a user makes: a one-line error and a non-zero exit, never a traceback -------


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error ...`` line of a failed command (a progress bar may precede it)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_destination_that_is_a_file_is_a_one_line_error(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    live_registry.admin.register_base_model("tiny", tiny_hf_config())
    live_registry.admin.create_namespace("acme", approval_policy="auto")
    src = write_hf_peft(random_adapter(seed=4), tmp_path / "adapter")
    live_registry.admin.upload_adapter(
        src, namespace="acme", name="bot", version="1.0.0", base_model="tiny"
    )
    (tmp_path / "somefile").write_text("not a directory")

    pulled = run_cli(live_registry, tmp_path, "adapters", "pull", "acme/bot@1.0.0", "somefile")
    assert "somefile" in _one_line_error(pulled)
    fleet = run_cli(live_registry, tmp_path, "pull", "--dest", "somefile", "--base-model", "tiny")
    assert "somefile" in _one_line_error(fleet)
    assert (tmp_path / "somefile").read_text() == "not a directory"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_upload_with_a_missing_provenance_file_is_a_one_line_error(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    live_registry.admin.register_base_model("tiny", tiny_hf_config())
    live_registry.admin.create_namespace("acme", approval_policy="auto")
    write_hf_peft(random_adapter(seed=5), tmp_path / "adapter")
    result = run_cli(
        live_registry, tmp_path, "adapters", "upload", "adapter", "--namespace", "acme",
        "--name", "bot", "--version", "1.0.0", "--base-model", "tiny",
        "--provenance", "@missing.json",
    )  # fmt: skip
    line = _one_line_error(result)
    assert "@missing.json" in line and "No such file" in line
    assert live_registry.admin.list_adapters()["data"] == []  # nothing was sent


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_prints_a_validation_pattern_verbatim_in_a_sentence(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    result = run_cli(live_registry, tmp_path, "namespaces", "create", "Acme_1")
    line = _one_line_error(result)
    # Rich would take "[a-z0-9]" for markup and print "^{0,62}$".
    assert "name 'Acme_1' does not match the pattern ^[a-z0-9][a-z0-9_.-]{0,62}$" in line


def test_cli_finds_a_running_stack_and_sends_its_token_only_to_it(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    import os

    from store.settings import STACK_FILE, RunningStack

    home = tmp_path / "home"
    home.mkdir()
    (home / "admin-token").write_text(live_registry.admin_token + "\n")

    def describe(pid: int) -> None:
        stack = RunningStack(
            api_url=live_registry.base_url,
            redis_url="redis://127.0.0.1:1/0",
            engine_url="http://127.0.0.1:1",
            token_file=home / "admin-token",
            pid=pid,
        )
        (home / STACK_FILE).write_text(stack.model_dump_json())

    # No LORAFLEET_API_URL or LORAFLEET_TOKEN: the stack file says where and with what.
    env = {"LORAFLEET_HOME": str(home), "LORAFLEET_API_URL": None, "LORAFLEET_TOKEN": None}
    describe(os.getpid())
    result = runner.invoke(app, ["namespaces", "list", "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["data"] == []

    # Another URL (the same server, by another name) does not get the stack's token.
    elsewhere = live_registry.base_url.replace("127.0.0.1", "localhost")
    result = runner.invoke(app, ["namespaces", "list", "--url", elsewhere], env=env)
    assert result.exit_code == 1 and "unauthorized" in result.stderr

    # A stack whose supervisor has exited is ignored: the default address is used instead.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    describe(int(gone.stdout))
    from support.services import free_port

    result = runner.invoke(
        app, ["namespaces", "list"], env={**env, "LORAFLEET_API_PORT": str(free_port())}
    )
    assert result.exit_code == 1 and "unreachable" in result.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_base_models_add_takes_the_model_directory(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(tiny_hf_config()))
    result = run_cli(
        live_registry, tmp_path, "base-models", "add", "./tiny", "--name", "tiny-llama"
    )
    assert result.returncode == 0, result.stderr
    assert live_registry.admin.get_base_model("tiny-llama")["hidden_size"] == 64

    gpt2 = tmp_path / "gpt2.json"
    gpt2.write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    line = _one_line_error(
        run_cli(live_registry, tmp_path, "base-models", "add", str(gpt2), "--name", "g")
    )
    assert "unsupported architecture 'GPT2LMHeadModel' (Llama family" in line


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_401_names_the_token_variable_and_option(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    env = process_env(
        {
            "LORAFLEET_API_URL": live_registry.base_url,
            "LORAFLEET_TOKEN": "lft_wrong",
            "COLUMNS": "80",
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", "from lorafleet.cli import app; app()", "namespaces", "list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**env, "LORAFLEET_HOME": str(tmp_path)},
    )
    line = _one_line_error(result)
    assert "401 unauthorized" in line and "LORAFLEET_TOKEN" in line and "--token" in line
