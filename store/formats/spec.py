"""The canonical adapter, the base model it is checked against, and the validation limits.

Every format parser produces a ``CanonicalAdapter``: per-(layer, module) LoRA pairs in HF PEFT
orientation (A ``[r, in]``, B ``[out, r]``), fp32, Llama-family module names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor

from store.errors import AdapterInvalid

# NIM's HF-format target modules; NeMo's fused `attention_qkv` is split into q/k/v on load.
SUPPORTED_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

ATTENTION_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})

# The architectures whose layers have the seven modules above under these names and
# shapes (the engine's model and the adapters' checks assume them).
LLAMA_FAMILY: dict[str, str] = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}

GiB = 1024**3


def llama_module_shapes(
    *, hidden_size: int, intermediate_size: int, num_heads: int, num_kv_heads: int, head_dim: int
) -> dict[str, tuple[int, int]]:
    """``module -> (in_features, out_features)`` of the seven LoRA targets of a Llama-family
    model with these dimensions, in ``SUPPORTED_MODULES`` order. The registry's
    ``BaseModelSpec`` and the engine's ``ModelArgs`` both take their shapes from here."""
    q_out = num_heads * head_dim
    kv_out = num_kv_heads * head_dim
    return {
        "q_proj": (hidden_size, q_out),
        "k_proj": (hidden_size, kv_out),
        "v_proj": (hidden_size, kv_out),
        "o_proj": (q_out, hidden_size),
        "gate_proj": (hidden_size, intermediate_size),
        "up_proj": (hidden_size, intermediate_size),
        "down_proj": (intermediate_size, hidden_size),
    }


def _llama_family_architecture(config: dict[str, Any]) -> str:
    """The config's architecture if it is of the Llama family, else ``invalid_base_model``."""
    archs = config.get("architectures")
    model_type = config.get("model_type")
    if isinstance(archs, list) and archs:
        architecture = str(archs[0])
        known = architecture in LLAMA_FAMILY
    elif isinstance(model_type, str) and model_type:
        architecture = next(
            (a for a, t in LLAMA_FAMILY.items() if t == model_type), f"model_type {model_type!r}"
        )
        known = model_type in LLAMA_FAMILY.values()
    else:
        return "LlamaForCausalLM"
    if not known:
        what = architecture if architecture.startswith("model_type") else repr(architecture)
        raise AdapterInvalid(
            "invalid_base_model",
            f"unsupported architecture {what} (Llama family: {', '.join(LLAMA_FAMILY)}): "
            "lorafleet validates and serves LoRA adapters of Llama-family models only",
        )
    return architecture


@dataclass(frozen=True)
class BaseModelSpec:
    """The dimensions of a Llama-family base model that an adapter must match."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    architecture: str = "LlamaForCausalLM"
    # The registered name, for messages ("tiny-llama has 64"); not a dimension: equality,
    # ``to_dict`` and so manifests leave it out.
    name: str = field(default="", compare=False)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> BaseModelSpec:
        """Build a spec from a HF ``config.json`` dict.

        Raises ``AdapterInvalid("invalid_base_model")`` for an architecture outside the
        Llama family (``LLAMA_FAMILY``, by ``architectures`` or else ``model_type``; a config
        naming neither is taken for Llama), and when a dimension is missing, not a positive
        integer, or inconsistent (heads not dividing hidden size, kv heads not dividing
        heads).
        """
        if not isinstance(config, dict):
            raise AdapterInvalid("invalid_base_model", "base model config must be a JSON object")
        architecture = _llama_family_architecture(config)

        def positive(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise AdapterInvalid(
                    "invalid_base_model", f"config.json {key}={value!r} is not a positive integer"
                )
            return value

        try:
            hidden = positive("hidden_size", config["hidden_size"])
            inter = positive("intermediate_size", config["intermediate_size"])
            layers = positive("num_hidden_layers", config["num_hidden_layers"])
            heads = positive("num_attention_heads", config["num_attention_heads"])
            vocab = positive("vocab_size", config["vocab_size"])
        except KeyError as exc:
            raise AdapterInvalid(
                "invalid_base_model", f"config.json lacks {exc.args[0]!r}"
            ) from None
        kv_heads = positive("num_key_value_heads", config.get("num_key_value_heads") or heads)
        head_dim_raw = config.get("head_dim")
        if head_dim_raw is None:
            if hidden % heads:
                raise AdapterInvalid(
                    "invalid_base_model",
                    f"hidden_size {hidden} is not divisible by num_attention_heads {heads}",
                )
            head_dim = hidden // heads
        else:
            head_dim = positive("head_dim", head_dim_raw)
        if heads % kv_heads:
            raise AdapterInvalid(
                "invalid_base_model",
                f"num_attention_heads {heads} is not divisible by num_key_value_heads {kv_heads}",
            )
        return cls(hidden, inter, layers, heads, kv_heads, head_dim, vocab, architecture)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """``module -> (in_features, out_features)`` for every module in ``SUPPORTED_MODULES``."""
        return llama_module_shapes(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the dimensions that ``from_dict`` turns back into an equal
        spec (without ``name``)."""
        return {k: v for k, v in asdict(self).items() if k != "name"}

    @property
    def label(self) -> str:
        """How messages name this base model."""
        return self.name or "the base model"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaseModelSpec:
        """Inverse of ``to_dict``; ``AdapterInvalid("invalid_base_model")`` on missing keys."""
        try:
            return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as exc:
            raise AdapterInvalid("invalid_base_model", f"bad base model spec: {exc}") from None


