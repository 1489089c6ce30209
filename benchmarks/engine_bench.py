"""SGLang's own fused MoE on a GPU capped to a smaller chip's shared memory (RESILIENT_MOE_SHARED_MEMORY_CAP).

    RESILIENT_MOE_SHARED_MEMORY_CAP=101376 python benchmarks/engine_bench.py --section recover --out DIR
    RESILIENT_MOE_SHARED_MEMORY_CAP=101376 SGLANG_MOE_CONFIG_DIR=CFG python benchmarks/engine_bench.py --section configs --out DIR
    RESILIENT_MOE_SHARED_MEMORY_CAP=101376 python benchmarks/engine_bench.py --section graph --out DIR

recover: SGLang's fused_experts through resilient_moe (as patch_sglang() runs it); for a Qwen3-30B-A3B-like and a DeepSeek-V3-like layer, fp8 per-tensor and
         block-fp8 (128x128), M in 1..4096: the first call (recovering where SGLang's config does not fit),
         then the landed config timed against (a) SGLang's own low-shared-memory default (0.5.23's, for
         chips under 128 KiB; block-fp8 has none: its default) and (b) the fastest fitting config of a sweep.
configs: unpatched SGLang reading the files `resilient-moe preflight --engine sglang --write-configs CFG`
         wrote: SGLang's own lookup returns them, and every row runs under the cap.
graph:   warm_up over the captured batch sizes, then CUDA-graph capture and replay with no compile.
Each section writes DIR/engine_<section>.json. Needs SGLang importable (see docs/engines.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

MODELS = {  # experts, top-k, hidden, intermediate (per expert, one rank)
    "qwen3-30b-a3b": (128, 8, 2048, 768),
    "deepseek-v3": (256, 8, 7168, 2048),
}
TOKENS = (1, 16, 64, 256, 1024, 4096)
FP8 = torch.float8_e4m3fn


def _sglang() -> tuple[Any, Any, Any]:
    """SGLang's fused MoE module, its triton_utils package and its config module, after the two things a
    server states before its first MoE call: its settings and its tensor-parallel group (one rank)."""
    from sglang.srt.runtime_context import get_context, get_parallel
    from sglang.srt.server_args import ServerArgs

    get_context().set_server_args(ServerArgs(model_path="bench"))
    get_parallel().override_permanently(tp_group=types.SimpleNamespace(world_size=1))
    import sglang.srt.layers.moe.moe_runner.triton_utils as utils
    import sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe as fused_moe
    import sglang.srt.layers.moe.moe_runner.triton_utils.fused_moe_triton_config as config

    return fused_moe, utils, config


def _layer(model: str, block: bool, seed: int = 0) -> dict[str, Any]:
    experts, top_k, hidden, intermediate = MODELS[model]
    g = torch.Generator(device="cuda").manual_seed(seed)
    top = torch.finfo(FP8).max

    def weights(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.randn(experts, n, k, device="cuda", generator=g, dtype=torch.bfloat16) / k**0.5
        if block:
            scale = w.float().view(experts, n // 128, 128, k // 128, 128).abs().amax(dim=(2, 4)) / top
            q = (w.float().view(experts, n // 128, 128, k // 128, 128) / scale[:, :, None, :, None]).clamp(-top, top)
            return q.view(experts, n, k).to(FP8), scale.clamp(min=1e-12)
        scale = (w.float().abs().amax(dim=(1, 2)) / top).clamp(min=1e-12)
        return (w.float() / scale[:, None, None]).clamp(-top, top).to(FP8), scale

    (w1, s1), (w2, s2) = weights(2 * intermediate, hidden), weights(hidden, intermediate)
    kwargs: dict[str, Any] = {"use_fp8_w8a8": True, "w1_scale": s1, "w2_scale": s2}
    if block:
        kwargs["block_shape"] = [128, 128]
    return {"w1": w1, "w2": w2, "kwargs": kwargs, "experts": experts, "top_k": top_k, "hidden": hidden}


def _call(fused_moe: Any, layer: dict[str, Any], tokens: int, seed: int = 1) -> tuple[tuple[Any, ...], dict[str, Any]]:
    from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig

    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, layer["hidden"], device="cuda", generator=g, dtype=torch.bfloat16)
    logits = torch.randn(tokens, layer["experts"], device="cuda", generator=g)
    weights, ids = torch.topk(logits.softmax(-1), layer["top_k"])
    runner = MoeRunnerConfig(inplace=False)
    return (x, layer["w1"], layer["w2"], (weights.float(), ids.to(torch.int32), logits), runner), layer["kwargs"]


def _ms(run: Any, reps: int) -> float:
    """Median of ``reps`` CUDA-event timings of a CUDA graph of ``run`` (compiled first): eager, an
    engine's Python path (about 0.5 ms a call) is what the events would measure at small M."""
    run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _sweep(tokens: int, experts: int, top_k: int, block: bool) -> list[dict[str, int]]:
    """Configs of the sweep: block_m up to twice the rows an expert gets (at least 16, at most 128), block_n
    64 and 128, block_k 128 and 256 (64 and 128 under 128x128 quant blocks), 2 to 4 stages, 4 warps."""
    rows = -(-tokens * top_k // experts)
    most = min(128, max(16, 2 * (1 << max(rows - 1, 0).bit_length())))
    out = []
    for bm in (16, 32, 64, 128):
        if bm > most:
            continue
        for bn in (64, 128):
            for bk in ((64, 128) if block else (128, 256)):
                for stages in (2, 3, 4):
                    out.append({"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": bk, "GROUP_SIZE_M": 16,
                                "num_warps": 4, "num_stages": stages})
    return out


def section_recover(deadline: float, out_file: Path, models: list[str], dtypes: list[str]) -> list[dict[str, Any]]:
    from triton.runtime.errors import OutOfResources

    from resilient_moe.backends.engines import fused_moe as engines, sglang as adapter
    from resilient_moe.targets import placement
    from resilient_moe.testing import capture

    fused_moe, utils, config = _sglang()
    engine = adapter.engine()
    limit = int(os.environ["RESILIENT_MOE_SHARED_MEMORY_CAP"])
    rows: list[dict[str, Any]] = []
    for model in models:
        for block in (dtype == "block" for dtype in dtypes):
            layer = _layer(model, block)
            for tokens in TOKENS:
                if time.perf_counter() > deadline:
                    return rows
                args, kwargs = _call(fused_moe, layer, tokens)
                t0 = time.perf_counter()
                with capture() as log:
                    ours, resolution = engines.run(engine, args, kwargs)  # what the patched fused_experts does
                torch.cuda.synchronize()
                first_s = time.perf_counter() - t0
                arguments = engine.signature.bind(*args, **kwargs).arguments
                at = engine.layer(arguments)
                own = engine.own_config(at)
                landed = resolution.winner if resolution is not None else engines.as_tile(own, "cuda")
                reps = 20 if tokens <= 256 else 10

                def timed(cfg: dict[str, Any] | None) -> float | None:
                    try:
                        if cfg is None:
                            return _ms(lambda: engine.fused_experts(*args, **kwargs), reps)
                        return _ms(lambda: engines.overridden(engine, cfg, lambda: engine.fused_experts(*args, **kwargs)), reps)
                    except OutOfResources:
                        return None

                landed_cfg = None if landed == engines.as_tile(own, "cuda") else engines.as_config(landed, own)
                t_landed = timed(landed_cfg)
                low_smem = _low_smem_default(config, at) if not block else own
                t_low = timed(low_smem)
                sweep = []
                bound = engines.shared_lower_bound(at, placement().arch)
                for cfg in _sweep(tokens, at.experts, at.top_k, block):
                    if bound(engines.as_tile(cfg, "cuda")) > limit or time.perf_counter() > deadline:
                        continue
                    t = timed(cfg)
                    if t is not None:
                        sweep.append((t, cfg))
                best_t, best_cfg = min(sweep, key=lambda s: s[0]) if sweep else (None, None)
                row = {
                    "model": model, "dtype": "fp8 block 128x128" if block else "fp8 per-tensor", "tokens": tokens,
                    "key": None if resolution is None else resolution.key,
                    "sglang_config": own, "landed": landed.as_dict(), "first_call_s": round(first_s, 3),
                    "downgrades": [{k: e.get(k) for k in ("from", "to", "required", "limit", "predicted")}
                                   for e in log if e["event"] == "tiling.downgrade"],
                    "compared": [] if resolution is None else list(resolution.compared),
                    "ms_landed": t_landed, "low_smem_default": low_smem, "ms_low_smem_default": t_low,
                    "sweep_size": len(sweep), "sweep_best": best_cfg, "ms_sweep_best": best_t,
                    "vs_low_smem": None if not (t_low and t_landed) else round(t_low / t_landed, 3),
                    "vs_sweep_best": None if not (best_t and t_landed) else round(best_t / t_landed, 3),
                    "equal_to_sglang_at_landed": bool(torch.equal(ours, _at(engine, engines, landed_cfg, args, kwargs))),
                }
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("model", "dtype", "tokens", "landed", "first_call_s", "ms_landed",
                                                      "vs_low_smem", "vs_sweep_best")}), flush=True)
                out_file.write_text(json.dumps(rows, indent=1))
            del layer
            torch.cuda.empty_cache()
    return rows


