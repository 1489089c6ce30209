"""A virtual chip's OutOfResources for launches that run in the Triton interpreter (tests and demos on a
CPU): every launch of a backend's kernels during an attempt is first compiled for that chip, and raises
the chip's real error. On a GPU the JIT's own check on the device does this; nothing is hooked."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..config import TileConfig
from ..targets import Placement
from . import binding

_checking: contextvars.ContextVar[tuple[TileConfig, dict[str, Any]] | None] = contextvars.ContextVar(
    "resilient_moe_checked_tile", default=None)
_hooked: set[int] = set()


@contextlib.contextmanager
def checked(kernels: Callable[[], Iterable[Any]], where: Placement, tile: TileConfig,
            options: dict[str, Any] | None = None) -> Iterator[None]:
    """While the block runs, launches of ``kernels()`` on a virtual chip under the interpreter compile
    for it first, with the attempt's tile's launch options (and ``options``: AMD's ``waves_per_eu``,
    ``matrix_instr_nonkdim``, ``kpack``), which the interpreter drops before its hooks see them."""
    if where.virtual is None or not where.interpreter:
        yield
        return
    for kernel in kernels():
        if id(kernel) not in _hooked:
            kernel.add_pre_run_hook(functools.partial(_check_launch, kernel, where.virtual.name))
            _hooked.add(id(kernel))
    token = _checking.set((tile, dict(options or {})))
    try:
        yield
    finally:
        _checking.reset(token)


def _check_launch(kernel: Any, chip: str, *args: Any, **kwargs: Any) -> None:
    from .. import virtual

    current = _checking.get()
    if current is None:
        return
    tile, options = current
    positional, constexprs = binding.bind(kernel, args, kwargs)
    constexprs.setdefault("num_warps", tile.num_warps)
    constexprs.setdefault("num_stages", tile.num_stages)
    for name, value in options.items():
        constexprs.setdefault(name, value)
    virtual.fits(kernel, tuple(positional), constexprs, chip)
