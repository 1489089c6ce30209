"""Tune a policy for MI355X (gfx950), validate it, and check it against a virtual gfx950, on a CPU.

1. ``rm.load_policy`` validates ``examples/mi355x.yaml`` (ROCm ATOM's 64x256 start on gfx950); a
   typo is a ``rm.PolicyError`` naming the file, the field and the value.
2. ``resilient-moe policy check`` prints what the policy does.
3. ``resilient-moe preflight --json`` compiles DeepSeek-V3's MoE GEMMs for gfx950 under the policy and
   the script asserts that every default tile fits, so a server never pays a failed compile (a CI gate).
4. ``resilient-moe explain`` shows one call's whole ladder against gfx950's limit.
Compiles run for the chip on this machine: no GPU needed.

Run: python examples/mi355x_policy.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import resilient_moe as rm

POLICY = Path(__file__).with_name("mi355x.yaml")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``resilient-moe`` command, run with this interpreter; echoes the command line, returns its stdout."""
    print(f"\n$ resilient-moe {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "resilient_moe.cli", *args], stdout=subprocess.PIPE, text=True,
                          check=True)


def main() -> int:
    policy = rm.load_policy(POLICY)
    print(f"{POLICY.name}: gfx950 starts from {policy.for_arch('gfx950').default.values()}, "
          f"on_exhausted={policy.on_exhausted}")
    with tempfile.TemporaryDirectory() as tmp:
        typo = Path(tmp, "typo.yaml")
        typo.write_text(POLICY.read_text().replace("block_n", "blokc_n"))
        try:
            rm.load_policy(typo)
        except rm.PolicyError as err:
            print(f"a typo is caught at load:\n{err}")

    print(cli("policy", "check", str(POLICY)).stdout, end="")

    report = json.loads(cli("preflight", "--arch", "gfx950", "--model", "deepseek-v3", "--tokens", "1,4096",
                            "--policy", str(POLICY), "--json").stdout)
    for row in report["rows"]:
        print(f"  {row['gemm']:4} {row['tokens']:4} tokens: default {rm.TileConfig(**row['default'])} needs "
              f"{row['default_bytes']} B of {report['limit']}: {'fits' if row['default_fits'] else 'DOES NOT FIT'}")
    misses = [r for r in report["rows"] if not r["default_fits"]]

    print(cli("explain", "--arch", "gfx950", "--m", "1", "--n", "4096", "--k", "7168", "--experts", "256",
              "--top-k", "8", "--policy", str(POLICY)).stdout, end="")
    print(f"\n{POLICY.name} on gfx950: {len(report['rows']) - len(misses)} of {len(report['rows'])} default tiles fit")
    return 1 if misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
