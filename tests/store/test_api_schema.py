"""What the API's OpenAPI schema promises, and the refusals it documents, over real HTTP:
error responses per route in the one error shape, the namespace name pattern, the status
enum, and the precise 400/404 answers of the two PATCH routes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.factories import random_adapter, write_hf_peft
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config

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
    assert statuses("/v1/fleet", "get") == {"200", "400", "401", "404"}
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
        assert http.get("/v1/namespaces/acme").json()["approval_policy"] == "manual"  # unchanged
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
    admin.create_namespace("acme", approval_policy="auto")
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


# --- /docs: usable, offline, complete ---------------------------------------------------------


def test_docs_page_loads_only_the_registrys_own_assets(live_registry: LiveRegistry) -> None:
    """``/docs`` and ``/redoc`` work air-gapped: every URL they reference is the registry's,
    and each asset answers 200 with its content type."""
    import re

    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{live_registry.base_url}{page}")
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert not re.search(r"(?:https?:)?//", html.text), f"{page} loads from another host"
        urls = set(re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text))
        assert "/openapi.json" in urls, urls
        expected = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
        assets = [u for u in urls if u.endswith(tuple(expected))]
        assert assets, f"{page} references no assets: {urls}"
        for url in assets:
            assert url.startswith("/docs/assets/"), url
            answer = httpx.get(f"{live_registry.base_url}{url}")
            assert answer.status_code == 200, url
            kind = expected[Path(url).suffix]
            assert kind in answer.headers["content-type"], (url, answer.headers["content-type"])
            assert len(answer.content) > 1000, url
    swagger = httpx.get(f"{live_registry.base_url}/docs/assets/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in swagger


def _operations(schema: dict) -> list[tuple[str, str, dict]]:
    return [
        (path, method, op)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_schema_declares_bearer_auth_on_every_route_that_needs_a_token(
    live_registry: LiveRegistry,
) -> None:
    schema = httpx.get(f"{live_registry.base_url}/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["bearer"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    needs_token = 0
    for path, method, op in _operations(schema):
        if "401" in op["responses"]:
            needs_token += 1
            assert op.get("security") == [{"bearer": []}], (path, method)
        else:
            assert "security" not in op, (path, method)
    assert needs_token >= 15
    # The declaration is honest: the token it names is what the API checks.
    assert httpx.get(f"{live_registry.base_url}/v1/namespaces").status_code == 401


def test_every_route_has_a_description_a_summary_a_typed_answer_and_an_example(
    live_registry: LiveRegistry,
) -> None:
    schema = httpx.get(f"{live_registry.base_url}/openapi.json").json()
    components = schema["components"]["schemas"]
    for path, method, op in _operations(schema):
        where = f"{method.upper()} {path}"
        assert op.get("summary", "").strip(), where
        assert len(op.get("description", "").strip()) > 20, f"{where} has no description"
        success = {s: r for s, r in op["responses"].items() if s.startswith("2")}
        assert success, where
        for status, answer in success.items():
            content = answer.get("content", {})
            assert content, (where, status)
            media = content.get("application/json")
            if media is None:  # a file download
                assert "application/octet-stream" in content, (where, status)
                continue
            assert media.get("example") or media.get("examples"), f"{where} {status}: no example"
            model = media.get("schema", {})
            refs = [model.get("$ref", "")] + [v.get("$ref", "") for v in model.get("anyOf", [])]
            named = [components[r.rsplit("/", 1)[1]] for r in refs if r]
            assert named, f"{where} {status} answers an untyped {model}"
            assert all(m.get("properties") for m in named), (where, status)
