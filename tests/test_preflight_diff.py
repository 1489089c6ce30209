"""``resilient-moe preflight diff``: two real preflight reports of one model and chip, compiled under two
compiler settings, as an operator checks a Triton upgrade. AMD async copies stand in for the upgrade:
with them Triton keeps one LDS buffer more per tile on gfx950, which is what Triton 3.9 does by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import triton
import yaml

from resilient_moe.preflight_diff import REPORT_FORMAT

SHAPES = {"name": "tiny", "experts": 8, "top_k": 2, "hidden": 256, "intermediate": 256}
TUNED_AT_5_STAGES = {"version": 1, "arch": {"gfx950": {"default": {"block_m": 64, "block_n": 256, "num_stages": 5}}}}
"""A table tuned for 5 stages: 4 buffers of 40960 B fill gfx950's 163840 exactly without async copies;
with them, 5 do not fit. (Triton 3.6 with async copies fails to compile 128x256x64 s4 for gfx950, an
MLIR dominance error, so the 4-stage twin of this case cannot serve both settings.)"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RESILIENT_MOE_", "TRITON_"))}
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "resilient_moe.cli", *args], env=environ, capture_output=True,
                          text=True, timeout=300)


def report(tmp_path: Path, async_copy: str) -> Path:
    shapes, policy = tmp_path / "shapes.yaml", tmp_path / "policy.yaml"
    shapes.write_text(yaml.safe_dump(SHAPES))
    policy.write_text(yaml.safe_dump(TUNED_AT_5_STAGES))
    done = cli("preflight", "--arch", "gfx950", "--shapes", str(shapes), "--tokens", "4096", "--policy", str(policy),
               "--jobs", "2", "--json", env={"TRITON_HIP_USE_ASYNC_COPY": async_copy,
                                             "RESILIENT_MOE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    path = tmp_path / f"async-{async_copy}.json"
    path.write_text(done.stdout)
    return path


def test_a_report_says_which_triton_compiled_it(tmp_path: Path) -> None:
    data = json.loads(report(tmp_path, "0").read_text())
    assert data["format"] == REPORT_FORMAT and data["triton"] == triton.__version__
    assert data["compiler"].startswith(triton.__version__) and "async copies off for gfx950" in data["compiler"]


def test_the_diff_lists_the_defaults_that_stop_fitting_with_the_bytes_on_each_side(tmp_path: Path) -> None:
    before, after = report(tmp_path, "0"), report(tmp_path, "1")
    done = cli("preflight", "diff", str(before), str(after))
    assert done.returncode == 1, done.stderr  # a default's fit changed: what an upgrade check must catch
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"A: triton {triton.__version__}, gfx950 (limit 163840 B), bf16")
    up = next(line for line in lines if line.startswith("up "))
    assert "64x256x64 s5 w8 g8" in up and " 163840 " in up and "default stops fitting" in up
    assert int(up.split()[8]) > 163840  # B's bytes: a fifth buffer of 40960 and the epilogue's scratch
    assert "2 default tiles stop fitting under B" in lines[-1]

    same = cli("preflight", "diff", str(before), str(before))
    assert same.returncode == 0 and "no GEMM differs" in same.stdout


def test_the_diff_names_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"rows": []}))
    done = cli("preflight", "diff", str(bogus), str(bogus))
    assert done.returncode == 2 and str(bogus) in done.stderr and "not a report" in done.stderr
