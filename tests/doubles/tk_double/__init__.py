"""A test double of upstream ``triton_kernels``, written from scratch for resilient_moe's tests.

It is not upstream code, and not a copy of it: only the names an adapter touches follow upstream's
public API (module paths, ``matmul_ogs`` / ``matmul`` signatures, ``OptFlags`` fields, the opt-flags
functions); every body is the double's own. It computes through resilient_moe's builtin kernel with
the tile its flags chose, so an over-limit tile fails with a real OutOfResources (see core.py).

``installed(flavor, root)`` puts one flavor into ``sys.modules`` under upstream's real module names
(below ``root``: ``triton_kernels``, or a vendored copy's ``vllm.third_party.triton_kernels``, whose
parents are then empty stand-in packages) and takes it out again (restoring whatever was there, a real
upstream included):

- ``"dict"`` (v3.5-like): ``triton_kernels.matmul_ogs`` + ``matmul_ogs_details.opt_flags`` with a
  module-level constraints dict, + ``triton_kernels.routing``;
- ``"dict36"``: the same without ``triton_kernels.routing`` (how v3.6 looks to a detector);
- ``"scoped"`` (v3.8-like): ``triton_kernels.matmul`` + ``matmul_details.opt_flags`` with
  ContextVar-backed constraints and ``scoped_opt_flags_constraints``.

On disk the double lives under ``tk_double/``, never under a ``triton_kernels`` folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import core

_HERE = Path(__file__).parent
_PACKAGE = None

LAYOUTS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "dict": (
        ("triton_kernels", _PACKAGE),
        ("triton_kernels.routing", "dict_style/routing.py"),
        ("triton_kernels.matmul_ogs_details", _PACKAGE),
        ("triton_kernels.matmul_ogs_details.opt_flags", "dict_style/opt_flags.py"),
        ("triton_kernels.matmul_ogs", "dict_style/matmul_ogs.py"),
    ),
    "dict36": (
        ("triton_kernels", _PACKAGE),
        ("triton_kernels.matmul_ogs_details", _PACKAGE),
        ("triton_kernels.matmul_ogs_details.opt_flags", "dict_style/opt_flags.py"),
        ("triton_kernels.matmul_ogs", "dict_style/matmul_ogs.py"),
    ),
    "scoped": (
        ("triton_kernels", _PACKAGE),
        ("triton_kernels.matmul_details", _PACKAGE),
        ("triton_kernels.matmul_details.opt_flags", "scoped_style/opt_flags.py"),
        ("triton_kernels.matmul", "scoped_style/matmul.py"),
    ),
}


@dataclass(frozen=True)
class Routed:
    """One routing, as the flavor's callers hold it (``parts``) and as the builtin kernel sees it (``moe``)."""

    moe: Any
    parts: tuple[Any, ...]


@dataclass(frozen=True)
class Installed:
    flavor: str
    modules: dict[str, types.ModuleType]
    root: str = "triton_kernels"

    @property
    def entry(self) -> str:
        return "matmul" if self.flavor == "scoped" else "matmul_ogs"

    @property
    def public(self) -> types.ModuleType:
        return self.modules[f"{self.root}.{self.entry}"]

    @property
    def fn(self) -> Any:
        return getattr(self.public, self.entry)

    @property
    def opt_flags(self) -> types.ModuleType:
        details = "matmul_details" if self.flavor == "scoped" else "matmul_ogs_details"
        return self.modules[f"{self.root}.{details}.opt_flags"]

    def constraints(self) -> dict[str, Any]:
        """The constraints in force in this context."""
        held = self.opt_flags._opt_flags_constraints
        return dict(held.get() or {}) if self.flavor == "scoped" else dict(held)

    def route(self, logits: torch.Tensor, top_k: int, expert_range: tuple[int, int] | None = None) -> Routed:
        parts = (core.scoped_routing if self.flavor == "scoped" else core.dict_routing)(logits, top_k, expert_range)
        return Routed(parts[0].moe, parts)

    def call(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, routed: Routed, mode: str,
             out: torch.Tensor | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(args, kwargs) of one public call in this flavor's style, the way vLLM / SGLang call it."""
        routing, gather, scatter = routed.parts
        index = {"gather_indx": gather} if mode == "gather" else {"scatter_indx": scatter}
        if self.flavor == "scoped":
            return (x, w, bias), {"a_ragged_metadata": routing, **index, **({} if out is None else {"c": out})}
        return (x, w, bias, routing), {**index, **({} if out is None else {"y": out})}


def _owned(name: str, root: str) -> bool:
    top = root.partition(".")[0]
    return name == top or name.startswith(top + ".")


def _load(name: str, file: str | None) -> types.ModuleType:
    if file is None:
        module = types.ModuleType(name, "test double package (resilient_moe tests)")
        module.__path__ = []  # a package with nothing on disk: other submodules do not exist
        sys.modules[name] = module
    else:
        spec = importlib.util.spec_from_file_location(name, _HERE / file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


@contextlib.contextmanager
def installed(flavor: str, root: str = "triton_kernels", keep: bool = False) -> Iterator[Installed]:
    """Fresh modules of one flavor under upstream's names below ``root`` for the block; all removed
    afterwards. ``keep`` leaves other copies (and other roots) installed beside it."""
    saved = {name: module for name, module in sys.modules.items() if _owned(name, root)}
    if not keep:
        for name in saved:
            del sys.modules[name]
    core.reset()
    parents = [root.rsplit(".", depth)[0] for depth in range(root.count("."), 0, -1)]
    try:
        for name in parents:
            if name not in sys.modules:
                _load(name, _PACKAGE)
        names = [(root + name.removeprefix("triton_kernels"), file) for name, file in LAYOUTS[flavor]]
        yield Installed(flavor, {name: _load(name, file) for name, file in names}, root)
    finally:
        for name in [name for name in sys.modules if _owned(name, root)]:
            del sys.modules[name]
        sys.modules.update(saved)
        core.reset()
