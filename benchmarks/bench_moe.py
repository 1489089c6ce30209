"""GPU benchmarks of resilient_moe: kernel speed against peers, dispatcher cost, recovery quality.

    python benchmarks/bench_moe.py --section kernel|overhead|recovery|restart --out DIR

Each section writes DIR/<section>.json; committed as results/<section>-<chip>.json, benchmarks/report.py
turns them into the README tables.
Peers are measured in the same process as ours: torch._grouped_mm (CUTLASS grouped GEMM, on rows
gathered beforehand, untimed) and upstream triton_kernels matmul_ogs when it imports (v3.5.1 here).
Timings are medians of triton.testing.do_bench (the kernel section: 6 rotating rounds, each callable's
median round); compare them only within one run on one machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import torch
from triton.testing import do_bench


@dataclass(frozen=True)
class Case:
    name: str
    experts: int
    top_k: int
    tokens: int
    hidden: int
    ffn2: int  # up-projection out features (gate and up fused): 2 x intermediate

    def gemms(self) -> list[tuple[str, str, int, int]]:
        """(label, mode, K, N) of the up- and down-projection."""
        return [("up", "gather", self.hidden, self.ffn2), ("down", "scatter", self.ffn2 // 2, self.hidden)]


CASES = [
    Case("deepseek-v3 prefill", 256, 8, 4096, 7168, 4096),
    Case("gpt-oss-120b", 128, 4, 4096, 2880, 5760),
    Case("mixtral-8x7b", 8, 2, 4096, 4096, 28672),
    Case("deepseek-v3 decode", 256, 8, 64, 7168, 4096),
]


def logits_for(case: Case, skew: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = torch.randn(case.tokens, case.experts, device="cuda", generator=g)
    if skew:  # a Zipf-like preference: a few experts take most rows, some get none
        logits += torch.linspace(4.0, 0.0, case.experts, device="cuda")
    return logits


def ms(fn: Callable[[], Any], rep: int = 60) -> float:
    return float(do_bench(fn, warmup=10, rep=rep, return_mode="median"))


KERNEL_ROUNDS = 6
"""Rounds of the kernel section: each of its three callables runs first, second and last twice."""


def round_times(fns: dict[str, Callable[[], Any]], n: int, rep: int = 60) -> dict[str, list[float]]:
    """Each callable's median ms in each of ``n`` rounds, the rounds rotating which runs first: clocks
    drift with the chip's power and heat by more than the differences measured (one kernel timed 7%
    apart in a run), so callables are compared within a round."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(ms(fns[name], rep))
    return times


def upstream() -> Any | None:
    try:
        from triton_kernels.matmul_ogs import matmul_ogs
        from triton_kernels.routing import routing
    except ImportError:
        return None
    return matmul_ogs, routing


@dataclass(frozen=True)
class Gemm:
    """One GEMM of a case on the GPU: our routing, its operands, and upstream's routing when it imports."""

    case: Case
    skew: bool
    label: str
    mode: str
    k: int
    n: int
    routing: Any
    x: torch.Tensor
    w: torch.Tensor
    upstream_routing: tuple[Any, Any, Any] | None

    @property
    def flops(self) -> float:
        return 2.0 * self.routing.n_rows * self.k * self.n

    def upstream_call(self, matmul_ogs: Callable[..., Any]) -> Callable[[], Any]:
        """matmul_ogs on the same operands: gather fused into the up-projection, gamma-weighted scatter into
        the down."""
        rdata, gather, scatter = self.upstream_routing
        if self.mode == "gather":
            return functools.partial(matmul_ogs, self.x, self.w, None, rdata, gather_indx=gather)
        return functools.partial(matmul_ogs, self.x, self.w, None, rdata, scatter_indx=scatter, gammas=rdata.gate_scal)


