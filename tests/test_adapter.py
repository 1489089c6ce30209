"""The upstream triton_kernels adapter against a test double of both API styles (CI has no upstream).

The double's launch is real: the builtin kernel with the tile from the flags, compiled for the
virtual chip first when one is selected, so an over-limit tile raises the chip's OutOfResources.
"""

from __future__ import annotations

import contextvars
import json
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator

import pytest
import torch
import triton
from doubles import tk_double
from doubles.tk_double import core

import resilient_moe as rm
from resilient_moe import policy
from resilient_moe.backends.upstream import copies as adapter
from resilient_moe.cache import default_cache
from resilient_moe.config import TILE_FIELDS
from resilient_moe.policy import POLICY_ENV
from resilient_moe.testing import capture

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
T, E, K, N, TOP_K = 16, 4, 128, 256, 2
OVER_GFX950 = {"block_m": 128, "block_n": 256, "block_k": 128, "num_stages": 3}  # 196608 B of LDS > 163840


@pytest.fixture(params=["dict", "scoped"])
def tk(request) -> Iterator[tk_double.Installed]:
    """One flavor of the double under upstream's module names; the adapter forgets it afterwards."""
    adapter.uninstall()
    with tk_double.installed(request.param) as double:
        try:
            yield double
        finally:
            adapter.uninstall()


@pytest.fixture
def use_policy(tmp_path, monkeypatch) -> Iterator[Callable[[dict], None]]:
    """The adapter takes upstream's arguments only, so a policy reaches it the way it reaches a
    server: RESILIENT_MOE_POLICY (read once per process, hence the cache clearing)."""
    reread = getattr(policy, "environment_policy", None)

    def use(data: dict) -> None:
        path = tmp_path / "policy.yaml"
        path.write_text(json.dumps({"version": 1, **data}))
        monkeypatch.setenv(POLICY_ENV, str(path))
        if reread is not None:
            reread.cache_clear()

    yield use
    monkeypatch.delenv(POLICY_ENV, raising=False)
    if reread is not None:
        reread.cache_clear()


def ours(tk: tk_double.Installed) -> Callable:
    return getattr(rm, tk.entry)


def problem(tk: tk_double.Installed, tokens: int = T, n: int = N, k: int = K, seed: int = 0, **route):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, k, generator=g, dtype=torch.float16).to(DEVICE)
    w = (torch.randn(E, k, n, generator=g) / 8).to(DEVICE, torch.float16)
    logits = torch.randn(tokens, E, generator=g).to(DEVICE)
    return x, w, tk.route(logits, TOP_K, **route)


def tile(flags) -> tuple[int, ...]:
    return tuple(getattr(flags, name) for name in TILE_FIELDS)


def test_same_result_and_flags_as_upstream_when_nothing_fails(tk) -> None:
    x, w, routed = problem(tk)
    args, kwargs = tk.call(x, w, None, routed, "gather")
    direct = tk.fn(*args, **kwargs)
    with capture() as logs:
        first = ours(tk)(*args, **kwargs)
        second = ours(tk)(*args, **kwargs)
    assert torch.equal(first, direct) and torch.equal(second, direct)
    assert len({tile(r.flags) for r in core.records}) == 1  # the direct call's tile, every time
    assert [e["event"] for e in logs] == ["tiling.selected"]
    assert core.entries == [tk.entry] * 4  # direct; then learn + run; then the cache hit runs once


def test_hook_is_installed_at_first_call_and_removed_by_uninstall(tk) -> None:
    original = tk.opt_flags.make_opt_flags
    assert tk.public.make_opt_flags is original  # importing resilient_moe touched nothing
    x, w, routed = problem(tk, tokens=4)
    args, kwargs = tk.call(x, w, None, routed, "gather")
    ours(tk)(*args, **kwargs)
    assert tk.public.make_opt_flags is not original and tk.public.make_opt_flags.__wrapped__ is original
    assert tk.opt_flags.make_opt_flags is original
    adapter.uninstall()
    assert tk.public.make_opt_flags is original


def test_over_limit_default_recovers_and_keeps_constraints(tk, target, use_policy) -> None:
    target("gfx950")
    use_policy({"arch": {"gfx950": {"default": OVER_GFX950}}})
    tk.opt_flags.update_opt_flags_constraints({"split_k": 1})
    x, w, routed = problem(tk)
    args, kwargs = tk.call(x, w, None, routed, "gather")
    with capture() as logs:
        out = ours(tk)(*args, **kwargs)
    if INTERPRET:  # on a GPU machine the attempts compile for gfx950 and launch nothing (virtual/driver.py)
        torch.testing.assert_close(out, rm.moe_matmul_reference(x, w, routed.moe, "gather"), atol=2e-2, rtol=2e-2)

    downgrades = [e for e in logs if e["event"] == "tiling.downgrade"]
    (selected,) = [e for e in logs if e["event"] == "tiling.selected"]
    assert downgrades and all(d["required"] > d["limit"] == 163840 for d in downgrades)
    assert downgrades[0]["from"]["block_n"] == 256 and downgrades[0]["resource"] == "shared memory"
    assert selected["kernel"] == f"triton_kernels.{tk.entry}" and selected["config"] == downgrades[-1]["to"]
    assert tile(core.records[-1].flags) == tuple(selected["config"][f] for f in TILE_FIELDS)
    assert all(r.flags.split_k == 1 for r in core.records)  # the constraint held on every attempt
    assert tk.constraints() == {"split_k": 1}  # and is still there afterwards


