"""Print the markdown tables of benchmarks/README.md from the committed JSON results.

    python benchmarks/report.py [benchmarks/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path, name: str):
    return json.loads((folder / name).read_text())


def kernel(folder: Path) -> None:
    data = load(folder, "kernel-h200.json")
    print(f"### 1. Kernel speed ({data['device']}, bf16, one run)\n")
    print("| case | gemm | routing | ours TFLOP/s | matmul_ogs v3.5.1 | torch._grouped_mm | ours / best peer | ours weight GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in data["rows"]:
        best = max(r.get("matmul_ogs_tflops", 0), r.get("grouped_mm_tflops", 0))
        print(f"| {r['case']} | {r['gemm']} | {'skewed' if r['skew'] else 'uniform'} | {r['ours_tflops']:.0f} | "
              f"{r.get('matmul_ogs_tflops', 0):.0f} | {r.get('grouped_mm_tflops', 0):.0f} | {r['ours_tflops'] / best:.2f} | "
              f"{r['ours_weight_gbps']:.0f} |")


def overhead(folder: Path) -> None:
    d = load(folder, "overhead-h200.json")
    h, g = d["host_us"], d["cuda_graph"]
    print(f"\n### 2. Host cost of a call ({d['device']}, deepseek-v3 decode up-projection, median of 2000, "
          "GPU idle before each call)\n")
    print("| path | host us |\n|---|---|")
    rows = [
        ("Triton JIT launch of the compiled kernel (`kernel[grid](*args, **constexprs)`)", "jit_launch"),
        ("the compiled kernel's own launcher, arguments prepared beforehand (`compiled[grid](*args)`)", "compiled_launch"),
        ("`prepare(...).run()`: validation, output allocation, JIT launch", "prepare_and_jit_launch"),
        ("**`moe_matmul(...)`, cached** (operand key, lookup, allocation, bound launch)", "moe_matmul_cached"),
        ("upstream `matmul_ogs` v3.5.1, same shape", "upstream_matmul_ogs"),
    ]
    for label, key in rows:
        if key in h:
            print(f"| {label} | {h[key]:.1f} |")
    print(f"\nCached call minus JIT launch: **{d['extra_us_vs_jit_launch']:+.1f} us**; minus the compiled kernel's "
          f"own launcher: {d['extra_us_vs_compiled_launch']:+.1f} us. CUDA graph: captured {g['captured']}, replay "
          f"equals eager {g['replay_equals_eager']}, replay {g['replay_ms']:.3f} ms vs eager {g['eager_ms']:.3f} ms.")


def recovery(folder: Path) -> None:
    d = load(folder, "recovery-h200.json")
    f = d["forced_default"]
    print(f"\n### 3. Recovery quality ({d['device']}; default forced to {f['block_m']}x{f['block_n']}x{f['block_k']} "
          f"s{f['num_stages']} w{f['num_warps']}, 245760 B > 232448)\n")
    print("| case | best fitting tile (sweep of 24) | best TFLOP/s | plain ladder lands on | plain / best | stages-first lands on | stages-first / best |")
    print("|---|---|---|---|---|---|---|")
    tile = lambda c: f"{c['block_m']}x{c['block_n']}x{c['block_k']} s{c['num_stages']} w{c['num_warps']}"
    for r in d["rows"]:
        p, s = r["ladders"]["plain"], r["ladders"]["num_stages_first"]
        print(f"| {r['case']} {r['gemm']} | {tile(r['best']['config'])} | {r['best']['tflops']:.0f} | {tile(p['landed'])} | "
              f"{p['landed_vs_best']:.2f} | {tile(s['landed'])} | {s['landed_vs_best']:.2f} |")
    r = load(folder, "restart-h200.json")
    print(f"\nFirst call of a recovering process ({r['case']}, seconds):\n")
    print("| ladder | cold (Triton and tiling caches empty) | restart, Triton cache warm, tiling cache empty | restart with the tiling cache |")
    print("|---|---|---|---|")
    for name, label in (("compile_every_rung", "compile every rung"), ("skip_predicted", "skip rungs the estimate rules out (default)")):
        row = r[name]
        print(f"| {label} | {row['first_call_s_cold']:.2f} | {row['first_call_s_restart_without_our_cache']:.2f} | "
              f"{row['first_call_s_restart_with_our_cache']:.2f} |")


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    kernel(folder)
    overhead(folder)
    recovery(folder)
