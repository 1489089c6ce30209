"""Experiment (not a library path): scatter mode storing Y in expert order, against the slot-order store.

    git archive REV resilient_moe policies | tar -x -C /tmp/before    # the library before the change
    python benchmarks/experiments/sorted_scatter.py OUT_DIR /tmp/before    # GPU; matmul_ogs if on PYTHONPATH

Before, the down-projection's GEMM stored each row into its token's slot through pointers, and the slot
sum added each token's contiguous slot rows; under expert parallelism the [T * top_k, N] buffer was
zeroed first, for the slots of other ranks. Now the GEMM stores whole tiles in expert order (through
the ragged TMA descriptor in the persistent form, as gather mode and matmul_ogs's GEMM do) and the
slot sum finds each token's rows through ``slot_to_row``, skipping those of other ranks.

Every scatter-mode GEMM of the kernel section (both routings), and each case again under expert
parallelism (half the experts local: no matmul_ogs there), with the library before (imported from
the given folder as ``resilient_moe_before``) and now, and matmul_ogs: whole calls (GEMM and slot sum
or reduction) timed in rotating rounds (median round, and the median of the rounds' ratios), the
device time of all kernels a call launches (torch.profiler, one pass each, best of two: a check,
not a ratio; it leaves out memsets, so not before's zero fill), and whether now and before give the
same bits.

Run against 08b6e5c on an H100 and an H200 (results/experiment-sorted-scatter-h*.json): the same
bits on all 16 rows of each. Whole calls, now over before: without expert parallelism 0.996 to 1.007
on the H100's prefill GEMMs and 1.008 to 1.025 on the H200's, decode 1.000 to 1.002; with half the
experts local, 1.030 to 1.142 on the H100's prefill GEMMs and 0.994 to 1.140 on the H200's (the
zeroed buffer was T * top_k rows of N, of which the GEMM wrote about half), decode 1.005 to 1.009.
Adopted: level where all experts are local, ahead under expert parallelism.
"""
import importlib.util
import os
import statistics
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROUNDS = 6


def load_before(folder: str) -> Any:
    """The library as it was, from ``folder``/resilient_moe, as a package of its own name (its imports
    are relative, so it runs beside the current one)."""
    root = os.path.join(folder, "resilient_moe")
    spec = importlib.util.spec_from_file_location(
        "resilient_moe_before", os.path.join(root, "__init__.py"), submodule_search_locations=[root]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["resilient_moe_before"] = module
    spec.loader.exec_module(module)
    return module


def expert_parallel(g: Any) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """``g``'s down-projection on a rank holding the first half of the experts: its routing, X, W."""
    import resilient_moe as rm
    from bench_moe import logits_for

    local = g.case.experts // 2
    routing = rm.route(logits_for(g.case, g.skew), g.case.top_k, expert_range=(0, local))
    x = torch.randn(routing.n_rows, g.k, device="cuda", dtype=torch.bfloat16)
    return routing, x, g.w[:local]


def main() -> None:
    import resilient_moe as rm
    from bench_moe import CASES, gemms, round_times, upstream
    from breakdown import kernel_times, record

    out_dir, before_dir = sys.argv[1], sys.argv[2]
    before = load_before(before_dir)
    up = upstream()
    rows: list[dict[str, Any]] = []
    for g in gemms(CASES, (False, True), up):
        if g.mode != "scatter":
            continue
        for ep in (False, True):
            routing, x, w = expert_parallel(g) if ep else (g.routing, g.x, g.w)
            before_routing = before.Routing(**{f: getattr(routing, f) for f in routing.__dataclass_fields__})
            fns = {"now": lambda x=x, w=w, r=routing: rm.moe_matmul(x, w, r, "scatter"),
                   "before": lambda x=x, w=w, r=before_routing: before.moe_matmul(x, w, r, "scatter")}
            if up and not ep:
                fns["ogs"] = g.upstream_call(up[0])
            same = bool(torch.equal(fns["now"](), fns["before"]()))
            times = round_times(fns, ROUNDS)
            device = {name: min(sum(kernel_times(fn).values()) for _ in range(2)) for name, fn in fns.items()}
            flops = 2.0 * routing.n_rows * g.k * g.n
            row: dict[str, Any] = {
                "case": g.case.name, "skew": g.skew, "expert_parallel": ep, "rows": routing.n_rows, "same_bits": same,
                "tflops": {name: round(flops / statistics.median(t) / 1e9, 1) for name, t in times.items()},
                "device_us": {name: round(us, 1) for name, us in device.items()},
            }
            for peer in ("before", "ogs"):
                if peer in times:
                    ratios = [p / n for p, n in zip(times[peer], times["now"])]
                    row[f"now_over_{peer}"] = round(statistics.median(ratios), 3)
            record(out_dir, "sorted-scatter", rows, row, rounds=ROUNDS)


if __name__ == "__main__":
    main()
