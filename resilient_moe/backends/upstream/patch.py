"""Putting our ``matmul_ogs`` / ``matmul`` where serving code looks upstream's up, and taking it back."""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

lock = threading.RLock()
"""Held while upstream is found, hooked, patched or unpatched (one lock: these call each other)."""


@dataclass(frozen=True)
class _Patch:
    module: types.ModuleType
    name: str
    original: Any
    replacement: Any


_patches: list[_Patch] = []


def patch_triton_kernels() -> None:
    """Put our function where upstream's is looked up, in every copy imported (the standalone
    ``triton_kernels`` and the copies vLLM and SGLang vendor): each copy's module attribute and every
    imported module holding that copy's function as a global, under any name (vLLM, SGLang and ATOM
    do ``from triton_kernels.matmul_ogs import matmul_ogs``). Safe to call again: it also catches
    copies and modules imported since. Modules imported later get ours from the copy's attribute."""
    from .matmul_ogs import front
    from .copies import copies

    with lock:
        replacing = {id(up.fn): (up.fn, front(up)) for up in copies()}
        for module in list(sys.modules.values()):
            if not isinstance(module, types.ModuleType):
                continue
            try:
                namespace = object.__getattribute__(module, "__dict__")  # loads no lazy module
            except AttributeError:
                continue
            if str(namespace.get("__name__", "")).startswith("resilient_moe."):
                continue
            for name, value in list(namespace.items()):
                found = replacing.get(id(value))
                if found is not None and value is found[0]:
                    namespace[name] = found[1]
                    _patches.append(_Patch(module, name, value, found[1]))


def patched(fn: Callable[..., Any]) -> list[str]:
    """Where upstream's ``fn`` is replaced by ours now, as ``module.name``."""
    with lock:
        return [f"{p.module.__name__}.{p.name}" for p in _patches if p.original is fn
                and object.__getattribute__(p.module, "__dict__").get(p.name) is p.replacement]


def unpatch_triton_kernels() -> None:
    """Restore exactly the names ``patch_triton_kernels`` replaced (those still holding ours)."""
    with lock:
        while _patches:
            patch = _patches.pop()
            namespace = object.__getattribute__(patch.module, "__dict__")
            if namespace.get(patch.name) is patch.replacement:
                namespace[patch.name] = patch.original


def original(module: types.ModuleType, entry: str) -> Callable[..., Any]:
    """Upstream's function ``module.entry``, also when ``patch_triton_kernels`` already put ours in its place."""
    fn = getattr(module, entry)
    if not getattr(fn, "__resilient_moe_front__", False):
        return fn
    for patch in _patches:
        if patch.module is module and patch.name == entry:
            return patch.original
    raise ImportError(f"{module.__name__}.{entry} is resilient_moe's own function and upstream's is lost")
