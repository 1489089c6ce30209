"""Test double, loaded as ``triton_kernels.matmul_ogs`` (v3.5/v3.6-like public function). Not upstream
code: it computes through resilient_moe's builtin kernel (see core.py). Like upstream, it looks
``make_opt_flags`` up as a global of this module at call time, before anything is launched."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from doubles.tk_double import core
from doubles.tk_double.core import GatherIndx, RoutingData, ScatterIndx
from .matmul_ogs_details.opt_flags import (
    InapplicableConstraint,
    make_opt_flags,
    update_opt_flags_constraints,
)

__all__ = ["GatherIndx", "InapplicableConstraint", "PrecisionConfig", "RoutingData", "ScatterIndx", "matmul_ogs",
           "update_opt_flags_constraints"]


@dataclass
class PrecisionConfig:
    out_dtype: torch.dtype | None = None
    enforce_bitwise_invariance: bool = False


def matmul_ogs(x, w, bias, routing_data=None, gather_indx=None, scatter_indx=None, precision_config=None,
               betas=None, gammas=None, out_alpha=None, y=None, fused_activation=None, epilogue=None):
    """gather: x [T, K] -> [rows, N] in expert order; scatter: x [rows, K] -> [T, N], top-k summed."""
    core.entries.append("matmul_ogs")
    core.unsupported(betas=betas, gammas=gammas, out_alpha=out_alpha, fused_activation=fused_activation, epilogue=epilogue)
    if gather_indx is not None and scatter_indx is not None:
        raise NotImplementedError("the triton_kernels test double does gather or scatter, not both")
    precision_config = precision_config or PrecisionConfig()
    w3 = w if w.ndim == 3 else w[None]
    if routing_data is None:
        routing_data = RoutingData(None, None, w3.shape[0], 1, moe=core.dense(x.shape[-2], x.device))
    m = x.shape[-2] if gather_indx is None else gather_indx.src_indx.shape[0]
    k, n = w.shape[-2:]
    flags = make_opt_flags(precision_config.out_dtype or x.dtype, x.dtype, w.dtype, precision_config, m, n, k,
                           routing_data, False, scatter_indx is not None and routing_data.n_expts_act == 1, None)
    mode = "gather" if scatter_indx is None else "scatter"
    result, _ = core.launch("matmul_ogs", x, w3, bias, routing_data.moe, mode, flags)
    if y is None:
        return result
    y.copy_(result)
    return y