def gemms(cases: list[Case], skews: tuple[bool, ...], up: Any | None) -> Iterator[Gemm]:
    """Every GEMM of ``cases`` under each routing, one at a time (the weights of a case are gigabytes)."""
    import resilient_moe as rm

    for case in cases:
        for skew in skews:
            logits = logits_for(case, skew)
            routing = rm.route(logits, case.top_k)
            upstream_routing = up[1](logits.to(torch.bfloat16), case.top_k) if up else None
            x = torch.randn(case.tokens, case.hidden, device="cuda", dtype=torch.bfloat16)
            for label, mode, k, n in case.gemms():
                w = torch.randn(case.experts, k, n, device="cuda", dtype=torch.bfloat16) / k**0.5
                a = x if mode == "gather" else torch.randn(routing.n_rows, k, device="cuda", dtype=torch.bfloat16)
                yield Gemm(case, skew, label, mode, k, n, routing, a, w, upstream_routing)
                del w, a
            torch.cuda.empty_cache()


def section_kernel(out: Path) -> None:
    import resilient_moe as rm

    up = upstream()
    rows: list[dict[str, Any]] = []
    for g in gemms(CASES, (False, True), up):
        routing, a, w, mode, k, n, flops = g.routing, g.x, g.w, g.mode, g.k, g.n, g.flops
        experts_hit = int((routing.expert_offsets[1:] > routing.expert_offsets[:-1]).sum())
        weight_bytes = experts_hit * k * n * 2
        row = {"case": g.case.name, "gemm": g.label, "mode": mode, "skew": g.skew, "rows": routing.n_rows,
               "k": k, "n": n, "experts_hit": experts_hit, "flops": flops, "weight_bytes": weight_bytes}
        rm.moe_matmul(a, w, routing, mode)  # resolve and cache the default tile
        row["ours_tile"] = rm.resolution(a, w, routing, mode).winner.as_dict()
        gathered = a[routing.gather_idx.long()] if mode == "gather" else a
        offs = routing.expert_offsets[1:].contiguous()
        w_cm = w.transpose(1, 2).contiguous().transpose(1, 2)
        peers: dict[str, Callable[[], Any]] = {
            "ours": lambda: rm.moe_matmul(a, w, routing, mode),
            "grouped_mm": functools.partial(torch._grouped_mm, gathered, w_cm, offs=offs),
        }
        if up:
            peers["matmul_ogs"] = g.upstream_call(up[0])
        for name, fn in list(peers.items()):
            try:
                fn()
            except Exception as err:  # recorded: a peer that cannot run a case is a result too
                row[f"{name}_error"] = f"{type(err).__name__}: {err}"[:300]
                del peers[name]
        # Ours against the best peer within each round, then the median round: a best-of-rounds ratio
        # let one peer's single fast round decide a row (matmul_ogs's Mixtral down skewed: 653 TFLOP/s
        # in one H100 run, 611 to 619 in the runs before).
        times = round_times(peers, KERNEL_ROUNDS)
        for name, found in times.items():
            row[f"{name}_ms"] = statistics.median(found)
            row[f"{name}_rounds_ms"] = found
        others = [name for name in times if name != "ours"]
        row["ours_vs_best_peer"] = statistics.median(
            min(times[name][r] for name in others) / times["ours"][r] for r in range(KERNEL_ROUNDS))
        del w_cm, gathered
        for peer in ("ours", "grouped_mm", "matmul_ogs"):
            if f"{peer}_ms" in row:
                row[f"{peer}_tflops"] = flops / row[f"{peer}_ms"] / 1e9
                row[f"{peer}_weight_gbps"] = weight_bytes / row[f"{peer}_ms"] / 1e6
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"device": torch.cuda.get_device_name(), "rounds": KERNEL_ROUNDS, "rows": rows}
    (out / "kernel.json").write_text(json.dumps(result, indent=1))


