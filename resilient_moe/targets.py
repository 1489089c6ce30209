"""Chips a tile must fit: their Triton target and how much shared memory (LDS on AMD) one block may use.

The limits are what Triton compares ``metadata.shared`` against before a launch
(``CompiledKernel._init_handles``): the per-block opt-in maximum, not the per-SM total.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

TARGET_ENV = "RESILIENT_MOE_TARGET"
CAP_ENV = "RESILIENT_MOE_SHARED_MEMORY_CAP"
ASYNC_COPY_ENV = "TRITON_HIP_USE_ASYNC_COPY"
COMPILE_ENV: tuple[str, ...] = (ASYNC_COPY_ENV,)
"""Environment variables that change what Triton compiles: a compile for a virtual chip carries them,
and keys of winners on the chips they affect hold them."""


@dataclass(frozen=True)
class Chip:
    """One compile target with its shared-memory limit and where that number comes from."""

    name: str
    backend: Literal["cuda", "hip"]
    arch: int | str
    warp_size: int
    max_shared_mem: int
    sm_count: int  # SMs (CUs on AMD) of the first example: heuristics that split work by it see this chip's
    examples: str
    source: str

    def gpu_target(self):  # -> triton.backends.compiler.GPUTarget (imported lazily: triton is heavy)
        from triton.backends.compiler import GPUTarget

        return GPUTarget(self.backend, self.arch, self.warp_size)


_GUIDE = "CUDA C++ Programming Guide, technical specifications per compute capability (max shared memory per block, opt-in)"

CHIPS: dict[str, Chip] = {
    c.name: c
    for c in (
        Chip("sm_80", "cuda", 80, 32, 166912, 108, "A100", _GUIDE),
        Chip("sm_86", "cuda", 86, 32, 101376, 82, "RTX 30xx, A10, A40", _GUIDE),
        Chip("sm_89", "cuda", 89, 32, 101376, 128, "RTX 40xx, L4, L40S", _GUIDE),
        Chip("sm_90", "cuda", 90, 32, 232448, 132, "H100, H200", "driver-reported on an H100, 2026-11-22 (docs/design.md, 'Chip facts'); same in " + _GUIDE),
        Chip("sm_100", "cuda", 100, 32, 232448, 148, "B200, GB200", _GUIDE),
        Chip("sm_120", "cuda", 120, 32, 101376, 170, "RTX 50xx, RTX PRO 6000", _GUIDE),
        Chip("gfx90a", "hip", "gfx90a", 64, 65536, 104, "MI210, MI250X", "AMD CDNA2 ISA guide: 64 KiB LDS per CU"),
        Chip("gfx942", "hip", "gfx942", 64, 65536, 304, "MI300X, MI325X", "AMD CDNA3 ISA guide: 64 KiB LDS per CU"),
        Chip("gfx950", "hip", "gfx950", 64, 163840, 256, "MI350X, MI355X", "AMD CDNA4 ISA guide: 160 KiB LDS per CU; Triton's limit on MI355X in ROCm/ATOM#710"),
    )
}


def chip(name: str) -> Chip:
    """Look a chip up by its usual spellings: ``sm_90``, ``sm90``, ``90``, ``cuda:90``, ``gfx950``, ``hip:gfx950``."""
    key = name.strip().lower()
    key = key.split(":", 1)[1] if key.startswith(("cuda:", "hip:")) else key
    if key.isdigit():
        key = f"sm_{key}"
    elif key.startswith("sm") and not key.startswith("sm_"):
        key = "sm_" + key[2:]
    if key not in CHIPS:
        raise ValueError(f"{TARGET_ENV} / arch: unknown chip {name!r}; known: {', '.join(CHIPS)}")
    return CHIPS[key]


def amd_async_copy(arch: str) -> bool:
    """Whether the installed Triton pipelines loads on AMD ``arch`` through async copies, which keep
    ``num_stages`` operand buffers in LDS instead of ``num_stages - 1``. The compiler's own rule is asked:
    Triton 3.6 does it only with TRITON_HIP_USE_ASYNC_COPY=1; 3.9 by default on gfx950 (=0 turns it off)."""
    from triton import knobs

    try:
        from triton.backends.amd.compiler import is_async_copy_enabled
    except ImportError:  # Triton 3.6: the knob alone decides
        return bool(knobs.amd.use_async_copy)
    return bool(is_async_copy_enabled(arch))


def describe_compiler(arch: str) -> str:
    """Which Triton compiles, from where, and on AMD whether async copies are on: a Triton upgrade moves
    shared-memory bytes, so every report says which compiler it comes from."""
    import triton

    copies = f", async copies {'on' if amd_async_copy(arch) else 'off'} for {arch}" if arch.startswith("gfx") else ""
    return f"{triton.__version__} ({os.path.dirname(triton.__file__)}){copies}"


def compiler_tag() -> str:
    """The installed Triton as a cache key part (``triton-3.9.0``): an upgrade changes tiles' bytes."""
    import triton

    return f"triton-{triton.__version__}"


