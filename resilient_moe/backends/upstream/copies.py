"""Finding every copy of upstream ``triton_kernels`` in the process and hooking its ``make_opt_flags``.

Which upstream is installed is found at the first call, never at import: v3.5 (``triton_kernels.routing``
exists), v3.6 (``RoutingData`` moved into ``triton_kernels.matmul_ogs``), v3.7 (``triton_kernels.matmul``)
and v3.8+ (``matmul`` with the ``scoped_*`` opt-flags API). Upstream is never a dependency of this package.

How a tile is imposed on upstream
---------------------------------
Upstream picks its tile in ``make_opt_flags``, which its public function looks up as a global of its
own module at call time (``matmul_ogs.make_opt_flags`` or ``matmul.make_opt_flags``). We replace that
one global, once, with a transparent wrapper that reads a ``ContextVar`` which this module sets around
each upstream call it makes:

- unset: the wrapper delegates unchanged. Every other caller, and the constraints engines set at
  load time (vLLM and SGLang: ``is_persistent`` and ``epilogue_subtile`` on SM100; ATOM: block_m and
  block_n on MI355X), behave exactly as before;
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
import hashlib
import importlib
import inspect
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


ROOTS = ("triton_kernels", "vllm.third_party.triton_kernels", "sglang.third_party.triton_kernels")
"""Where copies of upstream live: the standalone package, and the copies vLLM and SGLang vendor."""


@dataclass(frozen=True)
class Upstream:
    """One copy of upstream, as found: a public module object and what its calls need."""

    flavor: str  # "v3.5", "v3.6", "v3.7", "v3.8+"
    module: types.ModuleType  # <package>.matmul_ogs or <package>.matmul
    fn: Callable[..., Any]  # upstream's own public function (never our replacement)
    opt_flags: types.ModuleType  # the module whose make_opt_flags this copy calls (its constraints live there)
    OptFlags: type
    signature: inspect.Signature
    hook: Callable[..., Any]  # our wrapper, installed as module.make_opt_flags
    positions: dict[str, int]  # parameter -> index when passed positionally (cheaper than binding each call)
    source: str  # "<package>@<sha256 prefix of its matmul code>": which copy, at which version

    @property
    def entry(self) -> str:
        return _entry(self.module)

    def current(self) -> bool:
        """Still the module Python would import, with our wrapper still in place."""
        return sys.modules.get(self.module.__name__) is self.module and vars(self.module).get("make_opt_flags") is self.hook

    def constraints(self) -> dict[str, Any]:
        """The constraints upstream honours in this context (a module dict up to v3.7, a ContextVar from
        v3.8), without the None values upstream ignores. Read at each call: callers change them."""
        namespace = vars(self.opt_flags)
        getter = namespace.get("_get_opt_flags_constraints")
        held = getter() if callable(getter) else namespace.get("_opt_flags_constraints")
        if isinstance(held, contextvars.ContextVar):
            held = held.get(None)
        return {name: value for name, value in (held or {}).items() if value is not None}


def _entry(module: types.ModuleType) -> str:
    """The public function a copy's public module holds: ``matmul`` (v3.7+) or ``matmul_ogs``."""
    return "matmul" if module.__name__.endswith(".matmul") else "matmul_ogs"


_found: dict[str, Upstream] = {}  # public module name -> its copy


def upstream(entry: str | None = None) -> Upstream:
    """The copy ``import triton_kernels`` gives (found and hooked on first use); ``entry`` checks the
    public function's name."""
    found = _default()
    if entry is not None and entry != found.entry:
        raise ImportError(
            f"the installed triton_kernels ({found.flavor}) has no {entry}: it provides "
            f"{found.module.__name__}.{found.entry}, so call resilient_moe.{found.entry} instead"
        )
    return found


def upstream_or_none() -> Upstream | None:
    """The standalone package's copy, or None where ``import triton_kernels`` finds nothing."""
    try:
        return _default()
    except ImportError:
        return None


def copy_named(name: str) -> Upstream:
    """The copy whose public module is ``name`` (hooked again if it was reloaded)."""
    found = _found.get(name)
    if found is not None and found.current():
        return found
    module = sys.modules.get(name)
    if module is None:
        raise ImportError(f"upstream module {name} is no longer imported")
    return _hooked(module)


def copies() -> list[Upstream]:
    """Every copy imported in this process, hooked: the standalone package (imported if installed) and
    the vendored ones already imported, one per module object, aliases included (vLLM registers its
    copy as ``triton_kernels`` when none is installed, and mixed imports can load a second object)."""
    with lock:
        _probe(ROOTS[0])
        return [_hooked(module) for module in _public_modules()]


