"""One call of an aiter MoE GEMM through the dispatcher: the call described (key, aiter's config as the
default, the legal rungs, a lower bound on its LDS), each attempt aiter's own wrapper under the rung
its lookup answers, and ``patch_aiter()`` putting ours where serving code looks the wrappers up."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

import torch

from ... import settings
from ...cache import row_bucket
from ...config import TileConfig
from ...dispatch import Call, Resolution, resolve
from ...policy import active_policy
from ...settings import BoundedStore
from ...targets import INTERPRETER_LOCK, amd_async_copy, compile_env_key, compiler_tag, placement
from .. import patching
from ..checking import checked
from ..timing import queued_ms
from . import ops, source


class AiterKey(NamedTuple):
    """The shape class an aiter winner is shared by (its text form keys the cache file)."""

    kernel: str  # "aiter.moe_gemm_a8w4"
    arch: str
    triton: str
    aiter: str
    n: int
    k: int
    block_m: int  # the routing's: aiter's dispatch key
    rows: int  # the rows' power-of-two bucket
    swizzle: str
    aiter_config: str  # aiter's own choice for the call
    compile_env: str
    policy: str


_TRITON = compiler_tag()


def front(op: ops.Op, module: ModuleType) -> Callable[..., Any]:
    """Ours in place of aiter's wrapper ``op.name``: same arguments and result."""
    entry = patching.original(module, op.name)
    signature = inspect.signature(entry)

    @functools.wraps(entry)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return run(op, module, entry, signature, args, kwargs)[0]

    wrapper.__resilient_moe_front__ = True  # type: ignore[attr-defined]
    return wrapper


def run(op: ops.Op, module: ModuleType, entry: Callable[..., Any], signature: inspect.Signature,
        args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Resolution | None]:
    """One call with the tiling fallback, and how its tile was settled (None: no rows, aiter's own)."""
    arguments = signature.bind(*args, **kwargs).arguments  # what the call passed; the rest are aiter's defaults
    gemm = ops.gemm_of(op, arguments)
    if gemm.m == 0:
        return entry(*args, **kwargs), None
    where = placement()
    policy = active_policy()
    routing = arguments["routing_data"]  # gemm_of checked it
    own = ops.own_config(module, gemm, routing)
    default, own_text = _derived(own)
    key = AiterKey(f"aiter.{op.name}", where.arch, _TRITON, source.version(), gemm.n, gemm.k, gemm.block_m,
                   row_bucket(gemm.m), str(gemm.swizzle), own_text, compile_env_key(where.arch), policy.fingerprint)

    def attempt(tile: TileConfig) -> Any:
        config = own if tile == default else ops.as_config(tile, own)
        options = {name: config[name] for name in ops.AMD_OPTIONS if name in config}
        with checked(functools.partial(ops.kernels, op, module), where, tile, options), \
                ops.imposing(None if config is own else config):
            return entry(*args, **kwargs)

    def describe() -> Call:
        floors, ceilings = ops.rules(gemm)
        return Call(
            kernel=f"aiter.{op.name}", key=key, arch=where.arch,
            shape={"m": gemm.m, "n": gemm.n, "k": gemm.k, "block_m": gemm.block_m, "experts": gemm.experts},
            default=default, fields={"swizzle": str(gemm.swizzle)},
            shared_lower_bound=ops.shared_lower_bound(op, amd_async_copy(where.arch)), shared_limit=where.shared_limit,
            timer=_timer(attempt, arguments), floors=floors, ceilings=ceilings,
        )

    if where.interpreter:  # the interpreter runs one kernel at a time
        with INTERPRETER_LOCK:
            return resolve(key, attempt, describe, policy, settings.cache())
    return resolve(key, attempt, describe, policy, settings.cache())


_DERIVED = BoundedStore(1024)
"""aiter's config as our tile and as the key's text, per config: aiter returns one of a few dicts per
shape (its tuned entries or its heuristic's), so a cached call derives neither again."""


def _derived(own: dict[str, Any]) -> tuple[TileConfig, str]:
    memo = tuple(sorted(own.items()))
    found = _DERIVED.get(memo)
    if found is None:
        found = (ops.as_tile(own), ",".join(f"{name}={value}" for name, value in memo))
        _DERIVED.put(memo, found)
    return found


def _timer(attempt: Callable[[TileConfig], Any], arguments: dict[str, Any]) -> Callable[[TileConfig], float] | None:
    """Milliseconds of a call under a tile, for ``ladder.compare`` (on the GPU, queued behind a GPU
    wait so aiter's Python is not what is timed; never while a graph is captured)."""
    x = arguments["x"]
    if not isinstance(x, torch.Tensor) or x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return None
    return lambda tile: queued_ms(functools.partial(attempt, tile))


def patch_aiter(source_root: str | None = None) -> None:
    """Put ours where aiter's MoE GEMM wrappers are looked up (their modules and every module holding
    them), and hook each module's config lookup; wrappers this aiter does not have are skipped, and
    ImportError says why when it has none. Safe to call again. ``source_root``: an aiter source tree (tool processes; see ``source``)."""
    placement()  # RESILIENT_MOE_SHARED_MEMORY_CAP in force before aiter's first launch
    with patching.lock:
        replacing = {}
        missing: list[ImportError] = []
        for op in ops.OPS.values():
            try:
                module = source.module(op.module, source_root)
            except ImportError as err:
                missing.append(err)
                continue
            if getattr(getattr(module, op.name, None), "__resilient_moe_front__", False):
                continue
            ops.hook(module)
            entry = getattr(module, op.name)
            replacing[id(entry)] = (entry, front(op, module))
        if len(missing) == len(ops.OPS):
            raise ImportError(f"none of aiter's MoE GEMMs can be imported: {missing[0]}")
        patching.swap(ops.OWNER, replacing)


def unpatch_aiter() -> None:
    """Restore exactly what ``patch_aiter`` replaced."""
    patching.restore(ops.OWNER)
