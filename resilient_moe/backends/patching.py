"""Putting our functions where serving code looks a kernel's up, and taking them back: shared by the
upstream backend (``patch_triton_kernels``), the engines (``patch_sglang``, ``patch_vllm``) and aiter
(``patch_aiter``).

A function is replaced by identity, under any name, in every imported module's namespace (vLLM, SGLang
and ATOM do ``from x import fn``), except our own modules. Each replacement is recorded, so undoing
restores exactly the names still holding ours.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

lock = threading.RLock()
"""Held while functions are found, hooked, patched or unpatched (one lock: these call each other)."""

ENGINES_ENV = "RESILIENT_MOE_ENGINES"


@dataclass(frozen=True)
class _Patch:
    owner: str  # who patched: "triton_kernels", "sglang", "vllm"
    holder: Any  # a module (its namespace is written) or a class (an attribute set on it)
    name: str
    original: Any
    replacement: Any

    def current(self) -> Any:
        if isinstance(self.holder, types.ModuleType):
            return object.__getattribute__(self.holder, "__dict__").get(self.name)
        return self.holder.__dict__.get(self.name)

    def put(self, value: Any) -> None:
        if isinstance(self.holder, types.ModuleType):
            object.__getattribute__(self.holder, "__dict__")[self.name] = value
        else:
            setattr(self.holder, self.name, value)


_patches: list[_Patch] = []


def swap(owner: str, replacing: dict[int, tuple[Any, Any]]) -> None:
    """Replace each ``original`` by its ``replacement`` (``replacing``: id(original) -> both) wherever an
    imported module holds it, on behalf of ``owner``; modules loaded later get ours from the defining
    module's attribute."""
    with lock:
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
                    _patches.append(_Patch(owner, module, name, value, found[1]))


def set_attribute(owner: str, holder: type | types.ModuleType, name: str, replacement: Any) -> None:
    """Set ``holder.name`` (a class's method, a module's function) to ours, on behalf of ``owner``."""
    with lock:
        patch = _Patch(owner, holder, name, holder.__dict__[name], replacement)
        patch.put(replacement)
        _patches.append(patch)


def patched(fn: Callable[..., Any]) -> list[str]:
    """Where ``fn`` is replaced by ours now, as ``module.name`` (``module.Class.name`` on a class)."""
    with lock:
        return [f"{_where(p.holder)}.{p.name}" for p in _patches if p.original is fn and p.current() is p.replacement]


def _where(holder: Any) -> str:
    if isinstance(holder, types.ModuleType):
        return holder.__name__
    return f"{holder.__module__}.{holder.__qualname__}"


def restore(owner: str) -> None:
    """Put back the names ``owner`` replaced, those still holding ours."""
    with lock:
        for patch in reversed(_patches):
            if patch.owner != owner:
                continue
            if patch.current() is patch.replacement:
                patch.put(patch.original)
        _patches[:] = [p for p in _patches if p.owner != owner]


def original(module: types.ModuleType, name: str) -> Callable[..., Any]:
    """The function ``module.name`` held before we patched it (itself if we did not)."""
    fn = getattr(module, name)
    if not getattr(fn, "__resilient_moe_front__", False):
        return fn
    for patch in _patches:
        if patch.holder is module and patch.name == name:
            return patch.original
    raise ImportError(f"{module.__name__}.{name} is resilient_moe's own function and the original is lost")


def enabled(engine: str) -> bool:
    """Whether RESILIENT_MOE_ENGINES (comma-separated engine names, or ``all``) opts ``engine``'s
    plugin in: an engine loads every installed plugin, so installing us alone changes nothing."""
    wanted = {name.strip().lower() for name in os.environ.get(ENGINES_ENV, "").split(",") if name.strip()}
    return engine in wanted or "all" in wanted
