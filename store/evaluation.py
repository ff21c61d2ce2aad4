"""The evaluation gate's rules (issue 17): a namespace's policy, what a version is compared
with, how its scores are judged, and what the gate lets through.

Policy (``PUT /v1/namespaces/{ns}/eval-policy``)::

    {"eval_set": "math", "metrics": ["loss", "exact_match"],
     "gate": {"max_loss_ratio": 0.9, "min_exact_match": 0.5,
              "max_regression": 0.02, "compare_to": "latest"}}

* ``max_loss_ratio``: the candidate's mean completion loss is at most this times the base
  model's on the same rows (needs metric ``loss``);
* ``min_exact_match``: at least this share of rows answered exactly, greedy (``exact_match``);
* ``max_regression``: against the comparison version (``compare_to``: ``latest`` = the
  highest ready SemVer of the same adapter and base model, or ``@alias`` = the target of
  that alias with the largest weight, ``latest`` while the alias is not set), each computed metric is no worse by more than this fraction: loss
  ``<= comparison x (1 + r)``, exact match ``>= comparison x (1 - r)``. With no comparison
  version (the first one) the rule is recorded as not applicable.

The gate (``statuses_after_evaluation``): no policy, nothing changes. With one, a version
becomes ``ready`` only in an ``auto`` namespace and only with a passing evaluation; a
failing one stays ``pending`` with code ``evaluation_failed``; one registered without an
evaluation (an upload outside the pipeline) stays ``pending`` with ``evaluation_missing``.
``manual`` namespaces stop at ``pending`` as before, the scores shown to the reviewer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from events.models import version_key
from store import aliases
from store.approval import ApprovalPolicy, Status, parse_policy
from store.errors import BadRequest, NotFound, TransientError
from store.eval_sets import check_name, get_eval_set
from store.models import AdapterVersion, EvalPolicy, Evaluation, utcnow

METRICS = ("loss", "exact_match")
GATE_RULES = ("max_loss_ratio", "min_exact_match", "max_regression", "compare_to")
FAILED_CODE = "evaluation_failed"
MISSING_CODE = "evaluation_missing"
UNAVAILABLE_CODE = "evaluation_unavailable"


class EvaluationUnavailable(TransientError):
    """The evaluation cannot run now (no worker holds the base model, a blob is missing):
    retried with back-off, then recorded as a failure, never a pass."""

    code = UNAVAILABLE_CODE


@dataclass(frozen=True)
class Policy:
    """A validated evaluation policy (``parse_policy_body``)."""

    eval_set: str
    metrics: tuple[str, ...]
    max_loss_ratio: float | None = None
    min_exact_match: float | None = None
    max_regression: float | None = None
    compare_to: str = "latest"

    def gate(self) -> dict[str, Any]:
        return {
            "max_loss_ratio": self.max_loss_ratio,
            "min_exact_match": self.min_exact_match,
            "max_regression": self.max_regression,
            "compare_to": self.compare_to,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"eval_set": self.eval_set, "metrics": list(self.metrics), "gate": self.gate()}

    @classmethod
    def of(cls, row: EvalPolicy) -> Policy:
        return cls(eval_set=row.eval_set, metrics=tuple(row.metrics), **row.gate)


def _fraction(gate: dict[str, Any], key: str, high: float) -> float | None:
    value = gate.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
        raise BadRequest(f"gate.{key} is a number in (0, {high}]")
    return float(value)


def parse_policy_body(eval_set: str, metrics: list[str], gate: dict[str, Any]) -> Policy:
    """A ``Policy`` from the request's fields; ``BadRequest`` naming what is wrong (unknown
    metric or rule, a rule on a metric not computed, no rule at all)."""
    check_name(eval_set)
    if not metrics or len(set(metrics)) != len(metrics) or not set(metrics) <= set(METRICS):
        raise BadRequest(f"metrics: one or both of {', '.join(METRICS)}, each once")
    unknown = sorted(set(gate) - set(GATE_RULES))
    if unknown:
        raise BadRequest(f"unknown gate rule(s) {unknown}; known: {', '.join(GATE_RULES)}")
    compare_to = gate.get("compare_to", "latest")
    if compare_to != "latest":
        if not (isinstance(compare_to, str) and compare_to.startswith("@")):
            raise BadRequest("gate.compare_to is 'latest' or '@<alias>'")
        if compare_to != "@latest":
            aliases.check_alias_name(compare_to[1:])
    policy = Policy(
        eval_set=eval_set,
        metrics=tuple(m for m in METRICS if m in metrics),
        max_loss_ratio=_fraction(gate, "max_loss_ratio", 1000.0),
        min_exact_match=_fraction(gate, "min_exact_match", 1.0),
        max_regression=_fraction(gate, "max_regression", 1.0),
        compare_to=compare_to,
    )
    if policy.max_loss_ratio is not None and "loss" not in policy.metrics:
        raise BadRequest("gate.max_loss_ratio needs metric 'loss'")
    if policy.min_exact_match is not None and "exact_match" not in policy.metrics:
        raise BadRequest("gate.min_exact_match needs metric 'exact_match'")
    if (policy.max_loss_ratio, policy.min_exact_match, policy.max_regression) == (None,) * 3:
        raise BadRequest("the gate needs at least one rule")
    return policy


def set_policy(session: Session, namespace: str, policy: Policy, *, actor: str) -> EvalPolicy:
    """Create or replace the namespace's policy; ``NotFound`` if its eval set does not exist."""
    get_eval_set(session, namespace, policy.eval_set)
    row = session.get(EvalPolicy, namespace)
    if row is None:
        row = EvalPolicy(namespace=namespace, eval_set="", metrics=[], gate={}, updated_by=actor)
        session.add(row)
    row.eval_set, row.metrics, row.gate = policy.eval_set, list(policy.metrics), policy.gate()
    row.updated_at, row.updated_by = utcnow(), actor
    session.flush()
    return row