def _at(engine: Any, engines: Any, cfg: dict[str, Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    if cfg is None:
        return engine.fused_experts(*args, **kwargs)
    return engines.overridden(engine, cfg, lambda: engine.fused_experts(*args, **kwargs))


def _low_smem_default(config: Any, layer: Any) -> dict[str, Any]:
    """SGLang 0.5.23's own default for a chip under 128 KiB (its get_default_config, asked as one)."""
    saved = config._use_low_smem_fp8_default
    config._use_low_smem_fp8_default = lambda: True
    try:
        return dict(config.get_default_config(layer.tokens, layer.experts, layer.w2_shape[2], layer.k, layer.top_k,
                                              layer.dtype, False, None))
    finally:
        config._use_low_smem_fp8_default = saved


def section_configs(deadline: float, out_file: Path, models: list[str], dtypes: list[str]) -> list[dict[str, Any]]:
    from resilient_moe.backends.engines import configs as files, sglang as adapter
    from resilient_moe.targets import placement

    fused_moe, utils, config = _sglang()
    placement()  # puts RESILIENT_MOE_SHARED_MEMORY_CAP in force; nothing of ours is patched in
    assert not getattr(fused_moe.fused_experts, "__resilient_moe_front__", False)
    engine = adapter.engine()
    rows: list[dict[str, Any]] = []
    for model, block in ((m, d == "block") for m in models for d in dtypes):
        layer = _layer(model, block)
        for tokens in files.BATCH_SIZES:
            if time.perf_counter() > deadline:
                break
            args, kwargs = _call(fused_moe, layer, tokens)
            at = engine.layer(engine.signature.bind(*args, **kwargs).arguments)
            looked_up = dict(config.try_get_optimal_moe_config(
                layer["w1"].shape, at.w2_shape, at.top_k, at.dtype, tokens, block_shape=kwargs.get("block_shape")))
            error = None
            try:
                fused_moe.fused_experts(*args, **kwargs)
                torch.cuda.synchronize()
            except Exception as err:  # recorded: this section reports whether each row serves
                error = f"{type(err).__name__}: {err}"[:300]
            rows.append({"model": model, "block": block, "tokens": tokens, "sglang_config": looked_up, "error": error})
        out_file.write_text(json.dumps(rows, indent=1))
        del layer
        torch.cuda.empty_cache()
    return rows


def section_graph(deadline: float, out_file: Path, models: list[str], dtypes: list[str]) -> dict[str, Any]:
    import resilient_moe as rm
    from resilient_moe.backends.engines import sglang as adapter

    fused_moe, utils, config = _sglang()
    rm.patch_sglang()
    layer = _layer(models[0], dtypes[0] == "block")
    sizes = (1, 2, 4, 8, 16, 32, 64, 128)
    largest, kwargs = _call(fused_moe, layer, max(sizes))
    x, w1, w2, (weights, ids, logits), runner = largest

    def forward(m: int) -> torch.Tensor:
        return fused_moe.fused_experts(x[:m], w1, w2, (weights[:m], ids[:m], logits[:m]), runner, **kwargs)

    t0 = time.perf_counter()
    settled = rm.warm_up(forward, sizes)
    warm_s = time.perf_counter() - t0
    kernels = adapter.engine().kernels()

    def compiled() -> int:
        return sum(len(cache[0]) for k in kernels for cache in k.device_caches.values())

    before = compiled()
    results = {}
    for m in sizes:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            out = forward(m)
        graph.replay()
        torch.cuda.synchronize()
        results[m] = bool(torch.equal(out, forward(m)))
    result = {"warm_up_s": round(warm_s, 2), "settled": {m: str(r.winner) for m, r in settled.items()},
              "compiles_during_capture": compiled() - before, "replay_equals_eager": results}
    out_file.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--section", required=True, choices=["recover", "configs", "graph"])
    cli.add_argument("--out", type=Path, required=True)
    cli.add_argument("--budget-s", type=float, default=400.0, help="stop starting new rows after this many seconds")
    cli.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    cli.add_argument("--dtypes", default="tensor,block", help="comma-separated: tensor (fp8 per-tensor), block (fp8 128x128)")
    args = cli.parse_args()
    if not os.environ.get("RESILIENT_MOE_SHARED_MEMORY_CAP"):
        sys.exit("set RESILIENT_MOE_SHARED_MEMORY_CAP (e.g. 101376): the sections measure a smaller chip")
    args.out.mkdir(parents=True, exist_ok=True)
    sections = {"recover": section_recover, "configs": section_configs, "graph": section_graph}
    models, dtypes = args.models.split(","), args.dtypes.split(",")
    for flag, given, known in (("--models", models, set(MODELS)), ("--dtypes", dtypes, {"tensor", "block"})):
        if set(given) - known:
            sys.exit(f"{flag}: unknown {sorted(set(given) - known)}; known: {', '.join(sorted(known))}")
    deadline = time.perf_counter() + args.budget_s
    result = sections[args.section](deadline, args.out / f"engine_{args.section}.json", models, dtypes)
    print(json.dumps({"device": torch.cuda.get_device_name(), "section": args.section, "result": result}, default=str)[:4000])


if __name__ == "__main__":
    main()
