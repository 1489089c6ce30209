"""A cached winner that no longer fits (a file shipped for another policy, copied from another machine
of the same arch name, written by an older Triton) must not crash the call: the dispatcher drops it
(``cache.stale``, with the bytes), climbs from the default and records a winner that fits. One
mechanism for every backend: the builtin kernel and the triton_kernels adapter (on its test double).
Before (459736c) a stale hit raised the chip's OutOfResources to the caller on an H200, and under a
virtual chip it was not checked at all: the call ran a tile the chip cannot hold, and these tests fail
there (no ``cache.stale``, the over-limit winner stays in the file)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import OVER_GFX950, problem
from doubles import tk_double

import resilient_moe as rm
from resilient_moe import settings
from resilient_moe.backends.upstream import copies as adapter
from resilient_moe.cache import FILE_NAME
from resilient_moe.policy import POLICY_ENV
from resilient_moe.testing import capture

OVER = rm.TileConfig(**{**dict(group_m=8, num_warps=8), **OVER_GFX950})  # 196608 B of LDS > 163840


def edit_winners(cache_dir: Path, config: rm.TileConfig) -> list[str]:
    """Replace every winner in the cache file with ``config``, as a file from elsewhere would hold it."""
    path = cache_dir / FILE_NAME
    data = json.loads(path.read_text())
    for entry in data["entries"].values():
        entry["config"] = config.as_dict()
    path.write_text(json.dumps(data))
    return list(data["entries"])


def winners(cache_dir: Path) -> dict[str, dict]:
    return {k: e["config"] for k, e in json.loads((cache_dir / FILE_NAME).read_text())["entries"].items()}


@pytest.mark.parametrize("mode", ["gather", "scatter"])
def test_the_builtin_drops_a_stale_winner_and_climbs_again(mode: str, target, cache_dir: Path) -> None:
    target("gfx950")
    x, w, routing = problem()
    if mode == "scatter":
        x = torch.randn(routing.n_rows, x.shape[1], generator=torch.Generator().manual_seed(1)).to(x.device, x.dtype)
    expected = rm.moe_matmul(x, w, routing, mode)  # the shipped policy's own winner, which fits
    (key,) = edit_winners(cache_dir, OVER)
    rm.reset()  # a new process: the file is all it knows
    with capture() as logs:
        out = rm.moe_matmul(x, w, routing, mode)
    torch.testing.assert_close(out, expected)
    (stale,) = [e for e in logs if e["event"] == "cache.stale"]
    assert stale["config"] == OVER.as_dict() and stale["required"] > stale["limit"] == 163840 and stale["key"] == key
    assert [e["event"] for e in logs].count("tiling.selected") == 1
    fitting = winners(cache_dir)[key]
    assert fitting != OVER.as_dict()
    resolution = rm.resolution(x, w, routing, mode)
    assert resolution.origin == "ladder" and resolution.stale.config == OVER and resolution.winner.as_dict() == fitting

    with capture() as logs:  # the new winner serves from now on
        rm.moe_matmul(x, w, routing, mode)
    assert [e["event"] for e in logs] == []


def test_a_stale_winner_equal_to_the_default_is_not_tried_twice(target, cache_dir: Path, fits_calls) -> None:
    """The ladder starts at the policy's default; when that is the stale winner, its failure counts."""
    target("gfx950")
    policy = rm.Policy.model_validate({"version": 1, "arch": {"gfx950": {"default": OVER_GFX950}}})
    x, w, routing = problem()
    rm.moe_matmul(x, w, routing, policy=policy)
    edit_winners(cache_dir, OVER)
    rm.reset()
    fits_calls.clear()
    with capture() as logs:
        rm.moe_matmul(x, w, routing, policy=policy)
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    assert selected["attempts"] == 2  # the stale default, counted once, then the block_m cut that fits
    assert fits_calls == ["gfx950", "gfx950"]  # the stale winner's hit, then the rung that fits


@pytest.fixture
def tk(monkeypatch, tmp_path) -> Iterator[tk_double.Installed]:
    adapter.uninstall()
    with tk_double.installed("dict") as double:
        try:
            yield double
        finally:
            adapter.uninstall()


def test_the_adapter_drops_a_stale_winner_and_climbs_again(tk, target, cache_dir: Path) -> None:
    target("gfx950")
    x, w, _ = problem()
    routed = tk.route(torch.randn(x.shape[0], w.shape[0], generator=torch.Generator().manual_seed(2)).to(x.device), 2)
    args, kwargs = tk.call(x, w, None, routed, "gather")
    expected = rm.matmul_ogs(*args, **kwargs)
    (key,) = edit_winners(cache_dir, OVER)
    rm.reset()
    with capture() as logs:
        out = rm.matmul_ogs(*args, **kwargs)
    if not torch.cuda.is_available():  # on a GPU machine a virtual chip's launches are compiled for that
        torch.testing.assert_close(out, expected)  # chip (the adapter's preflight mode): no output to compare
    (stale,) = [e for e in logs if e["event"] == "cache.stale"]
    assert stale["required"] > stale["limit"] and stale["key"] == key
    assert winners(cache_dir)[key] != OVER.as_dict()
    assert settings.cache().resolutions  # the adapter's record, like the builtin's


def test_a_policy_from_the_environment_reaches_the_stale_path(tk, target, cache_dir: Path, monkeypatch, tmp_path) -> None:
    """The adapter takes upstream's arguments only: its policy comes from RESILIENT_MOE_POLICY."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(json.dumps({"version": 1, "arch": {"gfx950": {"default": {"block_m": 16}}}}))
    monkeypatch.setenv(POLICY_ENV, str(policy_file))
    test_the_adapter_drops_a_stale_winner_and_climbs_again(tk, target, cache_dir)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                    reason="the chip's own limit: written for sm_90 (H100, H200)")
def test_on_the_gpu_a_stale_winner_raises_at_launch_and_is_replaced(cache_dir: Path) -> None:
    """No virtual chip: 128x256x64 at 5 stages needs 245760 B, over the H100/H200's 232448, and the
    real launch says so."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1024, generator=g).to("cuda", torch.bfloat16)
    w = (torch.randn(8, 1024, 2048, generator=g) / 32).to("cuda", torch.bfloat16)
    routing = rm.route(torch.randn(4096, 8, generator=g).to("cuda"), 2)
    expected = rm.moe_matmul(x, w, routing)
    (key,) = edit_winners(cache_dir, rm.TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=5))
    rm.reset()
    with capture() as logs:
        out = rm.moe_matmul(x, w, routing)
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
    (stale,) = [e for e in logs if e["event"] == "cache.stale"]
    assert stale["required"] == 245760 and stale["limit"] == 232448
    assert winners(cache_dir)[key]["num_stages"] < 5
