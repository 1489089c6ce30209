"""The engines' own tuned-config files, fit-checked for a chip: what ``resilient-moe preflight --engine``
writes, so ``SGLANG_MOE_CONFIG_DIR`` or ``VLLM_TUNED_CONFIG_FOLDER`` fixes a chip without patching anything.

For each M row the engine's tuning script writes, the engine's own choice on the target (its shipped file
for that device, else its default, as it would decide on a chip of that size) is compiled for the
target with both GEMMs' launches; where it does not fit, the ladder's candidates are compiled until one
fits, and that row is written instead. Nothing of the engine runs: its kernel is compiled. What differs
between engines (their lookup, launches, file names and folders) is a ``Tuning``, built by sglang.py
and vllm.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import virtual
from ...config import TileConfig
from ...dispatch import Call, first_fit
from ...policy import Policy
from ...targets import Chip
from .fused_moe import Layer, as_config, as_tile, rules, shared_lower_bound
from ..binding import Launch

BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
"""The M rows the engines' tuning scripts write (SGLang's benchmark/kernels/fused_moe_triton, vLLM's
benchmarks/kernels/benchmark_moe.py)."""


@dataclass(frozen=True)
class Tuning:
    """One engine's tuned-config files, as preflight reads and writes them."""

    engine: str  # "sglang", "vllm"
    version: str
    own_config: Callable[[Layer], dict[str, Any]]  # the engine's choice for a call (inside ``on_target``)
    on_target: Callable[[Chip, int, str], AbstractContextManager[None]]  # its lookup as on (chip, bytes, device name)
    launches: Callable[[Layer, dict[str, Any], str], list[Launch]]  # both GEMMs' launches under a config on an arch
    file_names: Callable[[Layer, str], list[str]]  # the files it looks up for a layer on a device name
    folder: Callable[[Path], Path]  # where under the folder named by ``env`` it looks them up
    env: str  # the variable that points the engine at the folder
    dropped: frozenset[str] = frozenset()  # config keys its files do not hold
    stamp: str | None = None  # the key its tuner records the Triton version under


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
    """A layer's fused-experts call as the engines' lookups see it (tensor parallelism already divided
    ``intermediate``)."""
    return Layer(tokens=tokens, experts=experts, n=2 * intermediate, k=hidden, top_k=top_k, dtype=dtype,
                 activation=activation, block_shape=block_shape, per_channel=False, inplace=False,
                 w2_shape=(experts, hidden, intermediate))


def plan(tuning: Tuning, layer: Layer, chip: Chip, limit: int, device_name: str, policy: Policy,
         batch_sizes: tuple[int, ...] = BATCH_SIZES) -> list[Row]:
    """Every row of the engine's file for ``layer`` on ``chip`` (its shared memory taken as ``limit``)."""
    rows = []
    backend = "hip" if chip.backend == "hip" else "cuda"
    with tuning.on_target(chip, limit, device_name):
        for tokens in batch_sizes:
            at = dataclasses.replace(layer, tokens=tokens)
            own = tuning.own_config(at)
            default = as_tile(own, backend)
            floors, ceilings = rules(at)
            call = Call(kernel="sglang.fused_experts", key=("preflight",), arch=chip.name, shape={}, default=default,
                        shared_lower_bound=shared_lower_bound(at, chip.name), shared_limit=limit,
                        rows_per_expert=-(-tokens * at.top_k // at.experts), floors=floors, ceilings=ceilings)
            configs = {default: own}

            def config_of(tile: TileConfig) -> dict[str, Any]:
                return configs.setdefault(tile, as_config(tile, own))

            fit = first_fit(call, policy, lambda tile: bytes_needed(tuning, at, config_of(tile), chip))
            if fit.landed is None:
                raise RuntimeError(f"no config of the ladder fits {chip.name} ({limit} bytes) for M={tokens}")
            rows.append(Row(tokens, own, fit.start_bytes, config_of(fit.landed), fit.landed_bytes, fit.compiled))
    return rows


def bytes_needed(tuning: Tuning, layer: Layer, config: dict[str, Any], chip: Chip) -> int:
    """Shared memory of the larger of the call's two GEMMs under ``config``, compiled for ``chip``."""
    return max(virtual.measure(virtual.job_for(kernel, args, constexprs, chip.name)).shared
               for kernel, args, constexprs in tuning.launches(layer, config, chip.name))


def write(tuning: Tuning, rows: list[Row], layer: Layer, device_name: str, directory: Path) -> list[Path]:
    """The engine's files for the layer where ``tuning.env=directory`` finds them, each holding every
    row (SGLang's up- and down-projection files alike: both GEMMs were checked). Each file is replaced
    whole, never left half-written."""
    folder = tuning.folder(directory)
    folder.mkdir(parents=True, exist_ok=True)
    import triton

    table: dict[str, Any] = {tuning.stamp: triton.__version__} if tuning.stamp else {}
    table.update((str(row.tokens), {k: v for k, v in row.written.items() if k not in tuning.dropped}) for row in rows)
    written = []
    for name in tuning.file_names(layer, device_name):
        path = folder / name
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(table, indent=2) + "\n")
        os.replace(temporary, path)
        written.append(path)
    return written


def engine_tuning(engine: str) -> Tuning:
    """The named engine's tuned-config files (ImportError where the engine is not installed)."""
    from . import sglang, vllm

    tunings = {"sglang": sglang.tuning, "vllm": vllm.tuning}
    if engine not in tunings:
        raise ValueError(f"engine must be one of {', '.join(tunings)}, got {engine!r}")
    return tunings[engine]()
