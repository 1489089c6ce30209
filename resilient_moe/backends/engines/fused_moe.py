"""The engines' own Triton MoE kernel (SGLang's and vLLM's ``fused_moe_kernel``) behind the dispatcher.

The engine's config dict (``BLOCK_SIZE_M/N/K``, ``GROUP_SIZE_M``, ``num_warps``, ``num_stages``) is the
tile, and the engine's own choice for the call (its tuned file, else its default) is the default rung.
A rung runs through the engine's own ``override_config``, never by writing its tables. One attempt is
the whole fused-experts call: both GEMMs share the ``moe_align_block_size`` done with BLOCK_SIZE_M.
An engine module (``sglang.py``, ``vllm.py``) only says where its functions are and what a call is.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ... import events, settings
from ...cache import key_text, row_bucket
from ...config import TileConfig
from ...dispatch import Call, Resolution, resolve
from ...policy import active_policy
from ...settings import BoundedStore
from ..timing import queued_ms
from ..checking import checked
from ...targets import INTERPRETER_LOCK, Placement, compile_env_key, compiler_tag, placement

CONFIG_NAMES = {"block_m": "BLOCK_SIZE_M", "block_n": "BLOCK_SIZE_N", "block_k": "BLOCK_SIZE_K",
                "group_m": "GROUP_SIZE_M", "num_warps": "num_warps", "num_stages": "num_stages"}
"""Our tile's fields under the names the engines' config dicts and tuned files use."""

LAUNCH_DEFAULTS = {"cuda": {"num_warps": 4, "num_stages": 3}, "hip": {"num_warps": 4, "num_stages": 2}}
"""What Triton launches with where a config names no num_warps / num_stages (the engines' bf16 default)."""


@dataclass(frozen=True)
class Layer:
    """What one fused-experts call computes, in the terms of the engine's config lookup."""

    tokens: int  # M
    experts: int  # E, the local experts of w1
    n: int  # w1's rows per expert: 2 x the intermediate size for gated activations
    k: int  # the hidden size (w1's columns; packed int4 counts two per byte)
    top_k: int
    dtype: str | None  # the engine's dtype selector: fp8_w8a8, int8_w8a8, int8_w8a16, int4_w4a16, None
    activation: str  # the activations' dtype: bfloat16, float16, float32
    block_shape: tuple[int, int] | None  # the quant block [n, k] of block-scaled weights
    per_channel: bool
    inplace: bool  # the result is written into the activations
    w2_shape: tuple[int, int, int]  # as the engine's lookup takes it (SGLang: K less its fp8 padding)


@dataclass(frozen=True)
class Engine:
    """One engine's Triton fused-MoE path, as this backend sees it (built by sglang.py or vllm.py)."""

    name: str  # "sglang", "vllm"
    version: str
    fused_experts: Callable[..., Any]  # the engine's own function
    layer: Callable[[dict[str, Any]], Layer]  # the call's bound arguments -> what it computes
    own_config: Callable[[Layer], dict[str, Any]]  # the engine's choice for the call (an active override first)
    override: Callable[[dict[str, Any]], contextlib.AbstractContextManager[Any]]  # the engine's override_config
    kernels: Callable[[], tuple[Any, ...]]  # the Triton kernels the call launches
    hidden_states: str = "hidden_states"  # the parameter holding the activations
    empty: Callable[[dict[str, Any], Layer], Any] | None = None  # the result of a call without tokens, if not
    # the activations' shape (in place: the activations as given)

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        return inspect.signature(self.fused_experts)


class EngineKey(NamedTuple):
    """The shape class an engine winner is shared by (its text form keys the cache file)."""

    kernel: str  # "sglang.fused_experts"
    arch: str
    triton: str
    engine: str  # its version: a new release can change the kernel's shared memory
    experts: int
    n: int
    k: int
    top_k: int
    dtype: str  # the engine's dtype selector, else the activations' dtype
    block_shape: str
    per_channel: bool
    rows: int  # the token count's power-of-two bucket
    engine_config: str  # the engine's own choice at this M: its tuned file's row or its default
    compile_env: str
    policy: str


class CaptureMissError(RuntimeError):
    """A fused-experts shape met for the first time while a CUDA graph is captured: a tile search would
    compile (and might fail) inside the capture. Warm the shapes up first (``warm_up``)."""


def as_tile(config: dict[str, Any], backend: str) -> TileConfig:
    """An engine config dict as our tile (launch options it leaves out: what Triton launches with)."""
    launch = LAUNCH_DEFAULTS[backend]
    missing = [name for name in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K") if name not in config]
    if missing:
        raise ValueError(f"engine config {config!r} has no {', '.join(missing)}")
    return TileConfig(
        block_m=config["BLOCK_SIZE_M"], block_n=config["BLOCK_SIZE_N"], block_k=config["BLOCK_SIZE_K"],
        group_m=config.get("GROUP_SIZE_M", 1), num_warps=config.get("num_warps", launch["num_warps"]),
        num_stages=config.get("num_stages", launch["num_stages"]),
    )


def as_config(tile: TileConfig, own: dict[str, Any]) -> dict[str, Any]:
    """A tile as the engine's config dict, keeping the fields of its own choice we do not tile
    (``USE_TMA``, AMD's ``waves_per_eu``, ``matrix_instr_nonkdim``, ``kpack``, ...)."""
    return {**own, **{name: getattr(tile, field) for field, name in CONFIG_NAMES.items()}}


def backend_of(where: Placement) -> str:
    return "hip" if where.arch.startswith("gfx") else "cuda"


def rules(layer: Layer) -> tuple[dict[str, int], dict[str, int]]:
    """Floors and ceilings of a layer's tile fields that the kernel's format states.

    Block-scaled weights load one scale per BLOCK_SIZE_K step (``k_start // group_k``), so BLOCK_SIZE_K
    must divide the quant block's k; the ladder only shrinks it, and the ceiling bounds a policy's
    default. int4 weights pack two values per byte along K, which a 16-wide dot needs twice over."""
    floors: dict[str, int] = {}
    ceilings: dict[str, int] = {}
    if layer.block_shape is not None and layer.dtype in ("fp8_w8a8", "int8_w8a8") and layer.block_shape[1] > 0:
        ceilings["block_k"] = layer.block_shape[1] & -layer.block_shape[1]  # its largest power-of-two divisor
    if layer.dtype == "int4_w4a16":
        floors["block_k"] = 32
    return floors, ceilings


_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def shared_lower_bound(layer: Layer, arch: str) -> Callable[[TileConfig], int]:
    """Bytes a tile needs at least on ``arch``: the operand tiles a pipelined dot keeps in shared memory,
    one buffer per stage on sm_90 at block_m >= 64 (a warpgroup MMA), one per stage but one elsewhere
    (sm_89, CDNA without async copies; a lower bound on chips not measured). Weights converted before
    the dot (int8/int4 under 16-bit activations) may stay in registers, so only the activation tile
    counts there. Checked against real compiles of SGLang's kernel (exact for the tested fp8 and bf16
    tiles on sm_89 and sm_90)."""
    eight_bit = layer.dtype in ("fp8_w8a8", "int8_w8a8")
    a_bytes = 1 if eight_bit else _BYTES.get(layer.activation, 2)
    b_bytes = a_bytes if layer.dtype in (None, "fp8_w8a8", "int8_w8a8") else 0

    def bound(tile: TileConfig) -> int:
        buffers = max(tile.num_stages - (0 if arch == "sm_90" and tile.block_m >= 64 else 1), 1)
        return buffers * (tile.block_m * tile.block_k * a_bytes + tile.block_k * tile.block_n * b_bytes)

    return bound


_DERIVED = BoundedStore(1024)
"""An engine config's tile and key text, per config: a cached call derives neither again (the engines
return one of a few dicts per layer, their tuned rows or defaults)."""


def derived(own: dict[str, Any], backend: str) -> tuple[TileConfig, str]:
    """The engine config ``own`` as our tile on ``backend``, and as the key's text."""
    memo = (backend, *sorted(own.items()))
    found = _DERIVED.get(memo)
    if found is None:
        found = (as_tile(own, backend), ",".join(f"{name}={own[name]}" for name in sorted(own)))
        _DERIVED.put(memo, found)
    return found


def key_for(engine: Engine, layer: Layer, engine_config: str, where: Placement, policy: str) -> EngineKey:
    block = "" if layer.block_shape is None else f"{layer.block_shape[0]}x{layer.block_shape[1]}"
    return EngineKey(
        f"{engine.name}.fused_experts", where.arch, _TRITON, engine.version, layer.experts, layer.n, layer.k,
        layer.top_k, layer.dtype or layer.activation, block, layer.per_channel, row_bucket(layer.tokens),
        engine_config, compile_env_key(where.arch), policy,
    )


_TRITON = compiler_tag()


def front(engine: Engine) -> Callable[..., Any]:
    """Our function in place of the engine's ``fused_experts``: same arguments and result."""

    @functools.wraps(engine.fused_experts)
    def fused_experts(*args: Any, **kwargs: Any) -> Any:
        return run(engine, args, kwargs)[0]

    fused_experts.__resilient_moe_front__ = True  # type: ignore[attr-defined]
    return fused_experts


def run(engine: Engine, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Resolution | None]:
    """One call of the engine's fused experts with the tiling fallback, and how its tile was settled
    (None: no rows, nothing launched)."""
    arguments = engine.signature.bind(*args, **kwargs).arguments
    layer = engine.layer(arguments)
    if layer.tokens == 0:
        return _empty(engine, arguments, layer), None
    where = placement()
    if where.interpreter:
        with INTERPRETER_LOCK:
            return _resolved(engine, args, kwargs, arguments, layer, where)
    return _resolved(engine, args, kwargs, arguments, layer, where)


def _resolved(
    engine: Engine, args: tuple[Any, ...], kwargs: dict[str, Any], arguments: dict[str, Any], layer: Layer,
    where: Placement,
) -> tuple[Any, Resolution]:
    policy = active_policy()
    own = engine.own_config(layer)
    default, engine_config = derived(own, backend_of(where))
    key = key_for(engine, layer, engine_config, where, policy.fingerprint)

    def attempt(tile: TileConfig) -> Any:
        with checked(engine.kernels, where, tile):
            if tile == default:
                return engine.fused_experts(*args, **kwargs)
            return overridden(engine, as_config(tile, own), lambda: engine.fused_experts(*args, **kwargs))

    def describe() -> Call:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise CaptureMissError(
                f"{engine.name} fused_experts met a new shape during CUDA-graph capture ({key_text(key)}): "
                "resolve its tiles before capturing, with resilient_moe.warm_up(...) or one eager forward per "
                "captured batch size"
            )
        floors, ceilings = rules(layer)
        return Call(
            kernel=f"{engine.name}.fused_experts",
            key=key,
            arch=where.arch,
            shape={"tokens": layer.tokens, "experts": layer.experts, "n": layer.n, "k": layer.k, "top_k": layer.top_k},
            default=default,
            fields={"dtype": layer.dtype or layer.activation, "engine": f"{engine.name} {engine.version}"},
            shared_lower_bound=shared_lower_bound(layer, where.arch),
            shared_limit=where.shared_limit,
            rows_per_expert=-(-layer.tokens * layer.top_k // layer.experts),
            timer=_timer(engine, arguments, where, own, default),
            floors=floors,
            ceilings=ceilings,
        )

    return resolve(key, attempt, describe, policy, settings.cache())


_override_lock = threading.RLock()
"""Held while a call runs under an engine override: the engines keep it in a module global, so two
overridden calls in two threads would see each other's config."""


def overridden(engine: Engine, config: dict[str, Any], call: Callable[[], Any]) -> Any:
    """``call()`` under the engine's ``override_config(config)``. An error leaves the ``with`` block only
    after the engine restored its previous config (SGLang's context manager restores it only on a
    normal exit), then propagates unchanged."""
    failed: BaseException | None = None
    with _override_lock:
        with engine.override(config):
            try:
                return call()
            except BaseException as err:  # re-raised below, once the override is undone
                failed = err
        raise failed


def _timer(
    engine: Engine, arguments: dict[str, Any], where: Placement, own: dict[str, Any], default: TileConfig
) -> Callable[[TileConfig], float] | None:
    """Milliseconds of the whole call under a tile, for ``ladder.compare`` (GPU only, never while a graph
    is captured), queued behind a GPU wait: timed as it comes, the engine's Python path is what would be
    measured. An in-place call is timed on a copy of its activations, so the caller's stay as given."""
    hidden = arguments.get(engine.hidden_states)
    if where.interpreter or where.virtual is not None or not isinstance(hidden, torch.Tensor) or hidden.device.type != "cuda":
        return None
    if torch.cuda.is_current_stream_capturing():
        return None
    timed = {**arguments, engine.hidden_states: hidden.clone()}

    def once(tile: TileConfig) -> None:
        if tile == default:
            engine.fused_experts(**timed)
        else:
            overridden(engine, as_config(tile, own), lambda: engine.fused_experts(**timed))

    return lambda tile: queued_ms(functools.partial(once, tile))


def _empty(engine: Engine, arguments: dict[str, Any], layer: Layer) -> Any:
    """No tokens: the engine's result shape without launching anything (in place: the input as given)."""
    events.empty_input(kernel=f"{engine.name}.fused_experts", tokens=0, experts=layer.experts)
    if engine.empty is not None:
        return engine.empty(arguments, layer)
    hidden = arguments[engine.hidden_states]
    return hidden if layer.inplace else torch.zeros_like(hidden)
