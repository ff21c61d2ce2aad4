"""Evaluation sets of a namespace: JSONL rows a new version is scored on (issue 17).

A set is JSONL, one row per line, all rows of one kind:

* ``completion``: ``{"prompt": "...", "completion": "..."}``;
* ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
  whose last message is the assistant's (the completion scored); the rest is the prompt.

Every line goes through the project's bounded JSON parser (``events.untrusted.load_json``);
the whole set is capped (``MAX_EVAL_SET_BYTES``, ``MAX_EVAL_SET_ROWS``). What is stored is the
normalised JSONL (one canonical JSON object per line, keys sorted) as a content-addressed
blob, like adapter files (``store.blobs``): the same rows give the same ``sha256`` whatever
the spacing of the upload, and identical sets are stored once.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from events.untrusted import JsonLimits, UntrustedJson, load_json
from store.blobs import BlobStore
from store.db import savepoint
from store.errors import AlreadyExists, BadRequest, NotFound
from store.models import EvalPolicy, EvalSet

MAX_EVAL_SET_BYTES = 1 << 20  # fits one JSON request body (store.api.body_limits)
MAX_EVAL_SET_ROWS = 2_000
MAX_FIELD_CHARS = 16_384  # one prompt, completion or message
MAX_MESSAGES = 64
ROW_LIMITS = JsonLimits(max_bytes=256 * 1024, max_depth=4, max_items=1_000)
ROLES = frozenset({"system", "user", "assistant"})
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class EvalSetInvalid(BadRequest):
    """The uploaded rows are not a valid evaluation set (400, code ``invalid_eval_set``)."""

    code = "invalid_eval_set"


class EvalSetInUse(AlreadyExists):
    """The namespace's evaluation policy names the set (409, code ``eval_set_in_use``)."""

    code = "eval_set_in_use"


@dataclass(frozen=True)
class EvalRow:
    """One row: ``prompt`` (completion rows) or ``messages`` without the last (chat rows),
    and the ``completion`` the version should produce."""

    completion: str
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] | None = None

    def to_json(self) -> dict[str, Any]:
        if self.messages is None:
            return {"prompt": self.prompt, "completion": self.completion}
        messages = [*self.messages, {"role": "assistant", "content": self.completion}]
        return {"messages": messages}


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise EvalSetInvalid(f"{what} must be a string")
    if len(value) > MAX_FIELD_CHARS:
        raise EvalSetInvalid(f"{what} is longer than {MAX_FIELD_CHARS} characters")
    return value


def _row(value: Any, line: int) -> tuple[str, EvalRow]:
    where = f"line {line}"
    if not isinstance(value, dict):
        raise EvalSetInvalid(f"{where}: a row is a JSON object")
    keys = set(value)
    if keys == {"prompt", "completion"}:
        completion = _text(value["completion"], f"{where}: completion")
        if not completion.strip():
            raise EvalSetInvalid(f"{where}: completion is empty")
        return "completion", EvalRow(completion, prompt=_text(value["prompt"], f"{where}: prompt"))
    if keys == {"messages"}:
        messages = value["messages"]
        if not isinstance(messages, list) or not 2 <= len(messages) <= MAX_MESSAGES:
            raise EvalSetInvalid(f"{where}: messages is a list of 2 to {MAX_MESSAGES} messages")
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or set(m) != {"role", "content"} or m["role"] not in ROLES:
                raise EvalSetInvalid(
                    f"{where}: message {i} is {{role: system|user|assistant, content}}"
                )
            out.append({"role": m["role"], "content": _text(m["content"], f"{where}: message {i}")})
        if out[-1]["role"] != "assistant" or not out[-1]["content"].strip():
            raise EvalSetInvalid(f"{where}: the last message is the assistant's, not empty")
        return "chat", EvalRow(out[-1]["content"], messages=tuple(out[:-1]))
    raise EvalSetInvalid(
        f"{where}: a row is {{prompt, completion}} or {{messages}}, got keys {sorted(keys)[:8]}"
    )


