"""What the Hugging Face–compatible API tests share: adapters published to a live registry
(``publish``), the endpoint a stock ``huggingface_hub`` is pointed at (``hf_endpoint``), and
the environment of a child process that runs the Hub's own tools against it (``hf_env``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.processes import process_env


@dataclass(frozen=True)
class Published:
    """``namespace/name`` with its versions' registry entities and source directories."""

    repo_id: str
    entities: dict[str, dict]
    sources: dict[str, Path]

    def canonical(self, version: str) -> dict[str, dict]:
        """path -> file entry of the canonical files of ``version``."""
        files = self.entities[version]["files"]
        return {f["path"]: f for f in files if f["role"] == "canonical"}

    def shown(self, reg: LiveRegistry, version: str) -> dict[str, dict]:
        """path -> ``{"sha256", "size"}`` of what ``/v1/hf`` shows for ``version``: the
        canonical files, ``adapter_config.json`` naming the base model (computed here from
        the native route's canonical bytes, not by the code under test)."""
        shown = {
            p: {"sha256": f["sha256"], "size": f["size"]}
            for p, f in self.canonical(version).items()
        }
        entity = self.entities[version]
        with reg.http(reg.admin_token) as http:
            raw = http.get(f"/v1/adapters/{entity['id']}/files/adapter_config.json")
        config = json.loads(raw.content)
        assert config["base_model_name_or_path"] is None  # the case shown() fills in
        config["base_model_name_or_path"] = entity["base_model"]
        data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        shown["adapter_config.json"] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        return shown


def publish(
    reg: LiveRegistry, root: Path, namespace: str, name: str, versions: list[str], seed: int = 0
) -> Published:
    """Upload a distinct random HF PEFT adapter (base ``tiny``) per version, natively."""
    entities, sources = {}, {}
    for i, version in enumerate(versions):
        src = write_hf_peft(random_adapter(seed=seed + i), root / f"{name}-{version}")
        entities[version] = reg.admin.upload_adapter(
            src, namespace=namespace, name=name, version=version, base_model="tiny"
        )
        sources[version] = src
    return Published(f"{namespace}/{name}", entities, sources)


def hf_endpoint(reg: LiveRegistry) -> str:
    """``HF_ENDPOINT`` for ``reg``."""
    return f"{reg.base_url}/v1/hf"


def hf_env(reg: LiveRegistry, home: Path, token: str | None = None) -> dict[str, str]:
    """A child's environment: ``HF_ENDPOINT`` on ``reg``, ``HF_TOKEN`` (default the admin
    token), a fresh ``HF_HOME`` under ``home``, no telemetry."""
    return process_env(
        {
            "HF_ENDPOINT": hf_endpoint(reg),
            "HF_TOKEN": token or reg.admin_token,
            "HF_HOME": str(home / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
    )
