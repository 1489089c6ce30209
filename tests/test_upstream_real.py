"""resilient_moe.matmul_ogs against the real upstream triton_kernels, on a GPU.

Skipped unless a CUDA GPU is present and upstream is installed. Each check runs in a child process
without TRITON_INTERPRET: this test session interprets Triton (see conftest.py), and upstream's
kernels must compile for the device.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import triton

pytestmark = pytest.mark.gpu

_TAG = "v" + triton.__version__.split("+")[0]

_PRELUDE = """
import json, os, sys, torch
import resilient_moe as rm
from resilient_moe.backends.upstream import copies as adapter
from resilient_moe.testing import capture

def finish(**result):
    print(json.dumps(result))
    sys.exit(0)

up = adapter.upstream()
if up.flavor != "v3.5":
    finish(skip=f"written for v3.5's triton_kernels.routing.routing(); found {up.flavor}")
from triton_kernels.routing import routing
from triton_kernels.matmul_ogs import matmul_ogs as upstream_matmul_ogs
torch.manual_seed(0)

def summary(logs):
    return [{k: e.get(k) for k in ("event", "from", "to", "required", "limit", "resource", "config")} for e in logs]
"""

_SAME_BITS = """
T, E, K, N, TOP_K = 512, 32, 2048, 2048, 4
x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16)
w1 = (torch.randn(E, K, N, device="cuda") / K**0.5).to(torch.bfloat16)
w2 = (torch.randn(E, N, K, device="cuda") / N**0.5).to(torch.bfloat16)
rdata, gather, scatter = routing(torch.randn(T, E, device="cuda"), TOP_K)
h_ref = upstream_matmul_ogs(x, w1, None, rdata, gather_indx=gather)
y_ref = upstream_matmul_ogs(h_ref, w2, None, rdata, scatter_indx=scatter)
with capture() as logs:
    h = rm.matmul_ogs(x, w1, None, rdata, gather_indx=gather)
    h_again = rm.matmul_ogs(x, w1, None, rdata, gather_indx=gather)  # the cached winner
    y = rm.matmul_ogs(h_ref, w2, None, rdata, scatter_indx=scatter)
empty = rm.matmul_ogs(x[:0], w1, None, None)
finish(gather=torch.equal(h, h_ref), again=torch.equal(h_again, h_ref), scatter=torch.equal(y, y_ref),
       empty=list(empty.shape), events=summary(logs))
"""

_RECOVERS = """
T, E, K, N, TOP_K = 2048, 8, 2048, 4096, 2  # 512 rows per expert: upstream picks block_m 128, block_n 256
x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16)
w = (torch.randn(E, K, N, device="cuda") / K**0.5).to(torch.bfloat16)
rdata, gather, _ = routing(torch.randn(T, E, device="cuda"), TOP_K)
reference = upstream_matmul_ogs(x, w, None, rdata, gather_indx=gather)
with capture() as logs:
    out = rm.matmul_ogs(x, w, None, rdata, gather_indx=gather)
finish(close=torch.allclose(out.float(), reference.float(), atol=2e-2, rtol=2e-2),
       equal=torch.equal(out, reference), events=summary(logs))
"""

_STALE = """
from pathlib import Path
T, E, K, N, TOP_K = 2048, 8, 2048, 4096, 2
x = torch.randn(T, K, device="cuda", dtype=torch.bfloat16)
w = (torch.randn(E, K, N, device="cuda") / K**0.5).to(torch.bfloat16)
rdata, gather, _ = routing(torch.randn(T, E, device="cuda"), TOP_K)
reference = upstream_matmul_ogs(x, w, None, rdata, gather_indx=gather)
rm.matmul_ogs(x, w, None, rdata, gather_indx=gather)  # upstream's default wins and is written
path = Path(os.environ["RESILIENT_MOE_CACHE_DIR"]) / "tiling-v1.json"
data = json.loads(path.read_text())
(entry,) = data["entries"].values()
entry["config"] = {**entry["config"], "num_stages": 6}  # over the limit: a file written elsewhere
path.write_text(json.dumps(data))
rm.reset()  # as a new process: the file is all it knows
with capture() as logs:
    out = rm.matmul_ogs(x, w, None, rdata, gather_indx=gather)