def parse_eval_set(content: str | bytes) -> tuple[str, list[EvalRow]]:
    """``content`` (JSONL) as ``(kind, rows)``; ``EvalSetInvalid`` naming the first bad line.
    Blank lines are skipped; rows of two kinds in one set are refused."""
    data = content.encode() if isinstance(content, str) else content
    if len(data) > MAX_EVAL_SET_BYTES:
        raise EvalSetInvalid(f"an evaluation set holds at most {MAX_EVAL_SET_BYTES} bytes")
    kinds: set[str] = set()
    rows: list[EvalRow] = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            value = load_json(line, ROW_LIMITS, what=f"line {number}")
        except UntrustedJson as exc:
            raise EvalSetInvalid(str(exc)) from None
        kind, row = _row(value, number)
        kinds.add(kind)
        rows.append(row)
        if len(rows) > MAX_EVAL_SET_ROWS:
            raise EvalSetInvalid(f"an evaluation set holds at most {MAX_EVAL_SET_ROWS} rows")
    if not rows:
        raise EvalSetInvalid("an evaluation set holds at least one row")
    if len(kinds) > 1:
        raise EvalSetInvalid("rows are all {prompt, completion} or all {messages}, not both")
    return kinds.pop(), rows


def normalised_jsonl(rows: list[EvalRow]) -> bytes:
    """The stored form of ``rows``: one canonical JSON object per line (sorted keys)."""
    lines = (json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) for r in rows)
    return ("\n".join(lines) + "\n").encode()


def check_name(name: str) -> str:
    """``name`` if it is 1-128 of ``a-z 0-9 - _ .``; ``BadRequest`` otherwise."""
    if not 1 <= len(name) <= 128 or not set(name) <= NAME_CHARS:
        raise BadRequest(f"eval set name {name[:140]!r}: 1-128 characters of a-z 0-9 - _ .")
    return name


def create_eval_set(
    session: Session,
    blobs: BlobStore,
    namespace: str,
    name: str,
    content: str | bytes,
    *,
    actor: str,
    description: str | None = None,
) -> EvalSet:
    """Validate ``content``, store it as a blob, record the set; ``AlreadyExists`` when the
    namespace has a set of that name (sets are immutable: delete, then add again)."""
    check_name(name)
    kind, rows = parse_eval_set(content)
    ref = blobs.put_bytes(normalised_jsonl(rows))  # blob first: a crash leaves an orphan only
    row = EvalSet(
        id=f"es_{uuid.uuid4().hex}",
        namespace=namespace,
        name=name,
        description=description,
        kind=kind,
        rows=len(rows),
        size=ref.size,
        sha256=ref.sha256,
        blob_key=ref.key,
        created_by=actor,
    )
    try:
        with savepoint(session):
            session.add(row)
    except IntegrityError:
        raise AlreadyExists(f"namespace {namespace!r} already has an eval set {name!r}") from None
    return row


def list_eval_sets(session: Session, namespace: str) -> list[EvalSet]:
    """The namespace's sets, by name."""
    return list(
        session.execute(
            sa.select(EvalSet).where(EvalSet.namespace == namespace).order_by(EvalSet.name)
        ).scalars()
    )


def get_eval_set(session: Session, namespace: str, name: str) -> EvalSet:
    """The set ``name`` of ``namespace``; ``NotFound`` otherwise."""
    row = session.execute(
        sa.select(EvalSet).where(EvalSet.namespace == namespace, EvalSet.name == name)
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"eval set {name!r} not found in namespace {namespace!r}")
    return row


def delete_eval_set(session: Session, namespace: str, name: str) -> None:
    """Remove the set (its blob is left to the GC); ``EvalSetInUse`` while the namespace's
    evaluation policy names it."""
    row = get_eval_set(session, namespace, name)
    policy = session.get(EvalPolicy, namespace)
    if policy is not None and policy.eval_set == name:
        raise EvalSetInUse(
            f"the evaluation policy of {namespace!r} uses eval set {name!r}: "
            f"change or delete the policy first"
        )
    session.delete(row)
    session.flush()


def read_rows(blobs: BlobStore, eval_set: EvalSet) -> list[EvalRow]:
    """The rows of a stored set, read back from its blob (digest-checked by the store)."""
    data = b"".join(blobs.iter_chunks(eval_set.blob_key))
    _, rows = parse_eval_set(data)
    return rows
