"""What is loaded where: two live engines' heartbeats through ``GET /v1/fleet/engines`` and
``lorafleet fleet status`` (residency, generation lag, who can serve an adapter, tenancy of
what is shown), and an engine that stops disappears once its heartbeat's TTL passes."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from support.cli import run_cli
from support.factories import write_adapter_dir
from support.live_api import fresh_database, live_engine, serve_registry
from support.processes import wait_for
from support.services import flushed_redis_db, redis_db_url
from support.tiny import TINY_MODEL, engine_settings, model_spec
from tenancy_fixtures import adapter_of

from engine.runtime import build_runtime


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_engines_report_residency_and_lag_and_a_stopped_one_disappears(
    model_dir: Path, tmp_path: Path, kind: str
) -> None:
    with (
        flushed_redis_db(redis_db_url(1)) as redis_url,
        fresh_database(kind, tmp_path) as url,
        serve_registry(url, tmp_path, redis_url=redis_url) as reg,
    ):
        reg.admin.register_base_model(
            TINY_MODEL, json.loads((model_dir / "config.json").read_text())
        )
        spec = model_spec(model_dir)
        for i, tenant in enumerate(("acme", "globex")):
            reg.admin.create_namespace(tenant, approval_policy="auto")
            src = write_adapter_dir(tmp_path / "up", tenant, spec, seed=i + 1)
            reg.admin.upload_adapter(
                src, namespace=tenant, name="bot", version="1.0.0", base_model=TINY_MODEL
            )
        acme, globex = reg.mint("reader", "acme", "a"), reg.mint("reader", "globex", "g")
        engine_token = reg.mint("reader", None, "engine")

        def runtime(engine_id: str):  # type: ignore[no-untyped-def]
            return build_runtime(
                engine_settings(
                    model_dir,
                    peft_source=reg.base_url,
                    token=engine_token,
                    redis_url=redis_url,
                    download_dir=tmp_path / engine_id,
                    engine_id=engine_id,
                    heartbeat_seconds=0.3,
                )
            )

        def engines(token: str, **params: str) -> dict:
            with reg.http(token) as http:
                response = http.get("/v1/fleet/engines", params=params)
            assert response.status_code == 200, response.text
            return response.json()

        def complete(engine_url: str, token: str, model: str) -> None:
            with openai.OpenAI(base_url=f"{engine_url}/v1", api_key=token, max_retries=0) as c:
                c.completions.create(model=model, prompt="Hi", max_tokens=2)

        with live_engine(runtime("engine-a")) as a_url:
            b_cm = live_engine(runtime("engine-b"))
            b_url = b_cm.__enter__()
            try:
                complete(a_url, acme, adapter_of("acme"))
                complete(b_url, globex, adapter_of("globex"))

                def both_resident() -> bool:
                    rows = {e["engine_id"]: e for e in engines(reg.admin_token)["data"]}
                    return (
                        set(rows) == {"engine-a", "engine-b"}
                        and adapter_of("acme") in rows["engine-a"]["gpu"]
                        and adapter_of("globex") in rows["engine-b"]["gpu"]
                    )

                wait_for(both_resident, 10, "both engines' residency")
                view = engines(reg.admin_token)
                rows = {e["engine_id"]: e for e in view["data"]}
                assert view["generation"] == 2
                for row in rows.values():
                    assert (row["generation"], row["lag"], row["servable"]) == (2, 0, 2)
                    assert row["base_model"] == TINY_MODEL and row["ready"] is True
                assert rows["engine-a"]["cpu"] == [adapter_of("acme")]

                # A tenant sees only its own adapters in what engines hold.
                mine = {e["engine_id"]: e for e in engines(acme)["data"]}
                assert mine["engine-a"]["gpu"] == [adapter_of("acme")]
                assert mine["engine-b"]["gpu"] == [] and mine["engine-b"]["cpu"] == []

                # Who can serve acme's adapter now, and where it is held.
                who = engines(acme, adapter=adapter_of("acme"))["data"]
                assert {e["engine_id"]: e["holds"] for e in who} == {
                    "engine-a": ["gpu", "cpu"],
                    "engine-b": [],
                }
                with reg.http(acme) as http:
                    theirs = http.get("/v1/fleet/engines", params={"adapter": adapter_of("globex")})
                    missing = http.get("/v1/fleet/engines", params={"adapter": "acme/nope@1.0.0"})
                assert theirs.status_code == missing.status_code == 404

                # A new ready version the engines have not heard of (no relay): lag 1.
                src = write_adapter_dir(tmp_path / "up2", "acme2", spec, seed=9)
                reg.admin.upload_adapter(
                    src, namespace="acme", name="bot", version="2.0.0", base_model=TINY_MODEL
                )
                lagging = engines(reg.admin_token)
                assert lagging["generation"] == 3
                assert {e["lag"] for e in lagging["data"]} == {1}
                assert engines(acme, adapter="acme/bot@2.0.0")["data"] == []  # nobody yet

                shown = run_cli(reg, tmp_path, "fleet", "status", columns=250)
                assert shown.returncode == 0, shown.stderr
                assert "engine-a" in shown.stdout and "engine-b" in shown.stdout
                assert "2 live engine(s)" in shown.stdout
            finally:
                b_cm.__exit__(None, None, None)  # engine-b stops beating

            wait_for(
                lambda: [e["engine_id"] for e in engines(reg.admin_token)["data"]] == ["engine-a"],
                5,
                "engine-b gone after its TTL",
            )
            after = run_cli(reg, tmp_path, "fleet", "status", "--json")
            assert [e["engine_id"] for e in json.loads(after.stdout)["data"]] == ["engine-a"]


def test_a_killed_engine_process_disappears_after_its_ttl(model_dir: Path, tmp_path: Path) -> None:
    """``lorafleet engine serve`` as a process, SIGKILLed: nothing deletes its heartbeat, so
    it is the TTL that takes it out of the fleet, while the other engine stays."""
    from support.processes import Proc, lorafleet_argv, process_env
    from support.services import free_port

    with (
        flushed_redis_db(redis_db_url(1)) as redis_url,
        fresh_database("sqlite", tmp_path) as url,
        serve_registry(url, tmp_path, redis_url=redis_url) as reg,
    ):
        reg.admin.register_base_model(
            TINY_MODEL, json.loads((model_dir / "config.json").read_text())
        )
        engine_token = reg.mint("reader", None, "engine")
        env = process_env(
            {
                "NIM_PEFT_SOURCE": reg.base_url,
                "NIM_SERVED_MODEL_NAME": TINY_MODEL,
                "LORAFLEET_TOKEN": engine_token,
                "LORAFLEET_REDIS_URL": redis_url,
                "LORAFLEET_ENGINE_DEVICE": "cpu",
                "LORAFLEET_ENGINE_HOST": "127.0.0.1",
                "LORAFLEET_ENGINE_PORT": str(free_port()),
                "LORAFLEET_ENGINE_MAX_SEQ_LEN": "128",
                "LORAFLEET_ENGINE_ID": "doomed",
                "LORAFLEET_ENGINE_HEARTBEAT_SECONDS": "0.5",
                "LORAFLEET_HOME": str(tmp_path / "engine-home"),
            }
        )
        settings = engine_settings(
            model_dir,
            peft_source=reg.base_url,
            token=engine_token,
            redis_url=redis_url,
            engine_id="survivor",
            heartbeat_seconds=0.5,
        )

        def live() -> list[str]:
            with reg.http(reg.admin_token) as http:
                return [e["engine_id"] for e in http.get("/v1/fleet/engines").json()["data"]]

        proc = Proc(
            "doomed",
            lorafleet_argv("engine", "serve", "--model-dir", str(model_dir)),
            env,
            tmp_path,
        )
        with live_engine(build_runtime(settings)):
            proc.start()
            try:
                wait_for(lambda: live() == ["doomed", "survivor"], 90, "both engines beating")
                proc.kill9()
                wait_for(lambda: live() == ["survivor"], 5, "the killed engine gone (TTL 1.5 s)")
            finally:
                proc.stop(timeout=10)
