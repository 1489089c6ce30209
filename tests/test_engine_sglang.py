"""SGLang's real Triton fused MoE (0.5.x), where it imports: its own fused_experts, config lookup,
override_config and fused_moe_kernel, with the CPU stand-ins of tests/doubles/sglang_cpu.py. Skipped
where SGLang is not installed (the README's test command; .ci/run installs it for a stage of its own)."""

from __future__ import annotations

import sys

import pytest
import torch
from doubles import sglang_cpu
from engine_support import DEVICE, fp8_per_tensor, moe_layer

import resilient_moe as rm
from resilient_moe import virtual
from resilient_moe.backends import binding
from resilient_moe.backends.engines import fused_moe, sglang as adapter
from resilient_moe.backends.patching import ENGINES_ENV
from resilient_moe.targets import placement
from resilient_moe.testing import capture

pytestmark = pytest.mark.skipif(not sglang_cpu.available(), reason="SGLang is not installed")

FP8_DEFAULT = {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 32, "num_warps": 8, "num_stages": 4}


@pytest.fixture(scope="module")
def sglang():
    module = sglang_cpu.prepare() if DEVICE == "cpu" else __import__(sglang_cpu.FUSED_MOE, fromlist=["x"])
    yield module
    rm.unpatch_sglang()


@pytest.fixture
def patched(sglang):
    rm.patch_sglang()
    yield sglang
    rm.unpatch_sglang()


def runner(inplace: bool = False):
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig

    return MoeRunnerConfig(inplace=inplace)


def fp8_call(tokens: int = 8):
    """tokens > experts: SGLang's fp8 per-tensor default is 128x256x128 s4 w8 (on a chip it sees as large)."""
    x, w1, w2, weights, ids = moe_layer(tokens=tokens)
    (q1, s1), (q2, s2) = fp8_per_tensor(w1), fp8_per_tensor(w2)
    return (x, q1, q2, (weights, ids, None), runner()), {"use_fp8_w8a8": True, "w1_scale": s1, "w2_scale": s2}


def utils():
    return sys.modules[adapter.PACKAGE]


def test_patch_replaces_fused_experts_where_sglang_looks_it_up(sglang) -> None:
    theirs = sglang.fused_experts
    rm.patch_sglang()
    try:
        assert getattr(sglang.fused_experts, "__resilient_moe_front__", False)
        assert utils().fused_experts is sglang.fused_experts or getattr(utils().fused_experts, "__resilient_moe_front__", False)
    finally:
        rm.unpatch_sglang()
    assert sglang.fused_experts is theirs and utils().fused_experts is theirs


def test_the_engine_s_own_config_is_the_default_rung(sglang) -> None:
    (x, w1, w2, topk, _), kwargs = fp8_call()
    layer = adapter.engine().layer({"hidden_states": x, "w1": w1, "w2": w2, "topk_output": topk, **kwargs})
    assert layer.dtype == "fp8_w8a8" and (layer.experts, layer.n, layer.k, layer.top_k) == (4, 64, 64, 2)
    if DEVICE == "cpu":  # no GPU for SGLang to see as small: its large-chip default
        assert adapter.engine().own_config(layer) == FP8_DEFAULT


@pytest.mark.skipif(DEVICE != "cpu", reason="virtual sm_89 under the interpreter")
def test_the_fp8_default_fails_on_sm_89_with_the_users_bytes_and_recovers(patched, small_chip, use_policy) -> None:
    use_policy({"ladder": {"skip_predicted": False, "compare": 0}})  # compile every rung: the real bytes
    args, kwargs = fp8_call()
    with capture() as log:
        ours = patched.fused_experts(*args, **kwargs)
    first = next(e for e in log if e["event"] == "tiling.downgrade")
    assert (first["required"], first["limit"]) == (147456, 101376) and not first["predicted"]
    (resolved,) = rm.settings.cache().resolutions.values()
    assert resolved.attempts[0].config == fused_moe.as_tile(FP8_DEFAULT, "cuda")
    assert utils().get_config() is None
    with utils().override_config(fused_moe.as_config(resolved.winner, FP8_DEFAULT)):
        theirs = adapter.engine().fused_experts(*args, **kwargs)
    assert torch.equal(ours, theirs)  # the engine's own output at the landing rung
    landed = resolved.winner
    layer = adapter.engine().layer(_arguments(args, kwargs))
    assert fused_moe.shared_lower_bound(layer, placement().arch)(landed) <= 101376


