"""Fault 6: an engine is down (SIGKILL) while adapters are approved and archived; it misses
every ``fleet.refresh`` of that time. After a restart it must serve exactly the registry's
ready set, and then follow live changes again.

Real processes: the registry API (``lorafleet api``), the pipeline (workers, bridge, beat
relaying the outbox) and the engine (``lorafleet engine serve``, tiny Llama on CPU) with
the registry as ``NIM_PEFT_SOURCE``."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from checker import record
from harness import BASE_MODEL
from support.processes import Proc, lorafleet_argv, wait_for
from support.services import free_port

from store.client import RegistryClient
from store.models import AdapterVersion

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(480)]

ADMIN_TOKEN = "lft_chaos_admin_token_0123456789"


def served(engine_url: str) -> set[str]:
    """The adapters an engine lists in ``/v1/models`` (the base model left out)."""
    data = httpx.get(f"{engine_url}/v1/models", timeout=10).json()["data"]
    return {m["id"] for m in data if m["id"] != BASE_MODEL}


def ready_set(client: RegistryClient) -> set[str]:
    """The registry's ready set for the base model, from ``GET /v1/fleet``."""
    view = client.fleet(BASE_MODEL)
    return {f"{a['namespace']}/{a['name']}@{a['version']}" for a in view["adapters"]}


def healthy(url: str, path: str) -> bool:
    return httpx.get(f"{url}{path}", timeout=2).status_code == 200


def test_engine_down_during_approvals_and_archives_serves_exactly_the_ready_set(
    shared_redis_url, make_cluster, tmp_path: Path
):
    from engine.tiny import init_tiny

    cluster = make_cluster(
        redis_url=shared_redis_url, extra_env={"LORAFLEET_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    cluster.start(workers=1, bridges=1)
    api_port, engine_port = free_port(), free_port()
    api_url, engine_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{engine_port}"
    api = cluster.add_proc(
        "api", lorafleet_argv("api", "--host", "127.0.0.1", "--port", str(api_port))
    ).start()
    wait_for(lambda: healthy(api_url, "/v1/health/ready"), 60, "registry API ready")

    model_dir = init_tiny(tmp_path / BASE_MODEL)
    engine = Proc(
        "engine",
        lorafleet_argv("engine", "serve", "--model-dir", str(model_dir)),
        {
            **cluster.env,
            "NIM_PEFT_SOURCE": api_url,
            "NIM_SERVED_MODEL_NAME": BASE_MODEL,
            "NIM_MAX_LORA_RANK": "16",
            "LORAFLEET_TOKEN": ADMIN_TOKEN,
            "LORAFLEET_ENGINE_AUTH": "none",  # convergence, not caller auth, is under test
            "LORAFLEET_ENGINE_DEVICE": "cpu",
            "LORAFLEET_ENGINE_HOST": "127.0.0.1",
            "LORAFLEET_ENGINE_PORT": str(engine_port),
            "LORAFLEET_ENGINE_MAX_SEQ_LEN": "128",
            "LORAFLEET_ENGINE_DOWNLOAD_DIR": str(tmp_path / "engine-downloads"),
        },
        cluster.logs,
    )
    cluster.procs.append(engine)  # stopped with the cluster

    started = time.monotonic()
    sent = cluster.announce(cluster.plan(30, "en"))
    cluster.wait_settled(sent, timeout=150)
    client = RegistryClient(api_url, ADMIN_TOKEN)
    try:
        engine.start()
        wait_for(lambda: healthy(engine_url, "/v1/health/ready"), 120, "engine ready")
        before = ready_set(client)
        assert len(before) == 21 and served(engine_url) == before

        engine.kill9()
        cluster.fault("kill -9 engine")
        with cluster.engine.connect() as conn:
            rows = conn.execute(
                sa.select(AdapterVersion.id, AdapterVersion.namespace, AdapterVersion.name,
                          AdapterVersion.version, AdapterVersion.status)
                .order_by(AdapterVersion.name, AdapterVersion.version)
            ).all()  # fmt: skip
        coords = {r.id: f"{r.namespace}/{r.name}@{r.version}" for r in rows}
        pending = [r.id for r in rows if r.status == "pending"]
        ready = [r.id for r in rows if r.status == "ready"]
        changed: dict[str, str] = {}
        for adapter_id in pending[::2]:  # approved while the engine is down
            client.set_status(adapter_id, "ready")
            changed[coords[adapter_id]] = "ready"
        for adapter_id in ready[::3]:  # archived while the engine is down
            client.set_status(adapter_id, "archived")
            changed[coords[adapter_id]] = "archived"
        expected = ready_set(client)
        assert expected != before and len(changed) == len(pending[::2]) + len(ready[::3])

        engine.start()
        wait_for(lambda: healthy(engine_url, "/v1/health/ready"), 120, "engine ready again")
        wait_for(lambda: served(engine_url) == expected, 30, "engine converged")
        assert served(engine_url) == ready_set(client)

        # Live again: the next approval and archive reach it through fleet.refresh events.
        client.set_status(pending[1], "ready")
        client.set_status(ready[1], "archived")
        changed[coords[pending[1]]], changed[coords[ready[1]]] = "ready", "archived"
        live = ready_set(client)
        wait_for(lambda: served(engine_url) == live, 30, "engine followed refresh events")
    finally:
        client.close()
        engine.stop()
        api.stop()

    for announced in sent:
        announced.expected = changed.get(announced.coordinates, announced.expected)
    cluster.wait_settled(sent, timeout=60)
    report = record(cluster.check("engine down (approve/archive)", sent, started))
    assert report.ok, report.summary() + cluster.logs_tail()
    assert report.outcomes["archived"] == len(ready[::3]) + 1
