"""vLLM's fused MoE, against a from-scratch double of the functions resilient_moe hooks (vLLM cannot be
installed here; tests/doubles/vllm_root): its entries patched and unpatched, the engine's own config as
the default rung, a rung imposed through its override_config, a tuned file served as it is."""

from __future__ import annotations

import importlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from engine_support import moe_layer

import resilient_moe as rm
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
    """A call whose dtype selector is fp8_w8a8, so the double's default is the 128x256x128 s4 tile."""
    x, w1, w2, weights, ids = moe_layer()
    module = sys.modules["vllm.model_executor.layers.fused_moe.fused_moe"]
    return (x, w1, w2, weights, ids), {"quant_config": module.QuantConfig(use_fp8_w8a8=True)}


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
