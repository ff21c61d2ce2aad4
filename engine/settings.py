"""Engine settings, read once from the environment under NIM's own variable names.

``NIM_PEFT_SOURCE`` is either an ``http(s)://`` registry URL (adapters come from
``GET /v1/fleet``) or a local directory in NIM's layout (one adapter per sub-directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.formats import ValidationLimits

DEFAULT_ENGINE_PORT = 8000  # NIM's port


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class EngineSettings(BaseSettings):
    """Everything an engine process needs; field names are the Python names, env names are
    NIM's (``NIM_*``) or lorafleet's (``LORAFLEET_*``)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    peft_source: str | None = Field(
        default=None,
        validation_alias=_env("NIM_PEFT_SOURCE", "peft_source"),
        description="http(s):// registry URL or a local directory of adapters.",
    )
    peft_refresh_interval: float | None = Field(
        default=None,
        validation_alias=_env("NIM_PEFT_REFRESH_INTERVAL", "peft_refresh_interval"),
        description="Seconds between reconciliations with the source; None = only at start "
        "and on refresh events.",
    )
    max_gpu_loras: int = Field(
        default=8, ge=1, validation_alias=_env("NIM_MAX_GPU_LORAS", "max_gpu_loras")
    )
    max_cpu_loras: int = Field(
        default=16, ge=1, validation_alias=_env("NIM_MAX_CPU_LORAS", "max_cpu_loras")
    )
    max_lora_rank: int = Field(
        default=64, ge=1, validation_alias=_env("NIM_MAX_LORA_RANK", "max_lora_rank")
    )
    served_model_name: str | None = Field(
        default=None,
        validation_alias=_env("NIM_SERVED_MODEL_NAME", "served_model_name"),
        description="Name of the base model in /v1/models and in the registry; default the "
        "model directory's name.",
    )
    model_dir: Path | None = Field(
        default=None, validation_alias=_env("LORAFLEET_ENGINE_MODEL_DIR", "model_dir")
    )
    redis_url: str | None = Field(
        default=None, validation_alias=_env("LORAFLEET_REDIS_URL", "redis_url")
    )
    token: str | None = Field(
        default=None,
        validation_alias=_env("LORAFLEET_TOKEN", "token"),
        description="Bearer token for the registry.",
    )
    max_batch: int = Field(
        default=8, ge=1, validation_alias=_env("LORAFLEET_ENGINE_MAX_BATCH", "max_batch")
    )
    max_seq_len: int = Field(
        default=1024, ge=8, validation_alias=_env("LORAFLEET_ENGINE_MAX_SEQ_LEN", "max_seq_len")
    )
    # Request-size limits (engine.scheduler.Scheduler; None = its derived default).
    max_request_tokens: int | None = Field(
        default=None,
        ge=1,
        validation_alias=_env("LORAFLEET_ENGINE_MAX_REQUEST_TOKENS", "max_request_tokens"),
        description="One request's cost cap (prompts x n x (prompt + max_tokens)); "
        "default 16 x max_seq_len; above it: 400 request_too_large.",
    )
    max_waiting: int | None = Field(
        default=None,
        ge=1,
        validation_alias=_env("LORAFLEET_ENGINE_MAX_WAITING", "max_waiting"),
        description="Waiting sequences before new requests get 429 overloaded; "
        "default 16 x max_batch.",
    )
    max_rows_per_request: int | None = Field(
        default=None,
        ge=1,
        validation_alias=_env("LORAFLEET_ENGINE_MAX_ROWS_PER_REQUEST", "max_rows_per_request"),
        description="Batch rows one request may hold; default max_batch minus a quarter.",
    )
    device: str = Field(
        default="auto",
        validation_alias=_env("LORAFLEET_ENGINE_DEVICE", "device"),
        description="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1', ...",
    )
    dtype: str | None = Field(
        default=None,
        validation_alias=_env("LORAFLEET_ENGINE_DTYPE", "dtype"),
        description="float32 | float16 | bfloat16; default bfloat16 on GPU, float32 on CPU.",
    )
    prepack: bool = Field(
        default=True,
        validation_alias=_env("LORAFLEET_ENGINE_PREPACK", "prepack"),
        description="On the CPU, repack the linear weights for oneDNN at start-up (faster "
        "decode; the unpacked copy is released, so memory stays one copy). false: MKL's "
        "GEMM on the weights as loaded.",
    )
    host: str = Field(default="0.0.0.0", validation_alias=_env("LORAFLEET_ENGINE_HOST", "host"))
    port: int = Field(
        default=DEFAULT_ENGINE_PORT, validation_alias=_env("LORAFLEET_ENGINE_PORT", "port")
    )
    engine_id: str | None = Field(
        default=None,
        validation_alias=_env("LORAFLEET_ENGINE_ID", "engine_id"),
        description="Stable id of this engine (logs); default host:port.",
    )
    download_dir: Path | None = Field(
        default=None,
        validation_alias=_env("LORAFLEET_ENGINE_DOWNLOAD_DIR", "download_dir"),
        description="Where registry adapters are downloaded; default a temporary directory.",
    )

    engine_auth: Literal["registry", "none"] | None = Field(
        default=None,
        validation_alias=_env("LORAFLEET_ENGINE_AUTH", "engine_auth"),
        description="registry: callers need a registry bearer token (default when "
        "NIM_PEFT_SOURCE is a registry URL); none: no authentication (default for a local "
        "directory; logged as a warning and shown in /v1/health/ready).",
    )
    auth_cache_seconds: float = Field(
        default=30.0,
        gt=0,
        validation_alias=_env("LORAFLEET_ENGINE_AUTH_CACHE_SECONDS", "auth_cache_seconds"),
        description="How long the registry's answer about a token is reused before it is "
        "asked again (a revocation event drops it at once).",
    )
    auth_stale_seconds: float = Field(
        default=600.0,
        gt=0,
        validation_alias=_env("LORAFLEET_ENGINE_AUTH_STALE_SECONDS", "auth_stale_seconds"),
        description="During a registry outage, how long after the registry last vouched "
        "for a cached token it keeps working; uncached tokens get 503.",
    )

    usage_flush_seconds: float = Field(
        default=5.0,
        gt=0,
        validation_alias=_env("LORAFLEET_ENGINE_USAGE_FLUSH_SECONDS", "usage_flush_seconds"),
        description="Seconds between usage flushes to lorafleet:usage (needs "
        "LORAFLEET_REDIS_URL); a killed engine loses at most this interval's counts.",
    )

    metrics_max_adapters: int = Field(
        default=64,
        ge=1,
        validation_alias=_env("LORAFLEET_ENGINE_METRICS_MAX_ADAPTERS", "metrics_max_adapters"),
        description="Most distinct adapter labels on the per-adapter Prometheus metrics; "
        'later adapter versions are counted under adapter="_other".',
    )

    heartbeat_seconds: float = Field(
        default=5.0,
        gt=0,
        validation_alias=_env("LORAFLEET_ENGINE_HEARTBEAT_SECONDS", "heartbeat_seconds"),
        description="Seconds between heartbeats (needs LORAFLEET_REDIS_URL); an engine "
        "disappears from GET /v1/fleet/engines 3 intervals after its last one.",
    )

    @field_validator("peft_refresh_interval")
    @classmethod
    def _positive_interval(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("NIM_PEFT_REFRESH_INTERVAL must be > 0 seconds (or unset)")
        return value

    def source_is_registry(self) -> bool:
        """True when ``NIM_PEFT_SOURCE`` names a registry URL rather than a directory."""
        return bool(self.peft_source) and self.peft_source.startswith(("http://", "https://"))

    def resolved_engine_id(self) -> str:
        """This engine's id in usage flushes and logs: ``LORAFLEET_ENGINE_ID``, else
        ``<hostname>:<port>``."""
        if self.engine_id:
            return self.engine_id
        import socket

        return f"{socket.gethostname()}:{self.port}"

    def resolved_auth(self) -> str:
        """``registry`` or ``none``: the explicit ``LORAFLEET_ENGINE_AUTH``, else
        ``registry`` exactly when the PEFT source is a registry. ``ValueError`` for
        ``registry`` without a registry to ask (a local directory source)."""
        mode = self.engine_auth or ("registry" if self.source_is_registry() else "none")
        if mode == "registry" and not self.source_is_registry():
            raise ValueError(
                "LORAFLEET_ENGINE_AUTH=registry needs NIM_PEFT_SOURCE to be the registry's "
                "http(s):// URL (tokens are checked there)"
            )
        return mode

    def adapter_limits(self) -> ValidationLimits:
        """The limits every adapter this engine takes in is validated with (the registry's
        format limits, with ``NIM_MAX_LORA_RANK`` as the rank cap and named in refusals)."""
        return ValidationLimits(max_rank=self.max_lora_rank, rank_setting="NIM_MAX_LORA_RANK")

    def resolved_device(self) -> str:
        """The torch device to run on: ``auto`` becomes ``cuda`` when one is visible. A
        device this machine does not have is a ``ValueError`` saying so (``check_device``)."""
        if self.device != "auto":
            return check_device(self.device, "LORAFLEET_ENGINE_DEVICE")
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_model_name(self) -> str:
        """The served base-model name; the model directory's name when not configured."""
        if self.served_model_name:
            return self.served_model_name
        if self.model_dir is not None:
            return Path(self.model_dir).name
        return "base"


def check_device(device: str, setting: str = "--device") -> str:
    """``device`` if torch can run on it here, else a ``ValueError`` naming ``setting``, the
    device and why (not a torch device string; CUDA asked for where torch has none, or an
    index past the visible GPUs), instead of an error deep inside the first allocation."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{setting}={device!r} is not a torch device ({exc})") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"{setting}={device!r}: no CUDA device is available here (torch "
                f"{torch.__version__}, {build}); use cpu, or a machine with a GPU and a CUDA "
                "build of torch"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(
                f"{setting}={device!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif parsed.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"{setting}={device!r}: unsupported device type {parsed.type!r}")
    return device
