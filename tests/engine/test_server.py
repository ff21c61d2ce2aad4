"""The engine's HTTP surface over real HTTP: error shapes, health, metrics, SSE, cancellation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_fixtures import wait_until
from support.factories import write_adapter_dir
from support.live_api import live_engine
from support.tiny import engine_settings, model_spec

from engine.runtime import EngineRuntime, build_runtime


@pytest.fixture(scope="module")
def engine(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[str, EngineRuntime]]:
    root = tmp_path_factory.mktemp("loras")
    write_adapter_dir(root, "math", model_spec(tiny_model_dir), seed=1)
    runtime = build_runtime(engine_settings(tiny_model_dir, peft_source=str(root), max_seq_len=64))
    with live_engine(runtime) as url:
        yield url, runtime


@pytest.fixture
def http(engine: tuple[str, EngineRuntime]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine[0], timeout=30) as c:
        yield c


def assert_openai_error(
    response: httpx.Response, status: int, code: str | None, param: str | None
) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert (error["code"], error["param"]) == (code, param)


def test_health_endpoints(http: httpx.Client) -> None:
    assert http.get("/v1/health/live").status_code == 200
    ready = http.get("/v1/health/ready")
    assert ready.status_code == 200 and ready.json()["message"] == "ready"


def test_errors_have_openai_shape(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert_openai_error(r, 404, "model_not_found", "model")
    r = http.post("/v1/completions", json={"model": "math", "prompt": [[1, 2], "x"]})
    assert_openai_error(r, 400, None, "prompt")
    r = http.post("/v1/completions", json={"model": "math", "prompt": "x", "top_p": 0})
    assert_openai_error(r, 400, "invalid_value", "top_p")
    r = http.post("/v1/completions", json={"model": "math"})
    assert_openai_error(r, 400, "invalid_value", "prompt")
    r = http.post("/v1/chat/completions", json={"model": "math", "messages": []})
    assert_openai_error(r, 400, None, "messages")


def test_context_length_is_checked(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": "math", "prompt": "x" * 40, "max_tokens": 40})
    assert_openai_error(r, 400, "context_length_exceeded", "max_tokens")
    r = http.post("/v1/completions", json={"model": "math", "prompt": "x" * 80})
    assert r.status_code == 400


def test_stream_is_server_sent_events_ending_in_done(http: httpx.Client) -> None:
    body = {"model": "math", "prompt": "Hi", "max_tokens": 5, "temperature": 0, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_n_choices_and_stop_sequences(http: httpx.Client) -> None:
    body = {"model": "math", "prompt": ["a", "b"], "n": 2, "max_tokens": 4, "temperature": 0}
    out = http.post("/v1/completions", json=body).json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert out["choices"][0]["text"] == out["choices"][1]["text"]  # greedy: same prompt, same text
    full = http.post(
        "/v1/completions", json={**body, "prompt": "a", "n": 1, "max_tokens": 12}
    ).json()
    text = full["choices"][0]["text"]
    stop = text[4:6]
    cut = http.post(
        "/v1/completions", json={**body, "prompt": "a", "n": 1, "max_tokens": 12, "stop": stop}
    ).json()
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["text"] == text[: text.index(stop)]


def test_client_disconnect_cancels_generation(
    engine: tuple[str, EngineRuntime], http: httpx.Client
) -> None:
    _, runtime = engine
    body = {"model": "math", "prompt": "x", "max_tokens": 60, "stream": True, "ignore_eos": True}
    # The tiny model can finish 60 tokens before a loaded machine hands the client its first
    # line; only a request still in flight when the client leaves says anything, so try again.
    for _attempt in range(5):
        with http.stream("POST", "/v1/completions", json=body) as r:
            next(r.iter_lines())
            in_flight = runtime.scheduler.running + runtime.scheduler.waiting >= 1
        if in_flight:
            break
    assert in_flight, "the request never outlived its first streamed line"
    assert wait_until(lambda: runtime.scheduler.running == 0 and runtime.scheduler.waiting == 0)
    assert wait_until(lambda: runtime.cache.cpu.pinned() == {})


def test_metrics_expose_throughput_queue_and_residency(http: httpx.Client) -> None:
    http.post("/v1/completions", json={"model": "math", "prompt": "Hi", "max_tokens": 3})
    text = http.get("/metrics").text
    assert "lorafleet_engine_tokens_per_second" in text
    assert 'lorafleet_engine_queue_depth{state="waiting"}' in text
    assert 'lorafleet_engine_lora_resident{adapter="math",level="cpu"} 1.0' in text
    assert 'lorafleet_engine_lora_resident{adapter="math",level="gpu"} 1.0' in text
    assert 'lorafleet_engine_lora_cache_misses_total{level="cpu"}' in text
    assert "lorafleet_engine_lora_cache_load_seconds_total" in text
    generated = [
        line
        for line in text.splitlines()
        if line.startswith("lorafleet_engine_generated_tokens_total")
    ]
    assert float(generated[0].split()[-1]) >= 3


def test_a_bad_token_id_is_400_and_never_fails_its_batch_mates(
    engine: tuple[str, EngineRuntime],
) -> None:
    """Seven concurrent completions over real HTTP, two with ids outside the vocabulary: the
    bad ones are 400 (OpenAI shape) and the other five complete."""
    url, runtime = engine
    vocab = runtime.scheduler.vocab_size
    prompts: list[list[int]] = [[1, 2, 3]] * 7
    prompts[1], prompts[3] = [999999], [-5]
    body = {"model": "math", "max_tokens": 8, "temperature": 0, "ignore_eos": True}

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            calls = [client.post("/v1/completions", json={**body, "prompt": p}) for p in prompts]
            return await asyncio.gather(*calls)

    responses = asyncio.run(all_at_once())
    assert [r.status_code for r in responses] == [200, 400, 200, 400, 200, 200, 200]
    for bad in (responses[1], responses[3]):
        assert_openai_error(bad, 400, "invalid_value", "prompt")
        assert f"{vocab} tokens" in bad.json()["error"]["message"]
    texts = {r.json()["choices"][0]["text"] for r in responses if r.status_code == 200}
    assert len(texts) == 1  # greedy: every good request got the same, complete answer
    chat = {"model": "math", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30).status_code == 200


def samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of one ``/metrics`` scrape."""
    text = http.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def requests_counted(before: dict, after: dict, endpoint: str, status: str) -> float:
    key = ("lorafleet_engine_requests_total", (("endpoint", endpoint), ("status", status)))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_requests_are_counted_by_the_status_they_were_answered_with(http: httpx.Client) -> None:
    before = samples(http)
    assert http.post("/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
    bad = {"model": "math", "prompt": [999999], "max_tokens": 2}
    assert http.post("/v1/completions", json=bad).status_code == 400
    tools = {"model": "math", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}
    assert http.post("/v1/chat/completions", json=tools).status_code == 400
    ok = {"model": "math", "prompt": "Hi", "max_tokens": 2}
    assert http.post("/v1/completions", json=ok).status_code == 200
    after = samples(http)
    assert requests_counted(before, after, "completions", "404") == 1
    assert requests_counted(before, after, "completions", "400") == 1
    assert requests_counted(before, after, "chat", "400") == 1
    assert requests_counted(before, after, "completions", "200") == 1
    assert not any(
        k[0] == "lorafleet_engine_requests_total" and ("status", "accepted") in k[1] for k in after
    )


def test_time_to_first_token_is_observed_streaming_and_not(http: httpx.Client) -> None:
    count = "lorafleet_engine_time_to_first_token_seconds_count"
    before = samples(http)
    body = {"model": "math", "prompt": "Hi", "max_tokens": 3, "temperature": 0}
    assert http.post("/v1/completions", json=body).status_code == 200
    chat = {"model": "math", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}
    with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
        assert r.status_code == 200 and [line for line in r.iter_lines() if line][-1].endswith(
            "[DONE]"
        )
    after = samples(http)
    for endpoint in ("completions", "chat"):
        key = (count, (("endpoint", endpoint),))
        assert after.get(key, 0) - before.get(key, 0) == 1, endpoint
    total = after[("lorafleet_engine_time_to_first_token_seconds_sum", (("endpoint", "chat"),))]
    assert 0 < total < 60
    assert not any(k[0].endswith("_created") for k in after)
