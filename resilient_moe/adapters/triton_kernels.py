"""Upstream ``triton_kernels`` behind the resilient dispatcher: its ``matmul_ogs`` / ``matmul``, same
arguments and result, but a tile that does not fit the chip steps down the ladder instead of failing.

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

import contextlib
import contextvars
import dataclasses
import functools
import importlib
import inspect
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import triton

from .. import events
from .. import settings
from ..cache import row_bucket
from ..config import TileConfig
from ..dispatch import Call, resolve
from ..policy import active_policy
from ..targets import Placement, compile_env_key, placement
from ..virtual import virtual_target

TILE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TileConfig))
_TRITON = f"triton-{triton.__version__}"


def _install_hint() -> str:
    tag = "v" + triton.__version__.split("+")[0]
    return (
        'install it from the Triton repository at the tag of your triton:\n'
        f'  pip install "git+https://github.com/triton-lang/triton.git@{tag}#subdirectory=python/triton_kernels"\n'
        "(the package named triton-kernels on PyPI is an unrelated project)"
    )


# ---------------------------------------------------------------------------------------------------
# Finding upstream
# ---------------------------------------------------------------------------------------------------


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
_lock = threading.RLock()


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
    with _lock:
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
        fn = _original(module, entry)
        hook = _install_hook(module)
        signature = inspect.signature(fn)
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        positions = {p.name: i for i, p in enumerate(signature.parameters.values()) if p.kind in positional}
        _detected = Upstream(flavor, module, fn, opt_flags, OptFlags, signature, hook, positions)
        return _detected


def _original(module: types.ModuleType, entry: str) -> Callable[..., Any]:
    """Upstream's function, also when ``patch_triton_kernels`` already put ours in its place."""
    fn = getattr(module, entry)
    if fn is matmul_ogs or fn is matmul:
        for patch in _patches:
            if patch.module is module and patch.name == entry:
                return patch.original
        raise ImportError(f"{module.__name__}.{entry} is resilient_moe's own function and upstream's is lost")
    return fn


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
    """Undo everything this module did to upstream: patched names, the make_opt_flags hook; forget it."""
    global _detected
    with _lock:
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


# ---------------------------------------------------------------------------------------------------
# The calls
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Names:
    """Parameter names of one public function (the operands, the output buffer, the routing)."""

    x: str
    w: str
    out: str
    routing: str


_NAMES = {
    "matmul_ogs": _Names("x", "w", "y", "routing_data"),
    "matmul": _Names("a", "b", "c", "a_ragged_metadata"),
}


def matmul_ogs(*args: Any, **kwargs: Any) -> Any:
    """Upstream ``triton_kernels.matmul_ogs.matmul_ogs`` (v3.5, v3.6), with the tiling fallback.

    Same arguments and result as the installed upstream function. A call with no rows to compute
    returns zeros of the output's shape (or zero-fills ``y``) without calling upstream."""
    return _call("matmul_ogs", args, kwargs)


def matmul(*args: Any, **kwargs: Any) -> Any:
    """Upstream ``triton_kernels.matmul.matmul`` (v3.7 and later), with the tiling fallback.

    Same arguments and result as the installed upstream function. A call with no rows to compute
    returns zeros of the output's shape (or zero-fills ``c``) without calling upstream."""
    return _call("matmul", args, kwargs)


class UpstreamKey(NamedTuple):
    """The shape class an upstream winner is shared by (its text form keys the cache file)."""

    kernel: str
    arch: str
    triton: str
    flavor: str
    x_dtype: str
    w_dtype: str
    rows: int  # the row count's power-of-two bucket
    n: int
    k: int
    experts: int
    gather: bool
    scatter: bool
    compile_env: str  # TRITON_HIP_USE_ASYNC_COPY on AMD chips: one LDS buffer more per tile with it
    policy: str


