"""Point the Flyte NIM deployment's LoRA download at lorafleet (``pip install lorafleet[flyte]``).

``flytekitplugins.inference.nim.serve.NIM`` built with ``hf_repo_ids`` and ``NIM_PEFT_SOURCE``
adds an init container ``download-loras`` that runs ``pip install -U "huggingface_hub[cli]"``
then ``huggingface-cli download``; huggingface_hub >= 1.0 no longer ships ``huggingface-cli``,
so that container fails as published. ``use_lorafleet(nim, ...)`` rewrites that container in
place and keeps everything else the plugin set up: the container's name, the ``lora``
volume, its mount path (``NIM_PEFT_SOURCE``), the resources and the directory names (one per
repo id, ``repo_id.split("/")[-1]``, the name NIM serves it under), each holding
``adapter_config.json`` + ``adapter_model.safetensors``. The registry token comes from a
Kubernetes Secret (``secretKeyRef``), never from the pod spec.

Two ways to download (``method``):

* ``"lorafleet"`` (default): the lorafleet image runs ``lorafleet adapters pull REF DIR`` per
  repo id, each a lorafleet reference (``namespace/name@version`` or an adapter id); every
  file is verified against its sha256 and a directory appears complete or not at all.
* ``"hf"``: a Python image runs ``hf download`` (current huggingface_hub's CLI) with
  ``HF_ENDPOINT`` = the registry's ``/v1/hf``; repo ids are ``namespace/name`` (the highest
  ready version) or ``namespace/name@version``.
"""

from __future__ import annotations

import shlex
from typing import Any

INIT_CONTAINER = "download-loras"  # the plugin's names, kept
LORA_VOLUME = "lora"
LORAFLEET_IMAGE = "ghcr.io/your-org/lorafleet:0.1.0"
HF_IMAGE = "python:3.12-slim"
METHODS = ("lorafleet", "hf")


def use_lorafleet(
    nim: Any,
    *,
    registry_url: str,
    token_secret: str,
    token_key: str = "token",
    method: str = "lorafleet",
    image: str | None = None,
) -> Any:
    """Rewrite ``nim``'s ``download-loras`` init container to fetch its ``hf_repo_ids`` from
    the lorafleet registry at ``registry_url``, with the bearer token in key ``token_key`` of
    the Kubernetes Secret ``token_secret``; returns ``nim``.

    Raises ``ValueError`` when ``nim`` has no such container (built without ``hf_repo_ids``),
    for an unknown ``method``, or for a repo id the method cannot fetch."""
    from kubernetes.client.models import V1EnvVar, V1EnvVarSource, V1SecretKeySelector

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    spec = nim.pod_template.pod_spec
    container = next((c for c in spec.init_containers or [] if c.name == INIT_CONTAINER), None)
    repo_ids = list(getattr(nim, "_hf_repo_ids", None) or [])
    if container is None or not repo_ids:
        raise ValueError(
            f"no {INIT_CONTAINER!r} init container: build the NIM with hf_repo_ids and "
            "NIM_PEFT_SOURCE in env"
        )
    mount = next(m for m in container.volume_mounts if m.name == LORA_VOLUME)
    secret = V1EnvVarSource(secret_key_ref=V1SecretKeySelector(name=token_secret, key=token_key))
    if method == "lorafleet":
        script = _lorafleet_script(mount.mount_path, repo_ids)
        env = [
            V1EnvVar(name="LORAFLEET_API_URL", value=registry_url.rstrip("/")),
            V1EnvVar(name="LORAFLEET_TOKEN", value_from=secret),
        ]
    else:
        script = _hf_script(mount.mount_path, repo_ids)
        env = [
            V1EnvVar(name="HF_ENDPOINT", value=registry_url.rstrip("/") + "/v1/hf"),
            V1EnvVar(name="HF_TOKEN", value_from=secret),
            V1EnvVar(name="HF_HUB_DISABLE_TELEMETRY", value="1"),
        ]
    container.image = image or (LORAFLEET_IMAGE if method == "lorafleet" else HF_IMAGE)
    container.command = ["sh", "-c", script]
    container.args = None
    container.env = env
    return nim


def served_dir(repo_id: str) -> str:
    """The directory (and NIM model name) the plugin gives ``repo_id``."""
    return repo_id.split("/")[-1]


def _lorafleet_script(peft_dir: str, repo_ids: list[str]) -> str:
    lines = ["set -eu", f"export LOCAL_PEFT_DIRECTORY={shlex.quote(peft_dir)}"]
    lines.append('mkdir -p "$LOCAL_PEFT_DIRECTORY"')
    for ref in repo_ids:
        if "@" not in ref and not ref.startswith("ad_"):
            raise ValueError(
                f"{ref!r}: method 'lorafleet' takes namespace/name@version or an adapter id "
                "(method 'hf' resolves namespace/name to its highest ready version)"
            )
        target = f'"$LOCAL_PEFT_DIRECTORY"/{shlex.quote(served_dir(ref))}'
        lines.append(f"lorafleet adapters pull {shlex.quote(ref)} {target}")
    return "\n".join(lines) + "\n"


def _hf_script(peft_dir: str, repo_ids: list[str]) -> str:
    lines = [
        "set -eu",
        'command -v hf >/dev/null 2>&1 || pip install -q -U "huggingface_hub>=1.0"',
        f"export LOCAL_PEFT_DIRECTORY={shlex.quote(peft_dir)}",
        'mkdir -p "$LOCAL_PEFT_DIRECTORY"',
    ]
    for ref in repo_ids:
        repo, _, revision = ref.partition("@")
        target = f'"$LOCAL_PEFT_DIRECTORY"/{shlex.quote(served_dir(ref))}'
        rev = f" --revision {shlex.quote(revision)}" if revision else ""
        lines.append(
            f"hf download {shlex.quote(repo)} adapter_config.json adapter_model.safetensors"
            f"{rev} --local-dir {target}"
        )
    lines.append('rm -rf "$LOCAL_PEFT_DIRECTORY"/*/.cache')
    return "\n".join(lines) + "\n"
