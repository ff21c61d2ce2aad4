"""Continuous batching over one model with many LoRA adapters.

Requests join and leave the running batch at step boundaries. Each step: drop cancelled
requests, admit waiting ones (a free KV-cache row and a GPU slot for their adapter; at most
``NIM_MAX_GPU_LORAS`` distinct adapters run at once, the rest wait), prefill the newcomers
in one padded batch, then decode every older request together, each row with its own
adapter. Tokens stream to each request's ``sink`` as ``TokenDelta`` values.

The scheduler runs the model in one background thread; ``submit`` runs in the caller's
thread because it may load an adapter from the PEFT source (and raises ``CacheFull`` when
the CPU cache cannot hold one more active adapter).

A failure is one request's: token ids are checked against the vocabulary at ``submit`` (an
out-of-range index on CUDA is a device assert that kills the process), and a batch whose
step raises is retried one request at a time, so only the request that fails alone fails.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
import torch

from engine.lora import LoraBatch
from engine.lora_cache import AdapterCache
from engine.sampling import SampledToken, SamplingParams, find_stop, holdback, sample

log = structlog.get_logger(__name__)


class InvalidPrompt(ValueError):
    """A prompt this engine cannot run (too long, or a token id outside the vocabulary)."""


class RequestTooLarge(ValueError):
    """One request asks for more work than ``Scheduler.max_request_tokens`` allows."""


class Overloaded(RuntimeError):
    """The waiting queue is full (``Scheduler.max_waiting``); retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def check_token_ids(ids: list[int], vocab_size: int) -> None:
    """Raise ``InvalidPrompt`` unless every id is in ``[0, vocab_size)``."""
    if not ids or (min(ids) >= 0 and max(ids) < vocab_size):
        return  # the common case in two C-level passes; the loop below only names the offender
    for token_id in ids:
        if not 0 <= token_id < vocab_size:
            raise InvalidPrompt(
                f"token id {token_id} is out of range: this model's vocabulary has "
                f"{vocab_size} tokens (ids 0..{vocab_size - 1})"
            )


@dataclass(frozen=True)
class TokenDelta:
    """What one step produced for one request. ``finish_reason`` is set on the last delta:
    ``stop`` (EOS or a stop string), ``length``, ``abort`` (cancelled) or ``error``."""

    text: str
    tokens: list[SampledToken]
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class GenerationRequest:
    """One sequence to generate. ``adapter`` is a served adapter name or None (base model)."""

    prompt_ids: list[int]
    params: SamplingParams
    sink: Callable[[TokenDelta], None]
    adapter: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The API request this sequence belongs to (its choices share one); None: its own.
    group: str | None = None
    # Set by the scheduler.
    cancelled: threading.Event = field(default_factory=threading.Event)
    output_ids: list[int] = field(default_factory=list)
    finished: bool = False
    _lora: object | None = None  # the CanonicalAdapter pinned in the CPU cache
    _row: int = -1
    _slot: int = -1
    _text: str = ""
    _emitted: int = 0
    _generator: torch.Generator | None = None

    def cancel(self) -> None:
        """Stop generating at the next step boundary (the client went away)."""
        self.cancelled.set()

    @property
    def group_key(self) -> str:
        return self.group or self.request_id


@dataclass(frozen=True)
class StepInfo:
    """What one step ran: the adapters of the prefill and of the decode batch."""

    prefill: list[str | None]
    decode: list[str | None]

    @property
    def decode_adapters(self) -> set[str]:
        return {a for a in self.decode if a is not None}


