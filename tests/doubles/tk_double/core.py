"""Body shared by both flavors of the triton_kernels test double: its tile heuristic, its routing
types and its launch. Written for resilient_moe's tests; not upstream code.

The launch is real: it runs resilient_moe's builtin kernel with the tile from the flags, and when a
virtual chip is selected (RESILIENT_MOE_TARGET) it first compiles that launch for the chip, so a tile
that does not fit raises the chip's real OutOfResources, as upstream's own launch would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import triton

from resilient_moe import virtual
from resilient_moe.backends.builtin.launch import Mode, prepare
from resilient_moe.config import TileConfig
from resilient_moe.routing import Routing, route
from resilient_moe.targets import placement

PRETEND_SMS = 8
"""SM count the double's split_k heuristic divides by the tile count (so zero rows divide by zero)."""


@dataclass(frozen=True)
class Record:
    """One call that got its flags: which public function, on which thread, with which flags."""

    entry: str
    thread: str
    flags: Any


entries: list[str] = []  # every call of a public function, counted on entry
records: list[Record] = []  # every call that went past make_opt_flags, with the flags it got
_interpreter = threading.Lock()  # the Triton interpreter patches triton.language while it runs


def reset() -> None:
    entries.clear()
    records.clear()


def choose(m: int, n: int, k: int, n_experts: int, constraints: dict[str, Any], supported: tuple[str, ...]) -> dict[str, Any]:
    """The double's own heuristic: small tiles for small problems; constraints win, unknown ones assert."""
    unknown = sorted(set(constraints) - set(supported))
    assert not unknown, f"double: unsupported constraints {unknown}"

    def pick(name: str, heuristic: Callable[[], Any]) -> Any:
        value = constraints.get(name)
        return heuristic() if value is None else value

    block_m = pick("block_m", lambda: min(64, max(16, triton.next_power_of_2(max(1, m // n_experts)))))
    block_n = pick("block_n", lambda: min(64, max(16, triton.next_power_of_2(n))))
    block_k = pick("block_k", lambda: min(64, max(16, triton.next_power_of_2(k))))
    chosen = {
        "block_m": block_m,
        "block_n": block_n,
        "block_k": block_k,
        "num_warps": 4,
        "num_stages": pick("num_stages", lambda: 2),
        "group_m": 4,
        # like upstream's heuristics up to v3.8: no rows means no tiles, and this divides by zero
        "split_k": pick("split_k", lambda: max(1, PRETEND_SMS // (triton.cdiv(m, block_m) * triton.cdiv(n, block_n)))),
        "is_persistent": pick("is_persistent", lambda: False),
        "epilogue_subtile": pick("epilogue_subtile", lambda: 1),
        "idle_sms": pick("idle_sms", lambda: 0),
    }
    for name, value in constraints.items():
        assert value is None or chosen.get(name, value) == value, f"double: {chosen} breaks constraint {name}={value}"
    return chosen


def launch(entry: str, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, moe: Routing, mode: Mode, flags: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Record the flags, then run the builtin kernel with their tile: (result, per-row output buffer)."""
    records.append(Record(entry, threading.current_thread().name, flags))
    time.sleep(0.001)  # host work between choosing the flags and launching: lets threads interleave
    config = TileConfig(flags.block_m, flags.block_n, flags.block_k, flags.group_m, flags.num_warps, flags.num_stages)
    prepared = prepare(x, w, bias, moe, mode, config)
    chip = placement().virtual
    if chip is not None:
        virtual.fits(prepared.kernel, prepared.args, prepared.constexprs, chip.name)
    with _interpreter:
        result = prepared.run()
    return result, prepared.y


def dense(m: int, device: torch.device) -> Routing:
    """Every row to expert 0: a plain GEMM through the MoE kernel."""
    return Routing.from_experts(torch.zeros(m, 1, dtype=torch.long, device=device), torch.ones(m, 1, device=device), 1)


def moe_route(logits: torch.Tensor, top_k: int, expert_range: tuple[int, int] | None = None) -> Routing:
    return route(logits, top_k, expert_range=expert_range)


# Routing types of the dict-style (v3.5/v3.6-like) flavor. ``moe`` is the double's own: the builtin
# routing its launch runs on.


@dataclass
class GatherIndx:
    src_indx: torch.Tensor
    dst_indx: torch.Tensor


@dataclass
class ScatterIndx:
    src_indx: torch.Tensor
    dst_indx: torch.Tensor


@dataclass
class RoutingData:
    gate_scal: torch.Tensor | None
    expt_hist: torch.Tensor | None
    n_expts_tot: int
    n_expts_act: int
    expt_data: Any = None
    expected_tokens_per_expt: int | None = None
    moe: Routing | None = field(default=None, repr=False)


def dict_routing(logits: torch.Tensor, n_expts_act: int, expert_range: tuple[int, int] | None = None) -> tuple[RoutingData, GatherIndx, ScatterIndx]:
    moe = moe_route(logits, n_expts_act, expert_range)
    data = RoutingData(moe.gammas.view(-1), moe.expert_offsets.diff(), moe.n_experts, n_expts_act, moe=moe)
    # src_indx lengths are what callers (and the adapter) read: rows gathered, slots scattered
    return data, GatherIndx(moe.gather_idx, moe.scatter_idx), ScatterIndx(moe.slot_to_row, moe.scatter_idx)


# Routing type of the scoped (v3.8-like) flavor: indices are plain tensors there.


@dataclass
class RaggedTensorMetadata:
    slice_sizes: torch.Tensor
    moe: Routing | None = field(default=None, repr=False)


def scoped_routing(logits: torch.Tensor, top_k: int, expert_range: tuple[int, int] | None = None) -> tuple[RaggedTensorMetadata, torch.Tensor, torch.Tensor]:
    moe = moe_route(logits, top_k, expert_range)
    return RaggedTensorMetadata(moe.expert_offsets.diff(), moe), moe.gather_idx, moe.slot_to_row


def unsupported(**given: Any) -> None:
    named = [name for name, value in given.items() if value is not None]
    if named:
        raise NotImplementedError(f"the triton_kernels test double does not implement {named}")
