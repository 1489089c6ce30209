"""vLLM's fused MoE, against a from-scratch double of the functions resilient_moe hooks (vLLM cannot be
installed here; tests/doubles/vllm_root): its entries patched and unpatched, the engine's own config as
the default rung, a rung imposed through its override_config, a tuned file served as it is."""

from __future__ import annotations

import importlib
import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from engine_support import DEVICE, fp8_block, fp8_per_tensor, moe_layer

import resilient_moe as rm
from resilient_moe import virtual
from resilient_moe.backends import binding
from resilient_moe.backends.engines import fused_moe, vllm as adapter
from resilient_moe.backends.patching import ENGINES_ENV, patched
from resilient_moe.testing import capture

ROOT = Path(__file__).parent / "doubles" / "vllm_root"
FP8_DEFAULT = {"BLOCK_SIZE_M": 128, "BLOCK_SIZE_N": 256, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 32, "num_warps": 8, "num_stages": 4}


@pytest.fixture(scope="module")
def vllm() -> Iterator[object]:
    """The double, imported as ``vllm`` for this module only."""
    sys.path.insert(0, str(ROOT))
    adapter.engines.cache_clear()
    try:
        yield importlib.import_module("vllm.model_executor.layers.fused_moe")
    finally:
        rm.unpatch_vllm()
        adapter.engines.cache_clear()
        sys.path.remove(str(ROOT))
        for name in [n for n in sys.modules if n == "vllm" or n.startswith("vllm.")]:
            del sys.modules[name]


@pytest.fixture
def patched_vllm(vllm) -> Iterator[object]:
    rm.patch_vllm()
    yield vllm
    rm.unpatch_vllm()


def fp8_call(vllm):
    """fp8 w8a8 per-tensor weights: the double's default is the 128x256x128 s4 tile."""
    x, w1, w2, weights, ids = moe_layer()
    (q1, s1), (q2, s2) = fp8_per_tensor(w1), fp8_per_tensor(w2)
    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    return (x, q1, q2, weights, ids), {"quant_config": module.QuantConfig(use_fp8_w8a8=True, w1_scale=s1, w2_scale=s2)}


def test_patch_replaces_both_entries_and_unpatch_restores_them(vllm) -> None:
    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    theirs, apply = module.fused_experts, module.TritonExperts.__dict__["apply"]
    rm.patch_vllm()
    try:
        assert vllm.fused_experts is not theirs and module.fused_experts is not theirs
        assert module.TritonExperts.__dict__["apply"] is not apply
        assert set(patched(theirs)) >= {"vllm.model_executor.layers.fused_moe.fused_experts",
                                        "vllm.model_executor.layers.fused_moe.fused_moe.fused_experts"}
        rm.patch_vllm()  # again: nothing doubles up
    finally:
        rm.unpatch_vllm()
    assert vllm.fused_experts is theirs and module.fused_experts is theirs
    assert module.TritonExperts.__dict__["apply"] is apply


def test_the_fp8_default_recovers_to_the_engine_s_own_output_at_the_landing_rung(patched_vllm, small_chip, use_policy) -> None:
    use_policy({"ladder": {"skip_predicted": False, "compare": 0}})  # every rung compiled: the real bytes
    args, kwargs = fp8_call(patched_vllm)
    with capture() as log:
        ours = patched_vllm.fused_experts(*args, **kwargs)
    first = next(e for e in log if e["event"] == "tiling.downgrade")
    assert first["from"]["block_m"] == 128 and first["required"] > first["limit"] == 101376
    assert patched_vllm.get_config() is None  # the engine's override is undone after every attempt
    (resolved,) = rm.settings.cache().resolutions.values()
    assert resolved.origin == "ladder" and resolved.attempts[0].config == fused_moe.as_tile(FP8_DEFAULT, "cuda")
    with patched_vllm.override_config(fused_moe.as_config(resolved.winner, FP8_DEFAULT)):
        theirs = adapter.engines()[0].fused_experts(*args, **kwargs)
    assert torch.equal(ours, theirs)
    again = patched_vllm.fused_experts(*args, **kwargs)  # a hit: the winner under the override, no attempt
    assert torch.equal(again, ours)