class Scheduler:
    """Owns the model's KV-cache rows and drives generation (see module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        cache: AdapterCache,
        *,
        max_batch: int,
        max_seq_len: int,
        eos_token_ids: list[int],
        decode: Callable[[list[int]], str],
        device: torch.device | str = "cpu",
        vocab_size: int | None = None,
        max_request_tokens: int | None = None,
        max_waiting: int | None = None,
        max_rows_per_request: int | None = None,
    ) -> None:
        self.model = model
        # Request-size limits (issue 12 class 8). One request's cost is the sum over its
        # sequences of prompt + max_tokens: by default at most 16 full-context choices.
        self.max_request_tokens = max_request_tokens or 16 * max_seq_len
        # Sequences that may wait for a row before new requests get 429 ``overloaded``.
        self.max_waiting = max_waiting or 16 * max_batch
        # Rows one request may hold at once, so a big request leaves rows for the others
        # (8 -> 6, 4 -> 3, 2 -> 1, 1 -> 1).
        self.max_rows_per_request = max_rows_per_request or max(
            1, max_batch - max(1, max_batch // 4)
        )
        self.vocab_size = vocab_size or _embedding_rows(model)
        self.cache = cache
        self.max_batch = max_batch
        self.max_seq_len = max_seq_len
        self.eos = set(eos_token_ids)
        self.decode_text = decode
        self.device = torch.device(device)
        self._waiting: deque[GenerationRequest] = deque()
        self._running: list[GenerationRequest] = []
        self._free_rows = list(range(max_batch))
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Throughput bookkeeping for /metrics.
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.steps = 0
        self._recent: deque[tuple[float, int]] = deque()

    # -- public API -------------------------------------------------------------------

    def submit(self, req: GenerationRequest) -> None:
        """Queue ``req``. Pins its adapter in the CPU cache first (loading it on a miss), so
        this may block; raises ``InvalidPrompt`` / ``CacheFull`` / ``UnknownAdapter`` /
        ``AdapterInvalid`` with nothing queued or pinned."""
        if len(req.prompt_ids) >= self.max_seq_len:
            raise InvalidPrompt(
                f"prompt of {len(req.prompt_ids)} tokens does not fit {self.max_seq_len}"
            )
        check_token_ids(req.prompt_ids, self.vocab_size)
        if req.adapter is not None:
            req._lora = self.cache.cpu.acquire(req.adapter)
        req._generator = req.params.make_generator(self.device)
        with self._cond:
            self._waiting.append(req)
            self._cond.notify()

    def start(self) -> None:
        """Run steps in a daemon thread until ``stop``."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lorafleet-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after the current step; unfinished requests are aborted."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for req in list(self._running) + list(self._waiting):
            self._finish(req, "abort")

    def check_request(self, sequences: int, tokens: int) -> None:
        """Admission for one API request of ``sequences`` sequences costing ``tokens``
        (prompt + max_tokens, summed): ``RequestTooLarge`` above ``max_request_tokens``,
        ``Overloaded`` when queueing it would pass ``max_waiting`` while others wait (a
        request alone on an idle queue is always taken)."""
        if tokens > self.max_request_tokens:
            raise RequestTooLarge(
                f"This request asks for {tokens} tokens of work ({sequences} sequences x "
                f"(prompt + max_tokens)); the limit per request is {self.max_request_tokens} "
                "(max_request_tokens). Send fewer prompts, a smaller n or a smaller max_tokens."
            )
        waiting = len(self._waiting)
        if waiting and waiting + sequences > self.max_waiting:
            raise Overloaded(
                f"The engine is overloaded ({waiting} sequences waiting, limit "
                f"{self.max_waiting}); retry after 1 s.",
                retry_after=1,
            )

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Generated tokens per second over the last ``window`` seconds."""
        now = time.monotonic()
        total = sum(n for t, n in list(self._recent) if now - t <= window)
        return total / window

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    # -- the step ---------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> StepInfo:
        """One scheduling step (call from one thread only: the loop, or a test)."""
        self._drop_cancelled()
        admitted = self._admit()
        decoding = [r for r in self._running if r not in admitted]
        if admitted:
            self._run(admitted, prefill=True)
        if decoding:
            self._run(decoding, prefill=False)
        self.steps += 1
        return StepInfo([r.adapter for r in admitted], [r.adapter for r in decoding])

    def _drop_cancelled(self) -> None:
        with self._cond:
            for req in [r for r in self._waiting if r.cancelled.is_set()]:
                self._waiting.remove(req)
                self._finish(req, "abort")
        for req in [r for r in self._running if r.cancelled.is_set()]:
            self._finish(req, "abort")

    def _admit(self) -> list[GenerationRequest]:
        """Fill free rows round-robin between requests: the next row goes to the first
        waiting sequence of the request holding the fewest rows, and no request holds more
        than ``max_rows_per_request`` (FIFO within a request and between equals)."""
        admitted: list[GenerationRequest] = []
        with self._cond:
            candidates = list(self._waiting)
        groups: dict[str, deque[GenerationRequest]] = {}
        for req in candidates:
            groups.setdefault(req.group_key, deque()).append(req)
        held = Counter(r.group_key for r in self._running)
        while self._free_rows and groups:
            key = min(groups, key=lambda k: held[k])
            if held[key] >= self.max_rows_per_request:
                break  # every waiting request holds its share: the rest wait
            req = groups[key].popleft()
            if not groups[key]:
                del groups[key]
            if req.adapter is not None:
                try:
                    slot = self.cache.gpu.acquire(req.adapter, req._lora)
                except Exception as exc:  # AdapterInvalid: the adapter can never run here
                    with self._cond:
                        self._waiting.remove(req)
                    self._finish(req, "error", error=str(exc))
                    continue
                if slot is None:
                    continue  # every GPU slot is busy with other adapters: wait
                req._slot = slot
            with self._cond:
                self._waiting.remove(req)
            req._row = self._free_rows.pop(0)
            self._running.append(req)
            admitted.append(req)
            held[key] += 1
        return admitted

    def _run(self, batch: list[GenerationRequest], *, prefill: bool) -> None:
        """Run one forward + sample over ``batch``. If it raises, run each request alone, so
        a request that fails (a bug, OOM, a bad input) fails only itself."""
        try:
            picked = self._forward(batch, prefill=prefill)
        except Exception as exc:
            if len(batch) > 1:
                log.warning(
                    "engine_step_failed_retrying_alone",
                    batch=len(batch),
                    prefill=prefill,
                    error=str(exc),
                )
                for r in batch:
                    if not r.finished:
                        self._run([r], prefill=prefill)
                return
            log.exception("engine_step_failed", request_id=batch[0].request_id, prefill=prefill)
            self._finish(batch[0], "error", error=f"engine error: {exc}")
            return
        if prefill:
            self.prompt_tokens += sum(len(r.prompt_ids) for r in batch)
        self.generated_tokens += len(batch)
        self._recent.append((time.monotonic(), len(batch)))
        while self._recent and time.monotonic() - self._recent[0][0] > 60:
            self._recent.popleft()
        for r, tok in zip(batch, picked, strict=True):
            self._advance(r, tok)

    def _forward(self, batch: list[GenerationRequest], *, prefill: bool) -> list[SampledToken]:
        """One model call over ``batch`` (prefill of the prompts, or one decode token each)
        and the sampled next tokens; raises whatever the model raises."""
        slots = torch.tensor([r._slot for r in batch], dtype=torch.long, device=self.device)
        # The largest rank of the adapters in the slots (None when one does not say).
        ranks = {getattr(r._lora, "rank", None) for r in batch if r._slot >= 0}
        lora = LoraBatch(slots, rank=None if None in ranks else max(ranks)) if ranks else None
        rows = torch.tensor([r._row for r in batch], dtype=torch.long, device=self.device)
        if prefill:
            width = max(len(r.prompt_ids) for r in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)  # [B, S]
            pos = torch.zeros(len(batch), width, dtype=torch.long)
            for i, r in enumerate(batch):
                n = len(r.prompt_ids)
                ids[i, :n] = torch.tensor(r.prompt_ids)
                # Padding sits after the real tokens; decode overwrites it before use.
                pos[i] = torch.arange(width)
            last = torch.tensor([len(r.prompt_ids) - 1 for r in batch], device=self.device)
        else:
            ids = torch.tensor([[r.output_ids[-1]] for r in batch], dtype=torch.long)  # [B, 1]
            pos = torch.tensor([[len(r.prompt_ids) + len(r.output_ids) - 1] for r in batch])
            last = None
        logits = self.model(ids.to(self.device), pos.to(self.device), rows, lora, logit_index=last)[
            :, -1
        ]  # [B, V]
        return sample(logits, [r.params for r in batch], [r._generator for r in batch])

    def _advance(self, req: GenerationRequest, tok: SampledToken) -> None:
        p = req.params
        if tok.token_id in self.eos and not p.ignore_eos:
            self._emit(req, [tok], final_text=req._text, finish="stop")
            return
        req.output_ids.append(tok.token_id)
        text = self.decode_text(req.output_ids)
        finish: str | None = None
        cut = find_stop(text, p.stop, start=len(req._text)) if p.stop else None
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif len(req.output_ids) >= p.max_tokens or (
            len(req.prompt_ids) + len(req.output_ids) >= self.max_seq_len
        ):
            finish = "length"
        req._text = text
        self._emit(req, [tok], final_text=text, finish=finish)

    def _emit(
        self,
        req: GenerationRequest,
        tokens: list[SampledToken],
        *,
        final_text: str,
        finish: str | None,
    ) -> None:
        end = len(final_text) if finish else len(final_text) - holdback(final_text, req.params.stop)
        delta = final_text[req._emitted : max(end, req._emitted)]
        req._emitted = max(end, req._emitted)
        if finish:
            self._finish(req, finish, text=delta, tokens=tokens)
        else:
            self._send(req, TokenDelta(delta, tokens))

    def _finish(
        self,
        req: GenerationRequest,
        reason: str,
        *,
        text: str = "",
        tokens: list[SampledToken] | None = None,
        error: str | None = None,
    ) -> None:
        if req.finished:
            return
        req.finished = True
        if req in self._running:
            self._running.remove(req)
        if req._row >= 0:
            self._free_rows.append(req._row)
            req._row = -1
        if req._slot >= 0 and req.adapter is not None:
            self.cache.gpu.release(req.adapter, req._slot)
            req._slot = -1
        if req._lora is not None and req.adapter is not None:
            self.cache.cpu.release(req.adapter)
            req._lora = None
        self._send(
            req,
            TokenDelta(
                text,
                tokens or [],
                finish_reason=reason,
                prompt_tokens=len(req.prompt_ids),
                completion_tokens=len(req.output_ids),
                error=error,
            ),
        )

    def _send(self, req: GenerationRequest, delta: TokenDelta) -> None:
        try:
            req.sink(delta)
        except Exception:  # a broken sink (closed event loop) must not stop the engine
            log.warning("sink_failed", request_id=req.request_id)
            req.cancel()

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self.has_work():
                    self._cond.wait(0.5)
                    continue
            try:
                self.step()
            except Exception:  # keep serving; the failing requests were finished with error
                log.exception("scheduler_step_crashed")
                time.sleep(0.05)


def _embedding_rows(model: torch.nn.Module) -> int:
    """The vocabulary size of a model with ``tok_embeddings`` (``engine.model.Transformer``)."""
    return int(model.tok_embeddings.num_embeddings)  # type: ignore[union-attr]
