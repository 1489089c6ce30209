"""Double of aiter's moe_op_gemm_a8w4 module: its config lookup, its wrapper, a kernel of the wrapper's
name, and the reduce the wrapper ends with. fp8 activations times MXFP4 weights (e2m1 pairs packed
along K, e8m0 scales per 32 along K) by ``tl.dot_scaled``, unswizzled scales, no SwiGLU."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aiter.ops.triton.utils._triton.arch_info import get_arch


def get_kernel_config_triton(m, n, k, routing_data, swizzle_mx_scale=None):
    """The double's own heuristic: wide tiles at two stages for large block_m."""
    block_m = routing_data.block_m
    return {
        "block_m": block_m, "block_n": 128 if block_m <= 32 else 256, "block_k": 256 if get_arch() == "gfx950" else 128,
        "num_warps": 4,
        "num_stages": 2, "group_m": 4, "xcd_swizzle": 1, "w_cache_modifier": None, "split_k": 1,
        "waves_per_eu": 0, "matrix_instr_nonkdim": 16, "kpack": 1,
    }


@triton.jit
def _moe_gemm_a8w4_triton(
    Y, stride_y_m, stride_y_n, X, stride_x_m, stride_x_k, W, stride_w_e, stride_w_k, stride_w_n,
    WScale, stride_ws_e, stride_ws_k, stride_ws_n, XScale, N, K, GatherIndx, ExptOffs, ExptData, grid_n,
    N_EXPTS_ACT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_GATHER: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_m = pid // grid_n
    pid_n = pid % grid_n
    info = tl.load(ExptData + pid_m)
    if info == -1:
        return
    expert = info & 0xFFFF
    start = tl.load(ExptOffs + expert)
    rows = tl.load(ExptOffs + expert + 1) - start
    offs_m = (info >> 16) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < rows
    slot = start + offs_m
    if HAS_GATHER:
        row_x = tl.load(GatherIndx + slot, mask=mask_m, other=0) // N_EXPTS_ACT
    else:
        row_x = slot
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    offs_packed = tl.arange(0, BLOCK_K // 2)
    offs_scale = tl.arange(0, BLOCK_K // 32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(X + row_x[:, None] * stride_x_m + (k0 + offs_k)[None, :] * stride_x_k,
                    mask=mask_m[:, None] & ((k0 + offs_k)[None, :] < K), other=0.0)
        w = tl.load(W + expert * stride_w_e + (k0 // 2 + offs_packed)[:, None] * stride_w_k + offs_n[None, :] * stride_w_n,
                    mask=((k0 // 2 + offs_packed)[:, None] < K // 2) & mask_n[None, :], other=0)
        w_scale = tl.load(WScale + expert * stride_ws_e + (k0 // 32 + offs_scale)[None, :] * stride_ws_k
                          + offs_n[:, None] * stride_ws_n,
                          mask=mask_n[:, None] & ((k0 // 32 + offs_scale)[None, :] < K // 32), other=127)
        acc = tl.dot_scaled(x, None, "e4m3", w, w_scale, "e2m1", acc)
    acc = acc * tl.load(XScale)
    tl.store(Y + slot[:, None] * stride_y_m + offs_n[None, :] * stride_y_n, acc.to(Y.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def reduce_grouped(y, scatter_indx, n_expts_act):
    """Each token's rows, in routing order, summed."""
    if scatter_indx is None:
        return y
    return y[scatter_indx.long()].view(-1, n_expts_act, y.shape[-1]).float().sum(1).to(y.dtype)


def moe_gemm_a8w4(x, w, x_scales, w_scales, x_static_scale=None, quant_static_scale=None, bias=None, routing_data=None,
                  gather_indx=None, scatter_indx=None, gammas=None, swizzle_mx_scale=None, out_dtype=torch.bfloat16,
                  apply_swiglu=False, alpha=1.0, limit=1.0, unpadded_N=None, unpadded_K=None):
    assert swizzle_mx_scale is None and not apply_swiglu and x_scales is None, "not in the double"
    M = x.shape[-2] if gather_indx is None else gather_indx.shape[0]
    K, N = x.shape[-1], w.shape[-1]
    config = get_kernel_config_triton(M, N, K, routing_data, swizzle_mx_scale)
    y = torch.zeros(M, N, dtype=out_dtype, device=x.device)
    grid_m = routing_data.n_blocks(M, config["block_m"])
    grid_n = triton.cdiv(N, config["block_n"])
    data = routing_data.expt_data
    _moe_gemm_a8w4_triton[(grid_m * grid_n,)](
        y, y.stride(0), y.stride(1), x, x.stride(0), x.stride(1), w, w.stride(0), w.stride(1), w.stride(2),
        w_scales, w_scales.stride(0), w_scales.stride(1), w_scales.stride(2), x_static_scale, N, K, gather_indx,
        data.token_offs_raw, data.block_pid_map, grid_n, routing_data.n_expts_act, config["block_m"], config["block_n"],
        config["block_k"], gather_indx is not None, num_warps=config["num_warps"], num_stages=config["num_stages"],
        waves_per_eu=config["waves_per_eu"], matrix_instr_nonkdim=config["matrix_instr_nonkdim"], kpack=config["kpack"],
    )
    return reduce_grouped(y, scatter_indx, routing_data.n_expts_act)
