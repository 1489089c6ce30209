"""Research (removed in the next commit): block_m, warps and group_m of the SGLang fp8 rows whose recovery
landed under 0.95 of the sweep, graph-timed like engine_bench (H200, RESILIENT_MOE_SHARED_MEMORY_CAP=101376).
Run: OUT=dir python benchmarks/probe_block_m_headroom.py"""
import itertools, json, os, sys
sys.path.insert(0, "benchmarks")
import torch
import engine_bench as eb
from resilient_moe.backends.engines import sglang as adapter, fused_moe as engines
fused_moe, utils, config = eb._sglang()
engine = adapter.engine()
out = []
for model, tokens, shapes in (("qwen3-30b-a3b", 256, [(16, 128, 4), (16, 256, 2), (32, 64, 3), (32, 128, 3), (16, 64, 4)]),
                              ("deepseek-v3", 1024, [(32, 128, 4), (128, 128, 3), (64, 128, 3), (64, 128, 4), (32, 128, 3)]),
                              ("qwen3-30b-a3b", 1024, [(64, 128, 4), (128, 128, 3), (64, 128, 3)])):
    layer = eb._layer(model, False)
    args, kwargs = eb._call(fused_moe, layer, tokens)
    for (bm, bn, st), w, g in itertools.product(shapes, (4, 8), (16, 32)):
        cfg = {"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": g, "num_warps": w, "num_stages": st}
        try:
            ms = eb._ms(lambda: engines.overridden(engine, cfg, lambda: engine.fused_experts(*args, **kwargs)), 20)
        except Exception as e:
            ms = str(e)[:80]
        row = {"model": model, "tokens": tokens, "cfg": f"{bm}x{bn}x128 s{st} w{w} g{g}", "ms": ms}
        out.append(row); print(json.dumps(row), flush=True)
    del layer; torch.cuda.empty_cache()
json.dump(out, open(os.environ["OUT"] + "/probe.json", "w"), indent=1)
