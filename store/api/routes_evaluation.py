"""The evaluation gate's routes (issue 17): a namespace's evaluation sets (writer adds and
deletes, reader lists and shows), its evaluation policy (admin sets and deletes) and the
evaluation of a version (reader). Rules in ``store.eval_sets`` and ``store.evaluation``;
another tenant's namespace answers the 404 of a missing one on every route."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel as Body
from pydantic import Field

from store import catalog, eval_sets, evaluation
from store.api.deps import Caller, State, audited
from store.api.errors import error_responses
from store.api.routes_adapters import visible_adapter
from store.api.schemas.common import (
    EXAMPLE_TIME,
    StrictBody,
    entity_config,
    list_example,
    page_of,
)
from store.db import session_scope
from store.errors import NotFound
from store.models import EvalPolicy, EvalSet, Evaluation

router = APIRouter(prefix="/v1", responses=error_responses(401))
PREVIEW_ROWS = 5

EVAL_SET_EXAMPLE: dict[str, Any] = {
    "object": "eval_set",
    "id": "es_2b1f0c6e9d4a4e1f8c3b7a2d1e0f9a8b",
    "namespace": "acme",
    "name": "math",
    "description": "GSM8K-style questions",
    "kind": "completion",
    "rows": 3,
    "size": 312,
    "sha256": "9f" * 32,
    "created_at": EXAMPLE_TIME,
    "created_by": "token:ci@acme",
    "preview": None,
}
EVALUATION_EXAMPLE: dict[str, Any] = {
    "object": "evaluation",
    "adapter_id": "ad_7c9e6679f4a84b0c9a1d2e3f4a5b6c7d",
    "namespace": "acme",
    "eval_set": {"name": "math", "sha256": "9f" * 32},
    "comparison": {"adapter": "acme/math-bot@1.2.0", "chosen_by": "latest"},
    "passed": True,
    "checks": [{"rule": "min_exact_match", "limit": 0.5, "value": 1.0, "passed": True}],
    "scores": {
        "candidate": {"loss": 0.41, "perplexity": 1.51, "exact_match": 1.0},
        "base": {"loss": 2.93, "perplexity": 18.7, "exact_match": 0.0},
    },
    "policy": {"eval_set": "math", "metrics": ["loss", "exact_match"]},
    "engine_build": "lorafleet-engine 0.1.0 torch 2.13.0+cpu",
    "seconds": 1.8,
    "created_at": EXAMPLE_TIME,
}
POLICY_EXAMPLE: dict[str, Any] = {
    "object": "eval_policy",
    "namespace": "acme",
    "eval_set": "math",
    "metrics": ["loss", "exact_match"],
    "gate": {
        "max_loss_ratio": 0.9,
        "min_exact_match": 0.5,
        "max_regression": 0.02,
        "compare_to": "latest",
    },
    "updated_at": EXAMPLE_TIME,
    "updated_by": "token:admin@acme",
}


class EvalSetCreate(StrictBody):
    name: str = Field(min_length=1, max_length=128, description="a-z 0-9 - _ .")
    description: str | None = Field(default=None, max_length=4096)
    content: str = Field(
        min_length=1,
        max_length=eval_sets.MAX_EVAL_SET_BYTES,
        description='JSONL: {"prompt", "completion"} rows or {"messages": [...]} rows',
    )


class EvalSetOut(Body):
    model_config = entity_config(EVAL_SET_EXAMPLE)

    object: Literal["eval_set"] = "eval_set"
    id: str
    namespace: str
    name: str
    description: str | None = None
    kind: str
    rows: int
    size: int
    sha256: str
    created_at: str
    created_by: str
    preview: list[dict[str, Any]] | None = Field(
        default=None, description=f"the first {PREVIEW_ROWS} rows (show only)"
    )


class EvalSetList(Body):
    model_config = entity_config(list_example(EVAL_SET_EXAMPLE))

    object: Literal["list"] = "list"
    data: list[EvalSetOut]
    pagination: dict[str, Any]


class Deleted(Body):
    model_config = entity_config({"object": "eval_set", "id": "acme/math-v1", "deleted": True})

    object: str
    id: str
    deleted: bool


class PolicyBody(StrictBody):
    eval_set: str = Field(min_length=1, max_length=128)
    metrics: list[str] = Field(min_length=1, max_length=2, description="loss, exact_match")
    gate: dict[str, float | str | None] = Field(
        description="max_loss_ratio, min_exact_match, max_regression, compare_to"
    )


class PolicyOut(Body):
    model_config = entity_config(POLICY_EXAMPLE)

    object: Literal["eval_policy"] = "eval_policy"
    namespace: str
    eval_set: str
    metrics: list[str]
    gate: dict[str, Any]
    updated_at: str
    updated_by: str


class EvaluationOut(Body):
    model_config = entity_config(EVALUATION_EXAMPLE)

    object: Literal["evaluation"] = "evaluation"
    adapter_id: str
    namespace: str
    eval_set: dict[str, str]
    comparison: dict[str, str] | None = None
    passed: bool
    checks: list[dict[str, Any]]
    scores: dict[str, Any]
    policy: dict[str, Any]
    engine_build: str
    seconds: float
    created_at: str


def _set_out(row: EvalSet, preview: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "object": "eval_set",
        **row.model_dump(mode="json", exclude={"blob_key"}),
        "preview": preview,
    }


def _policy_out(row: EvalPolicy) -> dict[str, Any]:
    return {"object": "eval_policy", **row.model_dump(mode="json")}


def evaluation_out(row: Evaluation) -> dict[str, Any]:
    """The API shape of a version's evaluation (also what the console shows)."""
    return {
        "object": "evaluation",
        "adapter_id": row.adapter_id,
        "namespace": row.namespace,
        "eval_set": {
            "id": row.eval_set_id,
            "name": row.eval_set_name,
            "sha256": row.eval_set_sha256,
        },
        "comparison": None
        if row.comparison_adapter_id is None
        else {
            "adapter_id": row.comparison_adapter_id,
            "coordinates": row.comparison or "",
            "chosen_by": str(row.policy.get("chosen_by") or "latest"),
        },
        "passed": row.passed,
        "checks": row.checks,
        "scores": row.scores,
        "policy": row.policy,
        "engine_build": row.engine_build,
        "seconds": row.seconds,
        "created_at": row.created_at.isoformat().replace("+00:00", "Z"),
    }


