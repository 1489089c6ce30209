"""aiter's Triton MoE GEMMs on a virtual MI355X (gfx950), on a CPU: the configs aiter picked before ROCm
aiter #2723 (num_stages 2), their LDS under Triton's async copies against 163840 bytes, the rung the
ladder lands on, and what aiter's later stage picker (``pick_gemm_num_stages``) chooses for the same
tile. Each aiter tree runs in a process of its own (`resilient-moe preflight --kernel ... --json`).

    python benchmarks/aiter_preflight.py --pre AITER_AT_016ead3 --head AITER_AT_e404860 --out results/

AITER_AT_*: checkouts of ROCm/aiter at those commits (docs/aiter.md says how to make them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

MODELS = ("gpt-oss-120b", "deepseek-v3")
TOKENS = "512,1024,2048,4096"  # block_m 16, 32, 64, 128 for both models' routing
OPS = ("moe_gemm_a8w4", "moe_gemm_a4w4", "moe_gemm_a8w8")


def preflight(source: str, op: str, model: str, copy: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "resilient_moe.cli", "preflight", "--kernel", op, "--aiter-source", source,
                          "--arch", "gfx950", "--model", model, "--tokens", TOKENS, f"--{copy}", "--json"],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"preflight {op} {model} {copy} ({source}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def picked(head: str, tiles: list[tuple[int, int, int, int, int]]) -> list[int]:
    """aiter's pick_gemm_num_stages (the head tree's) for (block_m, block_n, block_k, bits_a, bits_b)."""
    code = ("import json, sys\nfrom resilient_moe.backends.aiter import source\n"
            f"source.install({head!r})\n"
            "from aiter.ops.triton.utils.gemm_config_utils import pick_gemm_num_stages as pick\n"
            "print(json.dumps([pick('gfx950', *t, use_async_padding=True) for t in json.loads(sys.stdin.read())]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(tiles), capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The docs/aiter.md table: one line per call."""
    def tile(c: dict[str, Any] | None) -> str:
        return "-" if c is None else f"{c['block_m']}x{c['block_n']}x{c['block_k']} s{c['num_stages']} w{c['num_warps']}"

    lines = ["| GEMM | model | tokens (block_m) | aiter before #2723 | LDS, async copy / none | fits 163840 | ladder lands on (LDS) "
             "| aiter's picker, same tile | aiter today (LDS) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        landed = "" if r["fits_async"] else f"{tile(r['landed'])} ({r['landed_lds']})"
        lines.append(f"| {r['op'].removeprefix('moe_gemm_')} {r['gemm']} | {r['model']} | {r['tokens']} ({r['block_m']}) | "
                     f"{tile(r['pre_config'])} | {r['lds_async']} / {r['lds_no_async']} | {'yes' if r['fits_async'] else 'NO'} | "
                     f"{landed} | {r['aiter_picker_stages']} stage{'s' if r['aiter_picker_stages'] > 1 else ''} | "
                     f"{tile(r['head_config'])} ({r['head_lds']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pre", required=True, help="aiter tree before #2723 (016ead3)")
    parser.add_argument("--head", required=True, help="aiter tree with pick_gemm_num_stages (e404860)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bits = {"moe_gemm_a8w4": (8, 4), "moe_gemm_a4w4": (4, 4), "moe_gemm_a8w8": (8, 8)}
    rows = []
    for op in OPS:
        for model in MODELS:
            on = preflight(args.pre, op, model, "async-copy")
            off = preflight(args.pre, op, model, "no-async-copy")
            head = preflight(args.head, op, model, "async-copy")
            tiles = [(r["own"]["block_m"], r["own"]["block_n"], r["own"]["block_k"], *bits[op]) for r in on["rows"]]
            picks = picked(args.head, tiles)
            for r, r_off, r_head, pick in zip(on["rows"], off["rows"], head["rows"], picks, strict=True):
                rows.append({"op": op, "model": model, "gemm": r["shape"]["name"], "tokens": r["tokens"], "block_m": r["block_m"],
                             "pre_config": r["own"], "lds_async": r["own_bytes"], "lds_no_async": r_off["own_bytes"],
                             "fits_async": r["fits"], "landed": r["landed"], "landed_lds": r["landed_bytes"],
                             "aiter_picker_stages": pick, "head_config": r_head["own"], "head_lds": r_head["own_bytes"],
                             "head_fits": r_head["fits"]})
                print(json.dumps({k: rows[-1][k] for k in ("op", "model", "gemm", "tokens", "lds_async", "fits_async",
                                                           "aiter_picker_stages")}), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"chip": "gfx950", "limit": on["limit"], "compiler": on["compiler"], "pre": "ROCm/aiter 016ead3 (before #2723)",
            "head": "ROCm/aiter e404860 (2026-08-22)", "command": " ".join(sys.argv)}
    (args.out / "aiter-gfx950-cpu.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