def test_the_modular_experts_apply_recovers_and_writes_its_output(patched_vllm, small_chip) -> None:
    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    (x, w1, w2, weights, ids), kwargs = fp8_call(patched_vllm)
    experts = module.TritonExperts(kwargs["quant_config"])
    output = torch.empty_like(x)
    assert experts.apply(output, x, w1, w2, weights, ids) is None
    expected = patched_vllm.fused_experts(x, w1, w2, weights, ids, **kwargs)  # same shape class: its winner
    assert torch.equal(output, expected)


def test_a_tuned_file_that_fits_runs_as_the_engine_has_it(patched_vllm, small_chip, tmp_path, monkeypatch) -> None:
    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    x, w1, w2, weights, ids = moe_layer()
    row = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 2}
    name = module.get_config_file_name(w2.shape[0], w2.shape[2], None)
    (tmp_path / name).write_text(json.dumps({"1": row, "64": row}))
    monkeypatch.setenv("VLLM_TUNED_CONFIG_FOLDER", str(tmp_path))
    module.get_moe_configs.cache_clear()
    module.launches.clear()
    with capture() as log:
        patched_vllm.fused_experts(x, w1, w2, weights, ids)
    assert [e["event"] for e in log] == ["tiling.selected"]
    assert module.launches == [row, row]  # the up and the down GEMM, the file's own row
    module.get_moe_configs.cache_clear()


def test_no_tokens_returns_zeros_without_a_launch(patched_vllm) -> None:
    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    x, w1, w2, weights, ids = moe_layer()
    module.launches.clear()
    out = patched_vllm.fused_experts(x[:0], w1, w2, weights[:0], ids[:0])
    assert out.shape == (0, x.shape[1]) and module.launches == []


def test_an_engine_error_under_a_rung_reaches_the_caller_and_leaves_no_override(patched_vllm, small_chip, monkeypatch) -> None:
    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    forward = module._forward

    def failing_under_override(*args):
        if patched_vllm.get_config():
            raise ValueError("engine error under a rung")
        return forward(*args)

    monkeypatch.setattr(module, "_forward", failing_under_override)
    args, kwargs = fp8_call(patched_vllm)
    with pytest.raises(ValueError, match="engine error under a rung"):
        patched_vllm.fused_experts(*args, **kwargs)  # the default does not fit; the first rung raises
    assert patched_vllm.get_config() is None and not rm.settings.cache().resolutions


