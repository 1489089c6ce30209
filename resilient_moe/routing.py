"""Top-k routing of tokens to experts, laid out so each expert's rows are contiguous.

Rows are the (token, slot) pairs; the flat slot of token t, choice j is s = t * top_k + j.
Rows are sorted by expert, stably, which is the "expert order" the kernel consumes.
"""

from __future__ import annotations

import functools
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

NON_LOCAL: int = -1
"""Value of `Routing.slot_to_row` for a slot whose expert lies outside `expert_range`."""


class LaunchLayout:
    """One token per distinct routing launch layout (``Routing.launch_layout``): equal layouts get the
    same token, so keys holding it hash and compare by identity. The table holds a token only while
    a routing or a cached key uses it (every prompt length is a layout of its own)."""

    __slots__ = ("fields", "__weakref__")
    _tokens: weakref.WeakValueDictionary[tuple[Any, ...], LaunchLayout] = weakref.WeakValueDictionary()
    _lock = threading.Lock()

    def __init__(self, fields: tuple[Any, ...]) -> None:
        self.fields = fields

    @classmethod
    def of(cls, fields: tuple[Any, ...]) -> LaunchLayout:
        with cls._lock:
            token = cls._tokens.get(fields)
            if token is None:
                token = cls._tokens[fields] = cls(fields)
            return token

    def __repr__(self) -> str:
        return f"LaunchLayout{self.fields}"


@dataclass(frozen=True)
class Routing:
    """Routing of `n_tokens` tokens, `top_k` experts each, onto `n_experts` local experts.

    All tensors are int32 (gammas float32) on the device of the inputs.
    expert_offsets [n_experts + 1]: rows of local expert e are [offsets[e], offsets[e+1]).
    gather_idx [n_rows]: sorted row -> token index (row of x to read).
    scatter_idx [n_rows]: sorted row -> flat slot.
    slot_to_row [n_tokens * top_k]: flat slot -> sorted row, or NON_LOCAL.
    expert_idx [n_tokens, top_k]: global expert ids.
    gammas [n_tokens, top_k]: combine weights.
    """

    n_tokens: int
    top_k: int
    n_experts: int
    n_rows: int
    expert_offsets: Tensor
    gather_idx: Tensor
    scatter_idx: Tensor
    slot_to_row: Tensor
    expert_idx: Tensor
    gammas: Tensor

    @functools.cached_property
    def launch_layout(self) -> LaunchLayout:
        """What a kernel launch reads from this routing besides the pointers: counts, dtypes, devices
        and 16-byte alignment of each tensor. Computed once (a Routing and its tensors never change),
        as a token shared by every routing of the same layout, so a cached call's key hashes and
        compares it by identity instead of walking the tuple on every call."""
        tensors = (self.expert_offsets, self.gather_idx, self.scatter_idx, self.slot_to_row, self.gammas)
        return LaunchLayout.of(
            (
                self.n_experts, self.n_tokens, self.n_rows, self.top_k,
                *((t.dtype, t.stride(), t.data_ptr() % 16, t.get_device()) for t in tensors),
            )
        )

    @functools.cached_property
    def flat_gammas(self) -> Tensor:
        """``gammas`` as one value per flat slot, the view the scatter kernel reads (made once)."""
        return self.gammas.view(-1)

    @classmethod
    def from_experts(
        cls,
        expert_idx: Tensor,
        gammas: Tensor,
        n_experts: int,
        expert_range: tuple[int, int] | None = None,
    ) -> Routing:
        """Build from explicit choices (tests, skewed benchmarks); `n_experts` is the global count.

        Ids must lie in [0, n_experts): they are not checked, since that would cost a host sync.
        With `expert_range=(start, stop)` only experts [start, stop) are kept (expert parallelism),
        renumbered from 0; counting the kept rows costs one host sync (`.item()`). Without it
        nothing synchronizes.
        """
        if expert_idx.dim() != 2:
            raise ValueError(f"expert_idx must be 2-D [T, top_k], got shape {tuple(expert_idx.shape)}")
        if gammas.shape != expert_idx.shape:
            raise ValueError(
                f"gammas.shape {tuple(gammas.shape)} must equal expert_idx.shape {tuple(expert_idx.shape)}"
            )
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        start, stop = _check_range(expert_range, n_experts)
        n_tokens, top_k = expert_idx.shape
        if top_k < 1:
            raise ValueError(f"expert_idx.shape[1] (top_k) must be >= 1, got {top_k}")
        device = expert_idx.device
        n_local = stop - start
        n_slots = n_tokens * top_k

        flat = expert_idx.reshape(-1).long()
        if expert_range is None:
            key = flat
            n_rows = n_slots
        else:
            local = (flat >= start) & (flat < stop)
            key = torch.where(local, flat - start, n_local)
            n_rows = int(local.sum().item())
        sorted_key, order = torch.sort(key, stable=True)
        expert_offsets = torch.searchsorted(
            sorted_key, torch.arange(n_local + 1, device=device, dtype=sorted_key.dtype)
        )
        row_of_slot = torch.empty_like(order)
        row_of_slot[order] = torch.arange(n_slots, device=device)
        if expert_range is not None:
            row_of_slot = torch.where(local, row_of_slot, NON_LOCAL)
        scatter_idx = order[:n_rows]
        return cls(
            n_tokens=n_tokens,
            top_k=top_k,
            n_experts=n_local,
            n_rows=n_rows,
            expert_offsets=expert_offsets.int(),
            gather_idx=(scatter_idx // top_k).int(),
            scatter_idx=scatter_idx.int(),
            slot_to_row=row_of_slot.int(),
            expert_idx=expert_idx.int().contiguous(),
            gammas=gammas.float().contiguous(),
        )


def route(logits: Tensor, top_k: int, *, expert_range: tuple[int, int] | None = None) -> Routing:
    """Top-k experts per token by logit; gammas are the softmax over the chosen logits (fp32)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D [T, E], got shape {tuple(logits.shape)}")
    n_experts = logits.shape[1]
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, {n_experts}] (logits.shape[1]), got {top_k}")
    values, expert_idx = torch.topk(logits, top_k, dim=1)
    gammas = torch.softmax(values.float(), dim=1)
    return Routing.from_experts(expert_idx, gammas, n_experts, expert_range)


def _check_range(expert_range: tuple[int, int] | None, n_experts: int) -> tuple[int, int]:
    if expert_range is None:
        return 0, n_experts
    start, stop = expert_range
    if not 0 <= start < stop <= n_experts:
        raise ValueError(
            f"expert_range {expert_range} must satisfy 0 <= start < stop <= n_experts ({n_experts})"
        )
    return start, stop
