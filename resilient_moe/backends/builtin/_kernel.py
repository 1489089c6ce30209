"""Triton kernels of the grouped MoE GEMM, in two forms, and scatter mode's slot sum.

- ``_moe_matmul_kernel``: one (BLOCK_M x BLOCK_N) output tile of one expert per program. The grid is
  a static upper bound on the number of tiles, so the host never reads routing data: each program
  derives its (expert, m-tile) from the expert offsets and leaves if it has no tile.
- ``_moe_matmul_persistent_kernel`` (NVIDIA sm_90, ``TileConfig.is_persistent``): one program per SM
  looping over the tiles, which ``_tile_map_kernel`` lists first, with W (and in scatter mode X) loaded
  and Y stored through TMA descriptors.

Both write Y in expert order, one row per routed (token, slot) pair; in scatter mode
``_slot_sum_kernel`` then adds each token's rows, found through the routing's ``slot_to_row``.
"""

import triton
import triton.language as tl
from triton.tools.ragged_tma import load_ragged, to_ragged_indices


@triton.jit
def expert_tiles(ExpertOffsets, n_experts, BLOCK_M: tl.constexpr, EXPERTS_POW2: tl.constexpr):
    """Each expert's rows and m-tile count, read from the offsets: the tile map, computed in the kernel
    so the host never reads routing data. Returns what ``tile_of`` needs and the number of m-tiles."""
    experts = tl.arange(0, EXPERTS_POW2)
    in_range = experts < n_experts
    row_lo = tl.load(ExpertOffsets + experts, mask=in_range, other=0)
    row_hi = tl.load(ExpertOffsets + experts + 1, mask=in_range, other=0)
    m_tiles = (row_hi - row_lo + BLOCK_M - 1) // BLOCK_M
    m_tiles_end = tl.cumsum(m_tiles, axis=0)
    return experts, row_lo, row_hi, m_tiles, m_tiles_end, tl.sum(m_tiles, axis=0)


