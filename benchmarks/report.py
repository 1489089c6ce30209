"""Print the markdown tables of benchmarks/README.md from the committed JSON results (no GPU needed).

    python benchmarks/report.py [benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(folder: Path, name: str):
    return json.loads((folder / name).read_text())


CHIPS = ("h100", "h200")
"""Chips whose results are tabled side by side, as named in the file names (<section>-<chip>.json)."""


def runs(folder: Path, section: str) -> list[tuple[str, dict]]:
    """(chip label, result) for each chip with a result of this section in ``folder``."""
    return [(chip.upper(), load(folder, f"{section}-{chip}.json")) for chip in CHIPS
            if (folder / f"{section}-{chip}.json").exists()]


def devices(found: list[tuple[str, dict]]) -> str:
    return ", ".join(f"{chip} = {d['device']}" for chip, d in found)


def _ratio(r: dict) -> float:
    return r.get("ours_vs_best_peer") or r["ours_tflops"] / max(r.get("matmul_ogs_tflops", 0), r.get("grouped_mm_tflops", 0))


def kernel(folder: Path) -> None:
    found = runs(folder, "kernel")
    how = sorted({f"{d['rounds']} rotating rounds: each callable's median round, the ratio the median of the rounds' ratios"
                  if "rounds" in d else "each peer the best of three rotating rounds" for _, d in found})
    print(f"### 1. Kernel speed (bf16; {devices(found)}; one run each; {'; '.join(how)})\n")
    print("TFLOP/s as ours / matmul_ogs v3.5.1 / torch._grouped_mm; the ratio is ours over the best peer.\n")
    print("| case | gemm | routing | " + " | ".join(f"{c} TFLOP/s | {c} ratio | {c} ours weight GB/s" for c, _ in found) + " |")
    print("|---|---|---|" + "---|---|---|" * len(found))
    for rows in zip(*(d["rows"] for _, d in found)):
        r0 = rows[0]
        assert all((r["case"], r["gemm"], r["skew"]) == (r0["case"], r0["gemm"], r0["skew"]) for r in rows), rows
        cells = " | ".join(f"{r['ours_tflops']:.0f} / {r.get('matmul_ogs_tflops', 0):.0f} / {r.get('grouped_mm_tflops', 0):.0f} | "
                           f"{_ratio(r):.2f} | {r['ours_weight_gbps']:.0f}" for r in rows)
        print(f"| {r0['case']} | {r0['gemm']} | {'skewed' if r0['skew'] else 'uniform'} | {cells} |")
    print()


OVERHEAD_ROWS = (
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
)


def overhead(folder: Path) -> None:
    found = runs(folder, "overhead")
    calls = "/".join(sorted({str(d["queued_calls_per_path"]) for _, d in found}))
    print(f"### 2. Host cost of a call (deepseek-v3 decode up-projection; {devices(found)})\n")
    print("Host us. One call: the GPU idle before it (median of 2000). Back to back: as a server issues calls, the "
          "host running ahead of the GPU (each call timed alone, the paths interleaved call by call, median of "
          f"{calls} calls per path).\n")
    print("| path | " + " | ".join(f"{c} one call | {c} back to back" for c, _ in found) + " |")
    print("|---|" + "---|---|" * len(found))
    for label, key in OVERHEAD_ROWS:
        cells = []
        for _, d in found:
            h, q = d["host_us"], d["queued_host_us"]
            cells.append((f"{h[key]:.1f}" if key in h else "-") + " | " + (f"{q[key]:.1f}" if key in q else "-"))
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    for chip, d in found:
        g = d["cuda_graph"]
        parts = ", ".join(f"{name.replace('_', ' ')} {us:.1f}" for name, us in d["parts_us"].items())
        print(f"{chip}, back to back: `moe_matmul(out=)` minus the compiled launcher "
              f"**{d['queued_extra_us_with_out_vs_compiled_launch']:+.1f} us** (paired differences: "
              f"{d['queued_paired_extra_us_with_out_vs_compiled_launch']:+.1f} us); `moe_matmul` minus the compiled "
              f"launcher with allocation **{d['queued_extra_us_vs_compiled_launch_with_allocation']:+.1f} us**. One call: "
              f"{d['extra_us_with_out_vs_compiled_launch']:+.1f} and {d['extra_us_vs_compiled_launch_with_allocation']:+.1f} us; "
              f"against the JIT launch {d['extra_us_vs_jit_launch']:+.1f} us. Pieces (us): {parts}. CUDA graph: captured "
              f"{g['captured']}, replay equals eager {g['replay_equals_eager']}, replay {g['replay_ms']:.3f} ms vs eager "
              f"{g['eager_ms']:.3f} ms.\n")


LADDERS = (("plain", "plain (block_n first)"), ("num_stages_first", "stages first"),
           ("trim_block_m", "stages first, block_m cut"),
           ("default", "default (the same, timed: `compare: 1`, `compare_forms: recovery`)"))


def tile(c: dict) -> str:
    persistent = " persistent" if c.get("is_persistent") else ""
    return f"{c['block_m']}x{c['block_n']}x{c['block_k']} s{c['num_stages']} w{c['num_warps']}{persistent}"


def recovery(folder: Path) -> None:
    found = runs(folder, "recovery")
    forced = {tile(d["forced_default"]) for _, d in found}
    print(f"### 3. Recovery quality ({devices(found)}; default forced to {' / '.join(sorted(forced))}, "
          "245760 B > 232448)\n")
    print("Each cell: the tile the ladder lands on, and its speed over the best fitting tile of the sweep "
          "(the two timed in alternation, median of 3 pairs).\n")
    ladders = [(name, label) for name, label in LADDERS if all(name in d["rows"][0]["ladders"] for _, d in found)]
    print("| chip | case | best fitting tile (sweep) | best TFLOP/s | " + " | ".join(label for _, label in ladders) + " |")
    print("|---|---|---|---|" + "---|" * len(ladders))
    for chip, d in found:
        for r in d["rows"]:
            cells = " | ".join(f"{tile(r['ladders'][name]['landed'])}: {r['ladders'][name]['landed_vs_best']:.2f}"
                               for name, _ in ladders)
            print(f"| {chip} | {r['case']} {r['gemm']} | {tile(r['best']['config'])} ({len(r['sweep'])} tiles) | "
                  f"{r['best']['tflops']:.0f} | {cells} |")
    print()


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


def restart(folder: Path) -> None:
    found = runs(folder, "restart")
    cases = sorted({d["case"] for _, d in found})
    repeats = sorted({str(d["repeats"]) for _, d in found})
    print(f"### 4. First call of a recovering process ({devices(found)}; {', '.join(cases)}; seconds, median of "
          f"{'/'.join(repeats)} processes; kernels compiled / rungs that failed)\n")
    print("| chip | ladder | " + " | ".join(label for _, label in RESTART_SITUATIONS) + " |")
    print("|---|---|" + "---|" * len(RESTART_SITUATIONS))
    for chip, r in found:
        for ladder, label in (("compile_every_rung", "compile every rung"),
                              ("skip_predicted", "skip rungs the estimate rules out (default)")):
            cells = []
            for situation, _ in RESTART_SITUATIONS:
                cell = r[ladder][situation]
                counts = [_span([run[field] for run in cell["runs"]]) for field in ("kernels_compiled", "failed_rungs")]
                cells.append(f"{cell['median_s']:.2f} ({counts[0]} / {counts[1]})")
            print(f"| {chip} | {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("folder", nargs="?", type=Path, default=Path(__file__).parent / "results",
                     help="folder of <section>-<chip>.json results (default: benchmarks/results)")
    folder = cli.parse_args().folder
    kernel(folder)
    overhead(folder)
    recovery(folder)
    restart(folder)
