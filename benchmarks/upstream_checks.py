"""GPU checks of resilient_moe against upstream triton_kernels (v3.5.1 working copy on PYTHONPATH).

    python benchmarks/upstream_checks.py --part same|recover|virtual --out DIR

same:    resilient_moe.matmul_ogs equals upstream matmul_ogs bit for bit when nothing fails (bf16),
         and the host cost of the adapter on a cached call.
recover: with RESILIENT_MOE_POLICY forcing num_stages=6 on this chip, upstream raises a real
         OutOfResources and resilient_moe.matmul_ogs recovers (equal to upstream's own default).
virtual: with RESILIENT_MOE_TARGET set (e.g. gfx950, TRITON_HIP_USE_ASYNC_COPY=1), the tiles upstream
         picks for that chip, their bytes, and the rung the ladder lands on: preflight of upstream.
Each part appends its result to DIR/upstream_<part>.json, tagged with the environment it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from triton.testing import do_bench

SHAPES = {  # name: experts, top_k, tokens, K, N
    "deepseek-v3 up": (256, 8, 4096, 7168, 4096),
    "gpt-oss-120b up": (128, 4, 4096, 2880, 5760),
}


def operands(name: str) -> tuple[Any, ...]:
    from triton_kernels.routing import routing

    experts, top_k, tokens, k, n = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(tokens, experts, device="cuda", generator=g, dtype=torch.bfloat16)
    x = torch.randn(tokens, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(experts, k, n, device="cuda", generator=g, dtype=torch.bfloat16) / k**0.5
    rdata, gather, scatter = routing(logits, top_k)
    return x, w, rdata, gather, scatter


def part_same() -> dict[str, Any]:
    from triton_kernels.matmul_ogs import matmul_ogs as upstream

    import resilient_moe as rm

    out: dict[str, Any] = {}
    for name in SHAPES:
        x, w, rdata, gather, scatter = operands(name)
        theirs = upstream(x, w, None, rdata, gather_indx=gather)
        ours = rm.matmul_ogs(x, w, None, rdata, gather_indx=gather)
        h = torch.randn(theirs.shape[0], w.shape[1], device="cuda", dtype=torch.bfloat16)
        theirs_down = upstream(h, w, None, rdata, scatter_indx=scatter, gammas=rdata.gate_scal)
        ours_down = rm.matmul_ogs(h, w, None, rdata, scatter_indx=scatter, gammas=rdata.gate_scal)
        out[name] = {
            "gather_bitwise_equal": bool(torch.equal(theirs, ours)),
            "scatter_bitwise_equal": bool(torch.equal(theirs_down, ours_down)),
            "upstream_ms": do_bench(lambda: upstream(x, w, None, rdata, gather_indx=gather), return_mode="median"),
            "ours_ms": do_bench(lambda: rm.matmul_ogs(x, w, None, rdata, gather_indx=gather), return_mode="median"),
            "host_us_upstream": _host_us(lambda: upstream(x, w, None, rdata, gather_indx=gather)),
            "host_us_ours": _host_us(lambda: rm.matmul_ogs(x, w, None, rdata, gather_indx=gather)),
        }
        w = None  # the weights freed before the next shape's are made
        torch.cuda.empty_cache()
    return out


def _host_us(fn: Any, n: int = 300) -> float:
    samples = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return sorted(samples)[n // 2] * 1e6


def _events(fn: Any) -> tuple[Any, list[dict[str, Any]]]:
    from resilient_moe import events

    with events.capture() as log:
        try:
            result = fn()
        except Exception as err:  # recorded: this part reports what happened, whatever it was
            result = f"{type(err).__name__}: {err}"[:1500]
    keep = ("event", "from", "to", "config", "resource", "required", "limit", "attempts", "kernel")
    return result, [{k: e[k] for k in keep if k in e} for e in log if e["event"] != "tiling.cache_hit"]


def part_recover() -> dict[str, Any]:
    from triton.runtime.errors import OutOfResources
    from triton_kernels.matmul_ogs import matmul_ogs as upstream
    from triton_kernels.matmul_ogs_details import opt_flags

    import resilient_moe as rm

    out: dict[str, Any] = {}
    for name in SHAPES:
        x, w, rdata, gather, _ = operands(name)
        opt_flags.update_opt_flags_constraints({"num_stages": 6})
        try:
            upstream(x, w, None, rdata, gather_indx=gather)
            direct = "no error"
        except OutOfResources as err:
            direct = {"required": err.required, "limit": err.limit, "resource": err.name}
        finally:
            opt_flags.reset_opt_flags_constraints()
        t0 = time.perf_counter()
        y, log = _events(lambda: rm.matmul_ogs(x, w, None, rdata, gather_indx=gather))
        first_call_s = time.perf_counter() - t0
        reference = upstream(x, w, None, rdata, gather_indx=gather)
        err = float((y.float() - reference.float()).abs().max()) if isinstance(y, torch.Tensor) else y
        out[name] = {"upstream_forced_num_stages_6": direct, "events": log, "first_call_s": first_call_s,
                     "max_abs_diff_vs_upstream_default": err}
        w = None  # the weights freed before the next shape's are made
        torch.cuda.empty_cache()
    return out


def part_virtual() -> dict[str, Any]:
    import resilient_moe as rm

    out: dict[str, Any] = {}
    for name in SHAPES:
        x, w, rdata, gather, _ = operands(name)
        _, log = _events(lambda: rm.matmul_ogs(x, w, None, rdata, gather_indx=gather))
        out[name] = log
        w = None  # the weights freed before the next shape's are made
        torch.cuda.empty_cache()
    return out


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--part", required=True, choices=["same", "recover", "virtual"])
    cli.add_argument("--out", type=Path, required=True)
    args = cli.parse_args()
    env = {k: v for k, v in os.environ.items() if k.startswith(("RESILIENT_MOE_", "TRITON_HIP"))}
    result = {"part": args.part, "env": env, "device": torch.cuda.get_device_name(),
              "result": {"same": part_same, "recover": part_recover, "virtual": part_virtual}[args.part]()}
    print(json.dumps(result, indent=1, default=str))
    path = args.out / f"upstream_{args.part}.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*previous, result], indent=1, default=str))


if __name__ == "__main__":
    main()
