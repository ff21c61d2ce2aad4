"""What an upload checks before it sends a file (token role, coordinates, namespace, base
model: ``GET /v1/adapters/upload-check``), which files it sends (trainer state left out,
``--include``/``--exclude``), and the safe defaults of new namespaces and adapter names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.cli import run_cli
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.processes import process_env
from support.tiny import tiny_hf_config

from store.client import ApiError

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

TRAINER_STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")


def _setup(reg: LiveRegistry, policy: str = "auto") -> str:
    """Base model ``tiny``, namespace ``acme``; returns a writer token of ``acme``."""
    reg.admin.register_base_model("tiny", tiny_hf_config())
    reg.admin.create_namespace("acme", approval_policy=policy)
    return reg.mint("writer", "acme", "ci")


def _checkpoint(directory: Path, seed: int = 1) -> Path:
    """An HF Trainer checkpoint: the adapter plus what the Trainer saves to resume."""
    write_hf_peft(random_adapter(seed=seed), directory)
    for name in TRAINER_STATE:
        (directory / name).write_bytes(b"\x80\x04resume state")
    (directory / "trainer_state.json").write_text('{"global_step": 60}')
    return directory


def _upload_args(src: Path, name: str = "bot", version: str = "1.0.0") -> list[str]:
    return [
        "adapters", "upload", str(src), "--namespace", "acme", "--name", name,
        "--version", version, "--base-model", "tiny", "--json",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("token_role", "target", "expected"),
    [
        ("reader", {}, (403, "forbidden")),
        ("admin", {"namespace": "ghost"}, (404, "not_found")),
        ("writer", {"base_model": "tiny-lama"}, (422, "unknown_base_model")),
        ("writer", {"version": "1.0"}, (400, "bad_request")),
        ("writer", {"name": "Bot"}, (400, "bad_request")),
    ],
    ids=["reader_token", "missing_namespace", "unknown_base_model", "bad_version", "uppercase"],
)
def test_upload_is_refused_before_any_file_byte_is_sent(
    live_registry: LiveRegistry,
    tmp_path: Path,
    token_role: str,
    target: dict,
    expected: tuple,
) -> None:
    writer = _setup(live_registry)
    tokens = {
        "reader": live_registry.mint("reader", "acme", "nim"),
        "writer": writer,
        "admin": live_registry.admin_token,
    }
    src = write_hf_peft(random_adapter(seed=3), tmp_path / "adapter")
    coordinates = {"namespace": "acme", "name": "bot", "version": "1.0.0", "base_model": "tiny"}
    sent: list[int] = []
    with live_registry.client(tokens[token_role]) as client, pytest.raises(ApiError) as err:
        client.upload_adapter(src, **{**coordinates, **target}, progress=sent.append)
    assert (err.value.status, err.value.code) == expected, err.value
    assert sent == []  # not one byte of the files was read to be sent
    assert live_registry.admin.list_adapters()["data"] == []


def test_upload_check_answers_the_namespace_policy_and_whether_the_version_exists(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    writer = _setup(live_registry, policy="manual")
    target = {"namespace": "acme", "name": "bot", "version": "1.0.0", "base_model": "tiny"}
    with live_registry.client(writer) as client:
        check = client.check_upload(**target)
        assert (check["approval_policy"], check["exists"]) == ("manual", False)
        assert check["coordinates"] == "acme/bot@1.0.0"
        client.upload_adapter(write_hf_peft(random_adapter(), tmp_path / "a"), **target)
        assert client.check_upload(**target)["exists"] is True
        with pytest.raises(ApiError) as err:
            client.check_upload(**{**target, "version": "one"})
    assert "invalid version 'one'" in err.value.message


def test_cli_upload_as_a_reader_fails_before_the_progress_bar(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    _setup(live_registry)
    reader = live_registry.mint("reader", "acme", "nim")
    src = write_hf_peft(random_adapter(seed=2), tmp_path / "adapter")
    result = run_cli(live_registry, tmp_path, *_upload_args(src), token=reader, columns=200)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "403 forbidden" in result.stderr, result.stderr
    assert "upload acme/bot@1.0.0" not in result.stderr  # no progress bar was started


def test_cli_upload_leaves_trainer_state_out_with_a_warning_unless_included(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    writer = _setup(live_registry)
    src = _checkpoint(tmp_path / "checkpoint-60")
    (src / "README.md").write_text("notes")

    result = run_cli(
        live_registry, tmp_path, *_upload_args(src), "--exclude", "*.md", token=writer, columns=200
    )
    assert result.returncode == 0, result.stderr
    originals = {f["path"] for f in json.loads(result.stdout)["files"] if f["role"] == "original"}
    assert originals == {"adapter_config.json", "adapter_model.safetensors"}
    for name in (*TRAINER_STATE, "trainer_state.json"):
        assert f"warning {name} is trainer state" in result.stderr, result.stderr
    assert "README.md" not in result.stderr  # excluded on purpose: no warning

    args = _upload_args(src, version="1.0.1")
    result = run_cli(
        live_registry, tmp_path, *args, "--include", "trainer_state.json", token=writer, columns=200
    )
    assert result.returncode == 0, result.stderr
    originals = {f["path"] for f in json.loads(result.stdout)["files"] if f["role"] == "original"}
    assert originals == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "trainer_state.json",
        "README.md",
    }
    assert "warning trainer_state.json" not in result.stderr

    shown = run_cli(
        live_registry, tmp_path, "adapters", "upload", "--help", token=writer, columns=200
    )
    assert "--include" in shown.stdout and "--exclude" in shown.stdout
    assert "optimizer.pt" in shown.stdout and "left" in shown.stdout


def test_cli_refuses_an_uppercase_adapter_name_without_asking_the_api(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    writer = _setup(live_registry)
    src = write_hf_peft(random_adapter(seed=2), tmp_path / "adapter")
    # An unreachable API: the name is judged locally, by the pattern events and API share.
    dead = {"LORAFLEET_API_URL": "http://127.0.0.1:9"}
    env = process_env({"LORAFLEET_TOKEN": writer, "LORAFLEET_HOME": str(tmp_path), **dead})
    result = subprocess.run(
        [sys.executable, "-c", "from lorafleet.cli import app; app()"]
        + _upload_args(src, name="Support-Bot"),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "invalid adapter name 'Support-Bot'" in result.stderr, result.stderr
    assert "lowercase" in result.stderr


def test_new_namespace_is_manual_unless_told_and_the_cli_says_so(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    admin = live_registry.admin
    admin.register_base_model("tiny", tiny_hf_config())
    with live_registry.http(live_registry.admin_token) as http:
        created = http.post("/v1/namespaces", json={"name": "api-made"})
    assert created.status_code == 201 and created.json()["approval_policy"] == "manual"

    result = run_cli(
        live_registry,
        tmp_path,
        "namespaces",
        "create",
        "acme",
        token=live_registry.admin_token,
        columns=200,
    )
    assert result.returncode == 0, result.stderr
    assert "policy manual" in result.stdout
    writer = live_registry.mint("writer", "acme", "ci")
    with live_registry.client(writer) as client:
        entity = client.upload_adapter(
            write_hf_peft(random_adapter(), tmp_path / "a"),
            namespace="acme",
            name="bot",
            version="1.0.0",
            base_model="tiny",
        )
    assert entity["status"] == "pending"  # nothing served before someone approves it

    shown = run_cli(
        live_registry, tmp_path, "namespaces", "create", "--help", token=writer, columns=200
    )
    assert "Without --policy it is manual" in " ".join(shown.stdout.split())


def test_upload_route_documents_the_adapter_name_pattern(live_registry: LiveRegistry) -> None:
    from events.models import NAME_PATTERN, NAMESPACE_PATTERN

    schema = httpx.get(f"{live_registry.base_url}/openapi.json").json()
    body = schema["paths"]["/v1/adapters"]["post"]["requestBody"]["content"]
    fields = body["multipart/form-data"]["schema"]["properties"]
    assert fields["name"]["pattern"] == NAME_PATTERN
    assert fields["namespace"]["pattern"] == NAMESPACE_PATTERN
