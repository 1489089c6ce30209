"""The resilient-moe command, run as users run it: a real process, a real cache directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import triton

from resilient_moe.targets import amd_async_copy

POLICIES = Path(__file__).parent.parent / "policies"


def cli(*args: str, cache_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RESILIENT_MOE_TARGET")}
    environ.update(RESILIENT_MOE_CACHE_DIR=str(cache_dir), **env)
    return subprocess.run([sys.executable, "-m", "resilient_moe.cli", *args], env=environ, capture_output=True, text=True, timeout=600)


def test_help_names_every_command(cache_dir: Path) -> None:
    out = cli("--help", cache_dir=cache_dir)
    assert out.returncode == 0
    for command in ("demo", "policy", "cache", "RESILIENT_MOE_TARGET"):
        assert command in out.stdout


def test_policy_check_accepts_shipped_and_names_bad_fields(cache_dir: Path, tmp_path: Path) -> None:
    ok = cli("policy", "check", str(POLICIES / "gfx950-atom.yaml"), cache_dir=cache_dir)
    assert ok.returncode == 0 and "gfx950" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nladder: {min_block_n: 24}\n")
    out = cli("policy", "check", str(bad), cache_dir=cache_dir)
    assert out.returncode == 1 and "ladder.min_block_n = 24" in out.stderr


def test_demo_downgrades_for_real_then_uses_the_cache(cache_dir: Path) -> None:
    first = cli("demo", cache_dir=cache_dir)
    assert first.returncode == 0, first.stderr
    # Without a GPU the demo runs against a virtual MI355X; with one, against the real chip's limit.
    # 3 LDS buffers of 65536 B without AMD async copies, 4 with them (Triton 3.9's default on gfx950).
    cpu_bytes = 262144 if amd_async_copy("gfx950") else 196608
    needs = r"needs \d+ B > \d+ B -> downgraded" if torch.cuda.is_available() else f"needs {cpu_bytes} B > 163840 B -> downgraded"
    assert re.search(needs, first.stdout), first.stdout
    assert f"triton:  {triton.__version__} (" in first.stdout
    assert "tiling.downgrade" in first.stderr and "OK" in first.stdout
    second = cli("demo", cache_dir=cache_dir)
    assert second.returncode == 0, second.stderr
    assert "used the cache" in second.stdout and "downgraded" not in second.stdout
    assert "tiling.downgrade" not in second.stderr

    shown = cli("cache", "show", cache_dir=cache_dir)
    assert shown.returncode == 0 and "2 winner(s)" in shown.stdout and "did not fit" in shown.stdout
    cleared = cli("cache", "clear", cache_dir=cache_dir)
    assert cleared.returncode == 0 and "removed" in cleared.stdout


def test_building_the_parser_imports_no_triton() -> None:
    """Whether Triton interprets is fixed when triton.language is imported: the demo decides after the
    parser is built, so neither the parser nor the modules it imports may import triton (nor torch, which
    ``--help`` does not need either)."""
    code = ("import sys; from resilient_moe import cli; cli.parser(); cli.diff_parser(); "
            "print('triton' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False False", done.stderr


def test_preflight_for_an_engine_that_is_not_installed_says_so(cache_dir: Path) -> None:
    out = cli("preflight", "--engine", "vllm", "--arch", "sm_89", "--model", "qwen3-30b-a3b", "--dtype", "fp8_w8a8",
              cache_dir=cache_dir)
    assert out.returncode == 2 and "vLLM's Triton fused MoE" in out.stderr and "cannot be imported" in out.stderr


def test_preflight_of_aiter_without_aiter_or_a_source_tree_says_how_to_get_one(cache_dir: Path, tmp_path: Path) -> None:
    out = cli("preflight", "--kernel", "moe_gemm_a8w4", "--arch", "gfx950", "--model", "gpt-oss-120b",
              cache_dir=cache_dir)
    assert out.returncode == 2 and "RESILIENT_MOE_AITER_SOURCE" in out.stderr
    out = cli("preflight", "--kernel", "moe_gemm_a8w4", "--aiter-source", str(tmp_path), "--arch", "gfx950",
              "--model", "gpt-oss-120b", cache_dir=cache_dir)
    assert out.returncode == 2 and "no aiter/ops/triton under it" in out.stderr
