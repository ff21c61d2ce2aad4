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

from events.untrusted import STORED_JSON, JsonLimits, check_json_value, control_character, load_json

# The one spelling of a namespace and an adapter name (lowercase letters, digits, '-', '_'
# or '.', starting with a letter or digit); the API, the registry and the CLI use these.
NAMESPACE_PART = r"[a-z0-9][a-z0-9_.-]{0,62}"
NAME_PART = r"[a-z0-9][a-z0-9_.-]{0,127}"
# The one spelling of a version: SemVer 2.0.0 (semver.org's regex), ASCII digits only (``\d``
# would take ``１``), no leading zeros. Each numeric identifier has at most 9 digits and the
# whole version at most 64 characters (the column's length): sorting parses the numbers, and
# an unbounded one is a 500 on PostgreSQL and a ``ValueError`` in ``int()`` past 4,300 digits.
_NUMBER = r"(?:0|[1-9][0-9]{0,8})"
_PRE_ID = rf"(?:{_NUMBER}|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
VERSION_PART = (
    rf"{_NUMBER}\.{_NUMBER}\.{_NUMBER}"
    rf"(?:-{_PRE_ID}(?:\.{_PRE_ID})*)?(?:\+{_BUILD_ID}(?:\.{_BUILD_ID})*)?"
)
VERSION_MAX_LENGTH = 64
VERSION_PATTERN = f"^{VERSION_PART}$"
VERSION_RULE = (
    f"a semantic version (SemVer 2.0.0, e.g. 1.2.0 or 1.2.0-rc.1) of at most "
    f"{VERSION_MAX_LENGTH} ASCII characters, numbers without leading zeros and of at most 9 digits"
)
# An alias of an adapter (``namespace/name@alias``, issue 13): a name that can never be read
# as a version (a letter first, no dots), ``latest`` reserved for the implicit highest ready
# version. ``alias_problem`` says what is wrong with one.
ALIAS_PART = r"[a-z][a-z0-9_-]{0,62}"
ALIAS_PATTERN = f"^{ALIAS_PART}$"
ALIAS_RULE = (
    "1 to 63 lowercase letters, digits, '-' or '_', starting with a letter "
    "(not a version: e.g. stable, canary, prod)"
)
LATEST_ALIAS = "latest"
NAMESPACE_PATTERN = f"^{NAMESPACE_PART}$"
NAME_PATTERN = f"^{NAME_PART}$"
NAME_RULE = "lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
COORDINATES_RE = re.compile(
    f"^(?P<namespace>{NAMESPACE_PART})/(?P<name>{NAME_PART})@(?P<version>{VERSION_PART})$",
    re.ASCII,
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
    # fullmatch: ``$`` alone would also take a trailing newline.
    match = COORDINATES_RE.fullmatch(value) if isinstance(value, str) else None
    if not match or len(match["version"]) > VERSION_MAX_LENGTH:
        raise ValueError(_coordinates_problem(str(value)))
    return match["namespace"], match["name"], match["version"]


def is_version(value: str) -> bool:
    """Whether ``value`` is a version as the registry accepts it (``VERSION_RULE``)."""
    return (
        isinstance(value, str)
        and len(value) <= VERSION_MAX_LENGTH
        and re.fullmatch(VERSION_PART, value, re.ASCII) is not None
    )


def version_key(version: str) -> tuple[Any, ...]:
    """The SemVer 2.0.0 precedence of ``version`` (one accepted by ``is_version``) as a sort
    key: numbers compare as numbers (1.10.0 > 1.9.0), a pre-release sorts before its release
    (1.0.0-rc.2 < 1.0.0), numeric pre-release identifiers numerically and below alphanumeric
    ones (rc.2 < rc.10 < rc.a), fewer identifiers first when all before are equal. Build
    metadata has no precedence; it only breaks ties so the order is total."""
    rest, _, build = version.partition("+")
    core, _, pre = rest.partition("-")
    major, minor, patch = (int(p) for p in core.split("."))
    if not pre:
        return major, minor, patch, 1, (), build
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return major, minor, patch, 0, ids, build


def alias_problem(alias: str) -> str | None:
    """What is wrong with ``alias`` as an alias name (``ALIAS_RULE``, not a version, not the
    reserved ``latest``); None when it is a valid one."""
    if not isinstance(alias, str):
        return "an alias name must be a string"
    if is_version(alias) or is_version(alias.removeprefix("v")):
        return f"alias {shown(alias)} reads as a version; an alias needs a name: {ALIAS_RULE}"
    if alias == LATEST_ALIAS:
        return f"alias {LATEST_ALIAS!r} is reserved: it always means the highest ready version"
    if re.fullmatch(ALIAS_PART, alias, re.ASCII) is None:
        return f"invalid alias {shown(alias)}: {ALIAS_RULE}"
    return None


def _coordinates_problem(value: str) -> str:
    """What is wrong with ``value`` as coordinates, naming the part when one can be told."""
    head, _, version = value.rpartition("@")
    namespace, _, name = head.partition("/")
    if head and namespace and name and "/" not in name:
        where = f"in namespace/name@version {shown(value)}"
        if not re.fullmatch(NAMESPACE_PART, namespace):
            return f"invalid namespace {namespace!r} {where}: 1 to 63 {NAME_RULE}"
        if not re.fullmatch(NAME_PART, name):
            return f"invalid adapter name {name!r} {where}: 1 to 128 {NAME_RULE}"
        if not is_version(version):
            return f"invalid version {shown(version)} {where}: {VERSION_RULE}"
    return (
        f"{shown(value)} is not namespace/name@version with a semantic version "
        "(e.g. acme/bot@1.2.0)"
    )


def shown(value: object, limit: int = 100) -> str:
    """``repr(value)``, cut to ``limit`` characters: a refusal must not echo a megabyte."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[: limit - 5]}...{shown[-2:]}"


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
    submitted_by: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description=(
            "who launched the job, as the registry names principals "
            "(token:<token name>@<namespace>, the `principal` of GET /v1/auth/whoami); "
            "recorded as the version's uploader, so a namespace with "
            "require_distinct_approver keeps them from approving it"
        ),
    )

    # Free-text fields; every other string is one line.
    MULTILINE_FIELDS: ClassVar[frozenset[str]] = frozenset({"description"})

    @model_validator(mode="after")
    def _storable(self) -> JobCompleted:
        # An announcement comes from outside; what the bridge records must be what the
        # database stores and every reader serves:
        # no control character in a string (a NUL is a DataError on PostgreSQL), JSON values
        # within the stored bounds (depth, integer size, finite floats).
        for name, value in self:
            if isinstance(value, str):
                bad = control_character(value, multiline=name in self.MULTILINE_FIELDS)
                if bad is not None:
                    raise ValueError(f"{name} must not contain the control character {bad}")
            elif isinstance(value, dict):
                check_json_value(value, STORED_JSON, what=name)
        return self

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
    # ``alias``: an alias of ``adapter`` (``namespace/name@alias``, ``adapter_id`` the alias's
    # id) was set, changed or deleted; engines reconcile to pick up its new targets.
    action: Literal["load", "evict", "alias"]
    adapter_id: str
    adapter: str = Field(description="namespace/name@version, or namespace/name@alias")
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
EVENT_JSON = JsonLimits(max_bytes=MAX_EVENT_BYTES)


def decode(
    fields: dict[bytes | str, bytes | str],
) -> JobCompleted | FleetRefresh | AdapterStatusChanged:
    """Parse a stream entry's fields into its event. Raises ``ValueError`` (pydantic's
    ``ValidationError`` is one) with a precise message for anything malformed or oversized."""
    return _any_event.validate_json(event_json(fields))


def event_json(fields: dict[bytes | str, bytes | str]) -> bytes:
    """The ``event`` field of a stream entry, checked by the bounded parser (size, duplicate
    keys, NaN, depth, huge integers: ``ValueError``) before any contract reads it. Every
    stream's decoder starts here."""
    raw = fields.get("event", fields.get(b"event"))
    if raw is None:
        raise ValueError("stream entry has no 'event' field")
    if isinstance(raw, str):
        raw = raw.encode()
    if len(raw) > MAX_EVENT_BYTES:
        raise ValueError(f"event is {len(raw)} bytes, more than the {MAX_EVENT_BYTES} allowed")
    load_json(raw, EVENT_JSON, what="event")
    return raw