def _call(entry: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    up = upstream(entry)
    names = _NAMES[entry]
    x, w = _argument(up, names.x, args, kwargs), _argument(up, names.w, args, kwargs)
    if x is None or w is None:
        return up.fn(*args, **kwargs)  # upstream's own error for missing operands
    gather, scatter = _argument(up, "gather_indx", args, kwargs), _argument(up, "scatter_indx", args, kwargs)
    k, n = w.shape[-2], w.shape[-1]
    experts = w.shape[0] if len(w.shape) == 3 else 1
    rows = x.shape[-2] if gather is None else _length(gather)
    if rows == 0 or n == 0:
        given = up.signature.bind(*args, **kwargs).arguments
        return _empty(entry, given, names, x, rows, n, experts, scatter)

    policy = active_policy()
    where = placement()
    key = UpstreamKey(
        f"triton_kernels.{entry}", where.arch, _TRITON, up.flavor, _dtype(x), _dtype(w), row_bucket(rows), n, k,
        experts, gather is not None, scatter is not None, compile_env_key(where.arch), policy.fingerprint,
    )

    def attempt(config: TileConfig | _Learn) -> Any:
        with _on_target(where):
            return _tiled(config, up.fn, args, kwargs)

    def describe() -> Call:
        try:
            finished = attempt(LEARN)
        except _Learned as learned:
            flags = learned.flags
        else:
            raise _RanUntiled(finished)  # upstream never asked for flags on this path: nothing to tile
        try:
            default = TileConfig(**{name: getattr(flags, name) for name in TILE_FIELDS})
        except (TypeError, ValueError):  # a tile the ladder cannot express: run upstream as it is
            raise _RanUntiled(up.fn(*args, **kwargs)) from None
        return Call(
            kernel=f"triton_kernels.{entry}",
            key=key,
            arch=where.arch,
            shape={"rows": rows, "n": n, "k": k, "experts": experts},
            default=default,
            fields={"dtype": _dtype(x), "flavor": up.flavor},
            rows_per_expert=-(-rows // experts),
        )

    try:
        return resolve(key, attempt, describe, policy, settings.cache())[0]
    except _RanUntiled as ran:
        return ran.result


class _RanUntiled(Exception):
    """Upstream ran without a tile to choose (or with one the ladder cannot express): its result."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


def _on_target(where: Placement) -> contextlib.AbstractContextManager[Any]:
    """Compile for the virtual chip, if one is set and this process compiles (preflight on a GPU
    machine): the JIT then raises that chip's real OutOfResources. Process-global: not for serving."""
    if where.virtual is not None and not where.interpreter:
        return virtual_target(where.virtual)
    return contextlib.nullcontext()


def _argument(up: Upstream, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """One argument of an upstream call, passed by position or by name (None when not given)."""
    index = up.positions.get(name)
    if index is not None and index < len(args):
        return args[index]
    return kwargs.get(name)


def _length(indx: Any) -> int:
    """Rows of an index: v3.5/v3.6 wrap it (``GatherIndx.src_indx``), v3.7+ pass the tensor."""
    return getattr(indx, "src_indx", indx).shape[0]


def _dtype(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def _torch(t: Any) -> torch.Tensor:
    """The torch tensor behind an operand (upstream also accepts its own ``Tensor`` wrapper)."""
    if isinstance(t, torch.Tensor):
        return t
    data = getattr(getattr(t, "storage", None), "data", None)
    if isinstance(data, torch.Tensor):
        return data
    raise TypeError(f"expected a torch.Tensor or a triton_kernels Tensor, got {type(t).__name__}")


def _empty(entry: str, given: dict[str, Any], names: _Names, x: Any, rows: int, n: int, experts: int, scatter: Any) -> Any:
    """Zeros of upstream's output shape, without calling upstream (upstream up to v3.8 divides by
    zero computing its flags for zero rows). The given output buffer is zero-filled and returned."""
    events.empty_input(kernel=f"triton_kernels.{entry}", tokens=x.shape[-2], experts=experts)
    batched = len(x.shape) == 3
    out = given.get(names.out)
    if out is not None:
        _torch(out).zero_()
        return out.squeeze(0) if not batched and len(out.shape) == 3 else out
    if scatter is not None and entry == "matmul":
        rows = _length(scatter)  # one output row per scattered row (v3.7+ combines top-k outside)
    elif scatter is not None:
        n_act = getattr(given.get(names.routing), "n_expts_act", 1) or 1
        rows = rows if n_act == 1 else _length(scatter) // n_act  # one per token after the top-k sum
    activation = given.get("fused_activation")
    reduction = getattr(activation, "reduction_n", None) or getattr(getattr(activation, "specs", None), "reduction_n", None) or 1
    data = _torch(x)
    out_dtype = getattr(given.get("precision_config"), "out_dtype", None)
    dtype = out_dtype if isinstance(out_dtype, torch.dtype) else data.dtype
    shape = (x.shape[0], rows, n // reduction) if batched else (rows, n // reduction)
    return torch.zeros(shape, dtype=dtype, device=data.device)


# ---------------------------------------------------------------------------------------------------
# Patching consumers
# ---------------------------------------------------------------------------------------------------


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
    with _lock:
        up = upstream()
        replacement = matmul if up.entry == "matmul" else matmul_ogs
        for module in list(sys.modules.values()):
            if not isinstance(module, types.ModuleType):
                continue
            try:
                namespace = object.__getattribute__(module, "__dict__")  # loads no lazy module
            except AttributeError:
                continue
            if namespace.get("__name__") == __name__:
                continue
            for name, value in list(namespace.items()):
                if value is up.fn:
                    namespace[name] = replacement
                    _patches.append(_Patch(module, name, up.fn, replacement))


def unpatch_triton_kernels() -> None:
    """Restore exactly the names ``patch_triton_kernels`` replaced (those still holding ours)."""
    with _lock:
        while _patches:
            patch = _patches.pop()
            namespace = object.__getattribute__(patch.module, "__dict__")
            if namespace.get(patch.name) is patch.replacement:
                namespace[patch.name] = patch.original
