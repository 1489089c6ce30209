"""The dispatcher with real compiles for virtual chips: downgrade, exhaustion, errors, cache hits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import OVER_GFX950, TOP_K, E, K, N, T, policy_with, problem
from triton.compiler.errors import CompilationError

import resilient_moe as rm
from resilient_moe import virtual
from resilient_moe.backends.builtin import moe_matmul as builtin
from resilient_moe.backends.builtin.launch import prepare
from resilient_moe.backends.builtin.smem import lower_bound
from resilient_moe.backends.builtin.moe_matmul import moe_matmul
from resilient_moe.cache import default_cache
from resilient_moe.dispatch import ROUNDS
from resilient_moe.ladder import rungs
from resilient_moe.policy import parse_policy
from resilient_moe.targets import chip
from resilient_moe.testing import capture


def test_over_limit_default_ends_on_first_fitting_rung_in_policy_order(target, fits_calls) -> None:
    target("gfx950")
    x, w, routing = problem()
    policy = policy_with("gfx950", OVER_GFX950)
    with capture() as logs:
        out = moe_matmul(x, w, routing, "gather", policy=policy)
    torch.testing.assert_close(out, rm.moe_matmul_reference(x, w, routing, "gather"), atol=2e-2, rtol=2e-2)

    downgrades = [e for e in logs if e["event"] == "tiling.downgrade"]
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    assert downgrades and all(d["required"] > d["limit"] == 163840 for d in downgrades)
    assert downgrades[0]["from"]["block_n"] == 256 and downgrades[0]["resource"] == "shared memory"
    # 8 rows per expert: the first rung cuts block_m 128 to 16 (twice those rows), the rest being padding.
    assert (downgrades[0]["from"]["block_m"], downgrades[0]["to"]["block_m"]) == (128, 16)
    # Independently: the first rung, in the policy's order, whose compile for gfx950 fits.
    default = rm.TileConfig(**downgrades[0]["from"])
    ladder = rungs(default, policy.ladder, policy.moves_for("shared memory"), rows_per_expert=routing.n_rows // E)
    launches = [prepare(x, w, None, routing, "gather", c) for c in ladder]
    first_fit = next(c for c, launch in zip(ladder, launches) if virtual.measure(
        virtual.job_for(launch.kernel, launch.args, launch.constexprs, "gfx950")).error is None)
    assert selected["config"] == first_fit.as_dict()
    assert len(fits_calls) == len([d for d in downgrades if not d["predicted"]]) + 1


def test_every_rung_out_of_resources_raises_ladder_exhausted(target) -> None:
    target("gfx942")  # 64 KiB of LDS
    x, w, routing = problem()
    policy = policy_with("gfx942", OVER_GFX950, ladder={"order": ["block_n"], "min_block_n": 128})
    with capture() as logs, pytest.raises(rm.LadderExhaustedError) as err:
        moe_matmul(x, w, routing, "gather", policy=policy)
    attempts = err.value.attempts
    assert [a.config.block_n for a in attempts] == [256, 128]
    assert all(a.resource == "shared memory" and a.required > a.limit == 65536 for a in attempts)
    assert "131072" in str(err.value) and "65536" in str(err.value)
    assert [e["event"] for e in logs][-1] == "tiling.exhausted"


def test_exhausted_with_reference_policy_falls_back_and_remembers(target, fits_calls) -> None:
    target("gfx942")
    x, w, routing = problem()
    policy = policy_with("gfx942", OVER_GFX950, ladder={"order": ["block_n"], "min_block_n": 128}, on_exhausted="reference")
    expected = rm.moe_matmul_reference(x, w, routing, "gather")
    with capture() as logs:
        torch.testing.assert_close(moe_matmul(x, w, routing, "gather", policy=policy), expected)
    assert any(e["event"] == "tiling.exhausted" and e["log_level"] == "error" for e in logs)
    compiled = len(fits_calls)
    torch.testing.assert_close(moe_matmul(x, w, routing, "gather", policy=policy), expected)
    assert len(fits_calls) == compiled


def test_non_oom_compile_error_propagates_unchanged(target) -> None:
    target("sm_90")
    x, w, routing = problem()
    policy = policy_with("sm_90", {"block_k": 8})  # tl.dot needs K >= 16: a CompilationError, not an OOM
    with capture() as logs, pytest.raises(CompilationError):
        moe_matmul(x, w, routing, "gather", policy=policy)
    assert not [e for e in logs if e["event"] == "tiling.downgrade"]


def test_bad_shapes_raise_value_error_naming_the_argument(target) -> None:
    target("gfx950")
    x, w, routing = problem()
    with pytest.raises(ValueError, match=r"w.shape\[1\] \(K=64\) must equal x.shape\[1\] \(K=128\)"):
        moe_matmul(x, w[:, :64], routing)


def test_second_identical_call_hits_the_cache_and_compiles_nothing(target, fits_calls) -> None:
    target("gfx950")
    x, w, routing = problem()
    policy = policy_with("gfx950", OVER_GFX950)
    first = moe_matmul(x, w, routing, "gather", policy=policy)
    compiled = len(virtual._measured)
    assert fits_calls and compiled >= 1
    with capture() as logs:
        second = moe_matmul(x, w, routing, "gather", policy=policy)
    assert len(virtual._measured) == compiled and logs == []  # the winner's fit check is memoized
    torch.testing.assert_close(first, second)


def test_fresh_process_reads_the_persisted_winner(target, cache_dir) -> None:
    target("gfx950")
    x, w, routing = problem()
    policy_file = cache_dir.parent / "policy.yaml"
    policy_file.write_text(json.dumps({"version": 1, "arch": {"gfx950": {"default": OVER_GFX950}}}))
    moe_matmul(x, w, routing, "gather", policy=rm.load_policy(policy_file))
    script = textwrap.dedent(f"""
        import resilient_moe as rm, torch
        from resilient_moe import virtual
        from resilient_moe.testing import capture
        calls = []
        real = virtual.fits
        virtual.fits = lambda *a: calls.append(a) or real(*a)
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        x = torch.randn({T}, {K}, generator=g, dtype=torch.float16).to(device)
        w = (torch.randn({E}, {K}, {N}, generator=g) / 8).to(device, torch.float16)
        routing = rm.route(torch.randn({T}, {E}, generator=g).to(device), {TOP_K})
        with capture() as logs:
            rm.moe_matmul(x, w, routing, "gather", policy=rm.load_policy({str(policy_file)!r}))
        print([e["event"] for e in logs], len(calls))
    """)
    env = {**os.environ, "RESILIENT_MOE_TARGET": "gfx950", "RESILIENT_MOE_CACHE_DIR": str(cache_dir)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # One fit check, of the winner alone (a real chip compiles it at its first launch too): no failing tile.
    assert done.stdout.strip().splitlines()[-1] == "['tiling.cache_hit'] 1"


# Defaults whose first rungs the kernel's lower bound already puts over the chip's limit.
PREDICTED_OVER = {
    "gfx950": OVER_GFX950,  # s3: 196608 > 163840; s2 fits
    "sm_90": {"block_m": 128, "block_n": 128, "block_k": 128, "num_stages": 5},  # s5, s4 over 232448; s3 fits
}


def _resolve(arch: str, skip_predicted: bool, fits_calls: list[str]) -> tuple[dict, list[dict], int, list[dict]]:
    """One first call: the selected event, the downgrades, the compiles, the attempts the cache recorded."""
    x, w, routing = problem()
    policy = policy_with(arch, PREDICTED_OVER[arch], ladder={"skip_predicted": skip_predicted})
    fits_calls.clear()
    with capture() as logs:
        moe_matmul(x, w, routing, "gather", policy=policy)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    (entry,) = [e for k, e in default_cache().entries().items() if policy.fingerprint in k]
    return selected, [e for e in logs if e["event"] == "tiling.downgrade"], len(fits_calls), entry["attempts"]


@pytest.mark.parametrize("arch", PREDICTED_OVER)
def test_predicted_rungs_are_not_compiled_and_the_ladder_lands_on_the_same_tile(arch, target, fits_calls) -> None:
    target(arch)
    selected, downgrades, compiles, recorded = _resolve(arch, True, fits_calls)
    plain, _, plain_compiles, plain_recorded = _resolve(arch, False, fits_calls)

    assert selected["config"] == plain["config"] and selected["attempts"] == plain["attempts"]
    skipped = [d for d in downgrades if d["predicted"]]
    assert skipped and compiles == plain_compiles - len(skipped) == selected["attempts"] - len(skipped)
    assert all(d["required"] > d["limit"] == chip(arch).max_shared_mem for d in skipped)
    # The cache records every attempt, the predicted ones marked, with the same configs as without them.
    assert [a["config"] for a in recorded] == [a["config"] for a in plain_recorded]
    assert [a.get("predicted") for a in recorded][: len(skipped)] == [True] * len(skipped)


def test_skip_predicted_off_compiles_every_rung_as_before(target, fits_calls) -> None:
    target("gfx950")
    selected, downgrades, compiles, recorded = _resolve("gfx950", False, fits_calls)
    assert downgrades and not any(d["predicted"] for d in downgrades)
    assert compiles == selected["attempts"] == len(downgrades) + 1
    assert not any(a.get("predicted") for a in recorded)


def test_a_rung_predicted_over_the_limit_is_never_compiled(target, monkeypatch) -> None:
    target("gfx942")  # 64 KiB: 128x256x128 s3 needs 196608 bytes, 128x128x128 s3 131072
    compiled: list[rm.TileConfig] = []
    real = virtual.fits

    def recording(kernel, args, constexprs, arch):
        compiled.append(constexprs)
        return real(kernel, args, constexprs, arch)

    monkeypatch.setattr(virtual, "fits", recording)
    x, w, routing = problem()
    policy = policy_with("gfx942", OVER_GFX950, ladder={"order": ["block_n"], "min_block_n": 128})
    with capture() as logs, pytest.raises(rm.LadderExhaustedError) as err:
        moe_matmul(x, w, routing, "gather", policy=policy)
    assert compiled == []
    attempts = err.value.attempts
    assert [(a.config.block_n, a.predicted) for a in attempts] == [(256, True), (128, True)]
    assert [a.required for a in attempts] == [lower_bound(x, w, "gfx942")(a.config) for a in attempts]
    assert "required at least 196608, limit 65536" in str(err.value)
    (exhausted,) = [e for e in logs if e["event"] == "tiling.exhausted"]
    assert [a["predicted"] for a in exhausted["attempts"]] == [True, True]


STAGE_MS = {3: 2.0, 2: 1.0, 1: 3.0}
"""Milliseconds the GPU-timer double gives a tile by its stages: the rung below the landing one is fastest."""


def gpu_timer_double(calls: list[rm.TileConfig], ms_of=lambda config: STAGE_MS[config.num_stages]):
    """Stands in for ``builtin._timer``: timing a launch needs a GPU, which this machine has not."""

    def make(ops, where):
        def timer(config: rm.TileConfig) -> float:
            calls.append(config)
            return ms_of(config)

        return timer

    return make


@pytest.mark.parametrize("compare", [0, 2])
def test_compare_keeps_the_fastest_of_the_landing_tile_and_the_rungs_below(compare, target, monkeypatch) -> None:
    target("gfx950")
    timed: list[rm.TileConfig] = []
    monkeypatch.setattr(builtin, "_timer", gpu_timer_double(timed))
    x, w, routing = problem()
    policy = policy_with("gfx950", OVER_GFX950, ladder={"compare": compare})
    with capture() as logs:
        out = moe_matmul(x, w, routing, "gather", policy=policy)
    torch.testing.assert_close(out, rm.moe_matmul_reference(x, w, routing, "gather"), atol=2e-2, rtol=2e-2)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    landed = rm.TileConfig(16, 256, 128, group_m=8, num_warps=4, num_stages=3)  # the block_m cut, which fits
    if compare == 0:
        assert timed == [] and "compared" not in selected
        assert selected["config"] == landed.as_dict()
        return
    below = [landed.replace(num_stages=2), landed.replace(num_stages=2, block_n=128)]  # one stage comes last
    assert timed == [landed, *below] * ROUNDS  # in alternation, each keeping its best round
    assert selected["config"] == below[0].as_dict()
    assert [(c["config"]["num_stages"], c["ms"]) for c in selected["compared"]] == [(3, 2.0), (2, 1.0), (2, 1.0)]
    timed.clear()
    with capture() as logs:
        moe_matmul(x, w, routing, "gather", policy=policy)
    assert timed == [] and [e["event"] for e in logs] == []  # the fastest is the cached winner


def test_the_second_move_candidate_keeps_the_block_m_cut_and_the_default_s_stages(target, monkeypatch) -> None:
    target("gfx950")
    timed: list[rm.TileConfig] = []
    monkeypatch.setattr(builtin, "_timer", gpu_timer_double(timed, lambda c: 1.0 if c.block_n == 128 else 2.0))
    x, w, routing = problem()
    policy = policy_with("gfx950", {**OVER_GFX950, "num_stages": 4}, ladder={"compare": 1})
    with capture() as logs:
        moe_matmul(x, w, routing, "gather", policy=policy)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    landed = rm.TileConfig(16, 256, 128, group_m=8, num_warps=4, num_stages=3)  # the block_m cut, one stage fewer
    second = rm.TileConfig(16, 128, 128, group_m=8, num_warps=4, num_stages=4)  # the cut, block_n halved, 4 stages
    assert timed == [landed, landed.replace(num_stages=2), second] * ROUNDS
    assert selected["config"] == second.as_dict()


def test_compare_without_a_timer_keeps_the_landing_tile(target) -> None:
    target("gfx950")  # the interpreter and virtual chips have no timer: nothing is timed
    x, w, routing = problem()
    with capture() as logs:
        moe_matmul(x, w, routing, "gather", policy=policy_with("gfx950", OVER_GFX950, ladder={"compare": 2}))
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    assert selected["config"]["num_stages"] == 3 and "compared" not in selected


PERSISTENT_SMALL = {"block_m": 16, "block_n": 64, "block_k": 32, "num_stages": 2, "is_persistent": True}
"""A small persistent tile for sm_90: a quick compile and interpreter run."""


@pytest.mark.parametrize("setting", ["always", "recovery", "never", "always, pin is_persistent"])
def test_a_persistent_tile_that_fits_at_once_is_timed_against_its_one_tile_form_only_always(
    setting, target, monkeypatch
) -> None:
    target("sm_90")
    timed: list[rm.TileConfig] = []
    monkeypatch.setattr(builtin, "_timer", gpu_timer_double(timed, lambda c: 2.0 if c.is_persistent else 1.0))
    x, w, routing = problem()
    section = {"default": PERSISTENT_SMALL, **({"pin": {"is_persistent": True}} if "pin" in setting else {})}
    ladder = {"compare_forms": setting.split(",")[0]}
    policy = parse_policy({"version": 1, "ladder": ladder, "arch": {"sm_90": section}})
    with capture() as logs:
        out = moe_matmul(x, w, routing, "gather", policy=policy)
    torch.testing.assert_close(out, rm.moe_matmul_reference(x, w, routing, "gather"), atol=2e-2, rtol=2e-2)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    persistent = rm.TileConfig(16, 64, 32, group_m=8, num_warps=4, num_stages=2, is_persistent=True)
    if setting != "always":  # no recovery to time anyway, or the policy holds is_persistent
        assert timed == [] and "compared" not in selected
        assert selected["config"] == persistent.as_dict()
        return
    one_tile = persistent.replace(is_persistent=False)
    assert timed == [persistent, one_tile] * ROUNDS
    assert selected["config"] == one_tile.as_dict()
    assert [(c["config"]["is_persistent"], c["ms"]) for c in selected["compared"]] == [(True, 2.0), (False, 1.0)]
    timed.clear()
    torch.testing.assert_close(moe_matmul(x, w, routing, "gather", policy=policy), out)
    assert timed == []  # the faster form is the cached winner


def test_a_recovery_times_the_landing_tile_its_one_tile_form_the_rung_below_and_the_second_move_first(
    target, monkeypatch
) -> None:
    target("sm_90")
    timed: list[rm.TileConfig] = []
    monkeypatch.setattr(builtin, "_timer", gpu_timer_double(timed, lambda c: c.num_stages if c.is_persistent else 0.5))
    x, w, routing = problem()
    over = {"block_m": 64, "block_n": 256, "block_k": 128, "num_stages": 4, "is_persistent": True}  # s3: 245760 B
    with capture() as logs:  # the shipped default: compare 1, compare_forms recovery
        moe_matmul(x, w, routing, "gather", policy=policy_with("sm_90", over, ladder={"trim_block_m": False}))
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    landed = rm.TileConfig(64, 256, 128, group_m=8, num_warps=4, num_stages=2, is_persistent=True)
    block_n_first = landed.replace(block_n=128, num_stages=4)  # 147456 B: fits with the default's stages
    below = landed.replace(block_n=128)  # the next rung: stages stop at 2 while block_n can move
    assert timed == [landed, landed.replace(is_persistent=False), below, block_n_first] * ROUNDS
    assert selected["config"] == landed.replace(is_persistent=False).as_dict()
    assert [c["ms"] for c in selected["compared"]] == [2.0, 0.5, 2.0, 4.0]
    with capture() as logs:
        moe_matmul(x, w, routing, "gather", policy=policy_with("sm_90", over, ladder={"trim_block_m": False,
                                                                                   "compare_second_move": False}))
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    assert block_n_first.as_dict() not in [c["config"] for c in selected["compared"]]


def test_a_one_tile_tile_that_fits_is_not_timed(target, monkeypatch) -> None:
    target("sm_90")
    timed: list[rm.TileConfig] = []
    monkeypatch.setattr(builtin, "_timer", gpu_timer_double(timed))
    x, w, routing = problem()
    policy = policy_with("sm_90", {**PERSISTENT_SMALL, "is_persistent": False}, ladder={"compare_forms": "always"})
    with capture() as logs:
        moe_matmul(x, w, routing, "gather", policy=policy)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    assert timed == [] and "compared" not in selected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="times real launches: needs a GPU")
def test_compare_forms_times_both_kernels_on_an_sm_90_gpu() -> None:
    from resilient_moe.targets import placement

    if placement().arch not in ("sm_90", "sm_90a"):
        pytest.skip(f"the persistent kernel is measured on sm_90, this GPU is {placement().arch}")
    x, w, routing = problem()
    with capture() as logs:
        policy = policy_with(placement().arch, PERSISTENT_SMALL, ladder={"compare_forms": "always"})
        out = moe_matmul(x, w, routing, "gather", policy=policy)
    torch.testing.assert_close(out, rm.moe_matmul_reference(x, w, routing, "gather"), atol=2e-2, rtol=2e-2)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    compared = selected["compared"]
    assert [c["config"]["is_persistent"] for c in compared] == [True, False] and all(c["ms"] > 0 for c in compared)
    assert selected["config"] == min(compared, key=lambda c: c["ms"])["config"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="times real launches: needs a GPU")
def test_compare_times_real_launches_on_the_gpu() -> None:
    from resilient_moe.targets import placement

    x, w, routing = problem()
    over = {"block_m": 128, "block_n": 256, "block_k": 128, "num_stages": 5}  # 491520 B on sm_90
    policy = policy_with(placement().arch, over, ladder={"compare": 1})
    with capture() as logs:
        out = moe_matmul(x, w, routing, "gather", policy=policy)
    torch.testing.assert_close(out, rm.moe_matmul_reference(x, w, routing, "gather"), atol=2e-2, rtol=2e-2)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    compared = selected["compared"]
    assert len(compared) == 3 and all(c["ms"] > 0 for c in compared)  # the landing, the rung below, block_n first
    assert selected["config"] == min(compared, key=lambda c: c["ms"])["config"]
