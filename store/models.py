"""The registry's tables (SQLModel) and the value types the registry service passes around.

Tables work unchanged on SQLite and PostgreSQL: JSON columns are ``sa.JSON``; timestamps are
timezone-aware UTC on both (``UTCDateTime`` re-attaches UTC where SQLite drops it). The
schema itself is owned by the Alembic migrations in ``store/migrations``; these classes
must match them (``tests/store/test_migrations.py`` checks that they do).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def new_adapter_id() -> str:
    """A fresh opaque adapter id, ``ad_<32 hex>``."""
    return f"ad_{uuid.uuid4().hex}"


class UTCDateTime(TypeDecorator[datetime]):
    """A ``TIMESTAMP WITH TIME ZONE`` that always stores and returns aware UTC datetimes.

    SQLite has no time zones: it would hand back naive values, so UTC is re-attached on read.
    Naive datetimes are refused on write rather than guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; lorafleet stores timezone-aware UTC only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _ts(*, nullable: bool = False, index: bool = False) -> Any:
    column = sa.Column(UTCDateTime(), nullable=nullable, index=index)
    if nullable:
        return Field(default=None, sa_column=column)
    return Field(default_factory=utcnow, sa_column=column)


def _json(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(sa.JSON(none_as_null=True), nullable=nullable))


class Namespace(SQLModel, table=True):
    """A tenant: approval policy, quotas, description."""

    __tablename__ = "namespaces"

    name: str = Field(primary_key=True, max_length=63)
    approval_policy: str = Field(default="auto", max_length=16)  # auto | manual
    max_bytes: int | None = Field(default=None, sa_type=sa.BigInteger)
    max_versions: int | None = Field(default=None)
    description: str | None = Field(default=None)
    # Four-eyes: the approver of a version must not be its uploader (``store.governance``).
    require_distinct_approver: bool = Field(
        default=False, sa_column_kwargs={"server_default": sa.false()}
    )
    created_at: datetime = _ts()
    created_by: str = Field(max_length=256)


class BaseModelRecord(SQLModel, table=True):
    """A base model adapters are trained against, with the dimensions from its config.json
    (table ``base_models``; ``Record``, not pydantic's ``BaseModel``)."""

    __tablename__ = "base_models"

    name: str = Field(primary_key=True, max_length=256)
    architecture: str = Field(max_length=128)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    config: dict[str, Any] = _json(nullable=False)
    created_at: datetime = _ts()
    created_by: str = Field(max_length=256)


