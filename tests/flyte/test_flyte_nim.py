"""lorafleet.flyte with the real flytekitplugins-inference (from .venv-flyte): the plugin's
own ``NIM`` deployment object, built with ``hf_repo_ids`` and ``NIM_PEFT_SOURCE``, gets a
``download-loras`` init container that fetches from lorafleet; that container's command,
run here as Kubernetes would run it (its env, the Secret's value for its secretKeyRef),
leaves NIM's layout on disk.

Runs in its own stage (``make flyte``, after scripts/install_flyte.sh); a missing
.venv-flyte fails it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ecosystem import ecosystem_python
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.processes import REPO
from support.tiny import tiny_hf_config

from store.formats import load_adapter

pytestmark = pytest.mark.flyte

BASE = "tiny"
SECRET, KEY = "lorafleet-registry", "token"

# Builds the plugin's NIM, applies lorafleet.flyte, prints the pod spec before and after as
# Kubernetes JSON. argv: peft dir, registry URL, method, secret name, secret key, repo ids...
BUILD = """
import json, sys
from kubernetes.client import ApiClient
from flytekitplugins.inference.nim.serve import NIM, NIMSecrets
from lorafleet.flyte import use_lorafleet

peft, url, method, secret, key, *repo_ids = sys.argv[1:]
def nim():
    return NIM(
        secrets=NIMSecrets(ngc_secret_key="ngc-api-key", secrets_prefix="_FSEC_"),
        hf_repo_ids=repo_ids,
        lora_adapter_mem="500Mi",
        env={"NIM_PEFT_SOURCE": peft},
    )
def dump(n):
    return ApiClient().sanitize_for_serialization(n.pod_template.pod_spec)
before = dump(nim())
after = dump(use_lorafleet(nim(), registry_url=url, token_secret=secret, token_key=key, method=method))
print(json.dumps({"before": before, "after": after}))
"""


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LiveRegistry]:
    with (
        fresh_database("sqlite", tmp_path) as url,
        serve_registry(url, tmp_path / "registry") as live,
    ):
        live.admin.register_base_model(BASE, tiny_hf_config())
        live.admin.create_namespace("acme", approval_policy="auto")
        for seed, name in enumerate(("math", "support")):
            source = write_hf_peft(random_adapter(seed=seed), tmp_path / "src" / name)
            live.admin.upload_adapter(
                source, namespace="acme", name=name, version="1.0.0", base_model=BASE
            )
        yield live


def _pod_specs(peft: Path, url: str, method: str, repo_ids: list[str]) -> dict:
    python = ecosystem_python("flyte")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(python), "-c", BUILD, str(peft), url, method, SECRET, KEY, *repo_ids],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _init(spec: dict, name: str) -> dict:
    return next(c for c in spec["initContainers"] if c["name"] == name)


def _run_init_container(container: dict, secrets: dict[tuple[str, str], str]) -> None:
    """Run the container's command as the kubelet would: its env (secretKeyRef values from
    ``secrets``), with this checkout's ``lorafleet`` on PATH in place of the image's."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": os.environ["HOME"]}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
    done = subprocess.run(
        container["command"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_nim_init_container_pulls_from_lorafleet_into_nims_layout(
    registry: LiveRegistry, tmp_path: Path
) -> None:
    peft = tmp_path / "loras"
    repo_ids = ["acme/math@1.0.0", "acme/support@1.0.0"]
    specs = _pod_specs(peft, registry.base_url, "lorafleet", repo_ids)
    before, after = (
        _init(specs["before"], "download-loras"),
        _init(specs["after"], "download-loras"),
    )

    assert "huggingface-cli" in before["command"][-1]  # what the plugin publishes
    assert "huggingface-cli" not in after["command"][-1]
    # The plugin's names, volume, mount path and resources are kept.
    assert after["volumeMounts"] == before["volumeMounts"]
    assert after["volumeMounts"][0] == {"name": "lora", "mountPath": str(peft)}
    assert after["resources"] == before["resources"]
    assert specs["after"]["volumes"] == specs["before"]["volumes"]
    server = _init(specs["after"], "model-server")
    assert {"name": "lora", "mountPath": str(peft)} in server["volumeMounts"]
    # The token is a secretKeyRef, never a literal in the pod spec.
    token_var = next(v for v in after["env"] if v["name"] == "LORAFLEET_TOKEN")
    assert token_var == {
        "name": "LORAFLEET_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": KEY}},
    }
    assert registry.admin_token not in json.dumps(specs["after"])

    reader = registry.mint("reader", "acme", "nim")
    _run_init_container(after, {(SECRET, KEY): reader})

    assert sorted(p.name for p in peft.iterdir()) == ["math@1.0.0", "support@1.0.0"]
    for ref in repo_ids:
        directory = peft / ref.split("/")[-1]
        assert sorted(p.name for p in directory.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        assert load_adapter(directory).rank == 4
        served = registry.admin.resolve(ref)["files"]
        size = {f["path"]: f["size"] for f in served if f["role"] == "canonical"}
        assert (directory / "adapter_model.safetensors").stat().st_size == size[
            "adapter_model.safetensors"
        ]


def test_a_wrong_token_fails_the_init_container_and_writes_nothing(
    registry: LiveRegistry, tmp_path: Path
) -> None:
    peft = tmp_path / "loras"
    specs = _pod_specs(peft, registry.base_url, "lorafleet", ["acme/math@1.0.0"])
    container = _init(specs["after"], "download-loras")
    env = {(SECRET, KEY): "not-a-token"}
    with pytest.raises(AssertionError, match="401"):
        _run_init_container(container, env)
    assert list(peft.iterdir()) == []


def test_a_repo_id_without_version_is_refused_for_the_lorafleet_method(tmp_path: Path) -> None:
    python = ecosystem_python("flyte")
    done = subprocess.run(
        [
            str(python),
            "-c",
            BUILD,
            str(tmp_path),
            "http://r:8080",
            "lorafleet",
            SECRET,
            KEY,
            "acme/x",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert done.returncode != 0
    assert "namespace/name@version" in done.stderr


def test_the_hf_method_downloads_through_v1_hf_with_stock_hf_download(
    registry: LiveRegistry, tmp_path: Path
) -> None:
    peft = tmp_path / "loras"
    repo_ids = ["acme/math", "acme/support@1.0.0"]  # main = the highest ready version
    specs = _pod_specs(peft, registry.base_url, "hf", repo_ids)
    container = _init(specs["after"], "download-loras")
    assert "hf download acme/math " in container["command"][-1]
    endpoint = next(v for v in container["env"] if v["name"] == "HF_ENDPOINT")
    assert endpoint["value"] == registry.base_url + "/v1/hf"

    reader = registry.mint("reader", "acme", "nim-hf")
    _run_init_container(container, {(SECRET, KEY): reader})

    assert sorted(p.name for p in peft.iterdir()) == ["math", "support@1.0.0"]
    for name, ref in (("math", "acme/math@1.0.0"), ("support@1.0.0", "acme/support@1.0.0")):
        directory = peft / name
        assert sorted(p.name for p in directory.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
        files = registry.admin.resolve(ref)["files"]
        served = {f["path"]: f["sha256"] for f in files if f["role"] == "canonical"}
        digest = hashlib.sha256((directory / "adapter_model.safetensors").read_bytes())
        assert digest.hexdigest() == served["adapter_model.safetensors"]
