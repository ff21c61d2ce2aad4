"""Batched multi-LoRA math: stacked per-slot adapter buffers and the per-row LoRA term.

Every request row in a batch names a GPU slot (``LoraBatch.slot_ids``, ``-1`` = base model).
For a linear layer ``W [out, in]`` the LoRA term of row ``b`` is
``scaling[s] * (x_b A[s]^T) B[s]^T`` with ``s = slot_ids[b]``. Adapters of different ranks share
buffers by zero-padding to ``max_rank`` (the padded columns contribute exactly zero), and
the fast kernels skip the ranks past the largest one in the batch (``LoraBatch.rank``).

Kernels (same contract, tested against ``lora_delta_reference``):

* ``lora_delta`` (BGMV style): gather each row's A/B, two batched matmuls. One launch per
  layer whatever the mix of adapters; best when most rows use different adapters.
* ``lora_delta_grouped`` (SGMV style): one pair of matmuls per distinct adapter over the rows
  that use it, no gathered copies. Best when many rows share few adapters, and for prefill.
* ``lora_add_run``: the BGMV kernel's shortcut when the adapter rows name distinct slots that
  form one unbroken run (``LoraBatch.slot_run``), e.g. 16 streams on 16 adapters in 16 slots:
  the run is a view of the slot buffers, so only the rows of ``x`` are reordered, never the
  weights copied (the gather writes and re-reads every adapter's A and B once per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from store.errors import AdapterInvalid
from store.formats import CanonicalAdapter


@dataclass(frozen=True)
class SlotRun:
    """Adapter rows naming the distinct slots ``lo .. lo + n - 1``: ``rows[k]`` is the row
    of slot ``lo + k``; ``whole``: those are all the batch's rows, in order."""

    lo: int
    n: int
    rows: Tensor
    whole: bool


@dataclass
class LoraBatch:
    """Which GPU slot each request row uses: ``slot_ids [B]`` int64, ``-1`` = no LoRA.

    ``kernel`` picks the implementation: ``"auto"`` (grouped when rows share adapters, else
    gathered), ``"bgmv"``, ``"sgmv"`` or ``"reference"``. Derived values (whether any row has
    an adapter, the per-adapter row groups) are computed once per batch and reused by every
    layer, so a forward pass syncs with the device at most once for them.
    """

    slot_ids: Tensor
    kernel: str = "auto"
    # The largest rank of the adapters in this batch's slots, or None (all ``max_rank``).
    # Ranks past an adapter's own are zero in its slot, so the fast kernels skip them:
    # rank-16 adapters in NIM's default rank-64 slots gather and multiply a quarter.
    rank: int | None = None

    @cached_property
    def slot_list(self) -> list[int]:
        return self.slot_ids.tolist()

    @cached_property
    def active(self) -> bool:
        """True when at least one row uses an adapter."""
        return any(s >= 0 for s in self.slot_list)

    @cached_property
    def groups(self) -> list[tuple[int, Tensor | None]]:
        """``(slot, rows)`` for every distinct slot ``>= 0``; ``rows`` is ``None`` when that
        slot covers the whole batch (no indexing needed)."""
        slots = self.slot_list
        out: list[tuple[int, Tensor | None]] = []
        for s in sorted(set(slots)):
            if s < 0:
                continue
            if all(t == s for t in slots):
                out.append((s, None))
            else:
                rows = [i for i, t in enumerate(slots) if t == s]
                out.append((s, torch.tensor(rows, device=self.slot_ids.device)))
        return out

    @cached_property
    def slot_run(self) -> SlotRun | None:
        """The rows with an adapter in slot order when their slots are distinct and
        consecutive (``lora_add_run`` then reads the slot buffers in place), else ``None``."""
        by_slot = sorted((s, row) for row, s in enumerate(self.slot_list) if s >= 0)
        if not by_slot:
            return None
        lo, n = by_slot[0][0], len(by_slot)
        if by_slot[-1][0] - lo + 1 != n or len({s for s, _ in by_slot}) != n:
            return None
        rows = [row for _, row in by_slot]
        whole = n == len(self.slot_list) and rows == list(range(n))
        return SlotRun(lo, n, torch.tensor(rows, device=self.slot_ids.device), whole)

    @cached_property
    def resolved_kernel(self) -> str:
        if self.kernel != "auto":
            return self.kernel
        # Gathering costs one copy of A/B per row; grouping costs one launch per adapter.
        # bench/engine.py (CPU, 134M model, rank 16): 32 rows over 32 adapters, gathered is
        # ~1.3x faster than grouped in decode; 32 rows on one adapter, grouped is ~1.2x faster.
        return "sgmv" if len(self.groups) * 2 <= len(self.slot_list) else "bgmv"


