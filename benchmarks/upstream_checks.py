"""GPU checks of resilient_moe against upstream triton_kernels (v3.5.1 working copy on PYTHONPATH).

    python benchmarks/upstream_checks.py --part same|recover|constraints --out DIR

same:        resilient_moe.matmul_ogs equals upstream bit for bit when nothing fails, for bf16, fp8
             and MXFP4 weights (the layouts upstream makes for this chip), gather and scatter.
recover:     with RESILIENT_MOE_POLICY forcing num_stages=8 on this chip, upstream under the same
             stages raises a real OutOfResources and resilient_moe.matmul_ogs recovers, equal to
             upstream's own default bit for bit (bf16 and MXFP4).
constraints: a call under block_m=16 never receives the winner learned under block_m=128.
Each part appends its result to DIR/upstream_<part>.json. Preflight of upstream for a virtual chip is
a CLI command: resilient-moe preflight --kernel matmul_ogs (docs/matmul_ogs.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from resilient_moe.models import Gemm

GEMMS = {  # gpt-oss-120b's up-projection (N = 2 x 2880) and DeepSeek-V3's, at prefill-like token counts
    "gpt-oss-120b up": (Gemm(name="up", mode="gather", experts=128, top_k=4, k=2880, n=5760), 2048),
    "gpt-oss-120b down": (Gemm(name="down", mode="scatter", experts=128, top_k=4, k=2880, n=2880), 2048),
    "deepseek-v3 up": (Gemm(name="up", mode="gather", experts=256, top_k=8, k=7168, n=4096), 4096),
}


def _upstream() -> Any:
    from resilient_moe.backends.upstream.copies import upstream

    return upstream("matmul_ogs")


def _operands(name: str, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    from resilient_moe.backends.upstream.preflight import operands

    gemm, tokens = GEMMS[name]
    return operands(_upstream(), gemm, tokens, dtype)


def _ours(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """resilient_moe.matmul_ogs's result for the call, and the tile it resolved to."""
    from resilient_moe.backends.upstream.matmul_ogs import run

    result, resolution = run(_upstream(), args, kwargs)
    winner = None if resolution is None else resolution.winner
    return result, None if winner is None or isinstance(winner, str) else {
        f: getattr(winner, f) for f in ("block_m", "block_n", "block_k", "num_warps", "num_stages", "group_m")}


def _flags(fn: Any) -> tuple[Any, Any]:
    """Upstream's own ``fn()`` and the tile its make_opt_flags returned (a spy over the installed hook,
    only around upstream's call: resilient_moe would take the spy for the hook and hook it again)."""
    from resilient_moe.backends.upstream.copies import upstream

    up = upstream("matmul_ogs")
    seen: list[Any] = []
    hook = up.module.make_opt_flags

    def spy(*args: Any, **kwargs: Any) -> Any:
        flags = hook(*args, **kwargs)
        seen.append(flags)
        return flags

    up.module.make_opt_flags = spy
    try:
        result = fn()
    finally:
        up.module.make_opt_flags = hook
    tile = None if not seen else {f: getattr(seen[-1], f) for f in ("block_m", "block_n", "block_k", "num_warps", "num_stages", "group_m")}
    return result, tile


def part_same() -> dict[str, Any]:

    up = _upstream()
    out: dict[str, Any] = {}
    for dtype in ("bf16", "fp8", "mxfp4"):
        for name in GEMMS:
            try:
                args, kwargs = _operands(name, dtype)
                theirs = up.fn(*args, **kwargs)
                ours, tile = _ours(args, kwargs)
                out[f"{name} {dtype}"] = {"bitwise_equal": bool(torch.equal(theirs, ours)), "tile": tile,
                                          "layouts": [type(getattr(getattr(a, "storage", None), "layout", None)).__name__ for a in args[:2]]}
            except Exception as err:  # recorded: this part reports what happened for each format
                out[f"{name} {dtype}"] = {"error": f"{type(err).__name__}: {err}"[:600]}
            torch.cuda.empty_cache()
    return out


def part_recover() -> dict[str, Any]:
    from triton.runtime.errors import OutOfResources

    from resilient_moe.testing import capture

    up = _upstream()
    out: dict[str, Any] = {}
    for dtype in ("bf16", "mxfp4"):
        for name in ("gpt-oss-120b up", "deepseek-v3 up"):
            args, kwargs = _operands(name, dtype)
            up.opt_flags.update_opt_flags_constraints({"num_stages": 8})
            try:
                up.fn(*args, **kwargs)
                direct: Any = "no error"
            except OutOfResources as err:
                direct = {"required": err.required, "limit": err.limit, "resource": err.name}
            finally:
                up.opt_flags.reset_opt_flags_constraints()
            t0 = time.perf_counter()
            with capture() as log:
                y, tile = _ours(args, kwargs)
            first_call_s = time.perf_counter() - t0
            reference, default = _flags(lambda: up.fn(*args, **kwargs))
            out[f"{name} {dtype}"] = {
                "upstream_at_8_stages": direct, "upstream_default": default, "landed": tile, "first_call_s": first_call_s,
                "bitwise_equal_to_upstream_default": bool(torch.equal(y, reference)),
                "events": [{k: e.get(k) for k in ("event", "from", "to", "required", "limit")} for e in log],
            }
            torch.cuda.empty_cache()
    return out


def part_constraints() -> dict[str, Any]:
    from resilient_moe import settings
    from resilient_moe.cache import key_text

    up = _upstream()
    args, kwargs = _operands("gpt-oss-120b up", "bf16")
    out: dict[str, Any] = {}
    for block_m in (128, 16):
        up.opt_flags.update_opt_flags_constraints({"block_m": block_m})
        try:
            ours, tile = _ours(args, kwargs)
            theirs = up.fn(*args, **kwargs)
        finally:
            up.opt_flags.reset_opt_flags_constraints()
        out[f"block_m={block_m}"] = {"tile": tile, "bitwise_equal_to_upstream_under_it": bool(torch.equal(ours, theirs))}
    keys = [key_text(k) for k in settings.cache().memory if "matmul_ogs" in key_text(k)]
    out["cache_keys_with_constraints"] = [k for k in keys if "block_m=" in k]
    return out


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--part", required=True, choices=["same", "recover", "constraints"])
    cli.add_argument("--out", type=Path, required=True)
    args = cli.parse_args()
    env = {k: v for k, v in os.environ.items() if k.startswith(("RESILIENT_MOE_", "TRITON_HIP"))}
    parts = {"same": part_same, "recover": part_recover, "constraints": part_constraints}
    result = {"part": args.part, "env": env, "device": torch.cuda.get_device_name(), "result": parts[args.part]()}
    print(json.dumps(result, indent=1, default=str))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"upstream_{args.part}.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*previous, result], indent=1, default=str))


if __name__ == "__main__":
    main()
