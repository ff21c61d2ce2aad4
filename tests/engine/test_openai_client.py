"""The official ``openai`` client against a live engine (uvicorn on a free port)."""

# Fixtures imported from serving_fixtures are used as parameters.
# ruff: noqa: F401, F811

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serving_fixtures import registry, upload, wait_until
from support.factories import write_adapter_dir
from support.live_api import live_engine
from support.tiny import engine_settings, model_spec

from engine.runtime import build_runtime


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    root = tmp_path_factory.mktemp("loras")
    spec = model_spec(tiny_model_dir)
    for i, name in enumerate(("math", "squad", "third")):
        write_adapter_dir(root, name, spec, seed=i + 1)
    settings = engine_settings(tiny_model_dir, peft_source=str(root), max_cpu_loras=2)
    runtime = build_runtime(settings)
    with live_engine(runtime) as url:
        yield url


@pytest.fixture
def client(engine_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{engine_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def complete(client: openai.OpenAI, model: str, prompt: str | list[int] = "Once upon") -> str:
    out = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    return out.choices[0].text


def test_models_lists_base_and_adapters_with_parent(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny-llama", "math", "squad", "third"}
    assert models["tiny-llama"].model_extra["parent"] is None
    for name in ("math", "squad"):
        assert models[name].model_extra["parent"] == "tiny-llama"
        assert models[name].model_extra["root"] == "tiny-llama"


def test_completion_with_base_and_adapters(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny-llama", prompt="Once upon", max_tokens=5, temperature=0
    )
    assert out.object == "text_completion"
    assert 1 <= out.usage.completion_tokens <= 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    base, math, squad = (complete(client, m) for m in ("tiny-llama", "math", "squad"))
    assert math != base and squad != base and math != squad
    assert complete(client, "math") == math  # greedy is deterministic


def test_token_id_prompt_matches_text_prompt(client: openai.OpenAI) -> None:
    # The tiny tokenizer: ids 0..255 are bytes, BOS is 256 and is prepended to text.
    text = client.completions.create(model="math", prompt="Hi", max_tokens=6, temperature=0)
    ids = client.completions.create(
        model="math", prompt=[256, ord("H"), ord("i")], max_tokens=6, temperature=0
    )
    assert text.usage.prompt_tokens == ids.usage.prompt_tokens == 3
    assert ids.choices[0].text == text.choices[0].text
    many = client.completions.create(
        model="math",
        prompt=[[256, ord("H"), ord("i")], [256, ord("x")]],
        max_tokens=6,
        temperature=0,
    )
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].text == text.choices[0].text


def test_chat_completion_with_adapter(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say something"}]
    base = client.chat.completions.create(
        model="tiny-llama", messages=messages, max_tokens=8, temperature=0
    )
    tuned = client.chat.completions.create(
        model="squad", messages=messages, max_tokens=8, temperature=0
    )
    assert base.object == "chat.completion"
    assert tuned.choices[0].message.role == "assistant"
    assert tuned.choices[0].message.content != base.choices[0].message.content
    assert tuned.usage.completion_tokens > 0


def test_streaming_equals_non_streaming(client: openai.OpenAI) -> None:
    full = complete(client, "math")
    stream = client.completions.create(
        model="math", prompt="Once upon", max_tokens=8, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert chunks[-1].choices[0].finish_reason == "length"

    messages = [{"role": "user", "content": "Stream please"}]
    whole = client.chat.completions.create(
        model="squad", messages=messages, max_tokens=8, temperature=0
    )
    parts = client.chat.completions.create(
        model="squad",
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(parts)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )


def test_logprobs_are_returned(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="math", prompt="Hi", max_tokens=4, temperature=0, logprobs=2
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == 4 and all(v <= 0 for v in lp.token_logprobs)
    # Keys are token texts, so two byte tokens that both render as U+FFFD may share one.
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs)
    assert all(
        abs(chosen - max(top.values())) < 1e-5
        for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True)
    )
    chat = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 3 for c in content)
    # Greedy picks the most likely token: its logprob is the top one.
    assert all(abs(c.logprob - c.top_logprobs[0].logprob) < 1e-5 for c in content)


def test_unknown_model_is_404_and_bad_prompt_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as excinfo:
        complete(client, "no-such-adapter")
    assert excinfo.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.completions.create(model="math", prompt=[], max_tokens=4)
    assert excinfo.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="math", prompt="x", max_tokens=4, temperature=5)


def test_more_active_adapters_than_cpu_cache_is_429(client: openai.OpenAI, engine_url: str) -> None:
    # max_cpu_loras=2: hold two adapters active with long streams, then ask for a third.
    streams = [
        client.completions.create(model=m, prompt="x", max_tokens=100, temperature=0, stream=True)
        for m in ("math", "squad")
    ]
    firsts = [next(iter(s)) for s in streams]
    assert all(f.choices for f in firsts)
    with pytest.raises(openai.RateLimitError) as excinfo:
        complete(client, "third")
    assert excinfo.value.status_code == 429
    metrics = httpx.get(f"{engine_url}/metrics", timeout=10).text
    assert 'lorafleet_engine_requests_total{endpoint="completions",status="429"} 1.0' in metrics
    for s in streams:
        s.close()  # disconnect: the engine cancels them and frees the adapters
    assert wait_until(lambda: _completes(client, "third"), timeout=15)


def _completes(client: openai.OpenAI, model: str) -> bool:
    try:
        complete(client, model)
        return True
    except openai.RateLimitError:
        return False


def test_concurrent_requests_with_different_adapters(client: openai.OpenAI) -> None:
    expected = {m: complete(client, m) for m in ("tiny-llama", "math", "squad")}
    results: dict[int, tuple[str, str]] = {}

    def run(i: int, model: str) -> None:
        results[i] = (model, complete(client, model))

    threads: list[threading.Thread] = []
    for i in range(9):
        model = ("tiny-llama", "math", "squad")[i % 3]
        threads.append(threading.Thread(target=run, args=(i, model)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 9
    assert all(text == expected[model] for model, text in results.values())


# -- item 16: what the engine does not do is refused, not ignored ----------------------------

CHAT = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def assert_refused(call, param: str, code: str = "unsupported_parameter") -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.BadRequestError) as excinfo:
        call()
    error = excinfo.value.body
    assert (error["param"], error["code"], error["type"]) == (
        param,
        code,
        "invalid_request_error",
    ), error
    assert param.split("[")[0] in error["message"]


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("tools", [TOOL]),
        ("tool_choice", "auto"),
        ("functions", [TOOL["function"]]),
        ("response_format", {"type": "json_object"}),
        ("parallel_tool_calls", True),
        ("presence_penalty", 0.5),
        ("logit_bias", {"65": 10}),
    ],
)
def test_unsupported_chat_parameters_are_400(
    client: openai.OpenAI, param: str, value: object
) -> None:
    def call() -> None:
        client.chat.completions.create(model="math", messages=CHAT, max_tokens=2, **{param: value})

    assert_refused(call, param)


