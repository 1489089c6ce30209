"""The engines' own tuned-config files, fit-checked for a chip: what ``resilient-moe preflight --engine``
writes, so ``SGLANG_MOE_CONFIG_DIR`` fixes a chip without patching anything.

For each M row the engine's tuning script writes, the engine's own choice on the target (its shipped file
for that device, else its default, as it would decide on a chip of that size) is compiled for the
target with both GEMMs' launches; where it does not fit, the ladder's candidates are compiled until one
fits, and that row is written instead. Nothing of the engine runs: its kernel is compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import virtual
from ...dispatch import Call, candidates
from ...policy import Policy
from ...targets import Chip
from . import sglang
from .fused_moe import Layer, as_config, as_tile, rules, shared_lower_bound

BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
"""The M rows SGLang's tuning script (benchmark/kernels/fused_moe_triton) writes."""


@dataclass(frozen=True)
class Row:
    """One M row: the engine's own config, its bytes on the target, and the config written."""

    tokens: int
    default: dict[str, Any]
    default_bytes: int
    written: dict[str, Any]
    written_bytes: int
    compiled: int  # configs compiled for the row (the default included)

    @property
    def fits(self) -> bool:
        return self.default == self.written


def layer_for(experts: int, hidden: int, intermediate: int, top_k: int, dtype: str | None, activation: str,
              block_shape: tuple[int, int] | None, tokens: int) -> Layer:
    """A layer's fused-experts call as SGLang sees it (tensor parallelism already divided ``intermediate``)."""
    return Layer(tokens=tokens, experts=experts, n=2 * intermediate, k=hidden, top_k=top_k, dtype=dtype,
                 activation=activation, block_shape=block_shape, per_channel=False, inplace=False,
                 w2_shape=(experts, hidden, intermediate))


def plan(layer: Layer, chip: Chip, limit: int, device_name: str, policy: Policy,
         batch_sizes: tuple[int, ...] = BATCH_SIZES) -> list[Row]:
    """Every row of SGLang's file for ``layer`` on ``chip`` (its shared memory taken as ``limit``)."""
    rows = []
    backend = "hip" if chip.backend == "hip" else "cuda"
    with _engine_on(chip, limit, device_name):
        for tokens in batch_sizes:
            at = dataclasses.replace(layer, tokens=tokens)
            own = sglang.engine().own_config(at)
            default = as_tile(own, backend)
            floors, ceilings = rules(at)
            call = Call(kernel="sglang.fused_experts", key=("preflight",), arch=chip.name, shape={}, default=default,
                        shared_lower_bound=shared_lower_bound(at, chip.name), shared_limit=limit,
                        rows_per_expert=-(-tokens * at.top_k // at.experts), floors=floors, ceilings=ceilings)
            tried = 0
            default_bytes = -1
            written: dict[str, Any] | None = None
            written_bytes = -1
            for tile in candidates(call, policy):
                if tried and call.shared_lower_bound is not None and call.shared_lower_bound(tile) > limit:
                    continue  # cannot fit: not compiled
                tried += 1
                config = own if tile == default else as_config(tile, own)
                needed = bytes_needed(at, config, chip)
                if tried == 1:
                    default_bytes = needed
                if needed <= limit:
                    written, written_bytes = config, needed
                    break
            if written is None:
                raise RuntimeError(f"no config of the ladder fits {chip.name} ({limit} bytes) for M={tokens}")
            rows.append(Row(tokens, own, default_bytes, written, written_bytes, tried))
    return rows


def bytes_needed(layer: Layer, config: dict[str, Any], chip: Chip) -> int:
    """Shared memory of the larger of the call's two GEMMs under ``config``, compiled for ``chip``."""
    return max(virtual.measure(virtual.job_for(kernel, args, constexprs, chip.name)).shared
               for kernel, args, constexprs in sglang.launches(layer, config, chip.name))


@contextlib.contextmanager
def _engine_on(chip: Chip, limit: int, device_name: str) -> Iterator[None]:
    """SGLang's config lookup as it runs on the target: its device name (the tuned file it would find)
    and, where its version picks a default by the chip's shared memory, the target's. Preflight is a
    tool process; a server never runs this."""
    config = importlib.import_module(sglang.CONFIG)
    _server_settings()
    saved = {name: getattr(config, name) for name in ("get_device_name", "_get_cuda_shared_memory_per_block_optin") if hasattr(config, name)}
    config.get_device_name = lambda *_: device_name
    if "_get_cuda_shared_memory_per_block_optin" in saved:
        config._get_cuda_shared_memory_per_block_optin = lambda: None if chip.backend == "hip" else limit
    config.get_moe_configs.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)
        config.get_moe_configs.cache_clear()


def _server_settings() -> None:
    """SGLang reads its server's settings in the config lookup; a tool process has none, so it states
    the defaults (``ServerArgs`` for no model), as a server does at start."""
    from sglang.srt.runtime_context import get_context, get_exec

    try:
        get_exec()
    except ValueError:
        from sglang.srt.server_args import ServerArgs

        get_context().set_server_args(ServerArgs(model_path="preflight"))


def file_names(layer: Layer, device_name: str) -> list[str]:
    """The up-projection file SGLang looks up for the layer, and its down-projection twin."""
    config = importlib.import_module(sglang.CONFIG)
    block = list(layer.block_shape) if layer.block_shape else None
    with _named(config, device_name):
        return [config.get_config_file_name(layer.experts, layer.w2_shape[2], layer.dtype, block, layer.per_channel, down_moe=down)
                for down in (False, True)]


@contextlib.contextmanager
def _named(config: Any, device_name: str) -> Iterator[None]:
    saved = config.get_device_name
    config.get_device_name = lambda *_: device_name
    try:
        yield
    finally:
        config.get_device_name = saved


def write(rows: list[Row], layer: Layer, device_name: str, directory: Path) -> list[Path]:
    """The files under ``directory/configs/triton_X_Y_Z/`` (what SGLANG_MOE_CONFIG_DIR=directory reads):
    the up-projection file and the same rows as the down-projection file (both GEMMs were checked)."""
    import triton

    folder = directory / "configs" / f"triton_{triton.__version__.replace('.', '_')}"
    folder.mkdir(parents=True, exist_ok=True)
    table = {str(row.tokens): {k: v for k, v in row.written.items() if k != "USE_TMA"} for row in rows}
    written = []
    for name in file_names(layer, device_name):
        path = folder / name
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(table, indent=2) + "\n")
        os.replace(temporary, path)
        written.append(path)
    return written
