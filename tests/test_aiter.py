"""aiter's Triton MoE GEMMs, against aiter's real source where a copy is present (RESILIENT_MOE_AITER_SOURCE,
else .ref/aiter-head; docs/aiter.md says how to make one), else against the from-scratch double of
tests/doubles/aiter_root (CI): the wrapper runs in the interpreter on a CPU, each launch compiled for a
virtual gfx950 first, so the chip's real OutOfResources drives the ladder. The contract of every
backend: recovery to aiter's own output at the landing rung, a stale winner replaced, exhaustion,
non-OOM errors, threads, patch and unpatch. The other formats, the lower bound and the pre-#2723
preflight need aiter's real source."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import triton
from test_stale import edit_winners, winners

import resilient_moe as rm
from resilient_moe import settings, virtual
from resilient_moe.backends import patching
from resilient_moe.backends.aiter import front, ops, preflight, source
from resilient_moe.testing import capture

REPO = Path(__file__).resolve().parents[1]
DOUBLE = Path(__file__).parent / "doubles" / "aiter_root"
PRE = REPO / ".ref" / "aiter-pre"


def _tree(path: Path) -> bool:
    return (path / "aiter" / "ops" / "triton").is_dir()


HEAD = Path(os.environ.get(source.SOURCE_ENV) or REPO / ".ref" / "aiter-head")
HEAD = HEAD if _tree(HEAD) else DOUBLE
real = pytest.mark.skipif(HEAD.resolve() == DOUBLE.resolve(), reason="needs aiter's real source (docs/aiter.md)")
interpreted = pytest.mark.skipif(
    torch.cuda.is_available() or tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 9),
    reason="aiter's kernels run in the interpreter on a CPU (this project has no AMD GPU, and a CUDA machine "
    "cannot launch them); Triton 3.6's interpreter fails in them (3.9 runs them)",
)
A8W4 = ops.OPS["moe_gemm_a8w4"]
OVER = {"block_n": 512, "block_k": 256, "num_stages": 3}  # 16x512x256 at 3 stages: 208896 B > 163840 (async copies)


@pytest.fixture(scope="module")
def module():
    return source.module(A8W4.module, HEAD)


@pytest.fixture
def patched(module, target, monkeypatch):
    """Ours in place of aiter's wrapper, on a virtual gfx950 with async copies (aiter's own setting)."""
    target("gfx950")
    monkeypatch.setenv("TRITON_HIP_USE_ASYNC_COPY", "1")
    rm.patch_aiter(str(HEAD))
    yield module
    rm.unpatch_aiter()


def call(tokens: int = 8, experts: int = 4, top_k: int = 2, k: int = 256, n: int = 256, seed: int = 0,
         op: ops.Op = A8W4) -> dict:
    """A small call in the op's formats (fp8 or packed fp4 activations, mxfp4 or fp8 weights, e8m0
    scales), routed by aiter's own routing data."""
    routing = importlib.import_module(preflight.ROUTING)
    g = torch.Generator().manual_seed(seed)
    ids = torch.topk(torch.randn(tokens, experts, generator=g), top_k).indices.sort(dim=1).values.reshape(-1)
    order = torch.argsort(ids, stable=True)
    hist = torch.bincount(ids, minlength=experts).int()
    block_m = preflight.block_m_of(tokens, preflight.Shape("up", experts, top_k, n, k, True, False, None))
    data = routing.compute_expt_data_torch(hist, experts, tokens * top_k, block_m)
    scales = torch.randint(124, 131, (experts, n, k // 32), generator=g, dtype=torch.uint8).transpose(1, 2)
    found = {"routing_data": routing.RoutingData(block_m, None, hist, experts, top_k, data),
             "gather_indx": order.int(), "scatter_indx": torch.argsort(order, stable=True).int()}
    if op.packed_x:
        found.update(x=torch.randint(0, 256, (tokens, k // 2), generator=g, dtype=torch.uint8),
                     x_scales=torch.randint(124, 131, (tokens, k // 32), generator=g, dtype=torch.uint8))
    else:
        found.update(x=(torch.randn(tokens, k, generator=g) * 2).to(torch.float8_e4m3fn), x_scales=None,
                     x_static_scale=torch.tensor(0.5))
    if op.bits[1] == 4:
        found.update(w=torch.randint(0, 256, (experts, n, k // 2), generator=g, dtype=torch.uint8).transpose(1, 2),
                     w_scales=scales)
    else:
        found.update(w=(torch.randn(experts, n, k, generator=g) * 2).to(torch.float8_e4m3fn).transpose(1, 2),
                     w_scales=None, w_static_scale=torch.tensor(0.25))
    return found


def aiter_at(module, arguments: dict, config: dict | None, op: ops.Op = A8W4):
    """aiter's own wrapper, under ``config`` (None: its own choice)."""
    with ops.imposing(config):
        return patching.original(module, op.name)(**arguments)


def landing_config(module, arguments: dict, tile: rm.TileConfig, op: ops.Op = A8W4) -> dict:
    return ops.as_config(tile, ops.own_config(module, ops.gemm_of(op, arguments), arguments["routing_data"]))


@real
@interpreted
@pytest.mark.parametrize("name", ["moe_gemm_a4w4", "moe_gemm_a8w8"])
def test_the_other_formats_recover_to_aiter_s_own_output_too(patched, use_policy, name) -> None:
    op = ops.OPS[name]
    module = source.module(op.module, HEAD)
    use_policy({"arch": {"gfx950": {"default": OVER}}})
    arguments = call(op=op)
    with capture() as log:
        ours = getattr(module, name)(**arguments)
    down = next(e for e in log if e["event"] == "tiling.downgrade")
    assert down["required"] > down["limit"] == 163840
    (resolved,) = settings.cache().resolutions.values()
    assert resolved.winner.num_stages >= 2
    assert torch.equal(ours, aiter_at(module, arguments, landing_config(module, arguments, resolved.winner, op), op))


def test_patch_replaces_the_wrapper_and_hooks_the_lookup_and_unpatch_restores_both(module) -> None:
    theirs, lookup = module.moe_gemm_a8w4, module.get_kernel_config_triton
    front.patch_aiter(str(HEAD))
    try:
        assert module.moe_gemm_a8w4 is not theirs and module.get_kernel_config_triton is not lookup
        front.patch_aiter(str(HEAD))  # again: nothing doubles up
        assert ops.lookup(module) is lookup and patching.original(module, A8W4.name) is theirs
    finally:
        front.unpatch_aiter()
    assert module.moe_gemm_a8w4 is theirs and module.get_kernel_config_triton is lookup


def test_a_call_without_routing_data_names_it(patched) -> None:
    with pytest.raises(ValueError, match="routing_data is None"):
        patched.moe_gemm_a8w4(**{**call(), "routing_data": None})


def test_patching_from_a_folder_without_aiter_says_so(module, tmp_path) -> None:
    with pytest.raises(ImportError, match="none of aiter's MoE GEMMs can be imported"):
        rm.patch_aiter(str(tmp_path))


@interpreted
def test_aiter_s_own_config_is_the_default_rung_and_runs_as_aiter_has_it(patched) -> None:
    arguments = call()
    with capture() as log:
        ours = patched.moe_gemm_a8w4(**arguments)
    assert [e["event"] for e in log] == ["tiling.selected"]
    assert torch.equal(ours, aiter_at(patched, arguments, None))


@interpreted
def test_a_default_over_the_chip_recovers_to_aiter_s_own_output_at_the_landing_rung(patched, use_policy) -> None:
    use_policy({"arch": {"gfx950": {"default": OVER}}})
    arguments = call()
    with capture() as log:
        ours = patched.moe_gemm_a8w4(**arguments)
    down = next(e for e in log if e["event"] == "tiling.downgrade")
    assert down["required"] > down["limit"] == 163840 and down["from"]["num_stages"] == 3
    (resolved,) = settings.cache().resolutions.values()
    landed = resolved.winner
    assert landed.num_stages == 2 and landed.block_m == arguments["routing_data"].block_m == 16
    assert torch.equal(ours, aiter_at(patched, arguments, landing_config(patched, arguments, landed)))
    assert ops._imposed.get() is None  # nothing imposed outside an attempt


@interpreted
def test_a_stale_winner_is_dropped_and_the_call_climbs_again(patched, use_policy, cache_dir) -> None:
    arguments = call()
    patched.moe_gemm_a8w4(**arguments)
    over = rm.TileConfig(block_m=16, block_n=512, block_k=256, group_m=4, num_warps=4, num_stages=3)
    (key,) = edit_winners(cache_dir, over)
    rm.reset()
    with capture() as log:
        ours = patched.moe_gemm_a8w4(**arguments)
    (stale,) = [e for e in log if e["event"] == "cache.stale"]
    assert stale["required"] > stale["limit"] == 163840 and stale["key"] == key
    assert winners(cache_dir)[key] != over.as_dict()
    assert torch.equal(ours, aiter_at(patched, arguments, None))  # aiter's own config fits: the climb lands there


@interpreted
def test_no_fitting_rung_raises_the_exhaustion_with_every_attempt(patched, use_policy) -> None:
    use_policy({"arch": {"gfx950": {"default": {**OVER, "num_stages": 4}}}, "ladder": {"max_attempts": 2}})
    with pytest.raises(rm.LadderExhaustedError) as raised:
        patched.moe_gemm_a8w4(**call())
    assert len(raised.value.attempts) == 2 and ops._imposed.get() is None


@interpreted
def test_an_error_that_is_not_out_of_resources_reaches_the_caller_unchanged(patched, use_policy, monkeypatch) -> None:
    use_policy({"arch": {"gfx950": {"default": OVER}}})
    reduce = patched.reduce_grouped

    def failing_under_a_rung(*args, **kwargs):
        if ops._imposed.get() is not None:
            raise ValueError("aiter error under a rung")
        return reduce(*args, **kwargs)

    monkeypatch.setattr(patched, "reduce_grouped", failing_under_a_rung)
    with pytest.raises(ValueError, match="aiter error under a rung"):
        patched.moe_gemm_a8w4(**call())
    assert not settings.cache().resolutions and ops._imposed.get() is None


@interpreted
def test_threads_resolve_their_own_shapes(patched, use_policy) -> None:
    use_policy({"arch": {"gfx950": {"default": OVER}}})
    calls = {"small": call(), "wide": call(tokens=40, n=512, seed=1)}
    results: dict[str, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda name=name: results.__setitem__(name, patched.moe_gemm_a8w4(**calls[name])))
               for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results) == set(calls) and len(settings.cache().resolutions) == 2
    for name, resolution in ((n, r) for r in settings.cache().resolutions.values() for n in calls
                             if r.key[4] == ops.gemm_of(A8W4, calls[n]).n):
        expected = aiter_at(patched, calls[name], landing_config(patched, calls[name], resolution.winner))
        assert torch.equal(results[name], expected)


@real
@pytest.mark.parametrize("copies", ["1", "0"])
def test_the_lower_bound_never_exceeds_a_real_compile(module, monkeypatch, copies) -> None:
    monkeypatch.setenv("TRITON_HIP_USE_ASYNC_COPY", copies)
    arguments = call(tokens=512, experts=4, k=512, n=1024)
    own = ops.own_config(module, ops.gemm_of(A8W4, arguments), arguments["routing_data"])
    bound = ops.shared_lower_bound(A8W4, copies == "1")
    for block_n, block_k, stages in ((128, 256, 1), (128, 256, 2), (512, 256, 2), (256, 512, 2), (512, 256, 3)):
        tile = rm.TileConfig(own["block_m"], block_n, block_k, group_m=4, num_warps=8, num_stages=stages)
        kernel, args, constexprs = preflight.recorded(A8W4, module, {**arguments, "apply_swiglu": False},
                                                      ops.as_config(tile, own))
        real = virtual.measure(virtual.job_for(kernel, args, constexprs, "gfx950")).shared
        assert bound(tile) <= real, (tile, bound(tile), real)


@pytest.mark.skipif(not _tree(PRE), reason=f"no aiter source at {PRE}")
def test_preflight_of_aiter_before_2723_lands_on_two_stages_where_its_default_needs_more_than_the_chip() -> None:
    """aiter's a8w4 before #2723, gpt-oss-120b-like, gfx950 with async copies: its 128x512x256 two-stage
    tile needs more LDS than MI355X has; the ladder keeps two stages on a narrower tile."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RESILIENT_MOE_TARGET")}
    out = subprocess.run([sys.executable, "-m", "resilient_moe.cli", "preflight", "--kernel", "moe_gemm_a8w4",
                          "--aiter-source", str(PRE), "--arch", "gfx950", "--model", "gpt-oss-120b", "--tokens", "4096",
                          "--async-copy", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout)["rows"]
    assert [r["shape"]["name"] for r in rows] == ["up", "down"]
    for row in rows:
        own, landed = row["own"], row["landed"]
        assert (own["block_m"], own["block_n"], own["num_stages"]) == (128, 512, 2) and row["own_bytes"] > 163840
        assert (landed["block_n"], landed["num_stages"]) == (256, 2) and row["landed_bytes"] <= 163840