class AdapterVersion(SQLModel, table=True):
    """One immutable ``namespace/name@version`` of an adapter and where it is in its life."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        sa.UniqueConstraint("namespace", "name", "version", name="uq_adapter_coordinates"),
        sa.Index("ix_adapter_versions_ns_status_created", "namespace", "status", "created_at"),
        sa.Index("ix_adapter_versions_base_status", "base_model", "status"),
        sa.Index("ix_adapter_versions_name", "name"),
        sa.Index("ix_adapter_versions_created_at", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    namespace: str = Field(foreign_key="namespaces.name", max_length=63)
    name: str = Field(max_length=128)
    version: str = Field(max_length=64)
    # Not a foreign key: a failure for an unknown base model is still recorded.
    base_model: str = Field(max_length=256)
    format: str | None = Field(default=None, max_length=32)
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = _json()
    job_id: str | None = Field(default=None, max_length=256, index=True)
    dataset: str | None = Field(default=None, max_length=1024)
    hyperparameters: dict[str, Any] | None = _json()
    metrics: dict[str, Any] | None = _json()
    description: str | None = None
    custom_fields: dict[str, Any] | None = _json()
    status: str = Field(max_length=16)
    status_code: str | None = Field(default=None, max_length=64)
    status_reason: str | None = None
    content_sha256: str | None = Field(default=None, max_length=64)
    manifest_sha256: str | None = Field(default=None, max_length=64)
    manifest: dict[str, Any] | None = _json()
    total_bytes: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = _ts()
    created_by: str = Field(max_length=256)
    updated_at: datetime = _ts()
    updated_by: str = Field(max_length=256)
    generation: int = Field(default=0, sa_type=sa.BigInteger)
    # Engines keep a pinned version resident (preloaded, never LRU-evicted; issue 13).
    pinned: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})

    @property
    def coordinates(self) -> str:
        """``namespace/name@version``, also the served model name on engines."""
        return f"{self.namespace}/{self.name}@{self.version}"


class AdapterFile(SQLModel, table=True):
    """A file of an adapter version: an uploaded original or a canonical (HF PEFT) file."""

    __tablename__ = "adapter_files"
    __table_args__ = (sa.UniqueConstraint("adapter_id", "role", "path", name="uq_adapter_file"),)

    id: int | None = Field(default=None, primary_key=True)
    adapter_id: str = Field(
        sa_column=sa.Column(
            sa.String(40),
            sa.ForeignKey("adapter_versions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    path: str = Field(max_length=1024)
    role: str = Field(max_length=16)  # original | canonical
    sha256: str = Field(max_length=64)
    size: int = Field(sa_type=sa.BigInteger)
    blob_key: str = Field(max_length=80, index=True)


class ApiToken(SQLModel, table=True):
    """A bearer token (only its hash is stored); ``namespace`` None means global."""

    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=128, unique=True)
    name: str = Field(max_length=256)
    namespace: str | None = Field(default=None, max_length=63, index=True)
    role: str = Field(max_length=16)  # admin | writer | reader
    created_at: datetime = _ts()
    created_by: str | None = Field(default=None, max_length=256)
    revoked_at: datetime | None = _ts(nullable=True)
    expires_at: datetime | None = _ts(nullable=True)  # None: never expires


class AccessLog(SQLModel, table=True):
    """Who did what to which entity, and whether it was allowed."""

    __tablename__ = "access_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(index=True)
    actor: str = Field(max_length=256)
    action: str = Field(max_length=64)
    target: str | None = Field(default=None, max_length=512)
    namespace: str | None = Field(default=None, max_length=63)
    remote_addr: str | None = Field(default=None, max_length=64)
    outcome: str = Field(max_length=64)


class StatusTransition(SQLModel, table=True):
    """One step of a version through the status machine (``store.history``): who, when, why.
    Not a foreign key: the record outlives a purge of the version."""

    __tablename__ = "status_transitions"

    id: int | None = Field(default=None, primary_key=True)
    adapter_id: str = Field(max_length=40, index=True)
    namespace: str = Field(max_length=63)
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    actor: str = Field(max_length=256)
    reason: str | None = None
    generation: int | None = Field(default=None, sa_type=sa.BigInteger)
    at: datetime = _ts()


class Alias(SQLModel, table=True):
    """``namespace/name@alias``: a movable name for one ready version of an adapter or a
    weighted split of several (``store.aliases``). ``targets`` is a list of ``{"version",
    "adapter_id", "weight"}`` (weights sum to 100); ``revision`` counts its changes."""

    __tablename__ = "aliases"
    __table_args__ = (sa.UniqueConstraint("namespace", "name", "alias", name="uq_alias"),)

    id: str = Field(primary_key=True, max_length=40)
    namespace: str = Field(foreign_key="namespaces.name", max_length=63)
    name: str = Field(max_length=128)
    alias: str = Field(max_length=63)
    base_model: str = Field(max_length=256, index=True)
    targets: list[dict[str, Any]] = _json(nullable=False)
    pinned: bool = Field(default=False)
    revision: int = Field(default=1)
    generation: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = _ts()
    created_by: str = Field(max_length=256)
    updated_at: datetime = _ts()
    updated_by: str = Field(max_length=256)


class AliasRevision(SQLModel, table=True):
    """One revision of an alias, kept forever (its history): what it pointed at after the
    change (``targets`` None: deleted), who changed it, why, at which generation. Not a
    foreign key: the history outlives the alias."""

    __tablename__ = "alias_revisions"
    __table_args__ = (sa.Index("ix_alias_revisions_coordinates", "namespace", "name", "alias"),)

    id: int | None = Field(default=None, primary_key=True)
    alias_id: str = Field(max_length=40, index=True)
    namespace: str = Field(max_length=63)
    name: str = Field(max_length=128)
    alias: str = Field(max_length=63)
    revision: int
    action: str = Field(max_length=16)  # set | drop | delete
    targets: list[dict[str, Any]] | None = _json()
    pinned: bool = Field(default=False)
    actor: str = Field(max_length=256)
    reason: str | None = None
    generation: int = Field(sa_type=sa.BigInteger)
    at: datetime = _ts()


class Webhook(SQLModel, table=True):
    """A namespace's subscription to adapter events (``store.webhooks``); the secret signs
    every delivery and is shown once, when the webhook is created."""

    __tablename__ = "webhooks"

    id: str = Field(primary_key=True, max_length=40)
    namespace: str = Field(foreign_key="namespaces.name", max_length=63, index=True)
    url: str = Field(max_length=2048)
    events: list[str] = _json(nullable=False)
    secret: str = Field(max_length=128)
    created_at: datetime = _ts()
    created_by: str = Field(max_length=256)
    deleted_at: datetime | None = _ts(nullable=True)


class WebhookDelivery(SQLModel, table=True):
    """One event to send to one webhook, written in the transaction of the change it
    announces (the webhooks' outbox); its attempts and outcome are the delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)

    id: str = Field(primary_key=True, max_length=40)
    webhook_id: str = Field(max_length=40, index=True)
    event_type: str = Field(max_length=64)
    payload: str = Field(sa_type=sa.Text)
    status: str = Field(default="pending", max_length=16)  # pending | delivered | failed
    attempts: int = Field(default=0)
    next_attempt_at: datetime = _ts()
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=1024)
    replay_of: str | None = Field(default=None, max_length=40)
    created_at: datetime = _ts()
    delivered_at: datetime | None = _ts(nullable=True)


