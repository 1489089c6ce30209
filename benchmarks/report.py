"""Print the markdown tables of benchmarks/README.md from the committed JSON results.

    python benchmarks/report.py [benchmarks/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path, name: str):
    return json.loads((folder / name).read_text())


def kernel(folder: Path, name: str) -> None:
    data = load(folder, name)
    if "rounds" in data:  # each callable's median round; ours against the best peer within each round, median
        how = f"{data['rounds']} rotating rounds: each the median round, the ratio the median of the rounds' ratios"
    else:
        how = "each peer the best of three rotating rounds"
    print(f"### 1. Kernel speed ({data['device']}, bf16, one run; {how})\n")
    print("| case | gemm | routing | ours TFLOP/s | matmul_ogs v3.5.1 | torch._grouped_mm | ours / best peer | ours weight GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in data["rows"]:
        ratio = r.get("ours_vs_best_peer") or r["ours_tflops"] / max(r.get("matmul_ogs_tflops", 0), r.get("grouped_mm_tflops", 0))
        print(f"| {r['case']} | {r['gemm']} | {'skewed' if r['skew'] else 'uniform'} | {r['ours_tflops']:.0f} | "
              f"{r.get('matmul_ogs_tflops', 0):.0f} | {r.get('grouped_mm_tflops', 0):.0f} | {ratio:.2f} | "
              f"{r['ours_weight_gbps']:.0f} |")
    print()


def overhead(folder: Path) -> None:
    d = load(folder, "overhead-h100.json")
    h, q, g = d["host_us"], d["queued_host_us"], d["cuda_graph"]
    print(f"\n### 2. Host cost of a call ({d['device']}, deepseek-v3 decode up-projection)\n")
    print("Two timings per path: one call with the GPU idle before it (median of 2000), and calls issued back "
          "to back as a server does, the host running ahead of the GPU (each call timed alone, the paths "
          f"interleaved call by call, median of {d['queued_calls_per_path']} calls per path).\n")
    print("| path | host us, one call | host us, back to back |\n|---|---|---|")
    rows = [
        ("Triton JIT launch of the compiled kernel (`kernel[grid](*args, **constexprs)`)", "jit_launch"),
        ("the compiled kernel's own launcher, every argument prepared (`compiled[grid](*args)`)", "compiled_launch"),
        ("the same, allocating the output first", "compiled_launch_with_allocation"),
        ("`prepare(...).run()`: validation, output allocation, JIT launch", "prepare_and_jit_launch"),
        ("**`moe_matmul(...)`, cached** (operand key, lookup, allocation, bound launch)", "moe_matmul_cached"),
        ("**`moe_matmul(..., out=buffer)`, cached** (no allocation)", "moe_matmul_cached_out"),
        ("its bound launch alone, into `out`", "bound_launch_out"),
        ("**`moe_matmul(..., mode=\"scatter\")`, cached**, the down-projection (GEMM and slot sum, both bound)",
         "moe_matmul_scatter_cached"),
        ("`torch.sum` over the down-projection's slot rows alone (the slot sum before the Triton kernel)",
         "torch_sum_of_slots"),
        ("upstream `matmul_ogs` v3.5.1, same shape", "upstream_matmul_ogs"),
    ]
    for label, key in rows:
        if key in h:
            queued = f"{q[key]:.1f}" if key in q else "-"
            print(f"| {label} | {h[key]:.1f} | {queued} |")
    parts = ", ".join(f"{name.replace('_', ' ')} {us:.1f}" for name, us in d["parts_us"].items())
    print(f"\nBack to back: `moe_matmul(out=)` minus the compiled launcher "
          f"**{d['queued_extra_us_with_out_vs_compiled_launch']:+.1f} us** (median of the paired differences, each "
          f"pair timed in one sweep: {d['queued_paired_extra_us_with_out_vs_compiled_launch']:+.1f} us); "
          f"`moe_matmul` minus the compiled launcher "
          f"with allocation **{d['queued_extra_us_vs_compiled_launch_with_allocation']:+.1f} us**. One call: "
          f"{d['extra_us_with_out_vs_compiled_launch']:+.1f} and {d['extra_us_vs_compiled_launch_with_allocation']:+.1f} us; "
          f"against the JIT launch {d['extra_us_vs_jit_launch']:+.1f} us. Pieces timed alone (us): {parts}. "
          f"CUDA graph: captured {g['captured']}, replay equals eager {g['replay_equals_eager']}, replay "
          f"{g['replay_ms']:.3f} ms vs eager {g['eager_ms']:.3f} ms.")


LADDERS = (("plain", "plain (block_n first)"), ("num_stages_first", "stages first"),
           ("trim_block_m", "stages first, block_m cut"),
           ("default", "default (the same, timed: `compare: 1`, `compare_forms: recovery`)"))


def tile(c: dict) -> str:
    persistent = " persistent" if c.get("is_persistent") else ""
    return f"{c['block_m']}x{c['block_n']}x{c['block_k']} s{c['num_stages']} w{c['num_warps']}{persistent}"


def recovery(folder: Path, name: str) -> None:
    d = load(folder, name)
    f = d["forced_default"]
    print(f"\n### 3. Recovery quality ({d['device']}; default forced to {tile({**f})}, 245760 B > 232448)\n")
    print("Each ratio times the landed tile and the best one in alternation (median of 3 pairs).\n")
    ladders = [(name, label) for name, label in LADDERS if name in d["rows"][0]["ladders"]]
    print("| case | best fitting tile (sweep) | best TFLOP/s | " + " | ".join(f"{label} lands on | / best" for _, label in ladders) + " |")
    print("|---|---|---|" + "---|---|" * len(ladders))
    for r in d["rows"]:
        cells = " | ".join(f"{tile(r['ladders'][name]['landed'])} | {r['ladders'][name]['landed_vs_best']:.2f}" for name, _ in ladders)
        print(f"| {r['case']} {r['gemm']} | {tile(r['best']['config'])} ({len(r['sweep'])} tiles) | {r['best']['tflops']:.0f} | {cells} |")


RESTART_SITUATIONS = (
    ("cold", "cold: both caches empty"),
    ("restart_triton_cache_only", "restart: Triton's cache warm, ours empty"),
    ("restart_both_caches", "restart: both caches warm"),
    ("new_machine_tiling_cache_only", "new machine: our cache only (shipped)"),
)


def _span(values: list[int]) -> str:
    """A count over the repeated processes: one number where they agree, else lowest-highest."""
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def restart(folder: Path, name: str) -> None:
    r = load(folder, name)
    print(f"\nFirst call of a recovering process ({r['device']}, {r['case']}; seconds, median of "
          f"{r['repeats']} processes; kernels compiled / rungs that failed):\n")
    print("| ladder | " + " | ".join(label for _, label in RESTART_SITUATIONS) + " |")
    print("|---|" + "---|" * len(RESTART_SITUATIONS))
    for ladder, label in (("compile_every_rung", "compile every rung"),
                          ("skip_predicted", "skip rungs the estimate rules out (default)")):
        cells = []
        for situation, _ in RESTART_SITUATIONS:
            found = r[ladder][situation]
            counts = [_span([run[field] for run in found["runs"]]) for field in ("kernels_compiled", "failed_rungs")]
            cells.append(f"{found['median_s']:.2f} ({counts[0]} / {counts[1]})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    for name in ("kernel-h100.json", "kernel-h200.json"):
        kernel(folder, name)
    overhead(folder)
    for name in ("recovery-h100.json", "recovery-h200.json"):
        recovery(folder, name)
    for name in ("restart-h100.json", "restart-h200.json"):
        restart(folder, name)