def test_non_oom_errors_propagate_unchanged(tk) -> None:
    x, w, routed = problem(tk, tokens=4)
    bad_bias = torch.zeros(E, N + 1, dtype=torch.float16, device=DEVICE)  # the launch rejects it: a ValueError
    args, kwargs = tk.call(x, w, bad_bias, routed, "gather")
    with capture() as logs, pytest.raises(ValueError, match="bias.shape"):
        ours(tk)(*args, **kwargs)
    tk.opt_flags.update_opt_flags_constraints({"warp_specialize": True})  # unknown to the heuristic
    args, kwargs = tk.call(x, w, None, routed, "gather")
    with pytest.raises(AssertionError, match="warp_specialize"):
        ours(tk)(*args, **kwargs)
    assert not [e for e in logs if e["event"].startswith("tiling.")]


def test_empty_input_returns_zeros_without_calling_upstream(tk) -> None:
    x, w, routed = problem(tk, tokens=0)
    args, kwargs = tk.call(x, w, None, routed, "gather")
    with pytest.raises(ZeroDivisionError):  # why: the double, like upstream, divides by the tile count
        tk.fn(*args, **kwargs)
    entries = len(core.entries)
    out = ours(tk)(*args, **kwargs)
    assert out.shape == (0, N) and out.dtype == torch.float16

    # expert parallelism: no token routed to this rank's expert 0, but the output has rows
    x, w, _ = problem(tk)
    logits = torch.randn(T, E, device=DEVICE)
    logits[:, 0] = -1e4
    routed = tk.route(logits, TOP_K, expert_range=(0, 1))
    assert routed.moe.n_rows == 0
    rows = T if tk.flavor != "scoped" else T * TOP_K  # v3.7+ returns one row per slot
    buffer = torch.full((rows, N), 7.0, dtype=torch.float16, device=DEVICE)
    args, kwargs = tk.call(x[:0], w[:1], None, routed, "scatter", out=buffer)
    result = ours(tk)(*args, **kwargs)
    assert result is buffer and not result.any()
    args, kwargs = tk.call(x[:0], w[:1], None, routed, "scatter")
    fresh = ours(tk)(*args, **kwargs)
    assert fresh.shape == (rows, N) and not fresh.any()
    assert len(core.entries) == entries


def test_cached_winner_is_used_without_learning_again(tk) -> None:
    x, w, routed = problem(tk, tokens=8)
    args, kwargs = tk.call(x, w, None, routed, "gather")
    ours(tk)(*args, **kwargs)
    (key,) = default_cache().memory
    forced = rm.TileConfig(block_m=32, block_n=16, block_k=32, group_m=1, num_warps=2, num_stages=1)
    default_cache().memory[key] = forced
    before = len(core.entries)
    out = ours(tk)(*args, **kwargs)
    assert len(core.entries) == before + 1  # one upstream call: no learning on a hit
    assert tile(core.records[-1].flags) == tuple(forced.as_dict()[f] for f in TILE_FIELDS)
    torch.testing.assert_close(out, rm.moe_matmul_reference(x, w, routed.moe, "gather"), atol=2e-2, rtol=2e-2)


def test_patch_and_unpatch_swap_and_restore_consumer_names(tk, monkeypatch) -> None:
    upstream_fn = tk.fn
    consumer = types.ModuleType("fake_serving_moe_layer")  # like vLLM's `from triton_kernels.matmul_ogs import matmul_ogs`
    consumer.__dict__.update({tk.entry: upstream_fn, "moe_gemm": upstream_fn})
    bystander = types.ModuleType("fake_unrelated")
    bystander.matmul_ogs = bystander.matmul = len
    monkeypatch.setitem(sys.modules, consumer.__name__, consumer)
    monkeypatch.setitem(sys.modules, bystander.__name__, bystander)

    rm.patch_triton_kernels()
    rm.patch_triton_kernels()  # idempotent
    ours_fn = ours(tk)
    assert getattr(consumer, tk.entry) is ours_fn and consumer.moe_gemm is ours_fn and tk.fn is ours_fn
    assert bystander.matmul_ogs is len and bystander.matmul is len
    x, w, routed = problem(tk, tokens=4)
    args, kwargs = tk.call(x, w, None, routed, "gather")
    with capture() as logs:
        patched = getattr(consumer, tk.entry)(*args, **kwargs)  # through the dispatcher, not recursing
    assert [e["event"] for e in logs] == ["tiling.selected"]
    assert torch.equal(patched, upstream_fn(*args, **kwargs))

    rm.unpatch_triton_kernels()
    rm.unpatch_triton_kernels()
    assert getattr(consumer, tk.entry) is upstream_fn and consumer.moe_gemm is upstream_fn and tk.fn is upstream_fn


