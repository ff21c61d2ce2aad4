"""Schema fuzzing of the engine's OpenAI-compatible API (schemathesis): every operation in
the live engine's ``/openapi.json`` with generated valid and invalid inputs.

Guaranteed (enforced): no 5xx, whatever the body; every error answers in OpenAI's shape
(``{"error": {"message", "type", ...}}``) with a status the engine documents (400, 404, 422,
429); a valid request for the base model or an adapter never fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from support.factories import write_adapter_dir
from support.fuzz import fuzz_operations
from support.live_api import live_engine
from support.tiny import engine_settings, model_spec

from engine.runtime import build_runtime
from engine.tiny import init_tiny

EXAMPLES = 12
ERROR_STATUSES = {400, 404, 405, 413, 415, 422, 429}


def openai_error_shape(ctx, response, case) -> None:  # noqa: ANN001 (schemathesis check)
    """Every non-2xx answer is a known status with OpenAI's error body."""
    if response.status_code < 400:
        return
    assert response.status_code in ERROR_STATUSES, f"unexpected status {response.status_code}"
    error = response.json().get("error")
    assert isinstance(error, dict), response.text
    assert isinstance(error.get("message"), str) and isinstance(error.get("type"), str), error


@pytest.fixture(scope="module")
def engine_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live engine on a tiny model serving the base model and one local adapter."""
    root = tmp_path_factory.mktemp("engine-fuzz")
    model_dir = init_tiny(root / "tiny")
    peft_root = root / "loras"
    peft_root.mkdir()
    write_adapter_dir(peft_root, "fuzz-lora", model_spec(model_dir))
    runtime = build_runtime(engine_settings(model_dir, peft_source=str(peft_root)))
    with live_engine(runtime) as base:
        yield base


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_engine_never_answers_5xx_and_errors_have_openai_shape(
    engine_url: str, mode: GenerationMode
) -> None:
    checks = [st_checks.not_a_server_error, openai_error_shape]
    labels, failures = fuzz_operations(engine_url, mode, checks, examples=EXAMPLES, timeout=60)
    assert {"POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models"} <= set(labels)
    assert not failures, "\n\n".join(failures)


def test_fuzzed_engine_still_serves_the_base_and_the_adapter(engine_url: str) -> None:
    import httpx

    for model in ("tiny-llama", "fuzz-lora"):
        r = httpx.post(
            f"{engine_url}/v1/completions",
            json={"model": model, "prompt": "hello", "max_tokens": 4},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b"\xff\xfe", 400),
        ("GET", "/v1/no-such-route", None, 404),
        ("DELETE", "/v1/models", None, 405),
    ],
)
def test_framework_refusals_answer_in_openai_shape(
    engine_url: str, method: str, path: str, body: bytes | None, status: int
) -> None:
    import httpx

    r = httpx.request(
        method,
        f"{engine_url}{path}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"], error
