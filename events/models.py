"""Event contracts: small, frozen, versioned pydantic values with ``encode``/``decode``.

Every event carries ``type``, ``version``, ``event_id`` and ``occurred_at``. On a stream an
event is one field, ``event``, holding its JSON.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

# The one spelling of a namespace and an adapter name (lowercase letters, digits, '-', '_'
# or '.', starting with a letter or digit); the API, the registry and the CLI use these.
NAMESPACE_PART = r"[a-z0-9][a-z0-9_.-]{0,62}"
NAME_PART = r"[a-z0-9][a-z0-9_.-]{0,127}"
VERSION_PART = r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?"
NAMESPACE_PATTERN = f"^{NAMESPACE_PART}$"
NAME_PATTERN = f"^{NAME_PART}$"
NAME_RULE = "lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
COORDINATES_RE = re.compile(
    f"^(?P<namespace>{NAMESPACE_PART})/(?P<name>{NAME_PART})@(?P<version>{VERSION_PART})$"
)


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class Event(BaseModel):
    """Base of every event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TYPE: ClassVar[str] = ""
    event_id: str = Field(default_factory=_new_id, min_length=1, max_length=128)
    occurred_at: datetime = Field(default_factory=_now)

    def encode(self) -> dict[str, str]:
        """The stream entry fields for this event."""
        return {"event": self.model_dump_json()}


def parse_coordinates(value: str) -> tuple[str, str, str]:
    """Split ``namespace/name@version``; ValueError with a precise message when malformed."""
    match = COORDINATES_RE.match(value)
    if not match:
        raise ValueError(_coordinates_problem(value))
    return match["namespace"], match["name"], match["version"]


def _coordinates_problem(value: str) -> str:
    """What is wrong with ``value`` as coordinates, naming the part when one can be told."""
    head, _, version = value.rpartition("@")
    namespace, _, name = head.partition("/")
    if head and namespace and name and "/" not in name:
        where = f"in namespace/name@version {value!r}"
        if not re.fullmatch(NAMESPACE_PART, namespace):
            return f"invalid namespace {namespace!r} {where}: 1 to 63 {NAME_RULE}"
        if not re.fullmatch(NAME_PART, name):
            return f"invalid adapter name {name!r} {where}: 1 to 128 {NAME_RULE}"
        if not re.fullmatch(VERSION_PART, version):
            return f"invalid version {version!r} {where}: a semantic version, e.g. 1.2.0"
    return f"{value!r} is not namespace/name@version with a semantic version (e.g. acme/bot@1.2.0)"


class JobCompleted(Event):
    """``customizer.job.completed`` v1: a fine-tuning job finished and left an artifact."""

    TYPE: ClassVar[str] = "customizer.job.completed"
    type: Literal["customizer.job.completed"] = "customizer.job.completed"
    version: Literal[1] = 1
    job_id: str = Field(min_length=1, max_length=256)
    namespace: str = Field(min_length=1, max_length=63)
    output_model: str = Field(
        description="namespace/name@version",
        # JSON Schema regexes are ECMA-262: no Python-style named groups.
        json_schema_extra={"pattern": re.sub(r"\?P<\w+>", "", COORDINATES_RE.pattern)},
    )
    base_model: str = Field(min_length=1, max_length=256)
    artifact_uri: str = Field(
        min_length=1, max_length=2048, description="file://, s3:// or http(s)://"
    )
    finetuning_type: Literal["lora"] = "lora"
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = Field(default=None, max_length=1024)
    metrics: dict[str, Any] = Field(default_factory=dict)
    description: str | None = Field(default=None, max_length=4096)

    @field_validator("output_model")
    @classmethod
    def _coordinates(cls, value: str) -> str:
        parse_coordinates(value)
        return value

    @model_validator(mode="after")
    def _namespace_matches(self) -> JobCompleted:
        # Two spellings of the tenant that disagree would let a trainer write into a
        # namespace it did not name; refuse the event instead of guessing.
        namespace = parse_coordinates(self.output_model)[0]
        if namespace != self.namespace:
            raise ValueError(
                f"namespace {self.namespace!r} does not match output_model {self.output_model!r}"
            )
        return self

    def coordinates(self) -> tuple[str, str, str]:
        """``(namespace, name, version)`` of the adapter this job produced."""
        return parse_coordinates(self.output_model)


class FleetRefresh(Event):
    """``fleet.refresh``: engines of ``base_model`` should load or evict an adapter.

    A hint, not the truth: engines reconcile with ``GET /v1/fleet`` after each one.
    """

    TYPE: ClassVar[str] = "fleet.refresh"
    type: Literal["fleet.refresh"] = "fleet.refresh"
    version: Literal[1] = 1
    action: Literal["load", "evict"]
    adapter_id: str
    adapter: str = Field(description="namespace/name@version")
    base_model: str
    manifest_sha256: str | None = None
    generation: int = Field(ge=0)


class AdapterStatusChanged(Event):
    """``adapter.status_changed``: an adapter version moved in the status machine."""

    TYPE: ClassVar[str] = "adapter.status_changed"
    type: Literal["adapter.status_changed"] = "adapter.status_changed"
    version: Literal[1] = 1
    adapter_id: str
    adapter: str
    base_model: str
    from_status: str | None
    to_status: str
    reason: str | None = None
    actor: str | None = None


AnyEvent = Annotated[
    JobCompleted | FleetRefresh | AdapterStatusChanged, Field(discriminator="type")
]
_any_event: TypeAdapter[JobCompleted | FleetRefresh | AdapterStatusChanged] = TypeAdapter(AnyEvent)

MAX_EVENT_BYTES = 64 * 1024


def decode(
    fields: dict[bytes | str, bytes | str],
) -> JobCompleted | FleetRefresh | AdapterStatusChanged:
    """Parse a stream entry's fields into its event. Raises ``ValueError`` (pydantic's
    ``ValidationError`` is one) with a precise message for anything malformed or oversized."""
    raw = fields.get("event", fields.get(b"event"))
    if raw is None:
        raise ValueError("stream entry has no 'event' field")
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_EVENT_BYTES:
        raise ValueError(f"event is {len(raw)} bytes, more than the {MAX_EVENT_BYTES} allowed")
    return _any_event.validate_json(raw)