def test_threads_each_see_their_own_tile(tk) -> None:
    """Threads with their own shapes and forced tiles, a thread learning a new shape, and one calling
    upstream directly, all at once: every call gets its own flags, and the constraints survive."""
    tk.opt_flags.update_opt_flags_constraints({"split_k": 1})
    sizes = {"forced-0": 4, "forced-1": 8, "forced-2": 16, "forced-3": 32, "learning": 64, "direct": 2}
    forced = {
        "forced-0": rm.TileConfig(block_m=16, block_n=16, block_k=16, group_m=1, num_warps=1, num_stages=1),
        "forced-1": rm.TileConfig(block_m=32, block_n=32, block_k=32, group_m=2, num_warps=2, num_stages=2),
        "forced-2": rm.TileConfig(block_m=16, block_n=64, block_k=64, group_m=4, num_warps=4, num_stages=3),
        "forced-3": rm.TileConfig(block_m=64, block_n=32, block_k=16, group_m=8, num_warps=8, num_stages=4),
    }
    calls = {name: problem(tk, tokens=tokens, n=64, k=64, seed=i) for i, (name, tokens) in enumerate(sizes.items())}
    expected: dict[str, tuple[int, ...]] = {}
    for name, config in forced.items():  # learn each shape once, then force a distinct winner
        x, w, routed = calls[name]
        args, kwargs = tk.call(x, w, None, routed, "gather")
        known = set(default_cache().memory)
        ours(tk)(*args, **kwargs)
        (key,) = set(default_cache().memory) - known
        default_cache().memory[key] = config
        expected[name] = tile(config)
    for name in ("learning", "direct"):  # these get upstream's own default
        x, w, routed = calls[name]
        args, kwargs = tk.call(x, w, None, routed, "gather")
        tk.fn(*args, **kwargs)
        expected[name] = tile(core.records[-1].flags)
    core.reset()

    start = threading.Barrier(len(sizes))
    failures: list[BaseException] = []

    def work(name: str) -> None:
        x, w, routed = calls[name]
        args, kwargs = tk.call(x, w, None, routed, "gather")
        fn = tk.fn if name == "direct" else ours(tk)
        start.wait()
        for _ in range(3):
            out = fn(*args, **kwargs)
            torch.testing.assert_close(out, rm.moe_matmul_reference(x, w, routed.moe, "gather"), atol=2e-2, rtol=2e-2)

    def run(name: str, context: contextvars.Context) -> None:
        try:
            context.run(work, name)  # the main thread's context: scoped constraints reach the thread
        except BaseException as err:  # noqa: BLE001 - reported below
            failures.append(err)

    threads = [threading.Thread(target=run, name=name, args=(name, contextvars.copy_context())) for name in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    seen: dict[str, set[tuple[int, ...]]] = {}
    for record in core.records:
        seen.setdefault(record.thread, set()).add(tile(record.flags))
        assert record.flags.split_k == 1
    assert seen == {name: {expected[name]} for name in sizes}
    assert tk.constraints() == {"split_k": 1}


@pytest.mark.parametrize(
    ("layout", "flavor"), [("dict", "v3.5"), ("dict36", "v3.6"), ("scoped", "v3.8+"), ("scoped-no-scoped-api", "v3.7")]
)
def test_flavor_detection(layout, flavor) -> None:
    adapter.uninstall()
    with tk_double.installed(layout.removesuffix("-no-scoped-api")) as tk:
        if layout.endswith("-no-scoped-api"):
            del tk.opt_flags.scoped_opt_flags_constraints
        try:
            found = adapter.upstream()
            assert (found.flavor, found.module, found.opt_flags, found.OptFlags) == (
                flavor, tk.public, tk.opt_flags, tk.opt_flags.OptFlags)
            assert found.fn is tk.fn
        finally:
            adapter.uninstall()


def test_calling_the_other_entry_point_names_the_right_one() -> None:
    adapter.uninstall()
    with tk_double.installed("dict"):
        try:
            with pytest.raises(ImportError, match="call resilient_moe.matmul_ogs instead"):
                rm.matmul(None, None, None)
        finally:
            adapter.uninstall()


def test_missing_upstream_says_how_to_install(monkeypatch) -> None:
    adapter.uninstall()
    monkeypatch.setitem(sys.modules, "triton_kernels", None)  # an import of it fails, whatever is installed
    tag = "v" + triton.__version__.split("+")[0]
    with pytest.raises(ImportError) as err:
        rm.matmul_ogs(None, None, None)
    message = str(err.value)
    assert f'pip install "git+https://github.com/triton-lang/triton.git@{tag}#subdirectory=python/triton_kernels"' in message
    assert "PyPI" in message and "unrelated" in message
