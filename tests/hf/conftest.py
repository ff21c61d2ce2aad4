"""Fixtures of the Hugging Face–compatible API tests: ``hf_registry``, one live registry
(real uvicorn, filesystem blobs) per module on each database backend, with the tiny base
model and an ``auto`` namespace ``acme`` holding ``acme/bot@1.0.0`` and ``@1.1.0``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.hf_hub import Published, publish
from support.live_api import LiveRegistry, fresh_database, serve_registry
from support.tiny import tiny_hf_config


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hf_registry(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveRegistry]:
    root = tmp_path_factory.mktemp(f"hf-{request.param}")
    with fresh_database(request.param, root) as url, serve_registry(url, root) as reg:
        reg.admin.register_base_model("tiny", tiny_hf_config())
        reg.admin.create_namespace("acme", approval_policy="auto")
        reg.admin.create_namespace("other", approval_policy="auto")
        yield reg


@pytest.fixture(scope="module")
def bot(hf_registry: LiveRegistry, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """``acme/bot`` at 1.0.0 and 1.1.0 (both ready: ``main`` is 1.1.0)."""
    return publish(hf_registry, tmp_path_factory.mktemp("bot"), "acme", "bot", ["1.0.0", "1.1.0"])
