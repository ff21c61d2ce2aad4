"""Usage metering end to end, on SQLite and PostgreSQL: requests through the official
``openai`` client on two tenants -> the engine's flushes on ``lorafleet:usage`` -> a real
Celery worker's ``fold_usage`` -> ``GET /v1/usage`` and ``lorafleet usage`` report exactly
those counts per tenant and version; an engine restart loses nothing it flushed, and a
replayed flush counts once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from support.cli import run_cli
from support.factories import write_adapter_dir
from support.live_api import LiveRegistry, fresh_database, live_engine, serve_registry
from support.processes import WORKER_READY, Proc, process_env, wait_for, worker_argv
from support.services import flushed_redis_db, redis_db_url
from support.tiny import TINY_MODEL, engine_settings, model_spec
from tenancy_fixtures import adapter_of

from engine.runtime import build_runtime
from events.streams import USAGE_STREAM
from workers.celery_app import TASK_MODULE, create_app
from workers.settings import WorkerSettings


@pytest.fixture(params=["sqlite", "postgresql"])
def metered(
    request: pytest.FixtureRequest, tmp_path: Path, model_dir: Path
) -> Iterator[tuple[LiveRegistry, str, Any, Path]]:
    with (
        flushed_redis_db(redis_db_url(1)) as redis_url,
        fresh_database(request.param, tmp_path) as url,
        serve_registry(url, tmp_path) as reg,
    ):
        reg.admin.register_base_model(
            TINY_MODEL, json.loads((model_dir / "config.json").read_text())
        )
        for i, tenant in enumerate(("acme", "globex")):
            reg.admin.create_namespace(tenant, approval_policy="auto")
            src = write_adapter_dir(tmp_path / "up", tenant, model_spec(model_dir), seed=i + 1)
            reg.admin.upload_adapter(
                src, namespace=tenant, name="bot", version="1.0.0", base_model=TINY_MODEL
            )
        env = process_env(
            {
                "LORAFLEET_DATABASE_URL": url,
                "LORAFLEET_REDIS_URL": redis_url,
                "LORAFLEET_BLOB_URL": f"file://{tmp_path / 'blobs'}",
                "LORAFLEET_HOME": str(tmp_path / "worker-home"),
                "LORAFLEET_LOG_FORMAT": "json",
            }
        )
        worker = Proc("worker", worker_argv(f"usage-{uuid.uuid4().hex[:6]}"), env, tmp_path)
        try:
            worker.start(WORKER_READY, timeout=90)
            celery = create_app(WorkerSettings(), redis_url=redis_url)
            yield reg, redis_url, celery, tmp_path
        finally:
            worker.stop(timeout=20)


def _serve(reg: LiveRegistry, model_dir: Path, root: Path, redis_url: str, token: str):  # type: ignore[no-untyped-def]
    settings = engine_settings(
        model_dir,
        peft_source=reg.base_url,
        token=token,
        redis_url=redis_url,
        download_dir=root / "downloads",
        engine_id="engine-a",
        usage_flush_seconds=0.5,
    )
    return live_engine(build_runtime(settings))


def _complete(url: str, token: str, model: str, n: int) -> list[Any]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0) as client:
        return [
            client.completions.create(model=model, prompt="Hi" * (i + 1), max_tokens=3 + i).usage
            for i in range(n)
        ]


def _chat(url: str, token: str, model: str, n: int) -> list[Any]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0) as client:
        return [
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "x" * (i + 2)}], max_tokens=2
            ).usage
            for i in range(n)
        ]


def _expected(usages: list[Any], tenant: str) -> dict[str, Any]:
    return {
        "namespace": tenant,
        "adapter": adapter_of(tenant),
        "requests": len(usages),
        "prompt_tokens": sum(u.prompt_tokens for u in usages),
        "completion_tokens": sum(u.completion_tokens for u in usages),
        "errors": 0,
        "cancelled": 0,
    }


def _report(reg: LiveRegistry, token: str, **params: str) -> list[dict[str, Any]]:
    with reg.http(token) as http:
        response = http.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def _fold(celery: Any) -> int:
    return celery.send_task(f"{TASK_MODULE}.fold_usage").get(timeout=60)


def test_usage_is_counted_exactly_per_tenant_and_version_across_a_restart(
    metered: tuple[LiveRegistry, str, Any, Path], model_dir: Path
) -> None:
    reg, redis_url, celery, root = metered
    acme, globex = reg.mint("reader", "acme", "acme-app"), reg.mint("reader", "globex", "gx")
    engine_token = reg.mint("reader", None, "engine")
    with _serve(reg, model_dir, root, redis_url, engine_token) as url:
        acme_usage = _complete(url, acme, adapter_of("acme"), 3)
        globex_usage = _chat(url, globex, adapter_of("globex"), 2)
    # Stopped cleanly: its last counts were flushed. The same engine id comes back.
    with _serve(reg, model_dir, root, redis_url, engine_token) as url:
        acme_usage += _complete(url, acme, adapter_of("acme"), 2)
    want_acme, want_globex = _expected(acme_usage, "acme"), _expected(globex_usage, "globex")

    wait_for(lambda: _fold(celery) == 0 and _report(reg, acme) == [want_acme], 60, "usage folded")
    assert _report(reg, globex) == [want_globex]
    everything = _report(reg, reg.admin_token)
    assert everything == sorted([want_acme, want_globex], key=lambda r: r["namespace"])

    # Tenancy: another namespace is the missing one's 404.
    with reg.http(acme) as http:
        theirs = http.get("/v1/usage", params={"namespace": "globex"})
        nowhere = http.get("/v1/usage", params={"namespace": "nowhere"})
    assert theirs.status_code == nowhere.status_code == 404
    by_token = _report(reg, reg.admin_token, group_by="token")
    assert sorted(r["requests"] for r in by_token) == sorted([5, 2])
    by_adapter = _report(reg, acme, group_by="adapter", adapter="acme/bot")
    assert by_adapter == [{**want_acme, "adapter": "acme/bot"}]

    # A replayed flush (the same entry delivered again) counts once.
    client = redis.Redis.from_url(redis_url)
    try:
        entries = client.xrange(USAGE_STREAM)
        assert entries
        for _entry_id, fields in entries:
            client.xadd(USAGE_STREAM, {"event": fields[b"event"]})
    finally:
        client.close()
    assert _fold(celery) == 0
    assert _report(reg, acme) == [want_acme] and _report(reg, globex) == [want_globex]

    # The CLI prints the same numbers.
    printed = run_cli(reg, root, "usage", "--json", token=acme)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["data"] == [want_acme]
    table = run_cli(reg, root, "usage", token=acme, columns=200)
    assert table.returncode == 0, table.stderr
    assert adapter_of("acme") in table.stdout
    assert str(want_acme["completion_tokens"]) in table.stdout


def test_a_killed_engine_keeps_what_it_flushed(model_dir: Path, tmp_path: Path) -> None:
    """SIGKILL after a flush interval passed: every request counted before it is folded."""
    from support.processes import lorafleet_argv
    from support.services import free_port

    from store.db import make_engine, session_scope
    from workers.usage import fold_usage

    with (
        flushed_redis_db(redis_db_url(1)) as redis_url,
        fresh_database("sqlite", tmp_path) as url,
        serve_registry(url, tmp_path) as reg,
    ):
        reg.admin.register_base_model(
            TINY_MODEL, json.loads((model_dir / "config.json").read_text())
        )
        reg.admin.create_namespace("acme", approval_policy="auto")
        src = write_adapter_dir(tmp_path / "up", "acme", model_spec(model_dir), seed=1)
        reg.admin.upload_adapter(
            src, namespace="acme", name="bot", version="1.0.0", base_model=TINY_MODEL
        )
        acme = reg.mint("reader", "acme", "acme-app")
        port = free_port()
        env = process_env(
            {
                "NIM_PEFT_SOURCE": reg.base_url,
                "NIM_SERVED_MODEL_NAME": TINY_MODEL,
                "LORAFLEET_TOKEN": reg.mint("reader", None, "engine"),
                "LORAFLEET_REDIS_URL": redis_url,
                "LORAFLEET_ENGINE_DEVICE": "cpu",
                "LORAFLEET_ENGINE_HOST": "127.0.0.1",
                "LORAFLEET_ENGINE_PORT": str(port),
                "LORAFLEET_ENGINE_MAX_SEQ_LEN": "128",
                "LORAFLEET_ENGINE_ID": "killed",
                "LORAFLEET_ENGINE_USAGE_FLUSH_SECONDS": "0.3",
                "LORAFLEET_HOME": str(tmp_path / "engine-home"),
            }
        )
        argv = lorafleet_argv("engine", "serve", "--model-dir", str(model_dir))
        proc = Proc("killed-engine", argv, env, tmp_path)
        engine_url = f"http://127.0.0.1:{port}"
        proc.start()
        try:
            import httpx

            wait_for(lambda: _up(httpx, f"{engine_url}/v1/health/ready"), 90, "the engine is ready")
            usages = _complete(engine_url, acme, adapter_of("acme"), 4)
            client = redis.Redis.from_url(redis_url)
            try:
                wait_for(lambda: _flushed(client) == 4, 30, "the 4 requests flushed")
                proc.kill9()
                db = make_engine(url)
                try:
                    fold_usage(lambda: session_scope(db), client)
                finally:
                    db.dispose()
            finally:
                client.close()
        finally:
            proc.stop(timeout=10)
        assert _report(reg, acme) == [_expected(usages, "acme")]


def _up(httpx: Any, url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _flushed(client: redis.Redis) -> int:
    """Requests counted in every flush on the stream so far."""
    from events.usage import decode_usage

    flushes = [decode_usage(fields) for _id, fields in client.xrange(USAGE_STREAM)]
    return sum(c.requests for f in flushes for c in f.counts)
