"""``LORAFLEET_S3_*``: the object store trainers upload to and the registry keeps blobs in,
parsed here once. ``events`` imports nothing else of lorafleet, so this is where both the
trainer's ``announce_job_completed`` and ``store.settings.StoreSettings`` read it."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class S3Settings(BaseSettings):
    """Where S3 (or MinIO) is and how to sign in; each field is ``LORAFLEET_S3_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="LORAFLEET_S3_", extra="ignore")

    endpoint: str | None = Field(default=None, description="host:port of S3 or MinIO.")
    access_key: str | None = None
    secret_key: str | None = None
    secure: bool = Field(default=False, description="HTTPS to S3.")
    region: str | None = None
