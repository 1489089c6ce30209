"""A kernel launch's arguments as the JIT specializes them, bound to the kernel's parameters by name: what
a compile job for a virtual chip takes (``virtual.job_for``), for a launch recorded from a backend's
own code or described without running it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

Launch = tuple[Any, tuple[Any, ...], dict[str, Any]]
"""One kernel launch as a compile job takes it: the kernel, its non-constexpr arguments, its constexprs
and launch options by name."""

LAUNCH_OPTIONS = frozenset({"num_warps", "num_stages", "num_ctas", "maxnreg", "launch_pdl", "waves_per_eu",
                            "matrix_instr_nonkdim", "kpack", "enable_fp_fusion"})


def bind(kernel: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """A launch's arguments as the JIT specializes them: the non-constexpr parameters in order, and the
    constexprs and launch options by name (defaults filled in)."""
    names = list(inspect.signature(kernel.fn).parameters)
    values = {**dict(zip(names, args)), **kwargs}
    return split(kernel, values, lambda name: f"{name!r} was not passed to {kernel.fn.__name__}")


def split(kernel: Any, values: dict[str, Any], missing: Callable[[str], str]) -> tuple[list[Any], dict[str, Any]]:
    """Named launch ``values`` as a compile job takes them: positional, in the kernel's order, every
    parameter up to its last non-constexpr one (constexprs among them in their place, as a launch
    passes them), and the constexprs after it and the launch options by name; names the kernel does
    not take are left out, and a parameter without a value or default is a TypeError saying
    ``missing(name)``."""
    ordered: list[tuple[str, Any, bool]] = []
    for name, parameter in inspect.signature(kernel.fn).parameters.items():
        if name in values:
            value = values[name]
        elif parameter.default is not inspect.Parameter.empty:
            value = parameter.default
        else:
            raise TypeError(missing(name))
        ordered.append((name, value, _is_constexpr(parameter.annotation)))
    last = max((i for i, (_, _, constexpr) in enumerate(ordered) if not constexpr), default=-1)
    constexprs = {name: value for name, value in values.items() if name in LAUNCH_OPTIONS}
    constexprs.update((name, value) for name, value, _ in ordered[last + 1:])
    return [value for _, value, _ in ordered[: last + 1]], constexprs


def _is_constexpr(annotation: Any) -> bool:
    import triton.language as tl

    return annotation is tl.constexpr or (isinstance(annotation, str) and annotation.split(".")[-1] == "constexpr")
