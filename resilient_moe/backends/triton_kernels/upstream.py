"""Finding the installed upstream ``triton_kernels`` and hooking its ``make_opt_flags``.

Which upstream is installed is found at the first call, never at import: v3.5 (``triton_kernels.routing``
exists), v3.6 (``RoutingData`` moved into ``triton_kernels.matmul_ogs``), v3.7 (``triton_kernels.matmul``)
and v3.8+ (``matmul`` with the ``scoped_*`` opt-flags API). Upstream is never a dependency of this package.

How a tile is imposed on upstream
---------------------------------
Upstream picks its tile in ``make_opt_flags``, which its public function looks up as a global of its
own module at call time (``matmul_ogs.make_opt_flags`` or ``matmul.make_opt_flags``). We replace that
one global, once, with a transparent wrapper that reads a ``ContextVar`` which this module sets around
each upstream call it makes:

- unset: the wrapper delegates unchanged. Every other caller, and the constraints vLLM or SGLang set
  at load time (``split_k=1`` on Hopper, ``is_persistent`` on Blackwell), behave exactly as before;
- ``LEARN``: it computes upstream's own flags and raises them in a private exception. Upstream calls
  ``make_opt_flags`` before any launch, so we learn its default for this call without running it;
- a ``TileConfig``: it computes upstream's flags (existing constraints honoured) and returns a copy
  with block_m, block_n, block_k, num_warps, num_stages and group_m taken from the rung.

A ContextVar is per thread (and per asyncio task), so concurrent calls each see their own tile and no
global state of upstream is written. Two upstream mechanisms look similar and are not used:

- ``set_opt_flags``: one process-global flags object used for every shape; a second thread's call
  would run with the first thread's tile. In v3.5 it also asserts that the constraints dict is empty,
  and vLLM fills it at load time.
- the ``scoped_opt_flags*`` context managers: they exist from v3.8 on only, and the ladder must start
  from upstream's own default for the call, which has to be learned without launching anyway.

Limits: the fields a rung replaces are the only ones that change. Others that upstream derived from
its default tile (split_k, epilogue_subtile, persistence) are kept, and a rung's ``block_m`` must be one
upstream's routing metadata was built for (16 to 128, 256 on AMD); the ladder only shrinks from the
default, so within the shipped policy it is.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import importlib
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import triton

from ...config import TILE_FIELDS, TileConfig
from .patch import lock, original, unpatch_triton_kernels


def _install_hint() -> str:
    tag = "v" + triton.__version__.split("+")[0]
    return (
        'install it from the Triton repository at the tag of your triton:\n'
        f'  pip install "git+https://github.com/triton-lang/triton.git@{tag}#subdirectory=python/triton_kernels"\n'
        "(the package named triton-kernels on PyPI is an unrelated project)"
    )


@dataclass(frozen=True)
class Upstream:
    """The installed upstream, as found at the first call."""

    flavor: str  # "v3.5", "v3.6", "v3.7", "v3.8+"
    module: types.ModuleType  # triton_kernels.matmul_ogs or triton_kernels.matmul
    fn: Callable[..., Any]  # upstream's own public function (never our replacement)
    opt_flags: types.ModuleType
    OptFlags: type
    signature: inspect.Signature
    hook: Callable[..., Any]  # our wrapper, installed as module.make_opt_flags
    positions: dict[str, int]  # parameter -> index when passed positionally (cheaper than binding each call)

    @property
    def entry(self) -> str:
        return "matmul" if self.module.__name__.endswith(".matmul") else "matmul_ogs"

    def current(self) -> bool:
        """Still the module Python would import, with our wrapper still in place."""
        return sys.modules.get(self.module.__name__) is self.module and vars(self.module).get("make_opt_flags") is self.hook


_detected: Upstream | None = None


def upstream(entry: str | None = None) -> Upstream:
    """The installed upstream (found and hooked on first use); ``entry`` checks the public function's name."""
    found = _detected
    if found is None or not found.current():
        found = _detect()
    if entry is not None and entry != found.entry:
        raise ImportError(
            f"the installed triton_kernels ({found.flavor}) has no {entry}: it provides "
            f"{found.module.__name__}.{found.entry}, so call resilient_moe.{found.entry} instead"
        )
    return found