def _arguments(args, kwargs):
    return adapter.engine().signature.bind(*args, **kwargs).arguments


@pytest.mark.skipif(DEVICE != "cpu", reason="compiles for virtual chips on a CPU")
@pytest.mark.parametrize("chip", ["sm_89", "sm_90", "gfx950"])
def test_the_lower_bound_never_exceeds_a_real_compile(sglang, chip, monkeypatch) -> None:
    """Every launch of SGLang's kernel (both GEMMs) in bf16, fp8 per-tensor and fp8 block-128, under tiles
    from small to the fp8 default, compiled for the chip: the bound is at most its bytes."""
    launches: list[tuple] = []
    kernel = sys.modules[adapter.KERNELS].fused_moe_kernel

    def record(*args, **kwargs):
        launches.append(binding.bind(kernel, args, kwargs))

    monkeypatch.setattr(kernel, "pre_run_hooks", [*kernel.pre_run_hooks, record])
    x, w1, w2, weights, ids = moe_layer(tokens=8, hidden=256, intermediate=128)
    (q1, s1), (q2, s2) = fp8_per_tensor(w1), fp8_per_tensor(w2)
    cases = {None: ((w1, w2), {}), "fp8_w8a8": ((q1, q2), {"use_fp8_w8a8": True, "w1_scale": s1, "w2_scale": s2})}
    tiles = [FP8_DEFAULT, {**FP8_DEFAULT, "BLOCK_SIZE_M": 16, "num_stages": 2},
             {"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 3}]
    exact: list[bool] = []
    for dtype, ((a, b), kwargs) in cases.items():
        for tile in tiles:
            launches.clear()
            with utils().override_config(tile):
                sglang.fused_experts(x, a, b, (weights, ids, None), runner(), **kwargs)
            layer = adapter.engine().layer(_arguments((x, a, b, (weights, ids, None), runner()), kwargs))
            assert layer.dtype == dtype and len(launches) == 2
            for positional, constexprs in launches:
                compiled = virtual.measure(virtual.job_for(kernel, tuple(positional), {**tile, **constexprs}, chip))
                bound = fused_moe.shared_lower_bound(layer, chip)(fused_moe.as_tile(tile, "cuda"))
                assert bound <= compiled.shared
                exact.append(bound == compiled.shared)
    if chip != "gfx950":
        assert all(exact)  # sm_89 and sm_90: the operand buffers are all that these tiles keep


def test_no_tokens_returns_zeros_without_calling_sglang(patched) -> None:
    (x, w1, w2, (weights, ids, _), config), kwargs = fp8_call()
    out = patched.fused_experts(x[:0], w1, w2, (weights[:0], ids[:0], None), config, **kwargs)
    assert out.shape == (0, x.shape[1]) and not rm.settings.cache().resolutions


def test_the_plugin_registers_a_replace_hook_only_when_opted_in(sglang, monkeypatch) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry

    monkeypatch.delenv(ENGINES_ENV, raising=False)
    adapter.plugin()
    assert not HookRegistry._hooks.get(adapter.HOOK_TARGET)
    monkeypatch.setenv(ENGINES_ENV, "sglang")
    try:
        adapter.plugin()
        ((kind, hook, _),) = HookRegistry._hooks[adapter.HOOK_TARGET]
        assert kind.name == "REPLACE" and getattr(hook, "__resilient_moe_front__", False)
    finally:
        HookRegistry._hooks.pop(adapter.HOOK_TARGET, None)


@pytest.mark.skipif(DEVICE != "cpu", reason="compiles for virtual chips on a CPU")
def test_preflight_s_launches_compile_like_the_ones_sglang_makes(sglang, monkeypatch) -> None:
    """The launches preflight describes without running SGLang need the bytes of those SGLang makes, on
    sm_89 (on a CPU SGLang decides like on sm_89: no swap_ab, no PDL, which preflight sets for sm_90)."""
    chip = "sm_89"
    kernel = sys.modules[adapter.KERNELS].fused_moe_kernel
    made: list[tuple] = []
    monkeypatch.setattr(kernel, "pre_run_hooks", [*kernel.pre_run_hooks, lambda *a, **k: made.append(binding.bind(kernel, a, k))])
    x, w1, w2, weights, ids = moe_layer(tokens=8, hidden=256, intermediate=128)
    (q1, s1), (q2, s2) = fp8_per_tensor(w1), fp8_per_tensor(w2)
    tile = {**FP8_DEFAULT, "BLOCK_SIZE_M": 32, "num_stages": 3}
    for (a, b), kwargs in (((w1, w2), {}), ((q1, q2), {"use_fp8_w8a8": True, "w1_scale": s1, "w2_scale": s2})):
        made.clear()
        call = (x, a, b, (weights, ids, None), runner())
        with utils().override_config(tile):
            sglang.fused_experts(*call, **kwargs)
        described = adapter.launches(adapter.engine().layer(_arguments(call, kwargs)), tile, chip)
        for (positional, constexprs), (_, ours, our_constexprs) in zip(made, described, strict=True):
            theirs = virtual.measure(virtual.job_for(kernel, tuple(positional), {**tile, **constexprs}, chip))
            mine = virtual.measure(virtual.job_for(kernel, ours, our_constexprs, chip))
            assert mine.shared == theirs.shared


@pytest.mark.skipif(DEVICE != "cpu", reason="compiles for virtual chips on a CPU")
def test_preflight_rewrites_a_tuned_row_that_does_not_fit_and_sglang_loads_the_files(sglang, tmp_path, monkeypatch) -> None:
    import json

    from resilient_moe.backends.engines import configs
    from resilient_moe.policy import active_policy
    from resilient_moe.targets import chip

    layer = configs.layer_for(4, 256, 128, 2, "fp8_w8a8", "float16", None, tokens=1)
    tuned = tmp_path / "shipped"
    small = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 3}
    folder = tuned / "configs" / f"triton_{__import__('triton').__version__.replace('.', '_')}"
    folder.mkdir(parents=True)
    for name in adapter.file_names(layer, sglang_cpu.DEVICE_NAME):  # a file tuned on a larger chip
        (folder / name).write_text(json.dumps({"1": small, "64": FP8_DEFAULT}))
    monkeypatch.setenv("SGLANG_MOE_CONFIG_DIR", str(tuned))
    rows = configs.plan(adapter.tuning(), layer, chip("sm_89"), 101376, sglang_cpu.DEVICE_NAME, active_policy(), batch_sizes=(1, 64))
    assert [(r.tokens, r.fits) for r in rows] == [(1, True), (64, False)]
    assert rows[0].written == small and rows[1].default == FP8_DEFAULT
    assert rows[1].default_bytes == 147456 and rows[1].written_bytes <= 101376
    out = tmp_path / "fitted"
    paths = configs.write(adapter.tuning(), rows, layer, sglang_cpu.DEVICE_NAME, out)
    assert [p.name for p in paths] == adapter.file_names(layer, sglang_cpu.DEVICE_NAME)
    monkeypatch.setenv("SGLANG_MOE_CONFIG_DIR", str(out))
    lookup = sys.modules[adapter.CONFIG]
    lookup.get_moe_configs.cache_clear()
    try:
        for row in rows:  # SGLang's own lookup returns the rows written
            up, (down, _) = lookup.try_get_optimal_moe_config(
                (4, 256, 256), layer.w2_shape, 2, "fp8_w8a8", row.tokens, return_down_config=True)
            assert up == row.written and down == row.written
    finally:
        lookup.get_moe_configs.cache_clear()
