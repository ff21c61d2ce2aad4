"""Issue 12 class 8: the engine does not trust request sizes.

Through a real engine (uvicorn) over HTTP: integers outside int64 and out-of-range numeric
fields are a 400 in OpenAI's error shape (never a 500), and the engine answers a normal
request after each case.
"""

from __future__ import annotations

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
