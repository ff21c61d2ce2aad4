"""Scoring adapters on an evaluation set with the engine's own model and multi-LoRA code.

Every arm (the base model, the candidate adapter, the version it is compared with) runs in
the SAME batches: each eval row appears once per arm, each copy naming its arm's LoRA slot
(``LoraBatch``, slot ``-1`` = base), so one forward pass scores all of them and the arms see
identical numerics. ``separate=True`` scores one arm at a time (the baseline bench/ compares
with).

Definitions (what ``tests/evaluation`` recomputes independently with ``transformers`` +
``peft``):

* a completion row's prompt is ``tokenizer.encode(prompt)`` (BOS added, as the completions
  API does), its target ``encode(completion, add_special_tokens=False)`` plus the model's
  first end-of-sequence id; a chat row's prompt is the chat template over every message but
  the last with the generation prompt (as chat completions does), its target the last
  message's content plus the tokenizer's ``eos_token`` (the end of a turn);
* ``loss``: teacher-forced mean negative log-likelihood (natural log, fp32) over every target
  token of the set; ``perplexity = exp(loss)``;
* ``exact_match``: the share of rows whose greedy continuation (at most ``len(target) + 4``
  new tokens, stopping at any end-of-sequence id) decodes, special tokens skipped and
  stripped, to the stripped completion.

Greedy and fp32 on CPU: the same adapter and set give the same scores.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.lora import LoraBatch, LoraWeights
from engine.model import ModelArgs, Transformer
from engine.tokenizer import Tokenizer
from store.formats import CanonicalAdapter

EXTRA_NEW_TOKENS = 4  # greedy budget beyond the target's length
_CODE = ("model.py", "lora.py", "evaluation.py")


class EvalRow(Protocol):
    """An eval set row (``store.eval_sets.EvalRow``): ``prompt`` or ``messages``, and the
    ``completion``."""

    @property
    def completion(self) -> str: ...
    @property
    def prompt(self) -> str | None: ...
    @property
    def messages(self) -> Sequence[dict[str, str]] | None: ...


@dataclass(frozen=True)
class EncodedRow:
    """One row as token ids: ``prompt`` and the ``target`` the model should continue with."""

    prompt: list[int]
    target: list[int]
    expected: str  # the completion text, for exact match


@dataclass
class ArmScore:
    """Running totals of one arm over the set."""

    nll: float = 0.0
    tokens: int = 0
    exact: int = 0
    rows: int = 0
    answers: list[str] = field(default_factory=list)

    def summary(self, metrics: tuple[str, ...]) -> dict[str, float | int]:
        out: dict[str, float | int] = {"rows": self.rows}
        if "loss" in metrics:
            loss = self.nll / max(self.tokens, 1)
            out.update(loss=loss, perplexity=math.exp(min(loss, 700.0)), tokens=self.tokens)
        if "exact_match" in metrics:
            out["exact_match"] = self.exact / max(self.rows, 1)
        return out


def encode_rows(tokenizer: Tokenizer, args: ModelArgs, rows: Sequence[EvalRow]) -> list[EncodedRow]:
    """Token ids of every row, by the definitions above."""
    eos_ids = args.eos_token_ids or sorted(tokenizer.eos_ids)
    completion_eos = eos_ids[0] if eos_ids else None
    turn_eos = tokenizer.tok.token_to_id(tokenizer.eos_token) if tokenizer.eos_token else None
    out = []
    for row in rows:
        if row.messages is None:
            prompt, eos = tokenizer.encode(row.prompt or ""), completion_eos
        else:
            prompt = tokenizer.encode_chat(list(row.messages), add_generation_prompt=True)
            eos = turn_eos if turn_eos is not None else completion_eos
        target = tokenizer.encode(row.completion, add_special_tokens=False)
        out.append(EncodedRow(prompt, target + ([eos] if eos is not None else []), row.completion))
    return out


def engine_build(device: str, dtype: torch.dtype) -> str:
    """What scored: lorafleet and torch versions, device, dtype and a digest of the scoring
    code (model, LoRA math, this module), recorded with every evaluation."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CODE:
        digest.update((here / name).read_bytes())
    try:
        version = metadata.version("lorafleet")
    except metadata.PackageNotFoundError:
        version = "dev"
    return (
        f"lorafleet {version} torch {torch.__version__} {device} {dtype} {digest.hexdigest()[:12]}"
    )


