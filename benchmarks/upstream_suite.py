"""Upstream's own matmul tests, unpatched and with ``patch_triton_kernels()`` applied (GPU machine).

    python benchmarks/upstream_suite.py --tests PATH/test_matmul.py --sample 60 --out DIR

Collects the test ids of the installed upstream's tests/test_matmul.py, takes a deterministic sample
(every k-th id of the sorted list, so two runs pick the same tests), runs them twice in fresh
processes (unpatched, then patched through this file loaded as a pytest plugin, after collection
imported the test module), and reports passed/skipped/failed for each run and every test that passes
unpatched but not patched. Writes DIR/upstream_suite.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def pytest_collection_finish(session: Any) -> None:
    """As a plugin (``-p upstream_suite``): patch every copy once the test modules hold upstream's function."""
    import resilient_moe as rm

    rm.patch_triton_kernels()


def _own_root(tests: Path) -> list[str]:
    """Upstream's tests run as in their own checkout: rooted at their folder, not at an enclosing project
    (whose ini would name test ids from its own root, which these runs, started in that folder, miss)."""
    return ["--rootdir", str(tests.parent), "-c", os.devnull, "-p", "no:cacheprovider"]


def _collect(tests: Path) -> list[str]:
    found = subprocess.run([sys.executable, "-m", "pytest", *_own_root(tests), "--collect-only", "-q", str(tests)],
                           capture_output=True, text=True, cwd=tests.parent)
    ids = sorted(line.strip() for line in found.stdout.splitlines() if "::" in line)
    if not ids:
        raise SystemExit(f"no tests collected from {tests}:\n{found.stdout[-3000:]}\n{found.stderr[-3000:]}")
    return ids


def _run(tests: Path, ids: list[str], report: Path, patched: bool) -> dict[str, str]:
    plugin = ["-p", "upstream_suite"] if patched else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "pytest", *_own_root(tests), "-q", *plugin, f"--junitxml={report}", *ids],
                   cwd=tests.parent, env=env, capture_output=True, text=True)
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rpartition('.')[2]}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return outcomes


def _counts(outcomes: dict[str, str]) -> dict[str, int]:
    return {kind: sum(v == kind for v in outcomes.values()) for kind in ("passed", "skipped", "failed")}


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--tests", type=Path, required=True, help="upstream's tests/test_matmul.py")
    cli.add_argument("--sample", type=int, default=60, help="how many test ids to run (0: all)")
    cli.add_argument("--out", type=Path, required=True)
    args = cli.parse_args()
    tests = args.tests.resolve()
    ids = _collect(tests)
    step = max(1, len(ids) // args.sample) if args.sample else 1
    chosen = ids[::step][: args.sample or None]
    args.out.mkdir(parents=True, exist_ok=True)
    unpatched = _run(tests, chosen, args.out / "unpatched.xml", patched=False)
    patched = _run(tests, chosen, args.out / "patched.xml", patched=True)
    regressions = sorted(name for name, kind in unpatched.items() if kind == "passed" and patched.get(name) != "passed")
    result = {"collected": len(ids), "sampled": len(chosen), "every": step, "unpatched": _counts(unpatched),
              "patched": _counts(patched), "passed_unpatched_not_patched": regressions}
    print(json.dumps(result, indent=1))
    (args.out / "upstream_suite.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