def test_a_miss_during_graph_capture_says_to_warm_up(patched_vllm, monkeypatch) -> None:
    """Stand-in for a capture (none can start on a CPU): torch reports one in progress."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    x, w1, w2, weights, ids = moe_layer()
    with pytest.raises(fused_moe.CaptureMissError, match="warm_up"):
        patched_vllm.fused_experts(x, w1, w2, weights, ids)


def test_threads_resolve_their_own_shapes(patched_vllm, small_chip) -> None:
    args, kwargs = fp8_call(patched_vllm)
    x, w1, w2, weights, ids = moe_layer(tokens=40, seed=1)
    results: dict[str, torch.Tensor] = {}

    def run(name: str, call) -> None:
        results[name] = call()

    threads = [
        threading.Thread(target=run, args=("fp8", lambda: patched_vllm.fused_experts(*args, **kwargs))),
        threading.Thread(target=run, args=("fp16", lambda: patched_vllm.fused_experts(x, w1, w2, weights, ids))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results) == {"fp8", "fp16"} and len(rm.settings.cache().resolutions) == 2
    assert patched_vllm.get_config() is None


def test_the_plugin_patches_only_when_opted_in(vllm, monkeypatch) -> None:
    monkeypatch.delenv(ENGINES_ENV, raising=False)
    adapter.plugin()
    assert not getattr(vllm.fused_experts, "__resilient_moe_front__", False)
    monkeypatch.setenv(ENGINES_ENV, "sglang, vllm")
    adapter.plugin()
    try:
        assert getattr(vllm.fused_experts, "__resilient_moe_front__", False)
    finally:
        rm.unpatch_vllm()


def test_block_scaled_weights_keep_block_k_within_the_quant_block(use_policy) -> None:
    from resilient_moe.dispatch import Call, candidates

    use_policy({"arch": {"sm_89": {"default": {"block_k": 256}}}})
    layer = fused_moe.Layer(tokens=64, experts=8, n=256, k=512, top_k=2, dtype="fp8_w8a8", activation="bfloat16",
                            block_shape=(128, 128), per_channel=False, inplace=False, w2_shape=(8, 512, 128))
    floors, ceilings = fused_moe.rules(layer)
    call = Call("vllm.fused_experts", ("k",), "sm_89", {}, fused_moe.as_tile({**FP8_DEFAULT, "BLOCK_SIZE_K": 128}, "cuda"),
                floors=floors, ceilings=ceilings)
    tiles = candidates(call, rm.policy.active_policy())
    assert ceilings == {"block_k": 128} and all(t.block_k <= 128 for t in tiles)


def test_warm_up_settles_every_batch_size_before_a_capture(patched_vllm, small_chip, monkeypatch) -> None:
    args, kwargs = fp8_call(patched_vllm)
    x = torch.randn(64, args[0].shape[1], dtype=args[0].dtype, device=args[0].device)
    _, w1, w2, _, _ = args
    routing = moe_layer(tokens=64, seed=3)

    def forward(m: int) -> torch.Tensor:
        return patched_vllm.fused_experts(x[:m], w1, w2, routing[3][:m], routing[4][:m], **kwargs)

    settled = rm.warm_up(forward, [1, 2, 4, 8, 8, 32])
    assert set(settled) == {1, 2, 4, 8, 32} and all(r.origin == "ladder" for r in settled.values())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # stand-in for a capture (none on a CPU)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    for m in (1, 2, 4, 8, 32):  # every shape class known: no miss while "capturing"
        forward(m)
    with pytest.raises(fused_moe.CaptureMissError):
        forward(64)  # never warmed up


def _double_launches(module, call: Callable[[], object]) -> list[tuple[list, dict]]:
    """The launches of the double's kernel during ``call()``, bound as the JIT specializes them."""
    kernel = module.fused_moe_kernel
    made: list[tuple[list, dict]] = []
    kernel.pre_run_hooks.append(hook := lambda *a, **k: made.append(binding.bind(kernel, a, k)))
    try:
        call()
    finally:
        kernel.pre_run_hooks.remove(hook)
    return made


@pytest.mark.skipif(DEVICE != "cpu", reason="compiles for a virtual chip on a CPU")
@pytest.mark.parametrize("fmt", ["fp16", "fp8", "fp8-block"])
@pytest.mark.parametrize("tokens", [1, 24])  # 1 x top-2 x 4 <= 8 experts: vLLM's naive path; 24: sorted blocks
def test_preflight_s_launches_are_the_ones_vllm_makes(vllm, fmt, tokens) -> None:
    """What preflight describes from vLLM's source without running it equals what the double (written
    from the same source) launches: every constexpr and launch option, and the bytes on sm_89."""
    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    x, w1, w2, weights, ids = moe_layer(tokens=tokens, experts=8, hidden=256, intermediate=128)
    quant = None
    if fmt != "fp16":
        quantize = fp8_block if fmt == "fp8-block" else fp8_per_tensor
        (w1, s1), (w2, s2) = quantize(w1), quantize(w2)
        quant = module.QuantConfig(use_fp8_w8a8=True, block_shape=[128, 128] if fmt == "fp8-block" else None, w1_scale=s1, w2_scale=s2)
    tile = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 256 if fmt == "fp8-block" else 64, "GROUP_SIZE_M": 1,
            "num_warps": 4, "num_stages": 3}
    with vllm.override_config(tile):
        made = _double_launches(module, lambda: module.fused_experts(x, w1, w2, weights, ids, quant_config=quant))
    layer = adapter.engines()[0].layer({"hidden_states": x, "w1": w1, "w2": w2, "topk_ids": ids, "quant_config": quant})
    described = adapter.launches(layer, tile, "sm_89")
    assert len(made) == len(described) == 2
    for (positional, constexprs), (kernel, ours, our_constexprs) in zip(made, described, strict=True):
        constexprs = {"num_warps": 4, "num_stages": 3, **constexprs}  # the interpreter drops them before its hooks
        assert our_constexprs == constexprs
        theirs = virtual.measure(virtual.job_for(kernel, tuple(positional), constexprs, "sm_89"))
        assert virtual.measure(virtual.job_for(kernel, ours, our_constexprs, "sm_89")).shared == theirs.shared