def _public_modules() -> list[types.ModuleType]:
    found: dict[int, types.ModuleType] = {}
    for root in ROOTS:
        package = sys.modules.get(root)
        if package is None:
            continue
        for prefix in dict.fromkeys((root, package.__name__)):
            module = _public_module(prefix, load=prefix == package.__name__)
            if module is not None:
                found.setdefault(id(module), module)
    return list(found.values())


def _public_module(package: str, load: bool) -> types.ModuleType | None:
    """``package``'s public matmul module (v3.7+ ``matmul`` before v3.5/v3.6 ``matmul_ogs``); imported
    only when ``load`` (never under an alias, which would load the same source as a second module)."""
    for entry in ("matmul", "matmul_ogs"):
        name = f"{package}.{entry}"
        module = sys.modules.get(name) or (_probe(name) if load else None)
        if module is not None and hasattr(module, entry):
            return module
    return None


def _default() -> Upstream:
    found = _found.get("triton_kernels.matmul") or _found.get("triton_kernels.matmul_ogs")
    if found is not None and found.current():
        return found
    with lock:
        package = _probe(ROOTS[0])
        if package is None:
            raise ImportError(f"resilient_moe.matmul_ogs / matmul wrap upstream triton_kernels, which is not installed: {_install_hint()}")
        module = _public_module(ROOTS[0], load=False) or _public_module(package.__name__, load=True)
        if module is None:
            where = getattr(package, "__file__", None) or list(getattr(package, "__path__", []))
            raise ImportError(
                f"triton_kernels at {where} has neither matmul.matmul nor "
                f"matmul_ogs.matmul_ogs; if it is the PyPI package, {_install_hint()}"
            )
        found = _found[f"{ROOTS[0]}.{module.__name__.rpartition('.')[2]}"] = _hooked(module)
        return found


def _probe(name: str) -> types.ModuleType | None:
    """Import ``name``; None if it (or a parent) does not exist. Other import errors propagate."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is not None and (name == err.name or name.startswith(err.name + ".")):
            return None
        raise


def _hooked(module: types.ModuleType) -> Upstream:
    """``module``'s copy, detected and hooked once (again after a reload)."""
    with lock:
        found = _found.get(module.__name__)
        if found is not None and found.module is module and found.current():
            return found
        entry = _entry(module)
        package = module.__name__.rpartition(".")[0]
        make = vars(module).get("make_opt_flags")
        if not callable(make):
            raise ImportError(f"{module.__name__} does not look up make_opt_flags as a global: unsupported triton_kernels")
        opt_flags = sys.modules[inspect.unwrap(make).__module__]
        if entry == "matmul":
            flavor = "v3.8+" if hasattr(opt_flags, "scoped_opt_flags_constraints") else "v3.7"
        else:
            flavor = "v3.5" if _sibling(package, "routing") else "v3.6"
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
        source = f"{sys.modules[package].__name__ if package in sys.modules else package}@{_fingerprint(module, opt_flags)}"
        found = Upstream(flavor, module, fn, opt_flags, OptFlags, signature, hook, positions, source)
        _found[module.__name__] = found
        return found


def _sibling(package: str, name: str) -> bool:
    """Whether ``package`` has submodule ``name`` (looked for under the package's own name, not an alias)."""
    canonical = sys.modules[package].__name__ if package in sys.modules else package
    return any(f"{p}.{name}" in sys.modules for p in (package, canonical)) or _probe(f"{canonical}.{name}") is not None


def _fingerprint(module: types.ModuleType, opt_flags: types.ModuleType) -> str:
    """A short hash of the code that picks and runs the tile: the public module and every source file
    beside its opt_flags (the kernels, the heuristics). Two copies of one version hash alike."""
    digest = hashlib.sha256()
    files = {Path(module.__file__)} if getattr(module, "__file__", None) else set()
    if getattr(opt_flags, "__file__", None):
        files |= set(Path(opt_flags.__file__).parent.rglob("*.py"))
    for path in sorted(files, key=lambda p: (p.name, str(p))):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


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
    """Undo everything done to every copy: patched names, the make_opt_flags hooks; forget them."""
    with lock:
        unpatch_triton_kernels()
        for found in {id(found): found for found in _found.values()}.values():
            if vars(found.module).get("make_opt_flags") is found.hook:
                found.module.make_opt_flags = found.hook.__wrapped__  # type: ignore[attr-defined]
        _found.clear()


def _tiled(wanted: TileConfig | _Learn, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``fn(*args, **kwargs)`` with the make_opt_flags hook answering ``wanted`` in this context."""
    token = _tiling.set(wanted)
    try:
        return fn(*args, **kwargs)
    finally:
        _tiling.reset(token)