def get_policy(session: Session, namespace: str) -> EvalPolicy | None:
    """The namespace's policy, None when it has none (no evaluation: nothing changes)."""
    return session.get(EvalPolicy, namespace)


def delete_policy(session: Session, namespace: str) -> None:
    """Remove the policy; ``NotFound`` when there is none."""
    row = session.get(EvalPolicy, namespace)
    if row is None:
        raise NotFound(f"namespace {namespace!r} has no evaluation policy")
    session.delete(row)
    session.flush()


def _latest_ready(
    session: Session, namespace: str, name: str, base_model: str, exclude: str
) -> AdapterVersion | None:
    rows = session.execute(
        sa.select(AdapterVersion).where(
            AdapterVersion.namespace == namespace,
            AdapterVersion.name == name,
            AdapterVersion.base_model == base_model,
            AdapterVersion.status == Status.READY,
            AdapterVersion.version != exclude,
        )
    ).scalars()
    ready = sorted(rows, key=lambda r: version_key(r.version))
    return ready[-1] if ready else None


def comparison_version(
    session: Session, namespace: str, name: str, base_model: str, compare_to: str, exclude: str
) -> tuple[AdapterVersion | None, str]:
    """The version a candidate ``namespace/name@exclude`` is compared with, and how it was
    chosen. ``latest``: the highest ready SemVer of the same adapter and base model other than
    the candidate (None for a first version). ``@alias``: the alias's target
    (``store.aliases.get_alias``) with the largest weight (ties: the highest version), when it
    is a ready version of the same base model; without such an alias, ``latest``."""
    if compare_to.startswith("@"):
        try:
            alias = aliases.get_alias(session, namespace, name, compare_to[1:])
        except NotFound:
            alias = None
        targets = sorted(
            alias.targets if alias is not None else [],
            key=lambda t: (t["weight"], version_key(t["version"])),
        )
        for target in reversed(targets):
            row = session.get(AdapterVersion, target["adapter_id"])
            if row is not None and row.status == Status.READY and row.base_model == base_model:
                return row, compare_to
        latest = _latest_ready(session, namespace, name, base_model, exclude)
        return latest, f"latest ({compare_to} not set)"
    return _latest_ready(session, namespace, name, base_model, exclude), "latest"


def _check(rule: str, passed: bool | None, detail: str) -> dict[str, Any]:
    return {"rule": rule, "passed": passed, "detail": detail}