def _used_ranks(A: Tensor, B: Tensor, rank: int | None) -> tuple[Tensor, Tensor]:
    """``A [n, r, in]`` / ``B [n, out, r]`` cut to their first ``rank`` ranks (views)."""
    if rank is None or rank >= A.shape[1]:
        return A, B
    return A[:, :rank], B[:, :, :rank]


def lora_delta(
    x: Tensor, A: Tensor, B: Tensor, scaling: Tensor, slot_ids: Tensor, rank: int | None = None
) -> Tensor:
    """Per-row LoRA term, BGMV style. ``x [Bt, S, in]``, ``A [n, r, in]``, ``B [n, out, r]``,
    ``scaling [n]``, ``slot_ids [Bt]`` -> ``[Bt, S, out]``; rows with slot ``-1`` are exactly 0.
    ``rank``: only the first ``rank`` ranks are used (``LoraBatch.rank``)."""
    A, B = _used_ranks(A, B, rank)
    idx = slot_ids.clamp(min=0)
    # index_select, not A[idx]: the same gathered copy, ~5x faster on the CPU (advanced
    # indexing's generic kernel; 32 rank-16 slots of width 768: 400 -> 73 us).
    a = A.index_select(0, idx)  # [Bt, r, in]
    b = B.index_select(0, idx)  # [Bt, out, r]
    picked = scaling.index_select(0, idx)
    s = torch.where(slot_ids >= 0, picked, torch.zeros_like(picked)).to(x.dtype)
    h = torch.bmm(x, a.transpose(1, 2)) * s[:, None, None]  # [Bt, S, r]
    return torch.bmm(h, b.transpose(1, 2))  # [Bt, S, out]


def lora_delta_grouped(
    x: Tensor,
    A: Tensor,
    B: Tensor,
    scaling: Tensor,
    groups: list[tuple[int, Tensor | None]],
    rank: int | None = None,
) -> Tensor:
    """Per-row LoRA term, SGMV style: one matmul pair per distinct adapter over its rows.
    ``groups`` is ``LoraBatch.groups``; same shapes and guarantees as ``lora_delta``."""
    A, B = _used_ranks(A, B, rank)
    Bt, S, _ = x.shape
    out = x.new_zeros(Bt, S, B.shape[1])  # [Bt, S, out]
    for slot, rows in groups:
        xs = x if rows is None else x.index_select(0, rows)  # [n, S, in]
        h = (xs @ A[slot].T) * scaling[slot].to(x.dtype)  # [n, S, r]
        y = h @ B[slot].T  # [n, S, out]
        if rows is None:
            return y
        out.index_copy_(0, rows, y)
    return out


def lora_add_run(
    y: Tensor,
    x: Tensor,
    A: Tensor,
    B: Tensor,
    scaling: Tensor,
    run: SlotRun,
    rank: int | None = None,
) -> Tensor:
    """``y`` plus the LoRA term of the rows in ``run`` (``LoraBatch.slot_run``); the other
    rows of ``y`` (slot ``-1``) are left exactly as they are. Same math as ``lora_delta``:
    row ``run.rows[k]`` uses slot ``run.lo + k``, read in place (``narrow`` is a view)."""
    A, B = _used_ranks(A, B, rank)
    a = A.narrow(0, run.lo, run.n)  # [n, r, in]
    b = B.narrow(0, run.lo, run.n)  # [n, out, r]
    s = scaling.narrow(0, run.lo, run.n).to(x.dtype)
    xs = x if run.whole else x.index_select(0, run.rows)  # [n, S, in]
    h = torch.bmm(xs, a.transpose(1, 2)) * s[:, None, None]  # [n, S, r]
    delta = torch.bmm(h, b.transpose(1, 2))  # [n, S, out]
    return y.add_(delta) if run.whole else y.index_add_(0, run.rows, delta)


def lora_delta_reference(
    x: Tensor, A: Tensor, B: Tensor, scaling: Tensor, slot_ids: Tensor
) -> Tensor:
    """The obviously-correct per-row loop the fast kernels are tested against."""
    out = torch.zeros(x.shape[0], x.shape[1], B.shape[1], dtype=x.dtype, device=x.device)
    for row, slot in enumerate(slot_ids.tolist()):
        if slot >= 0:
            out[row] = scaling[slot] * ((x[row] @ A[slot].T) @ B[slot].T)
    return out


def lora_apply(
    y: Tensor, x: Tensor, A: Tensor, B: Tensor, scaling: Tensor, batch: LoraBatch
) -> Tensor:
    """``y + lora term`` for the layer whose stacked buffers are ``A``/``B``/``scaling``."""
    kernel = batch.resolved_kernel
    if kernel == "sgmv":
        return y.add_(lora_delta_grouped(x, A, B, scaling, batch.groups, batch.rank))
    if kernel == "bgmv":
        if (run := batch.slot_run) is not None:
            return lora_add_run(y, x, A, B, scaling, run, batch.rank)
        return y.add_(lora_delta(x, A, B, scaling, batch.slot_ids, batch.rank))
    if kernel == "reference":
        return y.add_(lora_delta_reference(x, A, B, scaling, batch.slot_ids))
    raise ValueError(f"unknown LoRA kernel {kernel!r}")