def test_unsupported_completion_parameters_and_extensions_are_400(client: openai.OpenAI) -> None:
    assert_refused(
        lambda: client.completions.create(model="math", prompt="x", max_tokens=2, best_of=3),
        "best_of",
    )
    assert_refused(
        lambda: client.completions.create(
            model="math", prompt="x", max_tokens=2, extra_body={"top_k": 5}
        ),
        "top_k",
    )


def test_unknown_and_tool_roles_are_400(client: openai.OpenAI) -> None:
    for role in ("tool", "critic"):
        messages = [*CHAT, {"role": role, "content": "x", "tool_call_id": "c1"}]
        assert_refused(
            lambda m=messages: client.chat.completions.create(
                model="math", messages=m, max_tokens=2
            ),
            "messages[1].role",
            "invalid_value",
        )
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    messages = [*CHAT, {"role": "assistant", "content": None, "tool_calls": calls}]
    assert_refused(
        lambda: client.chat.completions.create(model="math", messages=messages, max_tokens=2),
        "messages[1].tool_calls",
    )


def test_neutral_values_and_harmless_fields_are_accepted(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model="math",
        messages=[{"role": "system", "content": "Be brief", "name": "sys"}, *CHAT],
        max_tokens=2,
        response_format={"type": "text"},
        presence_penalty=0,
        user="end-user-7",
        metadata={"team": "a"},
    )
    assert out.choices[0].message.role == "assistant"
    text = client.completions.create(model="math", prompt="x", max_tokens=2, best_of=1, user="u")
    assert text.usage.completion_tokens >= 1


def test_models_retrieve_base_and_adapter(client: openai.OpenAI) -> None:
    base = client.models.retrieve("tiny-llama")
    assert (base.id, base.object, base.model_extra["parent"]) == ("tiny-llama", "model", None)
    math = client.models.retrieve("math")
    assert (math.id, math.model_extra["parent"]) == ("math", "tiny-llama")
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.models.retrieve("no-such-adapter")
    assert (excinfo.value.body["code"], excinfo.value.body["param"]) == ("model_not_found", "model")


def test_models_retrieve_a_registry_id_with_slash_and_at(
    tiny_model_dir: Path, tmp_path: Path, registry: tuple
) -> None:
    base_url, admin, token = registry
    upload(admin, tmp_path, model_spec(tiny_model_dir), "x", seed=3)
    settings = engine_settings(
        tiny_model_dir, peft_source=base_url, token=token, download_dir=tmp_path / "downloads"
    )
    with (
        live_engine(build_runtime(settings)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0) as c,
    ):
        card = c.models.retrieve("acme/x@1.0.0")
        assert (card.id, card.model_extra["parent"]) == ("acme/x@1.0.0", "tiny-llama")
        listed = {m.id for m in c.models.list()}
        for unlisted in ("acme/x@2.0.0", "acme/y@1.0.0"):
            assert unlisted not in listed
            with pytest.raises(openai.NotFoundError) as excinfo:
                c.models.retrieve(unlisted)
            assert excinfo.value.body["code"] == "model_not_found"