def section_overhead(out: Path) -> None:
    """Host time of a cached call against launching the same compiled kernel directly, and graph capture."""
    from triton.runtime.driver import driver

    import resilient_moe as rm
    from resilient_moe.backends.builtin.bound import hooks_installed, operand_key
    from resilient_moe.backends.builtin.launch import prepare
    from resilient_moe.policy import active_policy
    from resilient_moe.settings import LAUNCHES

    case = CASES[3]
    logits = logits_for(case, False)
    routing = rm.route(logits, case.top_k)
    x = torch.randn(case.tokens, case.hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(case.experts, case.hidden, case.ffn2, device="cuda", dtype=torch.bfloat16) / 100
    for _ in range(3):  # resolve, then bind
        rm.moe_matmul(x, w, routing, "gather")
    config = rm.resolution(x, w, routing, "gather").winner
    xs = torch.randn(routing.n_rows, case.ffn2 // 2, device="cuda", dtype=torch.bfloat16)
    ws = torch.randn(case.experts, case.ffn2 // 2, case.hidden, device="cuda", dtype=torch.bfloat16) / 100
    for _ in range(3):  # the down-projection: resolve, then bind the GEMM and the slot sum
        rm.moe_matmul(xs, ws, routing, "scatter")
    slot_rows = xs.new_empty(routing.n_tokens, routing.top_k, case.hidden)
    launch = prepare(x, w, None, routing, "gather", config)
    compiled = launch.launch()
    everything = (*launch.args, *(launch.constexprs[n] for n in launch.kernel.arg_names[len(launch.args):]))
    out_buffer = torch.empty_like(launch.y)
    for _ in range(2):  # resolve nothing (same shape class), then bind the out= layout
        rm.moe_matmul(x, w, routing, "gather", out=out_buffer)
    exact = operand_key(x, w, None, routing, "gather", None, active_policy().fingerprint)
    derived = LAUNCHES
    paths: dict[str, Callable[[], Any]] = {
        "jit_launch": lambda: launch.kernel[launch.grid](*launch.args, **launch.constexprs),
        "compiled_launch": lambda: compiled[(launch.grid[0], 1, 1)](*everything),
        "compiled_launch_with_allocation": lambda: compiled[(launch.grid[0], 1, 1)](
            *everything[:3], launch.y.new_empty(launch.y.shape), *everything[4:]),
        "prepare_and_jit_launch": lambda: prepare(x, w, None, routing, "gather", config).run(),
        "moe_matmul_cached": lambda: rm.moe_matmul(x, w, routing, "gather"),
        "moe_matmul_cached_out": lambda: rm.moe_matmul(x, w, routing, "gather", out=out_buffer),
        "moe_matmul_scatter_cached": lambda: rm.moe_matmul(xs, ws, routing, "scatter"),
        "torch_sum_of_slots": lambda: torch.sum(slot_rows, dim=1),
    }
    fingerprint = active_policy().fingerprint
    bound = derived[operand_key(x, w, None, routing, "gather", out_buffer, fingerprint)]
    paths["bound_launch_out"] = lambda: bound(x, w, None, routing, out_buffer)
    paths["key_lookup_bound_launch_out"] = lambda: derived[
        operand_key(x, w, None, routing, "gather", out_buffer, fingerprint)](x, w, None, routing, out_buffer)
    parts: dict[str, Callable[[], Any]] = {  # the pieces of a cached call, timed alone
        "operand_key": lambda: operand_key(x, w, None, routing, "gather"),
        "lookup": lambda: derived.get(exact),
        "hooks_installed": hooks_installed,
        "output_allocation": lambda: launch.y.new_empty(launch.y.shape),
        "current_stream": lambda: driver.active.get_current_stream(x.get_device()),
    }
    up = upstream()
    if up:
        rdata, gidx, _ = up[1](logits.to(torch.bfloat16), case.top_k)
        up[0](x, w, None, rdata, gather_indx=gidx)
        paths["upstream_matmul_ogs"] = lambda: up[0](x, w, None, rdata, gather_indx=gidx)

    def host_us(fns: dict[str, Callable[[], Any]], n: int = 2000) -> dict[str, float]:
        """Median host time of each call, measured round-robin so drift hits all of them alike."""
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(n):
            for name, fn in fns.items():
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        return {name: sorted(s)[len(s) // 2] * 1e6 for name, s in samples.items()}

    def queued_us(fns: dict[str, Callable[[], Any]], calls: int = 20, rounds: int = 25) -> dict[str, list[int]]:
        """Host ns of each call when calls are issued back to back (the host runs ahead of the GPU, as
        in serving): every call timed alone, the paths interleaved call by call so that drift and the
        launch queue's state hit them alike; synchronizing only between rounds."""
        samples: dict[str, list[int]] = {name: [] for name in fns}
        clock = time.perf_counter_ns
        for _ in range(rounds):
            torch.cuda.synchronize()
            for _ in range(calls):
                for name, fn in fns.items():
                    t0 = clock()
                    fn()
                    samples[name].append(clock() - t0)
        torch.cuda.synchronize()
        return samples

    host = host_us(paths)
    queued_ns = queued_us({name: fn for name, fn in paths.items() if name != "upstream_matmul_ogs"})
    queued = {name: statistics.median(s) / 1e3 for name, s in queued_ns.items()}

    def paired(a: str, b: str) -> float:
        """Median over calls of a minus b, each pair timed back to back in one sweep."""
        return statistics.median(x - y for x, y in zip(queued_ns[a], queued_ns[b])) / 1e3

    result = {"device": torch.cuda.get_device_name(), "shape": asdict(case), "config": config.as_dict(),
              "host_us": host, "parts_us": host_us(parts),
              "extra_us_vs_jit_launch": host["moe_matmul_cached"] - host["jit_launch"],
              "extra_us_vs_compiled_launch": host["moe_matmul_cached"] - host["compiled_launch"],
              "extra_us_vs_compiled_launch_with_allocation":
                  host["moe_matmul_cached"] - host["compiled_launch_with_allocation"],
              "extra_us_with_out_vs_compiled_launch": host["moe_matmul_cached_out"] - host["compiled_launch"],
              "queued_host_us": queued,
              "queued_extra_us_with_out_vs_compiled_launch": queued["moe_matmul_cached_out"] - queued["compiled_launch"],
              "queued_extra_us_vs_compiled_launch_with_allocation":
                  queued["moe_matmul_cached"] - queued["compiled_launch_with_allocation"],
              "queued_paired_extra_us_with_out_vs_compiled_launch": paired("moe_matmul_cached_out", "compiled_launch"),
              "queued_paired_extra_us_vs_compiled_launch_with_allocation":
                  paired("moe_matmul_cached", "compiled_launch_with_allocation"),
              "queued_calls_per_path": len(queued_ns["compiled_launch"])}

    eager = rm.moe_matmul(x, w, routing, "gather")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        rm.moe_matmul(x, w, routing, "gather")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            captured = rm.moe_matmul(x, w, routing, "gather")
        graph.replay()
        torch.cuda.synchronize()
        result["cuda_graph"] = {"captured": True, "replay_equals_eager": bool(torch.equal(captured, eager)),
                                "replay_ms": ms(graph.replay), "eager_ms": ms(lambda: rm.moe_matmul(x, w, routing, "gather"))}
    except Exception as err:
        result["cuda_graph"] = {"captured": False, "error": f"{type(err).__name__}: {err}"[:500]}
    print(json.dumps(result, indent=1))
    (out / "overhead.json").write_text(json.dumps(result, indent=1))


OVER_LIMIT = {"block_m": 128, "block_n": 256, "block_k": 64, "num_stages": 5, "num_warps": 8}  # 245760 B on sm_90


def fitting_space(rows_per_expert: int, arch: str) -> list[dict[str, int | bool]]:
    """The fitting space searched for the best tile: block_m 64 and 128, and 16 and 32 where an expert
    gets fewer than 64 rows (above that, the kernel section found small block_m slower); on sm_90, the
    block_m 128 tiles in the persistent form too."""
    block_ms = (16, 32, 64, 128) if rows_per_expert < 64 else (64, 128)
    forms = (False, True) if arch.startswith("sm_90") else (False,)
    return [dict(block_m=bm, block_n=bn, block_k=64, group_m=8, num_warps=nw, num_stages=ns, is_persistent=p)
            for bm in block_ms for bn in (128, 256) for ns in (2, 3, 4) for nw in (4, 8) for p in forms
            if bm == 128 or not p]


def section_recovery(out: Path) -> None:
    """Force the default over the chip's limit; compare the landing rung with the best fitting tile."""
    from resilient_moe.policy import parse_policy
    from resilient_moe.settings import cache
    from resilient_moe.targets import placement

    cache().clear()  # every ladder climbs from the forced default, not from an earlier run's winner
    arch = placement().arch
    untimed = {"compare": 0, "compare_forms": "never"}  # the first tile that fits
    first_fit = {"trim_block_m": False, **untimed}
    ladders = {"plain": {"ladder": {"order": ["block_n", "block_m", "num_stages"], **first_fit}},
               "num_stages_first": {"ladder": first_fit}, "trim_block_m": {"ladder": untimed}, "default": {}}
    policies = {name: parse_policy({"version": 1, "arch": {arch: {"default": OVER_LIMIT}}, **extra})
                for name, extra in ladders.items()}
    rows = []
    for case in CASES:
        row = _recover(case, policies, arch)
        print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
        rows.append(row)
        torch.cuda.empty_cache()
    (out / "recovery.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "arch": arch,
                                                    "forced_default": OVER_LIMIT, "rows": rows}, indent=1))


def _recover(case: Case, policies: dict[str, Any], arch: str) -> dict[str, Any]:
    """One case: where each ladder lands from the forced default, and the sweep's best fitting tile."""
    from triton.runtime.errors import OutOfResources

    import resilient_moe as rm
    from resilient_moe.backends.builtin.launch import prepare
    from resilient_moe.testing import capture

    label, mode, k, n = case.gemms()[0]
    routing = rm.route(logits_for(case, False), case.top_k)
    x = torch.randn(case.tokens, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(case.experts, k, n, device="cuda", dtype=torch.bfloat16) / k**0.5
    flops = 2.0 * routing.n_rows * k * n
    ref = rm.moe_matmul_reference(x, w, routing, mode)
    landings = {}
    for ladder, policy in policies.items():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with capture() as log:
            y = rm.moe_matmul(x, w, routing, mode, policy=policy)
        torch.cuda.synchronize()
        first_call_s = time.perf_counter() - t0
        rel_err = float(((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item())
        downgrades = [{k_: e[k_] for k_ in ("from", "to", "required", "limit", "resource")}
                      for e in log if e["event"] == "tiling.downgrade"]
        (selected,) = [e["config"] for e in log if e["event"] == "tiling.selected"]
        landed_ms = ms(lambda: rm.moe_matmul(x, w, routing, mode, policy=policy))
        landings[ladder] = {"downgrades": downgrades, "landed": selected, "landed_ms": landed_ms,
                            "landed_tflops": flops / landed_ms / 1e9, "first_call_s": first_call_s,
                            "bf16_max_rel_err_vs_reference": rel_err}
    sweep = []
    for cfg in fitting_space(-(-routing.n_rows // case.experts), arch):
        tile = rm.TileConfig(**cfg)
        try:
            t = ms(lambda: prepare(x, w, None, routing, mode, tile).run())
            sweep.append({"config": cfg, "ms": t, "tflops": flops / t / 1e9})
        except OutOfResources as err:
            sweep.append({"config": cfg, "required": err.required, "limit": err.limit})
    best = min((s for s in sweep if "ms" in s), key=lambda s: s["ms"])
    best_tile = rm.TileConfig(**best["config"])
    for ladder, landing in landings.items():
        # The landed tile and the best one timed in alternation: the GPU's clocks drift by more than
        # the 5% this ratio is judged by (the same tile measured 674 and 625 TFLOP/s in one H100 run).
        pairs = [(ms(lambda: prepare(x, w, None, routing, mode, best_tile).run()),
                  ms(lambda: rm.moe_matmul(x, w, routing, mode, policy=policies[ladder]))) for _ in range(3)]
        landing["landed_vs_best"] = sorted(b / t for b, t in pairs)[1]
    return {"case": case.name, "gemm": label, "best": best, "ladders": landings, "sweep": sweep}


RESTART_SCRIPT = """
import json, sys, time, torch, resilient_moe as rm
from resilient_moe.policy import parse_policy
from resilient_moe.targets import placement
from resilient_moe.testing import capture
default, skip = eval(sys.argv[1]), sys.argv[2] == "1"
policy = parse_policy({"version": 1, "ladder": {"skip_predicted": skip}, "arch": {placement().arch: {"default": default}}})
g = torch.Generator(device="cuda").manual_seed(0)
routing = rm.route(torch.randn(4096, 128, device="cuda", generator=g), 4)
x = torch.randn(4096, 2880, device="cuda", dtype=torch.bfloat16)
w = torch.randn(128, 2880, 5760, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
with capture() as log:
    t1 = time.perf_counter()
    rm.moe_matmul(x, w, routing, "gather", policy=policy)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t1
print(json.dumps({"s": seconds, "failed_rungs": sum(e["event"] == "tiling.downgrade" for e in log)}))
"""

RESTART_REPEATS = 3
"""Each first call is run this many times, each time in a new process with the caches set up alike;
the table gives the median."""


def _cubins(folder: str) -> int:
    """Kernels in a Triton cache folder: one .cubin per compile, whether or not the kernel then fit."""
    return sum(name.endswith(".cubin") for _, _, names in os.walk(folder) for name in names)


def section_restart(out: Path) -> None:
    """First-call time of a recovering process, and what it compiled: with both caches empty, after a
    restart with Triton's disk cache warm (with and without our tiling cache), and on a new machine that
    has our tiling cache (shipped, or on a shared volume) but an empty Triton cache. Both ladders:
    compiling every rung, and skipping the rungs the shared-memory estimate rules out."""
    rows: dict[str, dict[str, Any]] = {}
    for skip in (False, True):
        runs: dict[str, list[dict[str, Any]]] = {}

        def first_call(situation: str, cache_dir: str, triton_dir: str) -> None:
            env = {**os.environ, "RESILIENT_MOE_CACHE_DIR": cache_dir, "TRITON_CACHE_DIR": triton_dir}
            before = _cubins(triton_dir)
            done = subprocess.run([sys.executable, "-c", RESTART_SCRIPT, repr(OVER_LIMIT), str(int(skip))],
                                  env=env, check=True, capture_output=True, text=True)
            run = json.loads(done.stdout.strip().splitlines()[-1])
            runs.setdefault(situation, []).append({**run, "kernels_compiled": _cubins(triton_dir) - before})

        with tempfile.TemporaryDirectory() as shipped:
            for _ in range(RESTART_REPEATS):
                with tempfile.TemporaryDirectory() as cache_dir, tempfile.TemporaryDirectory() as triton_dir:
                    first_call("cold", cache_dir, triton_dir)  # every rung that is tried gets compiled
                    tiling = Path(cache_dir, "tiling-v1.json")
                    shutil.copy(tiling, Path(shipped, tiling.name))
                    tiling.unlink()
                    first_call("restart_triton_cache_only", cache_dir, triton_dir)  # the ladder is climbed again
                    first_call("restart_both_caches", cache_dir, triton_dir)  # the winner, read from our cache
            for _ in range(RESTART_REPEATS):
                with tempfile.TemporaryDirectory() as cache_dir, tempfile.TemporaryDirectory() as triton_dir:
                    shutil.copy(Path(shipped, "tiling-v1.json"), cache_dir)
                    first_call("new_machine_tiling_cache_only", cache_dir, triton_dir)  # compiles the winner alone
        rows["skip_predicted" if skip else "compile_every_rung"] = {
            situation: {"median_s": statistics.median(r["s"] for r in found), "runs": found}
            for situation, found in runs.items()}
    result = {"device": torch.cuda.get_device_name(), "case": "gpt-oss-120b up", "forced_default": OVER_LIMIT,
              "repeats": RESTART_REPEATS, **rows}
    print(json.dumps(result, indent=1))
    (out / "restart.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--section", required=True, choices=["kernel", "overhead", "recovery", "restart"])
    cli.add_argument("--out", type=Path, required=True)
    args = cli.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    {"kernel": section_kernel, "overhead": section_overhead, "recovery": section_recovery,
     "restart": section_restart}[args.section](args.out)


if __name__ == "__main__":
    main()
