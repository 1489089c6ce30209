"""How much shared memory (LDS on AMD) a tile of the MoE GEMM kernel needs at least, without compiling it.

The kernel's shared memory is the software pipeline's operand buffers: each holds one BLOCK_M x BLOCK_K
tile of X or one BLOCK_K x BLOCK_N tile of W. What else the compiler allocates (epilogue layout
conversions) reuses that space or adds to it, so counting buffers gives a lower bound. The persistent
form adds a TMA buffer for its epilogue, so the same count stays below it (213016 bytes real against
147456 counted for sm_90's 128x256x64 s3 default). Every count
below was checked against ``metadata.shared`` of real compiles with Triton 3.6 and 3.9 (tests/test_smem.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor

from ...config import TileConfig
from ...targets import amd_async_copy

_WARP_SIZE = {"sm_80": 32, "sm_86": 32, "sm_89": 32, "sm_90": 32, "sm_120": 32, "gfx90a": 64, "gfx942": 64, "gfx950": 64}
"""The chips the bound was checked on; sm_100 (tcgen05, a pipeline of its own) was only sampled."""


def shared_bytes_lower_bound(config: TileConfig, itemsize: int, arch: str, vectorized: tuple[bool, bool]) -> int:
    """Bytes of shared memory ``config`` needs at least on ``arch``, for ``itemsize``-byte operands.

    An operand is counted when its loads are copied into pipeline buffers: ``vectorized`` says, for X
    and for W, whether the JIT can prove their rows 16-byte aligned (``vectorized_operands``), and its
    tile must give every thread 4 bytes or more; otherwise it goes through registers and is not
    multi-buffered. Buffers per counted operand, from 10,318 compiles (bf16, fp16, fp32 and tf32,
    gather and scatter, with and without bias, block_m and block_n 16 to 256, block_k 16 to 128,
    1 to 5 stages, 1 to 16 warps), exact for most of them:

    - sm_90: num_stages when the dot is a wgmma (block_m a multiple of 64, 2-byte operands, warps a
      multiple of 4), else num_stages - 1, at least 1: 128x256x64 bf16 s5 = 5 x 49152 = 245760.
    - sm_80, sm_86, sm_89, sm_120: num_stages - 1, at least 1.
    - gfx90a, gfx942, gfx950: num_stages - 1: 256x256x64 bf16 s4 = 3 x 65536 = 196608, or num_stages
      where the compiler pipelines through async copies (``targets.amd_async_copy``: Triton 3.9 does on
      gfx950 by default, and adds a few KiB to them: 272304 for that tile). One stage: 0 without them.
    - any other arch (sm_100, the interpreter), or a tile outside what was measured: 0, never a
      reason to skip a tile.
    """
    warp = _WARP_SIZE.get(arch)
    if warp is None or not _measured(config):
        return 0
    threads = config.num_warps * warp
    tiles = (config.block_m * config.block_k * itemsize, config.block_k * config.block_n * itemsize)
    counted = sum(tile for tile, aligned in zip(tiles, vectorized) if aligned and tile >= 4 * threads)
    stages = config.num_stages
    if arch.startswith("gfx"):
        return (stages if stages > 1 and amd_async_copy(arch) else stages - 1) * counted
    wgmma = arch == "sm_90" and itemsize == 2 and config.block_m % 64 == 0 and config.num_warps % 4 == 0
    return (stages if wgmma else max(stages - 1, 1)) * counted


def _measured(config: TileConfig) -> bool:
    return (
        16 <= min(config.block_m, config.block_n, config.block_k)
        and max(config.block_m, config.block_n) <= 256 and config.block_k <= 128
        and config.num_warps <= 16 and config.num_stages <= 5
    )


def vectorized_operands(x: Tensor, w: Tensor) -> tuple[bool, bool]:
    """For X and W: whether the JIT can prove their rows 16-byte aligned, and so copy them
    asynchronously. It specializes integers on divisibility by 16, so that takes a unit stride along
    the tile's contiguous dimension, the other strides and the size that masks that dimension (K or N)
    multiples of 16 elements, and a 16-byte aligned base."""
    _, k, n = w.shape
    x_rows = x.stride(1) == 1 and x.stride(0) % 16 == 0 and k % 16 == 0
    w_along_n = w.stride(2) == 1 and w.stride(1) % 16 == 0 and n % 16 == 0
    w_along_k = w.stride(1) == 1 and w.stride(2) % 16 == 0 and k % 16 == 0
    return (
        x_rows and x.data_ptr() % 16 == 0,
        (w_along_n or w_along_k) and w.stride(0) % 16 == 0 and w.data_ptr() % 16 == 0,
    )


def lower_bound(x: Tensor, w: Tensor, arch: str) -> Callable[[TileConfig], int]:
    """The dispatcher's estimate for these operands on ``arch``: config -> bytes at least."""
    return functools.partial(
        shared_bytes_lower_bound, itemsize=x.element_size(), arch=arch, vectorized=vectorized_operands(x, w)
    )