@triton.jit
def swizzle(t, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Tile ``t`` as (m-tile, n-tile), ordered so GROUP_M m-tiles (sharing W columns when they belong
    to one expert) sweep all n-tiles (sharing X rows) together."""
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (t // num_pid_in_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    return first_pid_m + (t % num_pid_in_group) % group_size_m, (t % num_pid_in_group) // group_size_m


@triton.jit
def tile_of(
    t, m_tiles_end, m_tiles, row_lo, row_hi, experts, num_pid_m, num_pid_n, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr
):
    """Tile ``t`` of the grid as (expert, n-tile, first row, end of the expert's rows)."""
    pid_m, pid_n = swizzle(t, num_pid_m, num_pid_n, GROUP_M)
    expert = tl.sum((m_tiles_end <= pid_m).to(tl.int32), axis=0)
    is_expert = experts == expert
    first_tile = tl.sum(tl.where(is_expert, m_tiles_end - m_tiles, 0), axis=0)
    row_start = tl.sum(tl.where(is_expert, row_lo, 0), axis=0) + (pid_m - first_tile) * BLOCK_M
    row_end = tl.sum(tl.where(is_expert, row_hi, 0), axis=0)
    return expert, pid_n, row_start, row_end


@triton.jit
def _moe_matmul_kernel(
    X,
    W,
    Bias,
    Y,
    ExpertOffsets,
    GatherIdx,
    ScatterIdx,
    Gammas,
    n_experts,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_we,
    stride_wk,
    stride_wn,
    stride_be,
    stride_bn,
    stride_ym,
    stride_yn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EXPERTS_POW2: tl.constexpr,
    SCATTER: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    EVEN_N: tl.constexpr,
    INDEX_64: tl.constexpr,
    IEEE_FP32: tl.constexpr,
):
    """Gather: Y[r] = X[GatherIdx[r]] @ W[e] + Bias[e], Y in expert order.
    Scatter: Y[r] = Gammas[s] * (X[r] @ W[e] + Bias[e]) with s = ScatterIdx[r], the row's flat slot.
    IEEE_FP32 keeps fp32 products exact; otherwise fp32 uses the backend default (tf32 on NVIDIA).
    INDEX_64: offsets in 64 bits, only where an offset into some tensor can reach 2**31 (int32 offsets
    ran Mixtral-sized GEMMs 2 to 5% faster on an H100).
    """
    pid = tl.program_id(0)

    experts, row_lo, row_hi, m_tiles, m_tiles_end, num_pid_m = expert_tiles(
        ExpertOffsets, n_experts, BLOCK_M, EXPERTS_POW2
    )
    num_pid_n = tl.cdiv(N, BLOCK_N)
    if pid >= num_pid_m * num_pid_n:
        return

    expert, pid_n, row_start, row_end = tile_of(
        pid, m_tiles_end, m_tiles, row_lo, row_hi, experts, num_pid_m, num_pid_n, BLOCK_M, GROUP_M
    )
    tile_matmul(
        X, W, Bias, Y, GatherIdx, ScatterIdx, Gammas, expert, pid_n, row_start, row_end, N, K,
        stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_be, stride_bn, stride_ym, stride_yn,
        BLOCK_M, BLOCK_N, BLOCK_K, SCATTER, HAS_BIAS, EVEN_K, EVEN_N, INDEX_64, IEEE_FP32,
    )


@triton.jit
def tile_matmul(
    X, W, Bias, Y, GatherIdx, ScatterIdx, Gammas, expert, pid_n, row_start, row_end, N, K,
    stride_xm, stride_xk, stride_we, stride_wk, stride_wn, stride_be, stride_bn, stride_ym, stride_yn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCATTER: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, INDEX_64: tl.constexpr,
    IEEE_FP32: tl.constexpr,
):
    """One output tile: rows [row_start, row_end) of ``expert`` (at most BLOCK_M), columns of n-tile
    ``pid_n``; the K loop, the bias and the store. Apart from how a program finds its tile."""
    index: tl.constexpr = tl.int64 if INDEX_64 else tl.int32
    rows = row_start + tl.arange(0, BLOCK_M)
    row_mask = rows < row_end
    x_rows = source_rows(rows, row_start, row_end, GatherIdx, SCATTER)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_n = tl.max_contiguous(tl.multiple_of(offs_n, BLOCK_N), BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    # What the epilogue needs is loaded before the K loop, so its latency hides behind it: after the
    # loop, scatter mode's two dependent loads (the slot, then its gamma) held the SM idle, since the
    # next tile cannot start before this program leaves.
    if SCATTER:
        gamma = tl.load(Gammas + tl.load(ScatterIdx + rows, mask=row_mask, other=0), mask=row_mask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(Bias + expert.to(index) * stride_be + offs_n * stride_bn, mask=n_mask, other=0.0)
    x_ptrs = X + x_rows.to(index)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = (
        W
        + expert.to(index) * stride_we
        + offs_k[:, None] * stride_wk
        + offs_n[None, :] * stride_wn
    )
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            if EVEN_N:
                w = tl.load(w_ptrs)
            else:
                w = tl.load(w_ptrs, mask=n_mask[None, :], other=0.0)
            x = tl.load(x_ptrs)
        else:
            k_mask = offs_k < K - k * BLOCK_K
            if EVEN_N:
                w = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
            else:
                w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
            x = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
        if IEEE_FP32:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        acc += bias.to(tl.float32)[None, :]
    if SCATTER:
        acc *= gamma[:, None]
    y_ptrs = Y + rows.to(index)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])


@triton.jit
def _tile_map_kernel(ExpertOffsets, TileMap, TileCount, n_experts, n_slots, stride_map, BLOCK_M: tl.constexpr,
                     EXPERTS_POW2: tl.constexpr, BLOCK: tl.constexpr):
    """The persistent kernel's list of m-tiles in expert order: TileMap[0, p] is the expert of m-tile p,
    TileMap[1, p] its m-block within that expert; TileCount the number of m-tiles. Entries past the
    count (the map is sized to the host's upper bound) name no real tile and are never read. On the
    device, so the host never reads routing data."""
    experts, _, _, m_tiles, m_tiles_end, total = expert_tiles(ExpertOffsets, n_experts, BLOCK_M, EXPERTS_POW2)
    if tl.program_id(0) == 0:
        tl.store(TileCount, total)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    expert = tl.sum((m_tiles_end[None, :] <= p[:, None]).to(tl.int32), axis=1)
    first = tl.sum(tl.where(experts[None, :] == expert[:, None], (m_tiles_end - m_tiles)[None, :], 0), axis=1)
    in_map = p < n_slots
    tl.store(TileMap + p, expert, mask=in_map)
    tl.store(TileMap + stride_map + p, p - first, mask=in_map)


@triton.jit
def _moe_matmul_persistent_kernel(
    X, XDesc, WDesc, Bias, Y, YDesc, ExpertOffsets, GatherIdx, ScatterIdx, Gammas, TileMap, TileCount,
    N, K, stride_xm, stride_xk, stride_be, stride_bn, stride_ym, stride_yn, stride_map,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SCATTER: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INDEX_64: tl.constexpr,
    IEEE_FP32: tl.constexpr,
):
    """What ``_moe_matmul_kernel`` computes, with matmul_ogs's Hopper structure as a whole: a flattened
    loop over tiles (the next tile's loads start under this one's epilogue), W through a TMA
    descriptor, and the sides in expert order through ragged ones, which the hardware clips at the
    expert's last row: Y's rows, and in scatter mode X's. Gather mode's X rows are read through
    pointers, wrapped into the expert as ``source_rows`` does. Used because it beat the one-tile
    kernel on sm_90 prefill (docs/design.md, "Persistent kernel").
    """
    index: tl.constexpr = tl.int64 if INDEX_64 else tl.int32
    num_pid_m = tl.load(TileCount)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    for t in tl.range(tl.program_id(0), num_pid_m * num_pid_n, tl.num_programs(0), flatten=True):
        pid_m, pid_n = swizzle(t, num_pid_m, num_pid_n, GROUP_M)
        expert = tl.load(TileMap + pid_m)
        off_m = tl.load(TileMap + stride_map + pid_m) * BLOCK_M
        row_lo = tl.load(ExpertOffsets + expert)
        count = tl.load(ExpertOffsets + expert + 1) - row_lo
        off_n = pid_n * BLOCK_N
        if not SCATTER:
            wrapped = tl.max_contiguous(tl.multiple_of((off_m + tl.arange(0, BLOCK_M)) % count, BLOCK_M), BLOCK_M)
            x_rows = tl.load(GatherIdx + row_lo + wrapped)
            x_ptrs = X + x_rows.to(index)[:, None] * stride_xm + offs_k[None, :] * stride_xk
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in tl.range(tl.cdiv(K, BLOCK_K)):
            if SCATTER:
                x = load_ragged(XDesc, row_lo, count, [off_m, ki * BLOCK_K])
            elif EVEN_K:
                x = tl.load(x_ptrs)
            else:
                x = tl.load(x_ptrs, mask=offs_k[None, :] < K - ki * BLOCK_K, other=0.0)
            w = WDesc.load([expert, ki * BLOCK_K, off_n]).reshape(BLOCK_K, BLOCK_N)
            if IEEE_FP32:
                acc = tl.dot(x, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w, acc)
            if not SCATTER:
                x_ptrs += BLOCK_K * stride_xk
        if HAS_BIAS:
            offs_n = off_n + tl.arange(0, BLOCK_N)
            acc += tl.load(Bias + expert.to(index) * stride_be + offs_n * stride_bn, mask=offs_n < N, other=0.0)[None, :]
        if SCATTER:
            rows = off_m + tl.arange(0, BLOCK_M)
            slots = tl.load(ScatterIdx + row_lo + rows, mask=rows < count, other=0)
            acc *= tl.load(Gammas + slots, mask=rows < count, other=0.0)[:, None]
        c0, c1, c2 = to_ragged_indices(row_lo, count, off_m)
        YDesc.store([c0, c1, c2, off_n], acc.to(Y.dtype.element_ty).reshape([1, 1, BLOCK_M, BLOCK_N]))


@triton.jit
def source_rows(rows, row_start, row_end, GatherIdx, SCATTER: tl.constexpr):
    """The X row each tile row reads. Rows past the expert's end wrap onto the tile's own rows (their
    results are never stored), so the K loop needs no M mask. Not one fixed row: reading X[0] there
    made every padded tile of the grid read that one row at once, and reading the tile's first row
    made all its padding lanes read one row; either made one row a hot spot in gather mode
    (docs/design.md, "Tile defaults")."""
    x_rows = row_start + (rows - row_start) % (row_end - row_start)
    if not SCATTER:
        x_rows = tl.load(GatherIdx + x_rows)
    return x_rows


@triton.jit
def _slot_sum_kernel(Y, SlotToRow, Out, N, stride_ym, stride_om, stride_on, TOP_K: tl.constexpr,
                     BLOCK_N: tl.constexpr, INDEX_64: tl.constexpr):
    """Scatter mode's second step: Out[t] = the sum of token t's TOP_K rows of Y, in slot order, each
    found through SlotToRow (a slot with no local row, -1, adds nothing), accumulated in fp32. So the
    GEMM stores whole tiles in expert order (through TMA in the persistent form, as matmul_ogs does
    before its reduction), and no [T * top_k, N] buffer is zeroed under expert parallelism. A kernel
    of its own because torch.sum over [T, top_k, N] was slower (docs/design.md, "Scatter mode and
    slot sum")."""
    index: tl.constexpr = tl.int64 if INDEX_64 else tl.int32
    t = tl.program_id(0).to(index)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        row = tl.load(SlotToRow + t * TOP_K + j).to(index)
        # tl.where, not ``n_mask & (row >= 0)``: Triton 3.9's interpreter gives that mask an int32 dtype
        # and rejects the load ("mask has unsupported dtype"); compiled, both are the same select.
        acc += tl.load(Y + row * stride_ym + offs_n, mask=tl.where(row >= 0, n_mask, False), other=0.0).to(tl.float32)
    tl.store(Out + t * stride_om + offs_n * stride_on, acc.to(Out.dtype.element_ty), mask=n_mask)
