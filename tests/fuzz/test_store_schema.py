"""Schema fuzzing of the registry API (schemathesis): every operation in the live app's
``/openapi.json``, called with generated valid and invalid inputs.

Guaranteed (enforced): no 5xx; 2xx bodies, content types and headers match the schema;
invalid input is refused; every error answers with a documented-by-contract status and the
one error shape of ``store.api.errors`` (``{"error": {"code", "message"}}``); every status an
operation answers is documented for it in the schema.

The driver is ``support.fuzz.fuzz_operations``: every failing operation is reported, not
only the first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from support.factories import random_adapter, write_hf_peft
from support.fuzz import fuzz_operations
from support.live_api import LiveRegistry, directory_files, fresh_database, serve_registry, upload
from support.tiny import tiny_hf_config

BASE = "tiny"
EXAMPLES = 10
# Statuses ``store.api.errors`` may answer (LorafleetError subclasses and Starlette's own).
ERROR_STATUSES = {400, 401, 403, 404, 405, 409, 413, 415, 422}


def error_contract(ctx, response, case) -> None:
    """Every non-2xx answer is a known status with body ``{"error": {"code", "message"}}``."""
    if response.status_code < 400:
        return
    assert response.status_code in ERROR_STATUSES, f"unexpected status {response.status_code}"
    body = response.json()
    assert set(body) >= {"error"}, body
    assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
    assert isinstance(body["error"].get("message"), str), body


CONFORMANCE = [
    st_checks.not_a_server_error,
    st_checks.response_schema_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.negative_data_rejection,
    error_contract,
]


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory):
    """A live API on SQLite with a base model, a namespace and one ready adapter in it."""
    root = tmp_path_factory.mktemp("fuzz")
    with fresh_database("sqlite", root) as url, serve_registry(url, root) as stack:
        with stack.http(stack.admin_token) as admin:
            r = admin.post("/v1/base-models", json={"name": BASE, "config": tiny_hf_config()})
            assert r.status_code == 201, r.text
            body = {"name": "acme", "approval_policy": "auto"}
            assert admin.post("/v1/namespaces", json=body).status_code == 201
            files = directory_files(write_hf_peft(random_adapter(rank=2), Path(root, "a")))
            r = upload(admin, files, namespace="acme", name="bot", version="1.0.0", base_model=BASE)
            assert r.status_code == 201, r.text
        yield stack


def fuzz_every_operation(
    stack: LiveRegistry, mode: GenerationMode, token: str | None, checks: list
) -> tuple[list[str], list[str]]:
    """Run ``EXAMPLES`` generated cases per operation as ``token``; returns (operations,
    failures)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return fuzz_operations(stack.base_url, mode, checks, examples=EXAMPLES, headers=headers)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_admin_calls_get_no_5xx_and_conform_to_the_schema(
    fuzz_stack: LiveRegistry, mode: GenerationMode
) -> None:
    labels, failures = fuzz_every_operation(fuzz_stack, mode, fuzz_stack.admin_token, CONFORMANCE)
    assert len(labels) >= 15, labels  # the whole API was fuzzed, not an empty schema
    assert not failures, "\n\n".join(failures)


def test_anonymous_calls_get_401_never_5xx(fuzz_stack: LiveRegistry) -> None:
    checks = [st_checks.not_a_server_error, error_contract]
    labels, failures = fuzz_every_operation(fuzz_stack, GenerationMode.NEGATIVE, None, checks)
    assert len(labels) >= 15 and not failures, "\n\n".join(failures)


def test_every_answered_status_is_documented(fuzz_stack: LiveRegistry) -> None:
    checks = [st_checks.status_code_conformance]
    _, failures = fuzz_every_operation(
        fuzz_stack, GenerationMode.POSITIVE, fuzz_stack.admin_token, checks
    )
    assert not failures, "\n\n".join(failures)
