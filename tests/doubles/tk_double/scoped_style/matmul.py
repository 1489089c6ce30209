"""Test double, loaded as ``triton_kernels.matmul`` (v3.7/v3.8-like public function). Not upstream
code: it computes through resilient_moe's builtin kernel (see core.py). Like upstream, it looks
``make_opt_flags`` up as a global of this module at call time, before anything is launched."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from doubles.tk_double import core
from doubles.tk_double.core import RaggedTensorMetadata
from .matmul_details.opt_flags import (
    InapplicableConstraint,
    OptFlags,
    make_opt_flags,
    scoped_opt_flags,
    scoped_opt_flags_constraints,
)

__all__ = ["InapplicableConstraint", "OptFlags", "PrecisionConfig", "RaggedTensorMetadata", "matmul",
           "scoped_opt_flags", "scoped_opt_flags_constraints"]


@dataclass
class PrecisionConfig:
    out_dtype: torch.dtype | None = None


def matmul(a, b, bias, a_ragged_metadata=None, b_ragged_metadata=None, gather_indx=None, scatter_indx=None,
           precision_config=None, betas=None, gammas=None, out_alpha=None, c=None, fused_comm=None,
           fused_activation=None, epilogue=None, c_acc_in=None):
    """gather: a [T, K] -> [rows, N] in expert order; scatter: a [rows, K] -> [T * top_k, N], one row
    per (token, slot), gamma-weighted (the caller sums the top-k, as with upstream v3.7+)."""
    core.entries.append("matmul")
    core.unsupported(b_ragged_metadata=b_ragged_metadata, betas=betas, gammas=gammas, out_alpha=out_alpha,
                     fused_comm=fused_comm, fused_activation=fused_activation, epilogue=epilogue, c_acc_in=c_acc_in)
    if gather_indx is not None and scatter_indx is not None:
        raise NotImplementedError("the triton_kernels test double does gather or scatter, not both")
    precision_config = precision_config or PrecisionConfig()
    b3 = b if b.ndim == 3 else b[None]
    moe = a_ragged_metadata.moe if a_ragged_metadata is not None else core.dense(a.shape[-2], a.device)
    m = a.shape[-2] if gather_indx is None else gather_indx.shape[0]
    k, n = b.shape[-2:]
    flags = make_opt_flags(precision_config.out_dtype or a.dtype, a.dtype, b.dtype, precision_config, 1, m, n, k,
                           a_ragged_metadata, False, scatter_indx is None, None, False, c_acc_in is not None, None)
    mode = "gather" if scatter_indx is None else "scatter"
    result, rows = core.launch("matmul", a, b3, bias, moe, mode, flags)
    out = result if mode == "gather" else rows
    if c is None:
        return out
    c.copy_(out)
    return c
