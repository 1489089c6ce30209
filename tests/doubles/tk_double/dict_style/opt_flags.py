"""Test double, loaded as ``triton_kernels.matmul_ogs_details.opt_flags`` (v3.5/v3.6-like API):
module-level constraint dict, a process-global flags override. Not upstream code."""

from __future__ import annotations

from dataclasses import dataclass

from doubles.tk_double import core

SUPPORTED = ("block_m", "block_n", "block_k", "num_stages", "split_k", "is_persistent", "fused_scatter", "epilogue_subtile", "idle_sms")


@dataclass(frozen=True)
class OptFlags:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int
    split_k: int
    is_persistent: bool
    fused_scatter: bool
    epilogue_subtile: int | None
    idle_sms: int


class InapplicableConstraint(Exception):
    pass


_opt_flags_constraints: dict = {}
_opt_flags: OptFlags | None = None


def update_opt_flags_constraints(constraints: dict) -> None:
    _opt_flags_constraints.update(constraints)


def reset_opt_flags_constraints() -> None:
    global _opt_flags_constraints
    _opt_flags_constraints = {}


def set_opt_flags(opt_flags: OptFlags) -> None:
    global _opt_flags
    assert not _opt_flags_constraints, "double: constraints and a flags override do not mix"
    assert _opt_flags is None, "double: flags override already set"
    _opt_flags = opt_flags


def make_opt_flags(out_dtype, lhs_dtype, rhs_dtype, precision_config, m, n, k, routing_data,
                   can_use_persistent_tma, can_use_fused_scatter, epilogue_effective_itemsize):
    if _opt_flags_constraints.get("is_persistent") and not can_use_persistent_tma:
        raise InapplicableConstraint("double: is_persistent=True needs TMA")
    if _opt_flags_constraints.get("fused_scatter") and not can_use_fused_scatter:
        raise InapplicableConstraint("double: fused_scatter=True not possible here")
    if _opt_flags is not None:
        assert not _opt_flags_constraints
        return _opt_flags
    n_experts = 1 if routing_data is None else routing_data.n_expts_tot
    chosen = core.choose(m, n, k, n_experts, _opt_flags_constraints, SUPPORTED)
    fused = _opt_flags_constraints.get("fused_scatter")
    return OptFlags(**chosen, fused_scatter=bool(can_use_fused_scatter and chosen["split_k"] == 1) if fused is None else fused)