def judge(policy: Policy, scores: dict[str, dict[str, float] | None]) -> list[dict[str, Any]]:
    """One check per gate rule: ``{rule, passed, detail}`` (``passed`` None: not applicable,
    e.g. no comparison version). ``scores`` has ``candidate``, ``base`` and ``comparison``
    (None when there is none), each with the policy's metrics."""
    cand, base, comp = scores["candidate"] or {}, scores["base"] or {}, scores.get("comparison")
    checks = []
    if policy.max_loss_ratio is not None:
        limit = policy.max_loss_ratio * base["loss"]
        checks.append(
            _check(
                "max_loss_ratio",
                cand["loss"] <= limit,
                f"loss {cand['loss']:.4f} <= {policy.max_loss_ratio} x base "
                f"{base['loss']:.4f} = {limit:.4f}",
            )
        )
    if policy.min_exact_match is not None:
        checks.append(
            _check(
                "min_exact_match",
                cand["exact_match"] >= policy.min_exact_match,
                f"exact match {cand['exact_match']:.3f} >= {policy.min_exact_match}",
            )
        )
    if policy.max_regression is not None:
        r = policy.max_regression
        if comp is None:
            checks.append(_check("max_regression", None, "no comparison version (first version)"))
        else:
            if "loss" in policy.metrics:
                limit = comp["loss"] * (1 + r)
                checks.append(
                    _check(
                        "max_regression.loss",
                        cand["loss"] <= limit,
                        f"loss {cand['loss']:.4f} <= comparison {comp['loss']:.4f} x {1 + r:g}",
                    )
                )
            if "exact_match" in policy.metrics:
                limit = comp["exact_match"] * (1 - r)
                checks.append(
                    _check(
                        "max_regression.exact_match",
                        cand["exact_match"] >= limit,
                        f"exact match {cand['exact_match']:.3f} >= comparison "
                        f"{comp['exact_match']:.3f} x {1 - r:g}",
                    )
                )
    return checks


def passed(checks: list[dict[str, Any]]) -> bool:
    """Whether every applicable check passed (at least one rule always applies)."""
    return all(c["passed"] is not False for c in checks)


def statuses_after_evaluation(
    policy: str, has_policy: bool, evaluation: dict[str, Any] | None
) -> tuple[tuple[Status, ...], str | None, str | None]:
    """What a validated version passes through, as ``(statuses, code, reason)`` of its last
    step: the approval ``policy`` decides alone when the namespace has no evaluation policy;
    with one, only a passing evaluation in an ``auto`` namespace reaches ``ready``."""
    auto = parse_policy(policy) is ApprovalPolicy.AUTO
    if not has_policy:
        return ((Status.PENDING, Status.READY) if auto else (Status.PENDING,)), None, None
    if evaluation is None:
        reason = "not evaluated (registered outside the ingest pipeline): approve by hand"
        return (Status.PENDING,), MISSING_CODE, reason
    summary = "; ".join(c["detail"] for c in evaluation["checks"] if c["passed"] is not None)
    if not evaluation["passed"]:
        failed = [c["detail"] for c in evaluation["checks"] if c["passed"] is False]
        return (Status.PENDING,), FAILED_CODE, "evaluation failed: " + "; ".join(failed)
    if auto:
        return (Status.PENDING, Status.READY), None, "evaluation passed: " + summary
    return (Status.PENDING,), None, "evaluation passed, awaiting review: " + summary


def record_evaluation(
    session: Session, version: AdapterVersion, evaluation: dict[str, Any]
) -> None:
    """Store ``evaluation`` (the ``evaluate`` step's result) on ``version``, once."""
    session.add(
        Evaluation(
            adapter_id=version.id,
            namespace=version.namespace,
            eval_set_id=evaluation["eval_set"]["id"],
            eval_set_name=evaluation["eval_set"]["name"],
            eval_set_sha256=evaluation["eval_set"]["sha256"],
            comparison_adapter_id=(evaluation.get("comparison") or {}).get("adapter_id"),
            comparison=(evaluation.get("comparison") or {}).get("coordinates"),
            passed=evaluation["passed"],
            checks=evaluation["checks"],
            scores=evaluation["scores"],
            policy={
                **evaluation["policy"],
                "chosen_by": (evaluation.get("comparison") or {}).get("chosen_by"),
            },
            engine_build=evaluation["engine_build"],
            seconds=evaluation["seconds"],
        )
    )
    session.flush()


def get_evaluation(session: Session, adapter_id: str) -> Evaluation | None:
    """The evaluation of a version, None when it was not evaluated."""
    return session.execute(
        sa.select(Evaluation).where(Evaluation.adapter_id == adapter_id)
    ).scalar_one_or_none()