@pytest.mark.skipif(DEVICE != "cpu", reason="compiles for a virtual chip on a CPU")
def test_preflight_writes_the_file_vllm_looks_up_and_it_serves_within_the_chip(vllm, tmp_path, monkeypatch) -> None:
    """sm_89: the fp8 default (147456 bytes) is rewritten, a fitting tuned row kept; vLLM's own lookup
    (the double's, under VLLM_TUNED_CONFIG_FOLDER) returns the rows, and the launches it then makes,
    compiled for sm_89, fit."""
    from resilient_moe.backends.engines import configs
    from resilient_moe.policy import active_policy
    from resilient_moe.targets import chip

    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    device = module.current_platform.get_device_name()
    layer = configs.layer_for(8, 256, 128, 2, "fp8_w8a8", "float16", None, tokens=1)
    small = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 3}
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (name,) = adapter.file_names(layer, device)
    assert name == f"E=8,N=128,device_name={device.replace(' ', '_')},dtype=fp8_w8a8.json"
    (shipped / name).write_text(json.dumps({"triton_version": "3.0.0", "1": small, "64": FP8_DEFAULT}))  # tuned on a larger chip
    monkeypatch.setenv("VLLM_TUNED_CONFIG_FOLDER", str(shipped))
    tuning = adapter.tuning()
    rows = configs.plan(tuning, layer, chip("sm_89"), 101376, device, active_policy(), batch_sizes=(1, 64))
    assert [(r.tokens, r.fits) for r in rows] == [(1, True), (64, False)]
    assert rows[1].default_bytes == 147456 and rows[1].written_bytes <= 101376
    (path,) = configs.write(tuning, rows, layer, device, tmp_path / "fitted")
    assert path.name == name and json.loads(path.read_text())["triton_version"] == __import__("triton").__version__
    monkeypatch.setenv("VLLM_TUNED_CONFIG_FOLDER", str(path.parent))
    module.get_moe_configs.cache_clear()
    x, w1, w2, weights, ids = moe_layer(tokens=64, experts=8, hidden=256, intermediate=128)
    (q1, s1), (q2, s2) = fp8_per_tensor(w1), fp8_per_tensor(w2)
    quant = module.QuantConfig(use_fp8_w8a8=True, w1_scale=s1, w2_scale=s2)
    try:
        for row in rows:
            assert module.try_get_optimal_moe_config(w1.shape, w2.shape, 2, "fp8_w8a8", row.tokens) == row.written
            made = _double_launches(module, lambda: module.fused_experts(x[:row.tokens], q1, q2, weights[:row.tokens], ids[:row.tokens], quant_config=quant))
            for positional, constexprs in made:  # unpatched vLLM: every launch fits the chip
                tile = {"num_warps": row.written["num_warps"], "num_stages": row.written["num_stages"]}
                virtual.fits(module.fused_moe_kernel, tuple(positional), {**tile, **constexprs}, "sm_89")
    finally:
        module.get_moe_configs.cache_clear()


@pytest.mark.skipif(DEVICE != "cpu", reason="compiles for a virtual chip on a CPU")
def test_preflight_command_writes_vllm_files(vllm, tmp_path, capsys) -> None:
    from resilient_moe.cli import main

    out = tmp_path / "configs"
    code = main(["preflight", "--engine", "vllm", "--arch", "sm_89", "--model", "mixtral-8x7b", "--tp", "8",
                 "--dtype", "fp8_w8a8", "--device-name", "NVIDIA GeForce RTX 4090", "--write-configs", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    (path,) = out.iterdir()
    assert path.name == "E=8,N=1792,device_name=NVIDIA_GeForce_RTX_4090,dtype=fp8_w8a8.json"
    table = json.loads(path.read_text())
    assert list(table)[1:] == [str(m) for m in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)]
    assert "18 of 18 of the engine's configs do not fit" in printed
    assert f"serve with VLLM_TUNED_CONFIG_FOLDER={out.resolve()}" in printed
