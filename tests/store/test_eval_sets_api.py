"""Evaluation sets, the evaluation policy and a version's evaluation over the REST API (real
HTTP, SQLite and PostgreSQL): add / list / show / delete, the validation table (every bad
set a 400 ``invalid_eval_set`` naming the line, nothing stored), content addressing, the
writer/admin roles, tenancy (another tenant's set, policy or version evaluation is the same
404 as a missing one) and the gate for a version registered outside the pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import Session
from support.live_api import LiveRegistry
from support.tiny import tiny_hf_config

from store import registry
from store.blobs import referenced_blob_keys
from store.models import Provenance
from store.tenancy import create_namespace, register_base_model

ROWS = [
    {"prompt": "Q: 2+2?\nA:", "completion": " 4"},
    {"prompt": "Q: 3*3?\nA:", "completion": " 9"},
]
CHAT = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
POLICY = {"eval_set": "math", "metrics": ["loss", "exact_match"], "gate": {"min_exact_match": 0.5}}


def _jsonl(rows: list[dict], spacing: str = "") -> str:
    return "".join(json.dumps(r, separators=(",", ":" + spacing)) + "\n" for r in rows)


@pytest.fixture
def world(live_registry: LiveRegistry) -> LiveRegistry:
    with Session(live_registry.engine) as session:
        register_base_model(session, "tiny-llama", tiny_hf_config(), actor="admin")
        create_namespace(session, "acme", approval_policy="auto", actor="admin")
        create_namespace(session, "bank", approval_policy="auto", actor="admin")
        session.commit()
    return live_registry


@pytest.fixture
def acme(world: LiveRegistry) -> Iterator[httpx.Client]:
    with world.http(world.mint("admin", "acme", "acme-admin")) as client:
        yield client


@pytest.fixture
def bank(world: LiveRegistry) -> Iterator[httpx.Client]:
    with world.http(world.mint("admin", "bank", "bank-admin")) as client:
        yield client


def test_add_list_show_delete_an_eval_set(world: LiveRegistry, acme: httpx.Client) -> None:
    created = acme.post(
        "/v1/namespaces/acme/eval-sets",
        json={"name": "math", "content": _jsonl(ROWS), "description": "sums"},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["kind"], body["rows"], body["description"]) == ("completion", 2, "sums")
    with Session(world.engine) as session:
        assert f"sha256/{body['sha256']}" in referenced_blob_keys(session)  # kept by the GC
    listed = acme.get("/v1/namespaces/acme/eval-sets").json()["data"]
    assert [s["name"] for s in listed] == ["math"]
    shown = acme.get("/v1/namespaces/acme/eval-sets/math").json()
    assert shown["preview"] == ROWS
    # The same rows spelled differently are the same content (normalised JSONL).
    again = acme.post(
        "/v1/namespaces/acme/eval-sets", json={"name": "math2", "content": _jsonl(ROWS, " ")}
    )
    assert again.json()["sha256"] == body["sha256"]
    assert (
        acme.post(
            "/v1/namespaces/acme/eval-sets", json={"name": "math", "content": _jsonl(ROWS)}
        ).status_code
        == 409
    )
    chat = acme.post("/v1/namespaces/acme/eval-sets", json={"name": "c", "content": _jsonl(CHAT)})
    assert chat.json()["kind"] == "chat"
    assert acme.delete("/v1/namespaces/acme/eval-sets/math2").json()["deleted"] is True
    assert acme.get("/v1/namespaces/acme/eval-sets/math2").status_code == 404


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "at least one row"),
        ("not json\n", "line 1"),
        (_jsonl(ROWS) + '{"prompt": "x"}\n', "line 3"),
        (_jsonl(ROWS) + _jsonl(CHAT), "not both"),
        ('{"prompt": "a", "completion": "b", "completion": "c"}\n', "duplicate_key"),
        ('{"prompt": 1, "completion": "b"}\n', "must be a string"),
        ('{"prompt": "a", "completion": "  "}\n', "completion is empty"),
        ('{"messages": [{"role": "user", "content": "a"}]}\n', "2 to 64 messages"),
        ('{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}\n',
         "last message is the assistant's"),
        ('{"messages": [{"role": "root", "content": "a"}, {"role": "assistant", "content": "b"}]}\n',
         "role: system|user|assistant"),
        ('{"prompt": "a", "completion": "b"}\n' * 2001, "at most 2000 rows"),
    ],
)  # fmt: skip
def test_bad_eval_sets_are_a_400_naming_what_is_wrong(
    acme: httpx.Client, content: str, fragment: str
) -> None:
    response = acme.post("/v1/namespaces/acme/eval-sets", json={"name": "bad", "content": content})
    if content == "":
        assert response.status_code == 422  # the body schema: content has at least 1 character
        return
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_eval_set"
    assert fragment in response.json()["error"]["message"]
    assert acme.get("/v1/namespaces/acme/eval-sets").json()["data"] == []


def test_another_tenants_eval_sets_and_policy_are_the_404_of_missing_ones(
    acme: httpx.Client, bank: httpx.Client
) -> None:
    acme.post("/v1/namespaces/acme/eval-sets", json={"name": "math", "content": _jsonl(ROWS)})
    assert acme.put("/v1/namespaces/acme/eval-policy", json=POLICY).status_code == 200
    for method, path, body in (
        ("GET", "/v1/namespaces/{ns}/eval-sets", None),
        ("GET", "/v1/namespaces/{ns}/eval-sets/math", None),
        ("DELETE", "/v1/namespaces/{ns}/eval-sets/math", None),
        ("POST", "/v1/namespaces/{ns}/eval-sets", {"name": "x", "content": _jsonl(ROWS)}),
        ("GET", "/v1/namespaces/{ns}/eval-policy", None),
        ("PUT", "/v1/namespaces/{ns}/eval-policy", POLICY),
        ("DELETE", "/v1/namespaces/{ns}/eval-policy", None),
    ):
        theirs = bank.request(method, path.format(ns="acme"), json=body)
        missing = bank.request(method, path.format(ns="nosuch"), json=body)
        assert theirs.status_code == missing.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["error"]["message"] == missing.json()["error"]["message"].replace(
            "nosuch", "acme"
        )
    assert acme.get("/v1/namespaces/acme/eval-sets/math").status_code == 200  # still there


def test_policy_validation_and_the_set_it_names(acme: httpx.Client) -> None:
    assert acme.put("/v1/namespaces/acme/eval-policy", json=POLICY).status_code == 404  # no set
    acme.post("/v1/namespaces/acme/eval-sets", json={"name": "math", "content": _jsonl(ROWS)})
    for gate, metrics in (
        ({}, ["loss"]),
        ({"max_loss_ratio": 0.9}, ["exact_match"]),
        ({"min_exact_match": 1.5}, ["exact_match"]),
        ({"min_exact_match": 0.5, "surprise": 1}, ["exact_match"]),
        ({"max_regression": 0.02, "compare_to": "stable"}, ["loss"]),
    ):
        body = {"eval_set": "math", "metrics": metrics, "gate": gate}
        response = acme.put("/v1/namespaces/acme/eval-policy", json=body)
        assert response.status_code == 400, (gate, response.text)
    assert acme.put("/v1/namespaces/acme/eval-policy", json=POLICY).status_code == 200
    assert acme.get("/v1/namespaces/acme/eval-policy").json()["gate"]["min_exact_match"] == 0.5
    in_use = acme.delete("/v1/namespaces/acme/eval-sets/math")
    assert (in_use.status_code, in_use.json()["error"]["code"]) == (409, "eval_set_in_use")
    assert acme.delete("/v1/namespaces/acme/eval-policy").status_code == 200
    assert acme.get("/v1/namespaces/acme/eval-policy").status_code == 404


def test_a_version_registered_outside_the_pipeline_is_held_not_silently_ready(
    world: LiveRegistry, acme: httpx.Client, bank: httpx.Client, make_package
) -> None:
    acme.post("/v1/namespaces/acme/eval-sets", json={"name": "math", "content": _jsonl(ROWS)})
    acme.put("/v1/namespaces/acme/eval-policy", json=POLICY)
    with Session(world.engine) as session:
        row, _ = registry.commit_version(
            session,
            make_package(1),
            namespace="acme",
            name="bot",
            version="1.0.0",
            base_model="tiny-llama",
            provenance=Provenance(),
            actor="trainer",
        )
        held = (row.id, row.status, row.status_code)
        session.commit()
    assert held[1:] == ("pending", "evaluation_missing")
    missing = acme.get(f"/v1/adapters/{held[0]}/evaluation")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_evaluated")
    theirs = bank.get(f"/v1/adapters/{held[0]}/evaluation")
    nobody = bank.get("/v1/adapters/ad_00000000000000000000000000000000/evaluation")
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json()["error"]["message"] == nobody.json()["error"]["message"].replace(
        "ad_00000000000000000000000000000000", held[0]
    )


def test_cli_eval_sets_add_list_policy_and_adapters_show(
    world: LiveRegistry, make_package, tmp_path
) -> None:
    from typer.testing import CliRunner

    from store.cli import app

    def cli(*args: str) -> str:
        env = {"LORAFLEET_API_URL": world.base_url, "LORAFLEET_TOKEN": world.admin_token}
        result = CliRunner().invoke(app, list(args), env={**env, "COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result.stdout

    rows = tmp_path / "math.jsonl"
    rows.write_text(_jsonl(ROWS))
    assert "added eval set acme/math: 2 completion rows" in cli(
        "eval-sets", "add", "acme", "math", str(rows)
    )
    assert "math" in cli("eval-sets", "list", "acme") and "completion" in cli(
        "eval-sets", "list", "acme"
    )
    policy = cli(
        "eval-policy", "set", "acme", "--eval-set", "math", "--metric", "exact_match",
        "--min-exact-match", "0.5",
    )  # fmt: skip
    assert json.loads(policy)["gate"]["min_exact_match"] == 0.5
    with Session(world.engine) as session:
        registry.commit_version(
            session, make_package(1), namespace="acme", name="bot", version="1.0.0",
            base_model="tiny-llama", provenance=Provenance(), actor="trainer",
        )  # fmt: skip
        session.commit()
    shown = json.loads(cli("adapters", "show", "acme/bot@1.0.0"))
    assert (shown["status_code"], shown["evaluation"]) == ("evaluation_missing", None)