def _missing(namespace: str) -> str:
    return f"namespace {namespace!r} not found"


@router.post(
    "/namespaces/{namespace}/eval-sets",
    status_code=201,
    response_model=EvalSetOut,
    responses=error_responses(400, 403, 404, 409, 413, 422),
)
def create_eval_set(
    namespace: str, body: EvalSetCreate, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Add an evaluation set (writer): JSONL rows, validated and stored content-addressed.
    400 ``invalid_eval_set`` names the first bad line; 409 when the name is taken."""
    with audited(request, caller, "eval_set.create", target=body.name, namespace=namespace):
        caller.require_role(namespace, "writer", _missing(namespace))
        with session_scope(state.engine) as session:
            catalog.get_namespace(session, namespace)
            row = eval_sets.create_eval_set(
                session,
                state.blobs,
                namespace,
                body.name,
                body.content,
                actor=caller.actor,
                description=body.description,
            )
            return _set_out(row)


@router.get(
    "/namespaces/{namespace}/eval-sets",
    response_model=EvalSetList,
    responses=error_responses(404),
)
def list_eval_sets(namespace: str, caller: Caller, state: State) -> dict[str, Any]:
    """The namespace's evaluation sets (reader)."""
    caller.require_read(namespace, _missing(namespace))
    with session_scope(state.engine) as session:
        catalog.get_namespace(session, namespace)
        data = [_set_out(r) for r in eval_sets.list_eval_sets(session, namespace)]
    return page_of(data, page=1, page_size=max(1, len(data)), total=len(data))


@router.get(
    "/namespaces/{namespace}/eval-sets/{name}",
    response_model=EvalSetOut,
    responses=error_responses(404),
)
def show_eval_set(namespace: str, name: str, caller: Caller, state: State) -> dict[str, Any]:
    """One evaluation set with its first rows (reader)."""
    caller.require_read(namespace, _missing(namespace))
    with session_scope(state.engine) as session:
        row = eval_sets.get_eval_set(session, namespace, name)
    rows = eval_sets.read_rows(state.blobs, row)[:PREVIEW_ROWS]
    return _set_out(row, [r.to_json() for r in rows])


@router.delete(
    "/namespaces/{namespace}/eval-sets/{name}",
    response_model=Deleted,
    responses=error_responses(403, 404, 409),
)
def delete_eval_set(
    namespace: str, name: str, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Delete an evaluation set (writer); 409 ``eval_set_in_use`` while the policy names it."""
    with audited(request, caller, "eval_set.delete", target=name, namespace=namespace):
        caller.require_role(namespace, "writer", _missing(namespace))
        with session_scope(state.engine) as session:
            row = eval_sets.get_eval_set(session, namespace, name)
            eval_sets.delete_eval_set(session, namespace, name)
    return {"object": "eval_set", "id": row.id, "deleted": True}


@router.put(
    "/namespaces/{namespace}/eval-policy",
    response_model=PolicyOut,
    responses=error_responses(400, 403, 404, 422),
)
def set_eval_policy(
    namespace: str, body: PolicyBody, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Set the namespace's evaluation gate (admin): new versions are scored on the eval set
    before they can be ready (see ``store.evaluation`` for the rules)."""
    with audited(request, caller, "eval_policy.set", target=namespace, namespace=namespace):
        caller.require_role(namespace, "admin", _missing(namespace))
        policy = evaluation.parse_policy_body(body.eval_set, body.metrics, dict(body.gate))
        with session_scope(state.engine) as session:
            catalog.get_namespace(session, namespace)
            return _policy_out(
                evaluation.set_policy(session, namespace, policy, actor=caller.actor)
            )


@router.get(
    "/namespaces/{namespace}/eval-policy",
    response_model=PolicyOut,
    responses=error_responses(404),
)
def get_eval_policy(namespace: str, caller: Caller, state: State) -> dict[str, Any]:
    """The namespace's evaluation gate (reader); 404 when it has none."""
    caller.require_read(namespace, _missing(namespace))
    with session_scope(state.engine) as session:
        catalog.get_namespace(session, namespace)
        row = evaluation.get_policy(session, namespace)
        if row is None:
            raise NotFound(f"namespace {namespace!r} has no evaluation policy")
        return _policy_out(row)


@router.delete(
    "/namespaces/{namespace}/eval-policy",
    response_model=Deleted,
    responses=error_responses(403, 404),
)
def delete_eval_policy(
    namespace: str, request: Request, caller: Caller, state: State
) -> dict[str, Any]:
    """Remove the evaluation gate (admin): new versions are approved as before."""
    with audited(request, caller, "eval_policy.delete", target=namespace, namespace=namespace):
        caller.require_role(namespace, "admin", _missing(namespace))
        with session_scope(state.engine) as session:
            evaluation.delete_policy(session, namespace)
    return {"object": "eval_policy", "id": namespace, "deleted": True}


@router.get(
    "/adapters/{adapter_id}/evaluation",
    response_model=EvaluationOut,
    responses=error_responses(404),
)
def get_evaluation(adapter_id: str, caller: Caller, state: State) -> dict[str, Any]:
    """The scores of a version (reader of its namespace): candidate, base and comparison,
    each gate check, the eval set digest and the engine build; 404 when not evaluated."""
    with session_scope(state.engine) as session:
        visible_adapter(session, caller, adapter_id)
        row = evaluation.get_evaluation(session, adapter_id)
        if row is None:
            raise NotFound(f"adapter {adapter_id} has no evaluation", code="not_evaluated")
        return evaluation_out(row)
