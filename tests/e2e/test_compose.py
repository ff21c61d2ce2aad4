"""compose.yaml and the Dockerfile, checked as specifications.

``docker compose config -q`` runs when the compose plugin is installed; the structural checks
(health checks, dependency conditions, env names the settings classes really read) run
everywhere, so CI catches a broken deployment file without Docker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.settings import EngineSettings
from events.s3 import S3Settings
from store.settings import StoreSettings
from workers.evaluate import EvalSettings
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ONE_SHOT = {"minio-init", "migrate", "model-init", "engine-token"}
ENGINES = ("engine-cpu", "engine-gpu")
# The indexes download.pytorch.org publishes torch 2.13 wheels on (pytorch/pytorch RELEASE.md,
# "Release Compatibility Matrix": CUDA 12.6 and 13.0 stable, 13.2 experimental; 12.8 was
# dropped in 2.12). This machine cannot reach the host: the table is the check.
TORCH_2_13_INDEXES = {
    f"https://download.pytorch.org/whl/{v}" for v in ("cpu", "cu126", "cu130", "cu132")
}
LORAFLEET_COMMANDS = {"api", "bridge", "worker", "beat", "db", "engine", "webhook-sender"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) if installed, else ``docker-compose`` (which .ci/run
    installs from Debian); the test fails if neither exists, so CI always validates."""
    if shutil.which("docker") is not None:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed (see .ci/run)")


def _compose_config(profile: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``docker compose --profile <profile> config`` under this environment, minus any
    ``LORAFLEET_ADMIN_TOKEN`` the test run itself has."""
    base = {k: v for k, v in os.environ.items() if k != "LORAFLEET_ADMIN_TOKEN"}
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE), "--profile", profile, "config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**base, **env},
    )


def test_compose_config_is_valid_for_docker(compose: dict[str, Any]) -> None:
    """``docker compose config`` accepts the file with every profile."""
    for profile in ("cpu", "gpu"):
        result = _compose_config(profile, LORAFLEET_ADMIN_TOKEN="lft_compose_test")
        assert result.returncode == 0, result.stderr
    assert {
        "redis",
        "postgres",
        "minio",
        "api",
        "bridge",
        "worker",
        "beat",
        "webhook-sender",
    } <= set(compose["services"])


def test_compose_refuses_to_start_without_an_admin_token() -> None:
    """No known default admin token: every compose command fails until one is set."""
    for profile in ("cpu", "gpu"):
        result = _compose_config(profile)
        assert result.returncode != 0, result.stdout
        assert "set LORAFLEET_ADMIN_TOKEN" in result.stderr, result.stderr
        empty = _compose_config(profile, LORAFLEET_ADMIN_TOKEN="")
        assert empty.returncode != 0, "an empty admin token must be refused too"


def test_engines_get_a_reader_token_and_never_the_admin_token() -> None:
    secret = "lft_admin_compose_test_secret"
    result = _compose_config("gpu", LORAFLEET_ADMIN_TOKEN=secret)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    minter = services["engine-token"]
    assert minter["environment"]["LORAFLEET_TOKEN"] == secret
    script = " ".join(minter["command"])
    assert "lorafleet tokens create --role reader --name engine" in script
    assert "--namespace" not in script  # a global reader: engines serve every namespace
    for name in ENGINES:
        if name not in services:
            continue
        engine = services[name]
        assert secret not in yaml.safe_dump(engine), f"{name} sees the admin token"
        assert not {"LORAFLEET_DATABASE_URL", "LORAFLEET_S3_SECRET_KEY"} & set(
            engine["environment"]
        ), f"{name} holds registry store credentials"
        assert engine["depends_on"]["engine-token"]["condition"] == (
            "service_completed_successfully"
        )
        assert "/run/lorafleet/engine-token" in " ".join(engine["command"])
        assert any(str(v).endswith(":/run/lorafleet:ro") for v in engine["volumes"]), name


def test_gpu_image_torch_index_publishes_the_pinned_torch(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    [pin] = re.findall(r"^ARG TORCH_VERSION=(\S+)", dockerfile, flags=re.MULTILINE)
    assert pin.startswith("2.13."), "update TORCH_2_13_INDEXES for a new torch"
    [cpu_index] = re.findall(r"^ARG TORCH_INDEX_URL=(\S+)", dockerfile, flags=re.MULTILINE)
    gpu_index = compose["services"]["engine-gpu"]["build"]["args"]["TORCH_INDEX_URL"]
    assert {cpu_index, gpu_index} <= TORCH_2_13_INDEXES
    assert gpu_index != cpu_index
    assert gpu_index in dockerfile, "the Dockerfile's CUDA example names another index"


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name in ONE_SHOT:
            assert check == {"disable": True}, f"one-shot {name} should declare its check disabled"
            assert service.get("restart") == "no", f"one-shot {name} must not restart"
        else:
            assert check.get("test"), f"{name}'s healthcheck has no test"
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_dependencies_wait_on_health_or_completion(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dep}: {spec}"
    # The ordering that matters: schema before API, bucket before anything storing blobs.
    for name in ("api", "bridge", "worker", "beat"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
    assert services["engine-cpu"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_redis_is_append_only(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_gpu_engine_reserves_an_nvidia_gpu_and_cpu_profile_exists(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["engine-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["profiles"] == ["gpu"]
    cpu = compose["services"]["engine-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu


def _settings_env_names() -> set[str]:
    names = {f"LORAFLEET_{f.upper()}" for f in StoreSettings.model_fields}
    names |= {f"LORAFLEET_{f.upper()}" for f in WorkerSettings.model_fields}
    names |= {f"LORAFLEET_S3_{f.upper()}" for f in S3Settings.model_fields}
    names |= {f"LORAFLEET_EVAL_{f.upper()}" for f in EvalSettings.model_fields}
    for field in EngineSettings.model_fields.values():
        alias = field.validation_alias
        names |= {c for c in getattr(alias, "choices", []) if isinstance(c, str) and c.isupper()}
    return names | {"LORAFLEET_LOG_FORMAT", "LORAFLEET_LOG_LEVEL"}  # lorafleet.logging


def test_environment_names_are_read_by_the_settings_classes(compose: dict[str, Any]) -> None:
    """A typo in an env name would be silently ignored at run time: catch it here."""
    known = _settings_env_names()
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith(("LORAFLEET_", "NIM_")):
                assert key in known, f"{name}: {key} is read by no settings class"


def test_lorafleet_services_run_the_lorafleet_image_and_commands(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        assert service["build"]["target"] == "runtime", name
        if service.get("entrypoint") == ["/bin/sh", "-c"]:  # a shell around one lorafleet call
            [command] = re.findall(r"lorafleet (\S+)", " ".join(service["command"]))
        else:
            command = service["command"][0]
        assert command in LORAFLEET_COMMANDS | {"tokens"}, f"{name}: {service['command']}"


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE | re.IGNORECASE)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    user = re.findall(r"^USER\s+(\S+)", runtime, flags=re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0"))
    assert "COPY --from=build" in runtime
    # CPU torch comes from its own index, before lorafleet and its engine extra.
    assert text.index("torch==") < text.index('pip install ".[engine]"')
