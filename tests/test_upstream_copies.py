"""Every copy of upstream a server imports, and what of a call the cache key holds: against copies of
the triton_kernels test double installed under the standalone name, under the names vLLM and SGLang
vendor theirs (``vllm.third_party.triton_kernels``, ``sglang.third_party.triton_kernels``), and under
vLLM's alias (its copy registered as ``triton_kernels``, with a second module object loaded by a
mixed import). The parents of the vendored names are empty stand-in packages, not vLLM or SGLang."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from doubles import tk_double
from doubles.tk_double import core

import resilient_moe as rm
from resilient_moe import policy
from resilient_moe.backends.upstream import copies as adapter, patch
from resilient_moe.policy import POLICY_ENV

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
VLLM, SGLANG = "vllm.third_party.triton_kernels", "sglang.third_party.triton_kernels"


@pytest.fixture(autouse=True)
def forget() -> Iterator[None]:
    adapter.uninstall()
    yield
    adapter.uninstall()


def problem(copy: tk_double.Installed, tokens: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, 128, generator=g, dtype=torch.float16).to(DEVICE)
    w = (torch.randn(4, 128, 256, generator=g) / 8).to(DEVICE, torch.float16)
    routed = copy.route(torch.randn(tokens, 4, generator=g).to(DEVICE), 2)
    return copy.call(x, w, None, routed, "gather")


def layer(name: str, **globals_: object) -> types.ModuleType:
    """An engine module that did ``from <copy>.matmul_ogs import matmul_ogs`` (a stand-in, registered)."""
    module = types.ModuleType(name)
    vars(module).update(globals_)
    sys.modules[name] = module
    return module


def test_vendored_copies_are_found_patched_and_unpatched_each_with_its_own_front() -> None:
    with tk_double.installed("dict", VLLM) as vllm, tk_double.installed("scoped", SGLANG, keep=True) as sglang:
        vllm_fn, sglang_fn = vllm.fn, sglang.fn  # upstream's own functions (``.fn`` reads the module attribute)
        vllm_layer = layer("stand_in_vllm_layer", matmul_ogs=vllm_fn)
        sglang_layer = layer("stand_in_sglang_layer", matmul=sglang_fn)
        try:
            assert "triton_kernels" not in sys.modules  # no standalone package: patching still works
            rm.patch_triton_kernels()
            assert vllm_layer.matmul_ogs is not vllm_fn and sglang_layer.matmul is not sglang_fn
            assert vllm.public.matmul_ogs is vllm_layer.matmul_ogs and sglang.public.matmul is sglang_layer.matmul
            assert vllm_layer.matmul_ogs.__wrapped__ is vllm_fn  # functools.wraps: upstream's name and doc

            args, kwargs = problem(vllm)
            assert torch.equal(vllm_layer.matmul_ogs(*args, **kwargs), vllm_fn(*args, **kwargs))
            args, kwargs = problem(sglang)
            assert torch.equal(sglang_layer.matmul(*args, **kwargs), sglang_fn(*args, **kwargs))
            assert core.entries == ["matmul_ogs"] * 3 + ["matmul"] * 3  # each front called its own copy

            found = {up.module.__name__: up for up in adapter.copies()}
            standalone = {"triton_kernels.matmul_ogs"}  # upstream's own package, where one is importable (GPU checks)
            assert set(found) - standalone == {f"{VLLM}.matmul_ogs", f"{SGLANG}.matmul"}
            assert found[f"{VLLM}.matmul_ogs"].source.startswith(VLLM + "@")
            assert patch.patched(vllm_fn) == [f"{VLLM}.matmul_ogs.matmul_ogs", "stand_in_vllm_layer.matmul_ogs"]

            rm.unpatch_triton_kernels()
            assert vllm_layer.matmul_ogs is vllm_fn and sglang_layer.matmul is sglang_fn
            assert vllm.public.matmul_ogs is vllm_fn and not patch.patched(vllm_fn)
        finally:
            del sys.modules["stand_in_vllm_layer"], sys.modules["stand_in_sglang_layer"]


def test_vllms_alias_and_a_second_module_object_of_the_same_source_are_each_hooked_once() -> None:
    with tk_double.installed("dict", VLLM) as vllm:
        saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "triton_kernels"}
        vllm_fn = vllm.fn
        sys.modules["triton_kernels"] = sys.modules[VLLM]  # vLLM: its copy answers `import triton_kernels`
        for name in ("matmul_ogs_details", "matmul_ogs_details.opt_flags"):
            sys.modules[f"triton_kernels.{name}"] = sys.modules[f"{VLLM}.{name}"]
        spec = importlib.util.spec_from_file_location("triton_kernels.matmul_ogs", vllm.public.__file__)
        assert spec is not None and spec.loader is not None
        second = importlib.util.module_from_spec(spec)  # a mixed absolute import: the same file, again
        sys.modules["triton_kernels.matmul_ogs"] = second
        spec.loader.exec_module(second)
        try:
            copies = adapter.copies()
            assert {id(up.module) for up in copies} == {id(vllm.public), id(second)}  # two objects, two hooks
            assert len({up.source for up in copies}) == 1  # one source: one identity in the cache key
            assert adapter.upstream().module is second  # what `from triton_kernels.matmul_ogs import` gives

            engine = layer("stand_in_engine", a=vllm_fn, b=second.matmul_ogs)
            original_b = second.matmul_ogs
            rm.patch_triton_kernels()
            assert engine.b is rm.matmul_ogs and engine.a is not vllm_fn and engine.a is not rm.matmul_ogs
            args, kwargs = problem(vllm)
            assert torch.equal(engine.a(*args, **kwargs), engine.b(*args, **kwargs))
            rm.patch_triton_kernels()  # again: nothing replaced twice
            rm.unpatch_triton_kernels()
            assert engine.a is vllm_fn and engine.b is original_b
        finally:
            sys.modules.pop("stand_in_engine", None)
            for name in [name for name in sys.modules if name.split(".")[0] == "triton_kernels"]:
                del sys.modules[name]
            sys.modules.update(saved)


@pytest.fixture
def constrained_policy(tmp_path, monkeypatch) -> Iterator[None]:
    """A policy that keeps upstream's tile unless it fails (RESILIENT_MOE_POLICY, as a server sets it)."""
    path = tmp_path / "policy.yaml"
    path.write_text(json.dumps({"version": 1}))
    monkeypatch.setenv(POLICY_ENV, str(path))
    policy.environment_policy.cache_clear()
    yield
    policy.environment_policy.cache_clear()


