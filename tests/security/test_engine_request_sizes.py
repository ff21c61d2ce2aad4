"""Issue 12 class 8: the engine does not trust request sizes.

Through a real engine (uvicorn) over HTTP: integers outside int64 and out-of-range numeric
fields are a 400 in OpenAI's error shape (never a 500), and the engine answers a normal
request after each case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.live_api import live_engine
from support.tiny import TINY_MODEL, engine_settings

from engine.runtime import build_runtime
from engine.tiny import init_tiny

INT64_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    model_dir: Path = init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    runtime = build_runtime(engine_settings(model_dir))
    with live_engine(runtime) as url:
        yield url, runtime


@pytest.fixture
def http(engine: tuple[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=engine[0], timeout=60) as c:
        yield c


def assert_openai_400(resp: httpx.Response, param: str | None = None) -> None:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param, err


def assert_healthy(http: httpx.Client) -> None:
    body = {"model": TINY_MODEL, "prompt": "Once upon", "max_tokens": 2, "temperature": 0}
    resp = http.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] >= 1


BIG = [2**63, -(2**63) - 1, 2**64, 10**30, -(10**30)]
CASES = [
    *[("completions", "seed", v) for v in BIG],
    *[("chat", "seed", v) for v in BIG],
    *[("completions", field, v) for field in ("n", "max_tokens", "logprobs") for v in BIG],
    *[("chat", field, v) for field in ("n", "max_tokens", "max_completion_tokens") for v in BIG],
    ("chat", "top_logprobs", 2**63),
    ("completions", "n", 0),
    ("completions", "n", 17),
    ("completions", "max_tokens", 0),
    ("completions", "max_tokens", -1),
    ("completions", "logprobs", -1),
    ("completions", "logprobs", 21),
]


def post(http: httpx.Client, endpoint: str, **fields: Any) -> httpx.Response:
    if endpoint == "chat":
        body = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}]}
        if fields.get("top_logprobs") is not None:
            body["logprobs"] = True
        path = "/v1/chat/completions"
    else:
        body = {"model": TINY_MODEL, "prompt": "Once upon"}
        path = "/v1/completions"
    body.update({"max_tokens": 2, **fields})
    return http.post(path, json=body)


@pytest.mark.parametrize(("endpoint", "field", "value"), CASES)
def test_numeric_field_out_of_range_is_a_400(
    http: httpx.Client, endpoint: str, field: str, value: int
) -> None:
    assert_openai_400(post(http, endpoint, **{field: value}), param=field)
    assert_healthy(http)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(min_value=-(2**70), max_value=2**70))
def test_any_seed_is_served_or_refused_in_openai_shape(http: httpx.Client, seed: int) -> None:
    resp = post(http, "completions", seed=seed, n=2, max_tokens=1)
    if -(2**63) <= seed <= INT64_MAX:
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["choices"]) == 2
    else:
        assert_openai_400(resp, param="seed")


def test_openai_client_gets_a_bad_request_error(engine: tuple[str, Any]) -> None:
    with openai.OpenAI(base_url=f"{engine[0]}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(model=TINY_MODEL, prompt="hi", max_tokens=2, seed=2**64)
        assert info.value.status_code == 400
        assert info.value.body["param"] == "seed"
        edge = client.completions.create(
            model=TINY_MODEL, prompt="hi", max_tokens=2, seed=INT64_MAX, n=16
        )
        assert len(edge.choices) == 16


# -- part 2: one request's cost is bounded -------------------------------------------------


def completion_cost(prompt_len: int, prompts: int, n: int, max_tokens: int) -> int:
    return prompts * n * (prompt_len + max_tokens)


@pytest.mark.parametrize(
    ("prompts", "n", "max_tokens"),
    [(300, 16, 16), (200, 1, 16), (20, 16, 8), (2, 16, 100), (129, 1, 16)],
)
def test_a_request_above_the_cost_limit_is_a_400_naming_it(
    engine: tuple[str, Any], http: httpx.Client, prompts: int, n: int, max_tokens: int
) -> None:
    limit = engine[1].scheduler.max_request_tokens
    ids = [65, 66, 67]
    assert completion_cost(len(ids), prompts, n, max_tokens) > limit  # the table's premise
    body = {"model": TINY_MODEL, "prompt": [ids] * prompts, "n": n, "max_tokens": max_tokens}
    resp = http.post("/v1/completions", json=body)
    assert_openai_400(resp)
    err = resp.json()["error"]
    assert err["code"] == "request_too_large"
    assert str(limit) in err["message"] and "max_request_tokens" in err["message"]
    assert engine[1].scheduler.waiting == 0  # nothing was queued
    assert_healthy(http)


def test_the_default_limit_is_sixteen_full_context_choices(
    engine: tuple[str, Any], http: httpx.Client
) -> None:
    runtime = engine[1]
    assert runtime.scheduler.max_request_tokens == 16 * runtime.max_seq_len
    # Chat without max_tokens counts the whole context per choice: n=16 is exactly the limit.
    chat = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 16}
    resp = http.post("/v1/chat/completions", json=chat)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["choices"]) == 16
    # Two such prompts are twice the limit.
    body = {"model": TINY_MODEL, "prompt": [[65], [66]], "n": 16, "max_tokens": 100}
    resp = http.post("/v1/completions", json=body)
    assert resp.json()["error"]["code"] == "request_too_large"


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    prompts=st.integers(min_value=1, max_value=400),
    n=st.integers(min_value=1, max_value=16),
    max_tokens=st.integers(min_value=1, max_value=120),
)
def test_cost_limit_is_exact(
    engine: tuple[str, Any], http: httpx.Client, prompts: int, n: int, max_tokens: int
) -> None:
    limit = engine[1].scheduler.max_request_tokens
    cost = completion_cost(1, prompts, n, max_tokens)
    body = {"model": TINY_MODEL, "prompt": [[65]] * prompts, "n": n, "max_tokens": max_tokens}
    resp = http.post("/v1/completions", json=body)
    if cost > limit:
        assert resp.json()["error"]["code"] == "request_too_large", resp.text
        assert resp.status_code == 400
    else:
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["choices"]) == prompts * n


# -- part 3: overload is a 429, rows are shared fairly ---------------------------------------


def big_body(n: int = 16, max_tokens: int = 60, stream: bool = False) -> dict[str, Any]:
    return {
        "model": TINY_MODEL,
        "prompt": "Once upon",
        "n": n,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_admission_is_round_robin_and_capped_per_request(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Stepped by hand: 16 sequences of one request and 1 of another, 8 rows."""
    from engine.sampling import SamplingParams
    from engine.scheduler import GenerationRequest

    model_dir = init_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)
    runtime = build_runtime(engine_settings(model_dir, max_batch=8))
    sched = runtime.scheduler
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    done: list[str] = []
    for _ in range(16):
        sched.submit(GenerationRequest([65, 66], params, lambda d: None, group="big"))

    def small_sink(delta: Any) -> None:
        if delta.finish_reason:
            done.append("small")

    sched.submit(GenerationRequest([65], params, small_sink, group="small"))
    sched.step()
    held = [r.group for r in sched._running]
    assert held.count("big") == sched.max_rows_per_request < sched.max_batch
    assert held.count("small") == 1  # admitted in the first step although it came last
    while sched.has_work():
        sched.step()
    assert done == ["small"]