class FleetState(SQLModel, table=True):
    """The single row holding the fleet generation (incremented under a row lock)."""

    __tablename__ = "fleet_state"

    id: int = Field(default=1, primary_key=True)
    generation: int = Field(default=0, sa_type=sa.BigInteger)


class OutboxRow(SQLModel, table=True):
    """An event written in the same transaction as the change it announces; a relay sends it."""

    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_sent_at_id", "sent_at", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _ts()
    stream: str = Field(max_length=128)
    payload: str = Field(sa_type=sa.Text)
    sent_at: datetime | None = _ts(nullable=True)


class IngestRecord(SQLModel, table=True):
    """One trainer announcement seen by the ingest bridge (dedup key ``event_id``)."""

    __tablename__ = "ingest_records"

    event_id: str = Field(primary_key=True, max_length=128)
    job_id: str | None = Field(default=None, max_length=256, index=True)
    received_at: datetime = _ts()
    updated_at: datetime | None = _ts(nullable=True)
    status: str = Field(default="received", max_length=16)  # workers.ingest.State
    adapter_id: str | None = Field(default=None, max_length=40)
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    payload: dict[str, Any] | None = _json()


# --- value types of the registry service (not tables) -------------------------------------


@dataclass(frozen=True)
class Provenance:
    """Where an adapter came from: the training job, its data, settings and results."""

    job_id: str | None = None
    dataset: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    custom_fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PackageFile:
    """A file already stored as a blob: ``role`` is ``original`` or ``canonical``."""

    path: str
    role: str
    sha256: str
    size: int
    blob_key: str


@dataclass(frozen=True)
class Package:
    """A validated adapter whose files are all uploaded, ready to become a version row.

    ``content_sha256`` is the immutability key: sha256 over the sorted original files'
    ``path\\tsha256\\n`` lines, so the same upload always gives the same digest.
    """

    source_format: str
    rank: int
    alpha: float
    target_modules: list[str]
    files: tuple[PackageFile, ...]
    manifest: dict[str, Any]
    manifest_sha256: str
    content_sha256: str

    @property
    def total_bytes(self) -> int:
        """Bytes this version holds (originals + canonical), what quotas count."""
        return sum(f.size for f in self.files)