@pytest.mark.parametrize("flavor", ["dict", "scoped"])
def test_a_winner_learned_under_one_constraint_never_reaches_a_call_under_another(flavor, cache_dir, constrained_policy) -> None:
    with tk_double.installed(flavor) as tk:
        args, kwargs = problem(tk)
        tk.opt_flags.update_opt_flags_constraints({"block_m": 64})
        rm_fn = getattr(rm, tk.entry)
        rm_fn(*args, **kwargs)
        assert core.records[-1].flags.block_m == 64
        tk.opt_flags.reset_opt_flags_constraints()
        tk.opt_flags.update_opt_flags_constraints({"block_m": 16})
        rm_fn(*args, **kwargs)
        assert core.records[-1].flags.block_m == 16
        keys = [entry for entry in json.loads(next(Path(cache_dir).glob("*.json")).read_text())["entries"]]
        assert sum("block_m=64" in key for key in keys) == 1 and sum("block_m=16" in key for key in keys) == 1
        tk.opt_flags.reset_opt_flags_constraints()


def test_constrained_fields_are_tied_for_the_ladder(target, use_over_limit, cache_dir) -> None:
    """Forced over gfx950's limit with block_n constrained by the caller: no rung moves block_n."""
    target("gfx950")
    use_over_limit()
    with tk_double.installed("dict") as tk:
        tk.opt_flags.update_opt_flags_constraints({"block_n": 256})
        args, kwargs = problem(tk)
        rm.matmul_ogs(*args, **kwargs)
        assert len(core.records) >= 2 and {r.flags.block_n for r in core.records} == {256}
        tk.opt_flags.reset_opt_flags_constraints()


@pytest.fixture
def use_over_limit(tmp_path, monkeypatch) -> Iterator[object]:
    from conftest import OVER_GFX950

    def use() -> None:
        path = tmp_path / "over.yaml"
        path.write_text(json.dumps({"version": 1, "arch": {"gfx950": {"default": OVER_GFX950}}}))
        monkeypatch.setenv(POLICY_ENV, str(path))
        policy.environment_policy.cache_clear()

    yield use
    policy.environment_policy.cache_clear()