def test_a_small_request_is_served_while_a_big_one_runs(
    engine: tuple[str, Any], http: httpx.Client
) -> None:
    import threading

    url, runtime = engine
    events: list[str] = []
    lock = threading.Lock()

    def record(name: str) -> None:
        with lock:
            events.append(name)

    def big() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            body = big_body(max_tokens=100, stream=True)
            with c.stream("POST", "/v1/completions", json=body) as resp:
                assert resp.status_code == 200
                finished = 0
                for line in resp.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0].get(
                        "finish_reason"
                    ):
                        finished += 1
                        if finished == 1:
                            record("big_first_choice_done")
        record("big_done")

    thread = threading.Thread(target=big)
    thread.start()
    # All 16 of the big request's choices are queued or running before the small one comes.
    wait_for(lambda: runtime.scheduler.running + runtime.scheduler.waiting >= 16)
    with http.stream("POST", "/v1/completions", json=big_body(n=1, max_tokens=3, stream=True)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                record("small_token")
                break
        for _ in lines:
            pass
    record("small_done")
    thread.join(120)
    # Without fair admission the small request waits for a whole wave of the big one's
    # choices (FIFO behind 16 - max_batch of them), so its first token comes after a big
    # choice has finished.
    assert events.index("small_token") < events.index("big_first_choice_done"), events
    assert events[-1] == "big_done", events


def test_overload_is_a_429_with_retry_after(engine: tuple[str, Any], http: httpx.Client) -> None:
    import threading

    url, runtime = engine
    sched = runtime.scheduler
    old = sched.max_waiting, sched.max_rows_per_request
    # A queue of 16 and two rows for the big request: its sequences wait long enough (8
    # rounds of 80 tokens) for both refusals below, however fast this machine decodes.
    sched.max_waiting, sched.max_rows_per_request = 16, 2
    results: list[int] = []

    def big() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            results.append(c.post("/v1/completions", json=big_body(max_tokens=80)).status_code)

    thread = threading.Thread(target=big)
    try:
        wait_for(lambda: not sched.has_work())  # an earlier test's sequences have drained
        thread.start()
        wait_for(lambda: sched.waiting >= 16 - 2)  # the big request's own sequences wait
        resp = http.post("/v1/completions", json=big_body(n=16, max_tokens=2))
        assert resp.status_code == 429, resp.text
        assert int(resp.headers["Retry-After"]) >= 1
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "rate_limit_error" and err["code"] == "overloaded"
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client:
            with pytest.raises(openai.RateLimitError):
                client.completions.create(model=TINY_MODEL, prompt="hi", n=16, max_tokens=2)
            # A request that fits the queue is still taken while the big one runs.
            small = client.completions.create(model=TINY_MODEL, prompt="hi", max_tokens=2)
            assert small.choices[0].finish_reason in ("stop", "length")
        assert sched.waiting > 0 or thread.is_alive()
    finally:
        thread.join(120)
        sched.max_waiting, sched.max_rows_per_request = old
    assert results == [200]
    assert_healthy(http)


def test_a_disconnected_client_is_cancelled_while_tokens_flow(
    engine: tuple[str, Any], http: httpx.Client
) -> None:
    """A non-streamed n=16 request whose client goes away mid-generation stops generating:
    tokens keep flowing, so waiting for a second without tokens would never notice."""
    url, runtime = engine
    sched = runtime.scheduler
    before = sched.generated_tokens
    body = big_body(max_tokens=100)
    with httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=0.05)) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("/v1/completions", json=body)  # closes the connection on the timeout
    wait_for(lambda: not sched.has_work())
    generated = sched.generated_tokens - before
    assert 0 < generated < body["n"] * body["max_tokens"], generated
    assert_healthy(http)


def test_the_limits_are_engine_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = init_tiny(tmp_path / "model", seed=0)
    monkeypatch.setenv("LORAFLEET_ENGINE_MAX_REQUEST_TOKENS", "300")
    monkeypatch.setenv("LORAFLEET_ENGINE_MAX_WAITING", "5")
    monkeypatch.setenv("LORAFLEET_ENGINE_MAX_ROWS_PER_REQUEST", "2")
    sched = build_runtime(engine_settings(model_dir)).scheduler
    assert (sched.max_request_tokens, sched.max_waiting, sched.max_rows_per_request) == (300, 5, 2)
    monkeypatch.setenv("LORAFLEET_ENGINE_MAX_WAITING", "0")
    with pytest.raises(ValueError, match="LORAFLEET_ENGINE_MAX_WAITING"):
        engine_settings(model_dir)
