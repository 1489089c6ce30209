"""The examples run as a user runs them: ``python examples/NAME.py`` in a fresh process.

Each child starts from this environment without TRITON_INTERPRET (conftest.py sets it for this
session) and without any RESILIENT_MOE_* variable, with a cache folder of its own: every example
decides for itself whether to interpret and which chip to target. The migration example's upstream
path needs triton_kernels, which CI does not have; it also runs here against the test double.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resilient_moe.backends.upstream import copies as adapter

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HAS_UPSTREAM = importlib.util.find_spec("triton_kernels") is not None


def run_example(name: str, tmp_path: Path, *args: str) -> str:
    """Run one example in a fresh process; its stdout, after asserting that it exited 0."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("RESILIENT_MOE_")}
    env["RESILIENT_MOE_CACHE_DIR"] = str(tmp_path / "cache")
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_matmul_ogs_migration(tmp_path: Path) -> None:
    out = run_example("matmul_ogs_migration.py", tmp_path)
    runs_upstream = HAS_UPSTREAM and torch.cuda.is_available()
    assert ("restored by unpatch: True" if runs_upstream else "(skipped)") in out


def test_moe_layer(tmp_path: Path) -> None:
    last = run_example("moe_layer.py", tmp_path).splitlines()[-1]
    assert last.startswith("max abs error against rm.moe_matmul_reference") and last.endswith("OK")


def test_downgrade_events_json(tmp_path: Path) -> None:
    out = run_example("downgrade_events_json.py", tmp_path)
    assert '"event": "tiling.downgrade"' in out  # a JSON line, as written
    assert "downgrade on gfx950: 256x256x64 s4 w8 g8 needs" in out  # the same line, parsed
    assert "record.resilient_moe holds the same events as dicts: True" in out


def test_mi355x_policy(tmp_path: Path) -> None:
    out = run_example("mi355x_policy.py", tmp_path)
    assert "blokc_n" in out and "examples/mi355x.yaml: OK" in out
    assert "mi355x.yaml on gfx950: 4 of 4 default tiles fit" in out


def test_preflight_ship_cache(tmp_path: Path) -> None:
    out = run_example("preflight_ship_cache.py", tmp_path, str(tmp_path / "ship"))
    assert "no tiling.downgrade: the server compiled no failing tile" in out
    assert (tmp_path / "ship" / "tiling-v1.json").is_file()


@pytest.mark.parametrize("flavor", ["dict", "dict36", "scoped"])
def test_matmul_ogs_migration_against_the_double(flavor: str) -> None:
    """The example's upstream path, with the test double under upstream's module names (v3.5, v3.6, v3.8+)."""
    from doubles import tk_double

    spec = importlib.util.spec_from_file_location("matmul_ogs_migration", EXAMPLES / "matmul_ogs_migration.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, generator=g, dtype=torch.float16).to(device)
    w = (torch.randn(128, 256, generator=g) / 8).to(device, torch.float16)
    adapter.uninstall()
    try:
        with tk_double.installed(flavor) as double:
            assert example.upstream_entry() == double.entry
            assert example.migrate(double.entry, x, w)
    finally:
        adapter.uninstall()
        sys.modules.pop("their_moe_layer", None)
