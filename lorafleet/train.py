"""A real, short LoRA fine-tune on a small Llama-family base model (HF ``transformers`` + ``peft``).

This is what the demo's "trainer" runs: it loads the base model from a HF-layout directory
(``config.json`` + safetensors + ``tokenizer.json``), wraps it with a PEFT ``LoraConfig`` on
the seven projection modules, trains only the LoRA weights to answer a handful of prompts,
and writes the adapter with ``save_pretrained`` (``adapter_config.json`` +
``adapter_model.safetensors``), the layout NIM and lorafleet's registry accept.

Loss is taken on the answer tokens only, followed by the end-of-sequence token, so that the
engine's greedy decoding reproduces the answer and stops.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Example:
    """One supervised pair: the engine is prompted with ``prompt`` and should say ``answer``."""

    prompt: str
    answer: str


@dataclass
class TrainConfig:
    """Hyperparameters of the short run; recorded as the adapter's provenance."""

    steps: int = 200
    rank: int = 8
    alpha: float = 16.0
    learning_rate: float = 3e-3
    seed: int = 0
    target_modules: Sequence[str] = PROJECTIONS

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "rank": self.rank,
            "alpha": self.alpha,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
            "target_modules": list(self.target_modules),
        }


@dataclass
class TrainResult:
    """Where the adapter was written and how training went."""

    output_dir: Path
    final_loss: float
    seconds: float
    config: TrainConfig
    losses: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {"final_loss": round(self.final_loss, 5), "train_seconds": round(self.seconds, 2)}


class PromptCodec:
    """Text <-> token ids exactly as the engine does it, so trained prompts match served ones.

    Uses the model directory's ``tokenizer.json``; a BOS id is prepended when the config names
    one (the engine does the same for completions).
    """

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.bos_id: int | None = config.get("bos_token_id")
        eos = config.get("eos_token_id")
        self.eos_id: int | None = eos[0] if isinstance(eos, list) else eos

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if self.bos_id is not None else []) + ids

    def encode_answer(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        return ids + ([self.eos_id] if self.eos_id is not None else [])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def _batch(codec: PromptCodec, examples: Sequence[Example]) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels (-100 outside the answers)."""
    import torch

    rows: list[tuple[list[int], list[int]]] = []
    for example in examples:
        prompt = codec.encode_prompt(example.prompt)
        answer = codec.encode_answer(example.answer)
        rows.append((prompt + answer, [-100] * len(prompt) + answer))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return input_ids, mask, labels


def train_lora(
    model_dir: Path,
    examples: Sequence[Example],
    output_dir: Path,
    config: TrainConfig | None = None,
) -> TrainResult:
    """Fine-tune a LoRA on ``examples`` and write it to ``output_dir`` in HF PEFT format.

    Deterministic for a given seed on CPU. Only the LoRA weights are trained; the base model
    is left untouched on disk. Returns the final loss so callers can check it converged.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    config = config or TrainConfig()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    codec = PromptCodec(model_dir)
    base = _load_base(model_dir)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=0.0,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft calls a transformers API that transformers itself deprecated; not ours to fix.
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, lora)
    model.train()
    input_ids, mask, labels = _batch(codec, examples)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    losses: list[float] = []
    for step in range(config.steps):
        out = model(input_ids=input_ids, attention_mask=mask, labels=labels)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        if step % 50 == 0:
            log.debug("lora_train_step", step=step, loss=round(losses[-1], 4))
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir), safe_serialization=True)
    seconds = time.perf_counter() - started
    log.info(
        "lora_trained",
        output=str(output_dir),
        steps=config.steps,
        loss=round(losses[-1], 4),
        seconds=round(seconds, 2),
    )
    return TrainResult(output_dir, losses[-1], seconds, config, losses)


def _load_base(model_dir: Path) -> Any:
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor progress bar for a 21-tensor model
    return LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)


def generate(
    model_dir: Path, prompt: str, adapter_dir: Path | None = None, max_new_tokens: int = 24
) -> str:
    """Greedy completion with HF ``transformers`` (+ the adapter when given): a reference
    for what the engine should answer."""
    import torch
    from peft import PeftModel

    codec = PromptCodec(model_dir)
    model: Any = _load_base(model_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    ids = torch.tensor([codec.encode_prompt(prompt)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=codec.eos_id,
            pad_token_id=codec.eos_id if codec.eos_id is not None else 0,
        )
    return codec.decode(out[0, ids.shape[1] :].tolist())
