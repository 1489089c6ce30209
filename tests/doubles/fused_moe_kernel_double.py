"""A from-scratch stand-in for vLLM's Triton ``fused_moe_kernel`` (used by the vLLM double): the same
parameters, in the same order, as vLLM's public source declares them, so the launches resilient_moe's
preflight describes for vLLM can be compiled against it and compared with the launches the double makes.

One program computes a BLOCK_SIZE_M x BLOCK_SIZE_N block of rows sorted by expert (or, on the naive
path, one row per block), pipelined over K like the real kernel, so its shared memory grows with the
tile and the stages the same way. Formats: 16/32-bit activations, fp8 w8a8 per tensor, per channel and
block-scaled; the int8 paths and the tensor-descriptor path are not in the double."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fused_moe_kernel(
    a_ptr, b_ptr, c_ptr, b_bias_ptr, a_scale_ptr, b_scale_ptr, topk_weights_ptr,
    sorted_token_ids_ptr, expert_ids_ptr, num_tokens_post_padded_ptr,
    N, K, EM, num_valid_tokens,
    stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_asm, stride_ask, stride_bse, stride_bsk, stride_bsn, stride_bbe, stride_bbn,
    group_n: tl.constexpr, group_k: tl.constexpr, naive_block_assignment: tl.constexpr,
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, SPLIT_K: tl.constexpr, MUL_ROUTED_WEIGHT: tl.constexpr, top_k: tl.constexpr,
    compute_type: tl.constexpr, use_fp8_w8a8: tl.constexpr, use_int8_w8a8: tl.constexpr,
    use_int8_w8a16: tl.constexpr, per_channel_quant: tl.constexpr, HAS_BIAS: tl.constexpr,
    SWAP_AB: tl.constexpr, USE_TD: tl.constexpr = False,
):
    tl.static_assert(not (use_int8_w8a8 or use_int8_w8a16 or USE_TD), "not in the double")
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(EM, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    in_group = GROUP_SIZE_M * num_pid_n
    first_m = (pid // in_group) * GROUP_SIZE_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_SIZE_M)
    pid_m = first_m + (pid % in_group) % group_size
    pid_n = (pid % in_group) // group_size
    if pid_m * BLOCK_SIZE_M >= tl.load(num_tokens_post_padded_ptr):
        return
    rows = tl.arange(0, BLOCK_SIZE_M)
    if naive_block_assignment:
        slot = tl.where(rows == 0, pid_m, num_valid_tokens).to(tl.int64)
    else:
        slot = tl.load(sorted_token_ids_ptr + pid_m * BLOCK_SIZE_M + rows).to(tl.int64)
    valid = slot < num_valid_tokens
    token = slot // top_k
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    cols = offs_n % N  # wrapped: every weight load is in bounds, the store is masked
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + token[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + expert * stride_be + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    block_scaled: tl.constexpr = use_fp8_w8a8 and group_n > 0 and group_k > 0
    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for step in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        left = K - step * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=valid[:, None] & (offs_k[None, :] < left), other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < left, other=0.0)
        if SWAP_AB:
            part = tl.trans(tl.dot(tl.trans(b), tl.trans(a)))
        else:
            part = tl.dot(a, b)
        if block_scaled:
            group = step * BLOCK_SIZE_K // group_k
            a_scale = tl.load(a_scale_ptr + token * stride_asm + group * stride_ask, mask=valid, other=0.0)
            b_scale = tl.load(b_scale_ptr + expert * stride_bse + (cols // group_n) * stride_bsn + group * stride_bsk)
            acc += part * a_scale[:, None] * b_scale[None, :]
        else:
            acc += part
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk
    if use_fp8_w8a8 and not block_scaled:
        if per_channel_quant:
            a_scale = tl.load(a_scale_ptr + token * stride_asm, mask=valid, other=0.0)
            b_scale = tl.load(b_scale_ptr + expert * stride_bse + cols * stride_bsn)
            acc = acc * a_scale[:, None] * b_scale[None, :]
        else:
            acc = acc * tl.load(a_scale_ptr) * tl.load(b_scale_ptr + expert)
    if HAS_BIAS:
        acc += tl.load(b_bias_ptr + expert * stride_bbe + cols * stride_bbn).to(tl.float32)[None, :]
    if MUL_ROUTED_WEIGHT:
        acc = acc * tl.load(topk_weights_ptr + slot, mask=valid, other=0.0)[:, None]
    c_ptrs = c_ptr + slot[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(compute_type), mask=valid[:, None] & (offs_n[None, :] < N))
