"""Test session set-up: without a GPU, kernels run in the Triton interpreter; each test gets its own cache.

TRITON_INTERPRET must be set before any @triton.jit function is created, so it is set here, at
collection, before the tests import resilient_moe. Compiles for virtual chips run in worker
processes, which start without it.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.pop("RESILIENT_MOE_TARGET", None)
os.environ.pop("RESILIENT_MOE_POLICY", None)
os.environ.pop("TRITON_HIP_USE_ASYNC_COPY", None)

from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

import resilient_moe as rm  # noqa: E402
from resilient_moe import (
    cache,  # noqa: E402
    virtual,  # noqa: E402
)
from resilient_moe.policy import parse_policy  # noqa: E402
from resilient_moe import targets  # noqa: E402
from resilient_moe.policy import POLICY_ENV  # noqa: E402
from resilient_moe.targets import ASYNC_COPY_ENV, TARGET_ENV  # noqa: E402


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Iterator[os.PathLike[str]]:
    """A fresh persistent cache directory, and fresh process state (``rm.reset()``), for every test."""
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(path))
    rm.reset()
    yield path
    rm.reset()


@pytest.fixture
def async_copy_off(monkeypatch) -> None:
    """AMD async copies off, as Triton 3.6 has them: 3.9 turns them on for gfx950 by default, which adds
    an LDS buffer per tile, and a test that names the tile a ladder lands on must land alike on every
    supported Triton. tests/test_smem.py covers both settings."""
    monkeypatch.setenv(ASYNC_COPY_ENV, "0")


@pytest.fixture
def target(monkeypatch, async_copy_off) -> Iterator[Callable[[str], None]]:
    """Select a virtual chip for the rest of the test: ``target("gfx950")`` (async copies off)."""

    def use(name: str) -> None:
        monkeypatch.setenv(TARGET_ENV, name)
        rm.reset()

    yield use


# Shared by the tests that run the dispatcher on a small problem.

T, E, K, N, TOP_K = 16, 4, 128, 256, 2
OVER_GFX950 = {"block_m": 128, "block_n": 256, "block_k": 128, "num_stages": 3}  # 196608 B of LDS > 163840


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, rm.Routing]:
    """A small MoE GEMM on the device that runs kernels here: the GPU if there is one, else the CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, K, generator=g, dtype=torch.float16).to(device)
    w = (torch.randn(E, K, N, generator=g) / 8).to(device, torch.float16)
    return x, w, rm.route(torch.randn(T, E, generator=g).to(device), TOP_K)


def policy_with(arch: str, default: dict, **extra) -> rm.Policy:
    return parse_policy({"version": 1, "arch": {arch: {"default": default}}, **extra})


@pytest.fixture
def fits_calls(monkeypatch) -> list[str]:
    """Records every fit check (a compile for the virtual chip) the dispatcher asks for."""
    calls: list[str] = []
    real = virtual.fits

    def counting(kernel, args, constexprs, chip):
        calls.append(chip)
        return real(kernel, args, constexprs, chip)

    monkeypatch.setattr(virtual, "fits", counting)
    return calls


SMALL_CHIP = 101376


@pytest.fixture
def small_chip(monkeypatch) -> Iterator[None]:
    """A 101376-byte chip (RTX 4090, L40S): a virtual sm_89 under the interpreter on a CPU, the real GPU
    capped to 101376 bytes elsewhere (``targets.cap_shared_memory``)."""
    if not torch.cuda.is_available():
        monkeypatch.setenv(TARGET_ENV, "sm_89")
        rm.reset()
        yield
        return
    monkeypatch.setenv(targets.CAP_ENV, str(SMALL_CHIP))
    rm.reset()
    yield
    targets.cap_shared_memory(None)


@pytest.fixture
def use_policy(tmp_path, monkeypatch) -> Callable[[dict], None]:
    """Make a policy document (a mapping, ``version`` added) the environment's policy."""

    def use(document: dict) -> None:
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump({"version": 1, **document}))
        monkeypatch.setenv(POLICY_ENV, str(path))
        rm.reset()

    return use