class UsageBucket(SQLModel, table=True):
    """Metered engine usage: one hour of one (token, namespace, adapter version, alias,
    base model).

    Keys are never NULL so the unique key works alike on every database: ``token_id`` 0 is
    the bootstrap admin token (or an engine without auth), ``namespace``/``adapter`` ""
    the base model without a tenant, ``alias`` "" a request that named exact coordinates
    (else the alias it named, ``ns/name@alias``, and ``adapter`` the version it was served)."""

    __tablename__ = "usage_buckets"
    __table_args__ = (
        sa.UniqueConstraint(
            "hour",
            "token_id",
            "namespace",
            "adapter",
            "alias",
            "base_model",
            name="uq_usage_bucket",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    hour: datetime = _ts(index=True)
    token_id: int = Field(default=0)
    namespace: str = Field(default="", max_length=63, index=True)
    adapter: str = Field(default="", max_length=256)
    alias: str = Field(default="", max_length=256)
    base_model: str = Field(max_length=256)
    requests: int = Field(default=0, sa_type=sa.BigInteger)
    prompt_tokens: int = Field(default=0, sa_type=sa.BigInteger)
    completion_tokens: int = Field(default=0, sa_type=sa.BigInteger)
    errors: int = Field(default=0, sa_type=sa.BigInteger)
    cancelled: int = Field(default=0, sa_type=sa.BigInteger)
    latency_ms: int = Field(default=0, sa_type=sa.BigInteger)  # sum over the requests


class UsageFlushRecord(SQLModel, table=True):
    """A usage flush already folded into ``UsageBucket``: a replay of it counts nothing."""

    __tablename__ = "usage_flushes"

    engine_id: str = Field(primary_key=True, max_length=128)
    flush_id: str = Field(primary_key=True, max_length=80)
    folded_at: datetime = _ts()


class EvalSet(SQLModel, table=True):
    """A namespace's evaluation set (``store.evaluation``): JSONL rows of prompt/completion or
    chat messages, stored once as a content-addressed blob (``blob_key`` = ``sha256/<hex>``
    of the normalised JSONL)."""

    __tablename__ = "eval_sets"
    __table_args__ = (sa.UniqueConstraint("namespace", "name", name="uq_eval_set_name"),)

    id: str = Field(primary_key=True, max_length=40)
    namespace: str = Field(foreign_key="namespaces.name", max_length=63, index=True)
    name: str = Field(max_length=128)
    description: str | None = None
    kind: str = Field(max_length=16)  # completion | chat
    rows: int
    size: int = Field(sa_type=sa.BigInteger)
    sha256: str = Field(max_length=64)
    blob_key: str = Field(max_length=80, index=True)
    created_at: datetime = _ts()
    created_by: str = Field(max_length=256)


class EvalPolicy(SQLModel, table=True):
    """A namespace's evaluation gate (``store.evaluation``): which eval set, which metrics,
    and the rules a new version must pass (``gate``)."""

    __tablename__ = "eval_policies"

    namespace: str = Field(primary_key=True, foreign_key="namespaces.name", max_length=63)
    eval_set: str = Field(max_length=128)
    metrics: list[str] = _json(nullable=False)
    gate: dict[str, Any] = _json(nullable=False)
    updated_at: datetime = _ts()
    updated_by: str = Field(max_length=256)


class Evaluation(SQLModel, table=True):
    """The scores a version got from the ``evaluate`` step: at most one per version, written
    in the transaction that registers it. ``scores`` holds ``candidate``, ``base`` and
    (when there was one) ``comparison``, each ``{loss, perplexity, exact_match, ...}``."""

    __tablename__ = "evaluations"

    id: int | None = Field(default=None, primary_key=True)
    adapter_id: str = Field(
        sa_column=sa.Column(
            sa.String(40),
            sa.ForeignKey("adapter_versions.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        )
    )
    namespace: str = Field(max_length=63, index=True)
    eval_set_id: str = Field(max_length=40)
    eval_set_name: str = Field(max_length=128)
    eval_set_sha256: str = Field(max_length=64)
    comparison_adapter_id: str | None = Field(default=None, max_length=40)
    comparison: str | None = Field(default=None, max_length=256)  # coordinates
    passed: bool
    checks: list[dict[str, Any]] = _json(nullable=False)  # one per gate rule
    scores: dict[str, Any] = _json(nullable=False)
    policy: dict[str, Any] = _json(nullable=False)
    engine_build: str = Field(max_length=256)
    seconds: float
    created_at: datetime = _ts()