def _probe(name: str) -> types.ModuleType | None:
    """Import ``name``; None if it (or a parent) does not exist. Other import errors propagate."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            return None
        raise


def _detect() -> Upstream:
    global _detected
    with lock:
        if _detected is not None and _detected.current():
            return _detected
        if _probe("triton_kernels") is None:
            raise ImportError(f"resilient_moe.matmul_ogs / matmul wrap upstream triton_kernels, which is not installed: {_install_hint()}")
        module = _probe("triton_kernels.matmul")
        if module is not None and hasattr(module, "matmul"):
            opt_flags = importlib.import_module("triton_kernels.matmul_details.opt_flags")
            flavor, entry = ("v3.8+" if hasattr(opt_flags, "scoped_opt_flags_constraints") else "v3.7"), "matmul"
        else:
            module = _probe("triton_kernels.matmul_ogs")
            if module is None or not hasattr(module, "matmul_ogs"):
                found = sys.modules["triton_kernels"]
                where = getattr(found, "__file__", None) or list(getattr(found, "__path__", []))
                raise ImportError(
                    f"triton_kernels at {where} has neither matmul.matmul nor "
                    f"matmul_ogs.matmul_ogs; if it is the PyPI package, {_install_hint()}"
                )
            opt_flags = importlib.import_module("triton_kernels.matmul_ogs_details.opt_flags")
            flavor, entry = ("v3.5" if _probe("triton_kernels.routing") is not None else "v3.6"), "matmul_ogs"
        if not callable(vars(module).get("make_opt_flags")):
            raise ImportError(f"{module.__name__} does not look up make_opt_flags as a global: unsupported triton_kernels ({flavor})")
        OptFlags = opt_flags.OptFlags
        names = {f.name for f in dataclasses.fields(OptFlags)} if dataclasses.is_dataclass(OptFlags) else set()
        missing = [f for f in TILE_FIELDS if f not in names]
        if missing:
            raise ImportError(f"{opt_flags.__name__}.OptFlags has no {missing}: unsupported triton_kernels ({flavor})")
        fn = original(module, entry)
        hook = _install_hook(module)
        signature = inspect.signature(fn)
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        positions = {p.name: i for i, p in enumerate(signature.parameters.values()) if p.kind in positional}
        _detected = Upstream(flavor, module, fn, opt_flags, OptFlags, signature, hook, positions)
        return _detected


# ---------------------------------------------------------------------------------------------------
# The make_opt_flags hook
# ---------------------------------------------------------------------------------------------------


class _Learn:
    def __repr__(self) -> str:
        return "LEARN"


LEARN = _Learn()
"""Tiling request meaning: compute upstream's flags for this call, then stop before any launch."""

_tiling: contextvars.ContextVar[TileConfig | _Learn | None] = contextvars.ContextVar("resilient_moe_tiling", default=None)


class _Learned(BaseException):
    """Carries upstream's flags out of ``make_opt_flags``. A BaseException, so that an upstream
    ``except Exception`` on the way cannot mistake the stop for an error and carry on."""

    def __init__(self, flags: Any) -> None:
        super().__init__()
        self.flags = flags


def _install_hook(module: types.ModuleType) -> Callable[..., Any]:
    original = vars(module)["make_opt_flags"]
    while getattr(original, "_resilient_moe_hook", False):  # ours, from an earlier detection
        original = original.__wrapped__

    @functools.wraps(original)
    def make_opt_flags(*args: Any, **kwargs: Any) -> Any:
        wanted = _tiling.get()
        if wanted is None:
            return original(*args, **kwargs)
        flags = original(*args, **kwargs)
        if wanted is LEARN:
            raise _Learned(flags)
        tile = {name: getattr(wanted, name) for name in TILE_FIELDS}
        if all(getattr(flags, name) == value for name, value in tile.items()):
            return flags  # upstream's own tile (the usual winner): nothing to copy
        return dataclasses.replace(flags, **tile)

    make_opt_flags._resilient_moe_hook = True  # type: ignore[attr-defined]
    module.make_opt_flags = make_opt_flags  # type: ignore[attr-defined]
    return make_opt_flags


def uninstall() -> None:
    """Undo everything done to upstream: patched names, the make_opt_flags hook; forget it."""
    global _detected
    with lock:
        unpatch_triton_kernels()
        found, _detected = _detected, None
        if found is not None and vars(found.module).get("make_opt_flags") is found.hook:
            found.module.make_opt_flags = found.hook.__wrapped__  # type: ignore[attr-defined]


def _tiled(wanted: TileConfig | _Learn, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)`` with the make_opt_flags hook answering ``wanted`` in this context."""
    token = _tiling.set(wanted)
    try:
        return fn(*args, **kwargs)
    finally:
        _tiling.reset(token)


