"""Preflight against the run-time dispatcher, with real compiles for virtual chips; shapes files; the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from conftest import OVER_GFX950, TOP_K, E, K, N, T, policy_with, problem

import resilient_moe as rm
from resilient_moe import preflight, virtual
from resilient_moe.backends.builtin.moe_matmul import moe_matmul
from resilient_moe.cache import FILE_NAME, TilingCache
from resilient_moe.cli import parser
from resilient_moe.models import PRESETS, Gemm, ShapesError, load_shapes
from resilient_moe.targets import chip
from resilient_moe.testing import capture

OVER_LIMIT = {  # a policy default each chip cannot hold, so the dispatcher really steps down
    "gfx950": OVER_GFX950,  # 196608 B of LDS > 163840
    "gfx942": OVER_GFX950,  # > 65536
    "sm_90": {"block_m": 128, "block_n": 256, "block_k": 64, "num_stages": 5},  # 245760 B > 232448
}
UP = Gemm(name="up", mode="gather", experts=E, top_k=TOP_K, k=K, n=N)


def cli(*argv: str) -> int:
    """The command in this process (its compiles still go to worker processes)."""
    args = parser().parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("arch", OVER_LIMIT)
def test_preflight_chooses_what_the_runtime_dispatcher_chooses(arch, target) -> None:
    policy = policy_with(arch, OVER_LIMIT[arch])
    (row,) = preflight.run([UP], [T], chip(arch), torch.float16, policy, TilingCache(None), preflight.Compiler(None, "", 2))
    assert not row.default_fits and row.default_bytes > chip(arch).max_shared_mem
    assert row.chosen is not None and row.chosen_bytes <= chip(arch).max_shared_mem

    target(arch)
    x, w, routing = problem()
    compiled = len(virtual._measured)
    with capture() as logs:
        moe_matmul(x, w, routing, "gather", policy=policy)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    assert (selected["config"], selected["attempts"], selected["key"]) == (row.chosen.as_dict(), row.attempts, row.key)
    assert len(virtual._measured) == compiled  # the meta-tensor compiles were exactly the real call's


def test_cache_written_by_preflight_spares_the_server_every_failing_compile(target, cache_dir, fits_calls, capsys) -> None:
    shapes = cache_dir.parent / "shapes.yaml"
    shapes.write_text(yaml.safe_dump({"name": "tiny", "experts": E, "top_k": TOP_K, "hidden": K, "intermediate": N // 2}))
    policy_file = cache_dir.parent / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({"version": 1, "arch": {"gfx950": {"default": OVER_GFX950}}}))
    code = cli(
        "preflight", "--arch", "gfx950", "--shapes", str(shapes), "--tokens", str(T), "--dtype", "fp16",
        "--policy", str(policy_file), "--write-cache", str(cache_dir / FILE_NAME), "--jobs", "2",
    )
    printed = capsys.readouterr().out
    assert code == 0 and "2 of 2 default tiles do not fit gfx950" in printed

    fits_calls.clear()  # preflight's own checks; from here on, the server's
    target("gfx950")
    policy = rm.load_policy(policy_file)
    x, w_up, routing = problem()
    h = torch.randn(T * TOP_K, N // 2, dtype=torch.float16).to(x.device)
    w_down = (torch.randn(E, N // 2, K) / 8).to(x.device, torch.float16)
    with capture() as logs:
        moe_matmul(x, w_up, routing, "gather", policy=policy)
        moe_matmul(h, w_down, routing, "scatter", policy=policy)
    # Only each shipped winner's own fit check (a real chip compiles it at its first launch too): no
    # failing tile is compiled, no rung tried.
    assert fits_calls == ["gfx950", "gfx950"]
    assert [e["event"] for e in logs] == ["tiling.cache_hit", "tiling.cache_hit"]


def test_explain_marks_the_rungs_the_dispatcher_does_not_compile(tmp_path, capsys, async_copy_off) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({"version": 1, "arch": {"gfx950": {"default": OVER_GFX950}}}))
    code = cli(
        "explain", "--arch", "gfx950", "--m", str(T), "--n", str(N), "--k", str(K), "--experts", str(E),
        "--top-k", str(TOP_K), "--dtype", "fp16", "--policy", str(policy_file), "--jobs", "2",
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[3].split()[:3] == ["default", "128x256x128", "s3"] and " NO " in lines[3]
    assert lines[3].endswith("skipped uncompiled (lower bound over the limit)")
    # 8 rows per expert: the first rung cuts block_m to 16 (twice those rows), which fits.
    assert lines[4].split()[:4] == ["rung", "1", "16x256x128", "s3"] and lines[4].endswith("<- dispatcher picks")


def test_write_cache_must_be_the_file_a_server_reads(tmp_path, capsys) -> None:
    code = cli("preflight", "--arch", "gfx950", "--model", "mixtral-8x7b", "--write-cache", str(tmp_path / "winners.json"))
    assert code == 2 and f"must be named {FILE_NAME}" in capsys.readouterr().err


def test_cli_preflight_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "resilient_moe.cli", "preflight", "--arch", "gfx950", "--model", "mixtral-8x7b", "--tokens", "64", "--jobs", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split()[:4] == ["gemm", "mode", "tokens", "default"]
    assert [line.split()[:3] for line in lines[2:4]] == [["up", "gather", "64"], ["down", "scatter", "64"]]


def test_presets_give_the_fused_up_and_the_down_projection() -> None:
    up, down = PRESETS["deepseek-v3"].gemms()
    assert (up.mode, up.experts, up.top_k, up.k, up.n) == ("gather", 256, 8, 7168, 4096)
    assert (down.mode, down.k, down.n) == ("scatter", 2048, 7168)


GEMM = {"name": "up", "mode": "gather", "experts": 8, "top_k": 2, "k": 64, "n": 64}
MODEL = {"name": "m", "experts": 8, "top_k": 2, "hidden": 64, "intermediate": 64}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ([{**GEMM, "k": -5}], r"\[0\] \(up\)\.k = -5: Input should be greater than 0"),
        ([GEMM, {**GEMM, "name": "down", "mode": "gathr"}], r"\[1\] \(down\)\.mode = 'gathr'"),
        ({**MODEL, "hiden": 64}, r"hiden = 64: Extra inputs are not permitted"),
        ({**MODEL, "top_k": 9}, r"top_k \(9\) must not exceed experts \(8\)"),
        ([GEMM, GEMM], r"'up' is used more than once"),
        ("deepseek", r"a shapes file is a model .* got 'deepseek'"),
    ],
)
def test_shapes_file_errors_name_the_file_field_and_value(tmp_path, content, expected) -> None:
    path = tmp_path / "shapes.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ShapesError, match=expected) as err:
        load_shapes(path)
    assert str(err.value).startswith(f"{path}: ")