class LoraWeights(nn.Module):
    """Stacked per-slot LoRA buffers for every layer x module of one base model.

    ``A[(layer, module)]``: ``[n_slots, max_rank, in]``; ``B[(layer, module)]``:
    ``[n_slots, out, max_rank]``; ``scaling``: ``[n_slots]``. An empty slot is all zeros, so
    it adds nothing even if a row names it. ``shapes`` is ``module -> (in, out)`` of the
    LoRA targets (``ModelArgs.module_shapes``). Bind to a model with
    ``Transformer.attach_lora``.
    """

    def __init__(
        self,
        shapes: dict[str, tuple[int, int]],
        n_layers: int,
        n_slots: int,
        max_rank: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.n_layers, self.n_slots, self.max_rank = n_layers, n_slots, max_rank
        self.shapes = dict(shapes)
        self.A: dict[tuple[int, str], Tensor] = {}
        self.B: dict[tuple[int, str], Tensor] = {}
        for layer in range(n_layers):
            for module, (n_in, n_out) in self.shapes.items():
                a = torch.zeros(n_slots, max_rank, n_in, device=device, dtype=dtype)
                b = torch.zeros(n_slots, n_out, max_rank, device=device, dtype=dtype)
                self.register_buffer(f"A_{layer}_{module}", a, persistent=False)
                self.register_buffer(f"B_{layer}_{module}", b, persistent=False)
                self.A[(layer, module)], self.B[(layer, module)] = a, b
        self.register_buffer(
            "scaling", torch.zeros(n_slots, device=device, dtype=torch.float32), persistent=False
        )
        self.slot_rank = [0] * n_slots  # 0 = empty

    def nbytes_per_slot(self) -> int:
        """Bytes one slot occupies across all layers and modules."""
        return sum(a[0].nbytes + self.B[k][0].nbytes for k, a in self.A.items())

    def _check_capacity(self, adapter: CanonicalAdapter) -> None:
        """Raise ``AdapterInvalid`` unless every pair of ``adapter`` fits these buffers (rank
        at most ``max_rank``, a buffer for its layer and module, matching widths). Whether the
        adapter fits the base model is ``store.formats.validate_adapter``'s call, made when
        the adapter was fetched; this guard only keeps a slot from being half-loaded."""
        r = adapter.rank
        if not 1 <= r <= self.max_rank:
            raise AdapterInvalid(
                "rank_too_large", f"rank {r} does not fit a slot of max_rank {self.max_rank}"
            )
        for key, (a, b) in adapter.weights.items():
            if key not in self.A:
                raise AdapterInvalid("shape_mismatch", f"no LoRA buffer for layer/module {key}")
            n_out, n_in = self.B[key].shape[1], self.A[key].shape[2]
            if tuple(a.shape) != (r, n_in) or tuple(b.shape) != (n_out, r):
                raise AdapterInvalid(
                    "shape_mismatch",
                    f"{key}: A {tuple(a.shape)} B {tuple(b.shape)}, slot takes A {(r, n_in)} "
                    f"B {(n_out, r)}",
                )

    @torch.no_grad()
    def load_slot(self, slot: int, adapter: CanonicalAdapter) -> None:
        """Copy ``adapter`` into ``slot``. The whole adapter is checked against the buffers first; on
        ``AdapterInvalid`` the slot is left exactly as it was (never half-loaded). Modules and
        layers the adapter does not target are zero in the slot."""
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.n_slots})")
        self._check_capacity(adapter)
        self.clear_slot(slot)
        r = adapter.rank
        self.slot_rank[slot] = r  # before the copy: a clear_slot after a failed copy covers it
        for key, (a, b) in adapter.weights.items():
            self.A[key][slot, :r].copy_(a)
            self.B[key][slot, :, :r].copy_(b)
        self.scaling[slot] = float(adapter.scaling)

    @torch.no_grad()
    def clear_slot(self, slot: int) -> None:
        """Zero ``slot``: a row naming it afterwards gets exactly the base model's output.

        Only the first ``slot_rank[slot]`` ranks can be non-zero (``load_slot`` writes no
        further), so only they are zeroed: loading a rank-2 adapter into an empty slot of
        ``max_rank`` 128 no longer zeroes the other 126 ranks of every layer and module."""
        used = self.slot_rank[slot]
        if used:
            for key in self.A:
                self.A[key][slot, :used].zero_()
                self.B[key][slot, :, :used].zero_()
        self.scaling[slot] = 0.0
        self.slot_rank[slot] = 0
