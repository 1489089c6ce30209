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
    """Put our function where upstream's is looked up: upstream's module attribute and every
    imported module holding upstream's function as a global, under any name (vLLM, SGLang and ATOM
    do ``from triton_kernels.matmul_ogs import matmul_ogs``). Safe to call again: it also catches
    modules imported since. Modules imported later get ours from upstream's module attribute."""
    from .matmul_ogs import matmul, matmul_ogs
    from .upstream import upstream

    with lock:
        up = upstream()
        replacement = matmul if up.entry == "matmul" else matmul_ogs
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
                if value is up.fn:
                    namespace[name] = replacement
                    _patches.append(_Patch(module, name, up.fn, replacement))


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