def compile_env() -> tuple[tuple[str, str], ...]:
    """The set ``COMPILE_ENV`` variables and their values, as a compile here would see them."""
    return tuple((name, os.environ[name]) for name in COMPILE_ENV if name in os.environ)


def compile_env_key(arch: str) -> str:
    """The compiler's knobs as a cache key part, on the chips they affect (AMD); "" elsewhere."""
    return ",".join(f"{name}={value}" for name, value in compile_env()) if arch.startswith("gfx") else ""


INTERPRETER_LOCK = threading.Lock()
"""Held by every kernel call that runs in Triton's interpreter, one at a time: the interpreter keeps the
running grid and its patched ``triton.language`` in module globals, and 8 threads launching at once
failed 5 times in 8."""


@dataclass(frozen=True)
class Placement:
    """Where kernels run and which chip decides what fits.

    ``virtual`` is the chip from RESILIENT_MOE_TARGET: every candidate is compiled for it first and
    rejected with a real ``OutOfResources`` when it does not fit, whatever runs the kernel afterwards.
    """

    arch: str
    virtual: Chip | None
    interpreter: bool

    @property
    def shared_limit(self) -> int | None:
        """Bytes of shared memory a block may use here: the virtual chip's, else the GPU's own (what its
        driver reports, the number Triton checks), else None: the interpreter has no limit."""
        if self.virtual is not None:
            return self.virtual.max_shared_mem
        if self.interpreter:
            return None
        from triton.runtime.driver import driver

        limit = _device_shared_limit(driver.active.get_current_device())
        return limit if _cap is None else min(limit, _cap)


@functools.cache
def placement() -> Placement:
    """The process's placement, read once: env var first, then the active GPU, else the interpreter.
    On a GPU, RESILIENT_MOE_SHARED_MEMORY_CAP (bytes) puts ``cap_shared_memory`` in force."""
    interpreter = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    wanted = os.environ.get(TARGET_ENV, "").strip()
    virtual = chip(wanted) if wanted else None
    if virtual is not None:
        return Placement(virtual.name, virtual, interpreter)
    if interpreter:
        return Placement("interpreter", None, True)
    cap = os.environ.get(CAP_ENV, "").strip()
    if cap:
        if not cap.isdigit() or int(cap) <= 0:
            raise ValueError(f"{CAP_ENV} must be a positive number of bytes, got {cap!r}")
        cap_shared_memory(int(cap))
    return Placement(_active_arch(), None, False)


def cap_shared_memory(limit: int | None) -> None:
    """Make this GPU behave like one with ``limit`` bytes of shared memory per block (None: its own).

    A testing and what-if tool: kernels still compile for the real chip, but Triton's own check before
    a launch (``CompiledKernel._init_handles``, through ``triton.compiler.compiler.max_shared_mem``)
    compares their bytes with the cap and raises its real ``OutOfResources``, so recovery for the
    101376-byte class (RTX 4090, L40S, RTX 5090) runs and is timed on an H100. Every kernel of the
    process is held to it; kernels already compiled and loaded are not checked again, so set it before
    the first launch. Torch's own device properties are not capped: an engine that asks torch picks
    the tile a larger chip gets."""
    global _cap
    import triton.compiler.compiler as compiler

    uncapped = getattr(compiler, "_resilient_moe_uncapped", compiler.max_shared_mem)
    compiler._resilient_moe_uncapped = uncapped
    if limit is None:
        compiler.max_shared_mem = uncapped
    else:
        compiler.max_shared_mem = lambda device: min(uncapped(device), limit)
    _cap = limit


_cap: int | None = None


def shared_limit(arch: str, device: torch.device) -> int | None:
    """The limit a tile compiled for ``arch`` must fit, for operands on ``device``.

    Operands on a GPU run in this process: its placement says (a virtual chip, or the driver's value).
    Meta or CPU operands are compiled for ``arch``, not run on it (preflight, or a virtual chip under the
    interpreter): the chip table's limit, or None for an arch it does not know (never skip a rung)."""
    if device.type not in ("cpu", "meta") and (where := placement()).arch == arch:
        return where.shared_limit
    known = CHIPS.get(arch)
    return None if known is None else known.max_shared_mem


@functools.cache
def _device_shared_limit(device: int) -> int:
    """Read once per device: the driver call costs microseconds, and only a cache miss needs it."""
    from triton.runtime.driver import driver

    return driver.active.utils.get_device_properties(device)["max_shared_mem"]


def _active_arch() -> str:
    from triton.runtime.driver import driver

    target = driver.active.get_current_target()
    return f"sm_{target.arch}" if target.backend == "cuda" else str(target.arch).split(":")[0]