@dataclass(frozen=True)
class ValidationLimits:
    """Caps applied before and while reading an adapter's files."""

    max_rank: int = 256
    max_file_bytes: int = 4 * GiB
    max_total_bytes: int = 8 * GiB
    max_archive_members: int = 64
    # Symlinked files are refused by default (an uploaded directory must not reach outside
    # itself); an operator's local adapter tree (e.g. a HF hub cache snapshot) may allow them.
    follow_symlinks: bool = False
    # The setting ``max_rank`` comes from (e.g. an engine's ``NIM_MAX_LORA_RANK``): a
    # ``rank_too_large`` refusal names it, so the reader knows which knob to turn.
    rank_setting: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> ValidationLimits:
        """Limits from a ``StoreSettings`` (``max_lora_rank``, ``max_file_bytes``, ...)."""
        return cls(
            max_rank=settings.max_lora_rank,
            max_file_bytes=settings.max_file_bytes,
            max_total_bytes=settings.max_adapter_bytes,
            max_archive_members=settings.max_archive_members,
        )


@dataclass
class CanonicalAdapter:
    """One LoRA adapter in canonical form: HF PEFT orientation, fp32, Llama module names."""

    source_format: str  # "hf_peft" | "nemo" | "trtllm"
    rank: int
    alpha: float
    target_modules: list[str]  # sorted subset of SUPPORTED_MODULES
    num_layers: int
    # (layer, module) -> (A [r, in], B [out, r])
    weights: dict[tuple[int, str], tuple[Tensor, Tensor]] = field(default_factory=dict)

    @classmethod
    def from_weights(
        cls,
        source_format: str,
        rank: int,
        alpha: float,
        weights: dict[tuple[int, str], tuple[Tensor, Tensor]],
    ) -> CanonicalAdapter:
        """An adapter whose ``target_modules`` and ``num_layers`` are read off ``weights``
        (which must not be empty): the modules present, and one past the highest layer."""
        return cls(
            source_format=source_format,
            rank=rank,
            alpha=alpha,
            target_modules=sorted({module for _, module in weights}),
            num_layers=max(layer for layer, _ in weights) + 1,
            weights=weights,
        )

    @property
    def scaling(self) -> float:
        """The LoRA output multiplier ``alpha / rank``."""
        return self.alpha / self.rank

    def state_dict(self) -> dict[str, Tensor]:
        """The weights under HF PEFT key names (contiguous tensors, ready for safetensors)."""
        out: dict[str, Tensor] = {}
        for (layer, module), (a, b) in sorted(self.weights.items()):
            prefix = peft_module_prefix(layer, module)
            out[f"{prefix}.lora_A.weight"] = a.contiguous()
            out[f"{prefix}.lora_B.weight"] = b.contiguous()
        return out


def peft_module_prefix(layer: int, module: str) -> str:
    """The PEFT key prefix of a Llama module, e.g. ``base_model.model.model.layers.3.mlp.up_proj``."""
    block = "self_attn" if module in ATTENTION_MODULES else "mlp"
    return f"base_model.model.model.layers.{layer}.{block}.{module}"
