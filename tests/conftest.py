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

from collections.abc import Callable, Iterator  # noqa: E402

import pytest  # noqa: E402

from resilient_moe import cache  # noqa: E402
from resilient_moe.targets import TARGET_ENV, placement  # noqa: E402


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Iterator[os.PathLike[str]]:
    """A fresh persistent cache directory, and a fresh process cache, for every test."""
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(path))
    monkeypatch.setattr(cache, "_default", None)
    yield path


@pytest.fixture
def target(monkeypatch) -> Iterator[Callable[[str], None]]:
    """Select a virtual chip for the rest of the test: ``target("gfx950")``."""

    def use(name: str) -> None:
        monkeypatch.setenv(TARGET_ENV, name)
        placement.cache_clear()

    yield use
    placement.cache_clear()
