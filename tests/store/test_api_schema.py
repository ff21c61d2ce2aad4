"""What the API's OpenAPI schema promises, and the refusals it documents, over real HTTP:
error responses per route in the one error shape, the namespace name pattern, the status
enum, and the precise 400/404 answers of the two PATCH routes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from factories import random_adapter, tiny_hf_config, write_hf_peft
from live_api import (
    LiveRegistry,
    live_registry_fixture,  # noqa: F401 - the live_registry fixture
)

BASE = "meta/tiny"


def _http(reg: LiveRegistry) -> httpx.Client:
    headers = {"Authorization": f"Bearer {reg.admin_token}"}
    return httpx.Client(base_url=reg.base_url, headers=headers, timeout=30.0)


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    return body["error"]["message"]


def test_schema_documents_each_routes_errors_in_the_error_shape(
    live_registry: LiveRegistry,
) -> None:
    schema = httpx.get(f"{live_registry.base_url}/openapi.json").json()
    error_body = schema["components"]["schemas"]["ErrorBody"]
    assert error_body["required"] == ["error"]
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # 422 is ours too

    def statuses(path: str, method: str) -> set[str]:
        responses = schema["paths"][path][method]["responses"]
        for status, spec in responses.items():
            if status.startswith(("4", "5")) and "content" in spec and status != "503":
                ref = spec["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (path, method, status)
        return set(responses)

    assert statuses("/v1/adapters", "post") == {
        "200", "201", "400", "401", "403", "404", "409", "413", "422", "503"
    }  # fmt: skip
    assert statuses("/v1/adapters/{adapter_id}", "patch") == {
        "200", "400", "401", "403", "404", "409", "422"
    }  # fmt: skip
    assert statuses("/v1/adapters", "get") == {"200", "400", "401"}
    assert statuses("/v1/adapters/{adapter_id}", "get") == {"200", "401", "404"}
    assert statuses("/v1/namespaces", "post") == {"201", "401", "403", "409", "422"}
    assert statuses("/v1/base-models", "post") == {"200", "201", "401", "403", "409", "422"}
    assert statuses("/v1/namespaces/{name}", "patch") == {
        "200", "400", "401", "403", "404", "422"
    }  # fmt: skip
    assert statuses("/v1/fleet", "get") == {"200", "400", "401"}
    assert statuses("/v1/health/live", "get") == {"200"}
    assert statuses("/v1/health/ready", "get") == {"200", "503"}


def test_schema_states_the_name_pattern_and_status_enum_the_api_enforces(
    live_registry: LiveRegistry,
) -> None:
    schema = httpx.get(f"{live_registry.base_url}/openapi.json").json()
    pattern = schema["components"]["schemas"]["NamespaceCreate"]["properties"]["name"]["pattern"]
    assert pattern == r"^[a-z0-9][a-z0-9_.-]{0,62}$"
    [status] = [p for p in schema["paths"]["/v1/adapters"]["get"]["parameters"]
                if p["name"] == "status"]  # fmt: skip
    enum = status["schema"]["anyOf"][0]
    enum = (
        schema["components"]["schemas"][enum["$ref"].rsplit("/", 1)[1]] if "$ref" in enum else enum
    )
    assert set(enum["enum"]) == {
        "uploading", "validating", "pending", "ready", "archived", "failed", "rejected"
    }  # fmt: skip
    policy = schema["components"]["schemas"]["NamespaceUpdate"]["properties"]["approval_policy"]
    assert policy["enum"] == ["auto", "manual"] and "anyOf" not in policy  # never null
    assert schema["components"]["schemas"]["AdapterPatch"]["minProperties"] == 1

    with _http(live_registry) as http:
        for bad in ("Acme", "-acme", "a/b", "x" * 64):
            r = http.post("/v1/namespaces", json={"name": bad})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_body", bad
        assert http.post("/v1/namespaces", json={"name": "acme.v2_x-y"}).status_code == 201
        _error(http.get("/v1/namespaces/Not_Valid"), 400, "bad_request")
        _error(http.get("/v1/namespaces/valid-but-missing"), 404, "not_found")
        _error(http.get("/v1/adapters", params={"status": "weird"}), 400, "bad_request")
        assert http.get("/v1/adapters", params={"status": "failed"}).status_code == 200


def test_null_approval_policy_is_404_for_a_missing_namespace_else_a_precise_400(
    live_registry: LiveRegistry,
) -> None:
    with _http(live_registry) as http:
        _error(http.patch("/v1/namespaces/ghost", json={"approval_policy": None}), 404, "not_found")
        assert http.post("/v1/namespaces", json={"name": "acme"}).status_code == 201
        message = _error(
            http.patch("/v1/namespaces/acme", json={"approval_policy": None}), 400, "bad_request"
        )
        assert message == "approval_policy cannot be null: give auto or manual"
        assert http.get("/v1/namespaces/acme").json()["approval_policy"] == "auto"
        cleared = http.patch("/v1/namespaces/acme", json={"max_bytes": None, "description": None})
        assert cleared.status_code == 200 and cleared.json()["max_bytes"] is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "nothing to change"),
        ({"status": None}, "status cannot be null"),
        ({"reason": "because"}, "reason goes with a status change"),
    ],
    ids=["empty", "null_status", "reason_alone"],
)
def test_adapter_patch_that_changes_nothing_is_a_precise_400(
    live_registry: LiveRegistry, tmp_path: Path, body: dict, message: str
) -> None:
    admin = live_registry.admin
    admin.register_base_model(BASE, tiny_hf_config())
    admin.create_namespace("acme")
    entity = admin.upload_adapter(
        write_hf_peft(random_adapter(), tmp_path / "a"),
        namespace="acme",
        name="bot",
        version="1.0.0",
        base_model=BASE,
    )
    with _http(live_registry) as http:
        answer = _error(http.patch(f"/v1/adapters/{entity['id']}", json=body), 400, "bad_request")
        assert message in answer
    after = admin.get_adapter(entity["id"])
    assert (after["status"], after["updated_at"]) == (entity["status"], entity["updated_at"])


def test_adapter_patch_edits_and_transitions_in_one_request(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    admin = live_registry.admin
    admin.register_base_model(BASE, tiny_hf_config())
    admin.create_namespace("acme", approval_policy="manual")
    entity = admin.upload_adapter(
        write_hf_peft(random_adapter(), tmp_path / "a"),
        namespace="acme",
        name="bot",
        version="1.0.0",
        base_model=BASE,
    )
    assert entity["status"] == "pending"
    with _http(live_registry) as http:
        r = http.patch(
            f"/v1/adapters/{entity['id']}",
            json={"status": "ready", "reason": "ok", "description": "approved build"},
        )
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["description"]) == ("ready", "approved build")
        # An illegal transition rolls the metadata edit of the same request back.
        conflict = http.patch(
            f"/v1/adapters/{entity['id']}", json={"status": "rejected", "description": "nope"}
        )
        _error(conflict, 409, "illegal_transition")
    assert admin.get_adapter(entity["id"])["description"] == "approved build"