def _pad(seqs: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-padded ids ``[B, S]`` and positions ``[B, S]`` (pads sit after each row's
    tokens, where the model says padding belongs)."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    positions = torch.arange(width).expand(len(seqs), width).contiguous()
    return ids.to(device), positions.to(device)


@torch.no_grad()
def _nll(
    model: Transformer, rows: list[EncodedRow], slots: list[int], kernel: str
) -> list[tuple[float, int]]:
    """Per sequence ``(sum of target token NLL, target tokens)``, teacher-forced."""
    device = model.output.weight.device
    seqs = [r.prompt + r.target[:-1] for r in rows]
    ids, positions = _pad(seqs, device)
    model.setup_caches(len(seqs), ids.shape[1])
    lora = LoraBatch(torch.tensor(slots, device=device), kernel=kernel)
    rows_idx = torch.arange(len(seqs), device=device)
    logits = model(ids, positions, rows_idx, lora)  # [B, S, V]
    out = []
    for b, r in enumerate(rows):
        start = len(r.prompt) - 1  # logits at position t predict token t + 1
        pred = logits[b, start : start + len(r.target)].float()  # [T, V]
        target = torch.tensor(r.target, device=device)
        nll = F.cross_entropy(pred, target, reduction="sum")
        out.append((float(nll), len(r.target)))
    return out


@torch.no_grad()
def _greedy(
    model: Transformer, rows: list[EncodedRow], slots: list[int], eos: set[int], kernel: str
) -> list[list[int]]:
    """Greedy continuation ids of every sequence (without the end-of-sequence id)."""
    device = model.output.weight.device
    budgets = [len(r.target) + EXTRA_NEW_TOKENS for r in rows]
    lengths = [len(r.prompt) for r in rows]
    ids, positions = _pad([r.prompt for r in rows], device)
    model.setup_caches(len(rows), max(lengths) + max(budgets) + 1)
    lora = LoraBatch(torch.tensor(slots, device=device), kernel=kernel)
    cache_rows = torch.arange(len(rows), device=device)
    last = torch.tensor([n - 1 for n in lengths], device=device)
    logits = model(ids, positions, cache_rows, lora, logit_index=last)  # [B, 1, V]
    out: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    for step in range(max(budgets)):
        nxt = logits[:, -1].float().argmax(-1).tolist()  # [B]
        for b, token in enumerate(nxt):
            if done[b]:
                continue
            if token in eos:
                done[b] = True
            else:
                out[b].append(token)
                done[b] = len(out[b]) >= budgets[b]
        if all(done):
            break
        step_ids = torch.tensor(nxt, device=device)[:, None]  # [B, 1]
        step_pos = torch.tensor([n + step for n in lengths], device=device)[:, None]
        logits = model(step_ids, step_pos, cache_rows, lora)
    return out


def score(
    model: Transformer,
    args: ModelArgs,
    tokenizer: Tokenizer,
    rows: list[EncodedRow],
    arms: dict[str, CanonicalAdapter | None],
    *,
    metrics: tuple[str, ...] = ("loss", "exact_match"),
    batch_rows: int = 8,
    separate: bool = False,
    kernel: str = "auto",
) -> dict[str, dict[str, float | int]]:
    """Scores of every arm (``None`` = the base model) on ``rows``: ``{arm: {loss,
    perplexity, tokens, exact_match, rows}}`` for the requested ``metrics``.

    The adapters are loaded into LoRA slots of one ``LoraWeights`` attached to ``model``
    (detached again afterwards). Each batch holds ``batch_rows`` eval rows for every arm
    (``separate=False``) or for one arm (``separate=True``)."""
    names = list(arms)
    adapters = [a for a in arms.values() if a is not None]
    slot_of: dict[str, int] = {}
    weights = None
    if adapters:
        weights = LoraWeights(
            args.module_shapes(),
            args.n_layers,
            n_slots=len(adapters),
            max_rank=max(a.rank for a in adapters),
            device=model.output.weight.device,
            dtype=model.output.weight.dtype,
        )
    for name, adapter in arms.items():
        if adapter is None:
            slot_of[name] = -1
        else:
            slot_of[name] = len([s for s in slot_of.values() if s >= 0])
            weights.load_slot(slot_of[name], adapter)  # type: ignore[union-attr]
    eos = set(args.eos_token_ids) | set(tokenizer.eos_ids)
    totals = {name: ArmScore() for name in names}
    groups = [[n] for n in names] if separate else [names]
    model.attach_lora(weights)
    try:
        for group in groups:
            for start in range(0, len(rows), batch_rows):
                chunk = rows[start : start + batch_rows]
                seq_rows = [r for _ in group for r in chunk]
                seq_arms = [n for n in group for _ in chunk]
                slots = [slot_of[n] for n in seq_arms]
                if "loss" in metrics:
                    for arm, (nll, n) in zip(
                        seq_arms, _nll(model, seq_rows, slots, kernel), strict=True
                    ):
                        totals[arm].nll += nll
                        totals[arm].tokens += n
                if "exact_match" in metrics:
                    answers = _greedy(model, seq_rows, slots, eos, kernel)
                    for arm, row, ids in zip(seq_arms, seq_rows, answers, strict=True):
                        text = tokenizer.decode(ids, skip_special_tokens=True)
                        totals[arm].answers.append(text)
                        totals[arm].exact += int(text.strip() == row.expected.strip())
                for arm in group:
                    totals[arm].rows += len(chunk)
    finally:
        model.attach_lora(None)
    return {name: totals[name].summary(metrics) for name in names}
