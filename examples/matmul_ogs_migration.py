"""Migrate a triton_kernels ``matmul_ogs`` call site to resilient_moe: change one import, or patch.

1. Code you own: ``from triton_kernels.matmul_ogs import matmul_ogs`` becomes
   ``from resilient_moe import matmul_ogs``. Same arguments, same result; a tile that does not fit the
   chip's shared memory steps down the ladder instead of raising ``OutOfResources``.
2. Code you cannot edit (vLLM, SGLang, ATOM): ``rm.patch_triton_kernels()`` puts resilient_moe's
   function wherever upstream's was imported; ``rm.unpatch_triton_kernels()`` restores it.
Newer upstream (v3.7+) has ``triton_kernels.matmul.matmul`` instead: ``from resilient_moe import matmul``.

Needs a GPU and upstream triton_kernels (not on PyPI: install it from the Triton repository at the tag of
your triton, see the README). Without them it says what is missing and exits 0, so CI can run it.

Run: python examples/matmul_ogs_migration.py
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

import torch

import resilient_moe as rm

THEIR_CODE = """
from triton_kernels.{entry} import {entry}

def forward(x, w):
    return {entry}(x, w, None)
"""


def upstream_entry() -> str | None:
    """``matmul_ogs`` (v3.5, v3.6) or ``matmul`` (v3.7+), whichever the installed upstream provides; None if none."""
    for entry in ("matmul", "matmul_ogs"):
        try:
            importlib.import_module(f"triton_kernels.{entry}")
        except ModuleNotFoundError as err:
            if err.name == "triton_kernels":
                return None
            continue
        return entry
    return None


def their_module(entry: str) -> types.ModuleType:
    """Stands in for a serving framework's MoE layer: it imported upstream's function by name at load time."""
    module = types.ModuleType("their_moe_layer")
    exec(THEIR_CODE.format(entry=entry), module.__dict__)
    sys.modules[module.__name__] = module
    return module


def migrate(entry: str, x: torch.Tensor, w: torch.Tensor) -> bool:
    """Both ways of moving a call site onto resilient_moe; True if each gives upstream's result."""
    upstream_fn = getattr(importlib.import_module(f"triton_kernels.{entry}"), entry)
    ours = getattr(rm, entry)  # from resilient_moe import matmul_ogs (or matmul)

    print(f"1. one import: from triton_kernels.{entry} import {entry}  ->  from resilient_moe import {entry}")
    same = torch.equal(ours(x, w, None), upstream_fn(x, w, None))
    print(f"   same result as upstream: {same}")

    print("2. code you cannot edit: rm.patch_triton_kernels()")
    theirs = their_module(entry)
    rm.patch_triton_kernels()
    patched = getattr(theirs, entry) is ours
    same_patched = torch.equal(theirs.forward(x, w), upstream_fn(x, w, None))
    rm.unpatch_triton_kernels()
    restored = getattr(theirs, entry) is upstream_fn
    print(f"   their {entry} is resilient_moe's: {patched}; same result: {same_patched}; "
          f"restored by unpatch: {restored}")
    return same and patched and same_patched and restored


def main() -> int:
    entry = upstream_entry()
    if entry is None:
        print("upstream triton_kernels (triton_kernels.matmul_ogs or .matmul) is not installed: nothing to migrate "
              "here (skipped). Install it from the Triton repository at the tag of your triton, run this on a GPU.")
        return 0
    if not torch.cuda.is_available():
        print("triton_kernels is installed, but there is no GPU to run its kernels on (skipped).")
        return 0
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="   %(message)s")  # resilient_moe's events
    x = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) / 64
    return 0 if migrate(entry, x, w) else 1


if __name__ == "__main__":
    raise SystemExit(main())
