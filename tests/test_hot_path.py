"""The cached call's hot path: a bound launch per exact operand layout, dropped when winners change.

The bound launch itself needs a GPU (it calls the compiled kernel's CUDA/HIP launcher); what decides
when it may be reused (``operand_key``) and when it is dropped is checked everywhere.
"""

from __future__ import annotations

import os

import pytest
import torch

import resilient_moe as rm
from resilient_moe.backends.builtin._kernel import _moe_matmul_kernel
from resilient_moe import settings
from resilient_moe.backends.builtin.bound import BoundLaunch, hooks_installed, operand_key
from resilient_moe.backends.builtin.launch import TENSOR_PARAMS, prepare
from resilient_moe.config import TileConfig
from resilient_moe.settings import LAUNCHES

GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
DEVICE = "cuda" if GPU else "cpu"
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a GPU: a bound launch calls the driver's launcher")


def operands(t: int = 24, e: int = 4, k: int = 64, n: int = 128, dtype: torch.dtype = torch.float16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    routing = rm.route(torch.randn(t, e, generator=g).to(DEVICE), 2)
    x = torch.randn(t, k, generator=g).to(DEVICE, dtype)
    w = (torch.randn(e, k, n, generator=g) / k**0.5).to(DEVICE, dtype)
    return x, w, routing


def test_equal_layouts_share_a_key_and_every_field_that_specializes_changes_it() -> None:
    x, w, routing = operands()
    same = operand_key(x.clone(), w.clone(), None, rm.route(torch.randn(24, 4).to(DEVICE), 2), "gather")
    assert operand_key(x, w, None, routing, "gather") == same
    base = operand_key(x, w, None, routing, "gather")
    padded = torch.zeros(24, 72, dtype=x.dtype, device=x.device)
    variants = {
        "misaligned x": operand_key(padded[:, 1:65], w, None, routing, "gather"),
        "strided x": operand_key(padded[:, :64], w, None, routing, "gather"),
        "transposed w": operand_key(x, w.transpose(1, 2).contiguous().transpose(1, 2), None, routing, "gather"),
        "dtype": operand_key(x.float(), w.float(), None, routing, "gather"),
        "bias": operand_key(x, w, torch.zeros(4, 128, dtype=x.dtype, device=x.device), routing, "gather"),
        "rows": operand_key(x[:20], w, None, rm.route(torch.randn(20, 4).to(DEVICE), 2), "gather"),
        "mode": operand_key(torch.randn(48, 64).to(DEVICE, x.dtype), w, None, routing, "scatter"),
        "out": operand_key(x, w, None, routing, "gather", torch.empty(48, 128, dtype=x.dtype, device=x.device)),
    }
    assert all(key != base for key in variants.values()), [name for name, key in variants.items() if key == base]


def test_a_bound_launch_keeps_the_sizes_after_the_tensor_parameters() -> None:
    x, w, routing = operands()
    launch = prepare(x, w, None, routing, "gather", TileConfig(16, 32, 32, group_m=4, num_warps=4, num_stages=2))
    names = _moe_matmul_kernel.arg_names
    assert tuple(names[: len(TENSOR_PARAMS)]) == TENSOR_PARAMS
    assert all(isinstance(a, int) for a in launch.args[len(TENSOR_PARAMS):])
    assert len(launch.args) + len(launch.constexprs) - 2 == len(names)  # num_warps, num_stages are options


@pytest.mark.parametrize("name", ["launch_enter_hook", "launch_exit_hook"])
def test_profiler_hooks_are_seen_added_to_a_chain_or_set_in_its_place(name: str) -> None:
    from triton import knobs

    def hook(metadata) -> None:
        pass

    assert not hooks_installed()
    chain = getattr(knobs.runtime, name)
    chain.add(hook)
    try:
        assert hooks_installed()
    finally:
        chain.remove(hook)
    assert not hooks_installed()
    setattr(knobs.runtime, name, hook)  # the older way: a plain callable instead of the chain
    try:
        assert hooks_installed()
    finally:
        setattr(knobs.runtime, name, chain)
    assert not hooks_installed()


def test_fp32_keys_follow_the_matmul_precision() -> None:
    x, w, routing = operands(dtype=torch.float32)
    before = operand_key(x, w, None, routing, "gather")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert operand_key(x, w, None, routing, "gather") != before
    finally:
        torch.set_float32_matmul_precision(previous)


def test_bound_launches_are_dropped_when_a_winner_changes_and_stay_bounded() -> None:
    cache = settings.cache()
    LAUNCHES.put("a", "bound")
    LAUNCHES.put("b", None)
    assert LAUNCHES == {"a": "bound"}
    cache.record(("k",), TileConfig(16, 32, 32, group_m=4, num_warps=4, num_stages=2), [])
    assert LAUNCHES == {}
    LAUNCHES.put("a", "bound")
    cache.forget(("k",))
    assert LAUNCHES == {}
    for i in range(LAUNCHES.capacity + 1):
        LAUNCHES.put(i, "bound")
    assert len(LAUNCHES) == 1
    cache.clear()
    assert LAUNCHES == {}


@pytest.mark.skipif(GPU, reason="checks the interpreter, where there is no compiled kernel to bind")
def test_the_interpreter_binds_nothing() -> None:
    x, w, routing = operands()
    for _ in range(3):
        rm.moe_matmul(x, w, routing)
    assert LAUNCHES == {}


@needs_gpu
@pytest.mark.parametrize("mode", ["gather", "scatter"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_a_bound_launch_gives_the_jit_launch_result_bit_for_bit(mode: str, with_bias: bool) -> None:
    x, w, routing = operands(dtype=torch.bfloat16)
    if mode == "scatter":
        x = torch.randn(routing.n_rows, 64, device=DEVICE, dtype=torch.bfloat16)
    bias = torch.randn(4, 128, device=DEVICE, dtype=torch.bfloat16) if with_bias else None
    first = rm.moe_matmul(x, w, routing, mode, bias)  # resolves
    second = rm.moe_matmul(x, w, routing, mode, bias)  # JIT launch of the winner, then binds
    (bound,) = LAUNCHES.values()
    assert isinstance(bound, BoundLaunch)
    third = rm.moe_matmul(x, w, routing, mode, bias)  # bound
    assert torch.equal(first, second) and torch.equal(second, third)


@needs_gpu
@pytest.mark.parametrize("mode", ["gather", "scatter"])
def test_a_bound_launch_writes_into_out(mode: str) -> None:
    x, w, routing = operands(dtype=torch.bfloat16)
    if mode == "scatter":
        x = torch.randn(routing.n_rows, 64, device=DEVICE, dtype=torch.bfloat16)
    fresh = [rm.moe_matmul(x, w, routing, mode) for _ in range(2)][-1]  # resolve, bind
    outs = [torch.full_like(fresh, float("nan")) for _ in range(3)]
    assert all(rm.moe_matmul(x, w, routing, mode, out=out) is out for out in outs)  # bind, bound, bound
    assert sum(isinstance(b, BoundLaunch) for b in LAUNCHES.values()) == 2  # with and without out
    assert all(torch.equal(out, fresh) for out in outs)


@needs_gpu
def test_a_misaligned_view_gets_its_own_bound_launch() -> None:
    x, w, routing = operands(dtype=torch.bfloat16)
    for _ in range(3):
        aligned = rm.moe_matmul(x, w, routing)
    padded = torch.zeros(24, 72, dtype=x.dtype, device=x.device)
    padded[:, 1:65] = x
    for _ in range(3):
        shifted = rm.moe_matmul(padded[:, 1:65], w, routing)
    assert torch.equal(aligned, shifted)
    assert len(LAUNCHES) == 2


@needs_gpu
def test_launch_hooks_see_every_call() -> None:
    from triton import knobs

    x, w, routing = operands(dtype=torch.bfloat16)
    for _ in range(3):
        rm.moe_matmul(x, w, routing)
    seen: list[str] = []

    def hook(metadata) -> None:
        seen.append(metadata.get()["name"])

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        rm.moe_matmul(x, w, routing)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert seen == ["_moe_matmul_kernel"]


@needs_gpu
@pytest.mark.parametrize("mode", ["gather", "scatter"])
@pytest.mark.parametrize("given_out", [False, True])
def test_a_bound_launch_captures_in_a_cuda_graph(mode: str, given_out: bool) -> None:
    """Scatter mode's bound call is two launches (GEMM, slot sum): both are captured and replayed."""
    x, w, routing = operands(dtype=torch.bfloat16)
    if mode == "scatter":
        x = torch.randn(routing.n_rows, 64, device=DEVICE, dtype=torch.bfloat16)
    rows = routing.n_rows if mode == "gather" else routing.n_tokens
    out = torch.empty(rows, w.shape[2], dtype=x.dtype, device=x.device) if given_out else None
    eager = [rm.moe_matmul(x, w, routing, mode, out=out).clone() for _ in range(3)][-1]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = rm.moe_matmul(x, w, routing, mode, out=out)
    if out is not None:
        out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager) and (out is None or captured is out)


def test_routings_of_one_layout_share_one_token_and_others_do_not() -> None:
    """A cached call's key holds the routing's layout token, compared by identity: equal layouts must
    give the very same token, different ones never, and a token lives while a key holds it."""
    import gc

    from resilient_moe.routing import LaunchLayout

    _, _, routing = operands()
    _, _, same = operands(seed=1)
    _, _, fewer = operands(t=20)
    assert same.launch_layout is routing.launch_layout
    assert fewer.launch_layout is not routing.launch_layout
    held = {operand_key(*operands(t=7)[:2], None, rm.route(torch.randn(7, 4).to(DEVICE), 2), "gather"): "bound"}
    gc.collect()
    (key,) = held
    again = rm.route(torch.randn(7, 4).to(DEVICE), 2)
    assert isinstance(key[2], LaunchLayout) and again.launch_layout is key[2]
