"""Per-request sampling: temperature, nucleus (top_p), seeded generators, logprobs, stops.

Rows of one batch may use different parameters; each row is sampled on its own
``torch.Generator`` when it has a seed, so a seeded request's output does not depend on what
else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

MAX_TOP_LOGPROBS = 20


class InvalidSamplingParams(ValueError):
    """A sampling parameter is out of range; ``param`` names it (OpenAI's ``param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request. ``temperature == 0`` is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k >= 0: chosen token's logprob + top-k
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise ``InvalidSamplingParams`` unless every field is in OpenAI's range."""
        if self.max_tokens < 1:
            raise InvalidSamplingParams("max_tokens", "max_tokens must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise InvalidSamplingParams("temperature", "temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidSamplingParams("top_p", "top_p must be in (0, 1]")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidSamplingParams(
                "logprobs", f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}"
            )
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise InvalidSamplingParams("stop", "stop takes up to 4 non-empty strings")

    def make_generator(self, device: torch.device | str) -> torch.Generator | None:
        """A generator seeded with ``seed`` on ``device`` (None when unseeded)."""
        if self.seed is None:
            return None
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        return gen


@dataclass
class SampledToken:
    """One sampled token with its logprob and the top alternatives (when requested)."""

    token_id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


def sample(
    logits: Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[SampledToken]:
    """Pick one token per row of ``logits [B, V]``.

    Greedy rows take the argmax; others sample from the temperature-scaled distribution
    restricted to the smallest set of tokens whose probability reaches ``top_p``. Logprobs
    are those of the unmodified model distribution (as OpenAI and vLLM report them).
    """
    logits = logits.float()
    out: list[SampledToken] = []
    want_logprobs = any(p.logprobs is not None for p in params)
    logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    greedy = logits.argmax(dim=-1).tolist()
    for row, p in enumerate(params):
        if p.temperature == 0.0:
            token = int(greedy[row])
        else:
            token = _sample_row(logits[row], p, generators[row])
        item = SampledToken(token)
        if logprobs is not None and p.logprobs is not None:
            item.logprob = float(logprobs[row, token])
            if p.logprobs > 0:
                values, ids = logprobs[row].topk(p.logprobs)
                item.top = list(zip(ids.tolist(), values.tolist(), strict=True))
        out.append(item)
    return out


def _sample_row(row: Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    probs = torch.softmax(row / p.temperature, dim=-1)  # [V]
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep a token while the mass before it is below top_p (the first is always kept).
        keep = (sorted_probs.cumsum(0) - sorted_probs) < p.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs, 1, generator=gen)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=gen))


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int | None:
    """Index in ``text`` of the earliest stop string occurrence that ends after ``start``."""
    best: int | None = None
    for stop in stops:
        idx = text.find(stop, max(0, start - len(stop) + 1))
        if idx != -1 and (best is None or idx < best):
            best = idx
    return best


def holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of ``text`` to withhold from a stream because they may be
    the start of a stop string (or an incomplete UTF-8 sequence)."""
    n = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                n = max(n, k)
                break
    if text.endswith("\ufffd"):  # the tokenizer is mid-way through a multi-byte character
        n = max(n, 1)
    return n
