"""Aliases end to end (issue 13's "done when"), through the official ``openai`` client
against two real engines fed by the real pipeline (registry API on PostgreSQL, outbox
relayed by a real Celery beat + worker to ``lorafleet:fleet:refresh``):

* a weighted split lands within a binomial tolerance over 2,000 requests, and per-arm usage
  (``GET /v1/usage?group_by=alias``) and Prometheus count exactly what was served;
* sticky keys (``user`` / ``x-lorafleet-route-key``) pick the same arm on both engines,
  never move while weights stand, and move only the changed share, all one way;
* an alias change reaches both engines at the same generation (health and heartbeat);
* while aliases switch under load no request gets a 404 and no request loads an adapter;
* pinned adapters are preloaded by a new engine and survive an LRU storm;
* another tenant's alias is the 404 of a missing one; ``/v1/models`` lists aliases;
* archiving a version an alias routes to is a 409 ``alias_target``; with the drop flag the
  aliases move without a single failed request.

The tests run in order on one fleet (module fixture ``canary``).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import openai
import pytest
from alias_fleet import BOT, AliasFleet, metric_samples, served, start_engine
from support.processes import wait_for
from support.tiny import TINY_MODEL

from engine.aliases import ROUTE_KEY_HEADER, SERVED_MODEL_HEADER, Alias, Target, sticky_pick

OLD, NEW, NEWEST = f"{BOT}@1.0.0", f"{BOT}@1.1.0", f"{BOT}@1.2.0"
SPLIT_REQUESTS = 2_000
STORM = [f"s{i}" for i in range(6)]  # other adapters of acme, to churn the caches


def _tolerance(n: int, p: float, sigmas: float = 4.5) -> float:
    return sigmas * math.sqrt(n * p * (1 - p))


def test_a_weighted_split_is_within_binomial_tolerance_and_counted_per_arm(
    canary: AliasFleet,
) -> None:
    put = canary.put_alias("stable", {"1.0.0": 70, "1.1.0": 30})
    canary.synced(put["generation"])
    token = canary.readers["acme"]
    clients = [e.client(token) for e in canary.engines]
    try:
        # Half the requests on each engine, four at a time.
        with ThreadPoolExecutor(4) as pool:
            picks = list(
                pool.map(lambda i: served(clients[i % 2], f"{BOT}@stable"), range(SPLIT_REQUESTS))
            )
    finally:
        for client in clients:
            client.close()
    counts = Counter(picks)
    assert set(counts) == {OLD, NEW}
    expected = SPLIT_REQUESTS * 0.3
    error = counts[NEW] - expected
    print(f"split error: {error:+.0f} requests of {SPLIT_REQUESTS} ({counts})")
    assert abs(error) <= _tolerance(SPLIT_REQUESTS, 0.3), counts

    # Per-arm Prometheus on each engine adds up to what each served.
    per_arm: Counter[str] = Counter()
    for engine in canary.engines:
        samples = metric_samples(engine.url, "lorafleet_engine_alias_requests_total")
        for (_, labels), value in samples.items():
            label = dict(labels)
            assert label["alias"] == f"{BOT}@stable" and label["outcome"] == "ok"
            per_arm[label["adapter"]] += int(value)
    assert per_arm == counts

    # Per-arm usage: the engines' flushes folded by the worker, one row per arm.
    def arms() -> dict[str, int]:
        rows = canary.usage(token, group_by="alias", alias=f"{BOT}@stable")
        return {r["adapter"]: r["requests"] for r in rows}

    wait_for(lambda: arms() == dict(counts), 60, "per-arm usage folded")
    rows = canary.usage(token, group_by="alias", alias=f"{BOT}@stable")
    for row in rows:
        # max_tokens=1: one token, or none when the first one sampled ends the text
        assert row["errors"] == 0 and 0 < row["completion_tokens"] <= row["requests"]
        assert row["mean_latency_ms"] >= 0 and row["namespace"] == "acme"


def test_sticky_keys_hold_their_arm_and_move_only_the_changed_share(canary: AliasFleet) -> None:
    put = canary.put_alias("stable", {"1.0.0": 70, "1.1.0": 30})
    canary.synced(put["generation"])
    users = [f"user-{i}" for i in range(300)]
    token = canary.readers["acme"]
    a, b = (e.client(token) for e in canary.engines)
    try:

        def routes() -> dict[str, tuple[str, str]]:
            by_user = {}
            for user in users:
                via_user = served(a, f"{BOT}@stable", user=user)
                via_header = served(b, f"{BOT}@stable", extra_headers={ROUTE_KEY_HEADER: user})
                by_user[user] = (via_user, via_header)
            return by_user

        before = routes()
        # The same arm on both engines, by the user field or the header, as computed here.
        mine = Alias(f"{BOT}@stable", (Target(OLD, 70), Target(NEW, 30)))
        assert all(x == y == sticky_pick(mine, u).name for u, (x, y) in before.items())
        assert routes() == before  # weights unchanged: nobody moves
        put = canary.put_alias("stable", {"1.0.0": 40, "1.1.0": 60})
        canary.synced(put["generation"])
        after = routes()
    finally:
        a.close()
        b.close()
    assert all(x == y for x, y in after.values())
    moved = [u for u in users if after[u][0] != before[u][0]]
    assert all(before[u][0] == OLD and after[u][0] == NEW for u in moved)  # one way only
    assert abs(len(moved) - 0.3 * len(users)) <= _tolerance(len(users), 0.3), len(moved)


def test_an_alias_change_reaches_both_engines_at_the_same_generation(
    canary: AliasFleet,
) -> None:
    put = canary.put_alias("canary", {"1.1.0": 100})
    generation = put["generation"]
    canary.synced(generation)
    healths = [e.health() for e in canary.engines]
    assert [h["generation"] for h in healths] == [generation, generation]
    for engine in canary.engines:  # the same table at that generation
        alias = engine.runtime.catalog.aliases()[f"{BOT}@canary"]
        assert [(t.name, t.weight) for t in alias.targets] == [(NEW, 100)]

    def heartbeats() -> dict[str, dict]:
        with canary.registry.http(canary.registry.admin_token) as http:
            rows = http.get("/v1/fleet/engines").json()["data"]
        return {r["engine_id"]: r for r in rows}

    try:
        wait_for(
            lambda: {r["generation"] for r in heartbeats().values()} == {generation},
            30,
            "both heartbeats at the alias's generation",
        )
    except AssertionError:
        raise AssertionError(f"generation {generation}: {heartbeats()}") from None
    assert set(heartbeats()) == {"engine-a", "engine-b"}
    assert {r["lag"] for r in heartbeats().values()} == {0}


def test_a_switch_under_load_never_404s_or_cold_loads(canary: AliasFleet) -> None:
    canary.upload("acme", "bot", "1.2.0")
    for name in STORM[:4]:
        canary.upload("acme", name, "1.0.0")
    canary.synced()
    token = canary.readers["acme"]
    for engine in canary.engines:  # 4 other adapters fill the CPU cache: no bot is left
        with engine.client(token) as client:

            def no_bot_resident(engine=engine, client=client) -> bool:
                # A refresh hint still queued when synced() returned (bot@1.2.0's load)
                # may prefetch a bot version after one pass; the next pass evicts it.
                for name in STORM[:4]:
                    served(client, f"acme/{name}@1.0.0")
                return not any(n.startswith(BOT) for n in engine.runtime.cache.cpu.resident())

            wait_for(no_bot_resident, 30, f"{engine.engine_id}: no bot version in the CPU cache")
    put = canary.put_alias("stable", {"1.0.0": 100})
    canary.synced(put["generation"])
    misses = [e.cpu_misses() for e in canary.engines]
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    seen: Counter[str] = Counter()

    def hammer(index: int) -> None:
        engine = canary.engines[index % 2]
        with httpx.Client(base_url=engine.url, timeout=30) as http:
            while not stop.is_set():
                response = http.post(
                    "/v1/completions",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"model": f"{BOT}@stable", "prompt": "Hi", "max_tokens": 1},
                )
                outcomes[str(response.status_code)] += 1
                seen[response.headers.get(SERVED_MODEL_HEADER, "?")] += 1

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        for targets in (
            {"1.0.0": 50, "1.2.0": 50},
            {"1.2.0": 100},
            {"1.1.0": 20, "1.2.0": 80},
            {"1.0.0": 100},
        ):
            put = canary.put_alias("stable", targets)
            canary.synced(put["generation"])
            # The engine's own table is the new one the moment it reports the generation.
            for engine in canary.engines:
                table = engine.runtime.catalog.aliases()[f"{BOT}@stable"]
                assert {t.version: t.weight for t in table.targets} == targets
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert set(outcomes) == {"200"} and outcomes["200"] >= 40, outcomes
    assert {OLD, NEW, NEWEST} <= set(seen), seen
    assert [e.cpu_misses() for e in canary.engines] == misses  # no load on a request path


def test_pinned_adapters_are_preloaded_and_survive_an_lru_storm(canary: AliasFleet) -> None:
    pinned = canary.put_alias("pinned", {"1.0.0": 50, "1.1.0": 50}, pinned=True)
    canary.synced(pinned["generation"])
    expected = {OLD, NEW}
    for engine in canary.engines:
        assert engine.runtime.catalog.pinned == expected
    storm = STORM  # 6 more adapters than 4 CPU / 3 GPU slots hold
    for name in STORM[4:]:
        canary.upload("acme", name, "1.0.0")
    canary.synced()
    with ExitStack() as stack:
        fresh = start_engine(canary, stack, "engine-c")  # pins preloaded at its start
        pins = fresh.health()["pinned"]
        assert pins == {"gpu": [OLD, NEW], "cpu": [], "not_resident": []}, pins
        assert fresh.cpu_misses() == 0
        engines = [*canary.engines, fresh]
        token = canary.readers["acme"]
        for engine in engines:
            with engine.client(token) as client:
                for pinned_name in sorted(expected):  # in a slot on every engine now
                    assert served(client, pinned_name) == pinned_name
                before = engine.cpu_misses()
                for _ in range(2):
                    for name in storm:
                        assert served(client, f"acme/{name}@1.0.0") == f"acme/{name}@1.0.0"
                assert engine.cpu_misses() - before >= len(storm)  # the storm did churn
                before = engine.cpu_misses()
                for pinned_name in sorted(expected):
                    assert served(client, pinned_name) == pinned_name
                assert engine.cpu_misses() == before  # pins were never evicted
            health = engine.health()["pinned"]
            assert health == {"gpu": [OLD, NEW], "cpu": [], "not_resident": []}, health
            samples = metric_samples(engine.url, "lorafleet_engine_lora_pinned")
            assert samples[("lorafleet_engine_lora_pinned", (("level", "gpu"),))] == 2


def test_another_tenants_alias_is_a_missing_one(canary: AliasFleet) -> None:
    engine = canary.engines[0]
    with engine.client(canary.readers["globex"]) as client:
        with pytest.raises(openai.NotFoundError) as theirs:
            client.completions.create(model=f"{BOT}@stable", prompt="Hi", max_tokens=1)
        with pytest.raises(openai.NotFoundError) as missing:
            client.completions.create(model="acme/bot@nowhere", prompt="Hi", max_tokens=1)
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model=BOT, prompt="Hi", max_tokens=1)  # acme's latest
        assert theirs.value.code == missing.value.code == "model_not_found"
        assert theirs.value.body["message"].replace(f"{BOT}@stable", "X") == missing.value.body[
            "message"
        ].replace("acme/bot@nowhere", "X")
        models = {m.id: m for m in client.models.list()}
        assert not any(name.startswith("acme/") for name in models)
    with engine.client(canary.readers["acme"]) as client:
        models = {m.id: m for m in client.models.list()}
        assert models[f"{BOT}@stable"].parent == TINY_MODEL  # type: ignore[attr-defined]
        assert f"{BOT}@latest" not in models
        # The bare name is @latest: the highest ready version, also when streamed.
        with client.completions.with_streaming_response.create(
            model=BOT, prompt="Hi", max_tokens=1, stream=True
        ) as stream:
            assert stream.headers[SERVED_MODEL_HEADER] == NEWEST
            assert any(line.startswith("data: [DONE]") for line in stream.iter_lines())


def test_archiving_a_target_is_refused_unless_dropped_and_the_drop_never_404s(
    canary: AliasFleet,
) -> None:
    old_id = canary.registry.admin.get_version("acme", "bot", "1.0.0")["id"]
    with canary.registry.http(canary.writer) as http:
        refused = http.patch(f"/v1/adapters/{old_id}", json={"status": "archived"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "alias_target"
    assert f"{BOT}@pinned" in refused.json()["error"]["message"]
    token = canary.readers["acme"]
    stop = threading.Event()
    outcomes: Counter[str] = Counter()

    def hammer(engine_url: str) -> None:  # @pinned routes 50/50 to 1.0.0 until the drop
        with httpx.Client(base_url=engine_url, timeout=30) as http:
            while not stop.is_set():
                response = http.post(
                    "/v1/completions",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"model": f"{BOT}@pinned", "prompt": "Hi", "max_tokens": 1},
                )
                outcomes[str(response.status_code)] += 1

    threads = [threading.Thread(target=hammer, args=(e.url,)) for e in canary.engines]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(outcomes.values()) >= 5, 30, "requests before the drop")
        with canary.registry.http(canary.writer) as http:
            dropped = http.patch(
                f"/v1/adapters/{old_id}", json={"status": "archived", "drop_from_aliases": True}
            )
        assert dropped.status_code == 200, dropped.text
        canary.synced()
        after = sum(outcomes.values())
        wait_for(lambda: sum(outcomes.values()) >= after + 5, 30, "requests after the drop")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert set(outcomes) == {"200"} and outcomes["200"] >= 10, outcomes
    for engine in canary.engines:
        aliases = engine.runtime.catalog.aliases()
        assert [(t.name, t.weight) for t in aliases[f"{BOT}@pinned"].targets] == [(NEW, 100)]
        assert f"{BOT}@stable" not in aliases  # its only target left: deleted
        with engine.client(token) as client:
            assert served(client, f"{BOT}@pinned") == NEW
            with pytest.raises(openai.NotFoundError):
                served(client, OLD)