(written,) = json.loads(path.read_text())["entries"].values()
finish(equal=torch.equal(out, reference), events=summary(logs), written=written["config"])
"""

_PREFLIGHT = """
E, M, K, N = 8, 2048, 1024, 4096  # 256 rows per expert: the CDNA4 default 128x512x64
x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
w = torch.randn(E, K, N, device="cuda", dtype=torch.bfloat16)
with capture() as logs:
    rm.matmul_ogs(x, w, None, None)  # compiled for gfx950, not run: outputs are not computed
finish(events=summary(logs))
"""


@pytest.fixture(autouse=True)
def _gpu_and_upstream() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: upstream triton_kernels compiles and runs on the device")
    if importlib.util.find_spec("triton_kernels") is None:  # imported in the child only (see above)
        pytest.skip(
            "upstream triton_kernels is not installed: pip install "
            f'"git+https://github.com/triton-lang/triton.git@{_TAG}#subdirectory=python/triton_kernels"'
        )


def _run(body: str, tmp_path, **env: str) -> dict:
    child_env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child_env.update(env)
    script = textwrap.dedent(_PRELUDE) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    return result


def test_same_bits_as_upstream(tmp_path) -> None:
    result = _run(_SAME_BITS, tmp_path)
    assert result["gather"] and result["again"] and result["scatter"], result
    assert [e["event"] for e in result["events"]] == ["tiling.selected", "tiling.selected"]  # gather, scatter
    assert result["empty"] == [0, 2048]


def test_forced_num_stages_6_runs_out_of_shared_memory_and_recovers(tmp_path) -> None:
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("written for sm_90 (H100, H200): 6 stages of upstream's prefill tile exceed its 232448 bytes")
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"version": 1, "arch": {"sm_90": {"default": {"num_stages": 6}}}}))
    result = _run(_RECOVERS, tmp_path, RESILIENT_MOE_POLICY=str(policy))
    events = result["events"]
    downgrades = [e for e in events if e["event"] == "tiling.downgrade"]
    assert downgrades and downgrades[0]["from"]["num_stages"] == 6, events
    assert all(d["resource"] == "shared memory" and d["required"] > d["limit"] == 232448 for d in downgrades)
    assert events[-1]["event"] == "tiling.selected" and result["close"], result


def test_a_stale_winner_is_dropped_and_the_ladder_climbs_again(tmp_path) -> None:
    """A cached winner at 6 stages (360496 B > 232448 on sm_90) raises at its launch: dropped, the
    ladder climbs from upstream's default, which fits, and the file holds it again."""
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("written for sm_90 (H100, H200): 6 stages of upstream's prefill tile exceed its 232448 bytes")
    result = _run(_STALE, tmp_path, RESILIENT_MOE_CACHE_DIR=str(tmp_path / "cache"))
    events = result["events"]
    (stale,) = [e for e in events if e["event"] == "cache.stale"]
    assert stale["config"]["num_stages"] == 6 and stale["required"] > stale["limit"] == 232448, events
    assert events[-1]["event"] == "tiling.selected" and result["equal"], result
    assert result["written"]["num_stages"] < 6 and result["written"] == events[-1]["config"]


def test_preflight_for_gfx950_on_this_gpu(tmp_path) -> None:
    """Upstream picks its AMD CDNA4 tile and compiles for gfx950 here; async copy makes it not fit."""
    result = _run(_PREFLIGHT, tmp_path, RESILIENT_MOE_TARGET="gfx950", TRITON_HIP_USE_ASYNC_COPY="1")
    events = result["events"]
    assert events[0]["event"] == "tiling.downgrade", events
    assert events[0]["from"]["block_n"] == 512 and events[0]["limit"] == 163840 < events[0]["required"]
    assert events[-1]["event"] == "tiling.selected" and events[-1]["config"] != events[0]["from"]
