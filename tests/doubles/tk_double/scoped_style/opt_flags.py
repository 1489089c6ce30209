"""Test double, loaded as ``triton_kernels.matmul_details.opt_flags`` (v3.8-like API): constraints
and the flags override live in ContextVars, with ``scoped_*`` context managers. Not upstream code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from doubles.tk_double import core

SUPPORTED = ("block_m", "block_n", "block_k", "num_stages", "split_k", "is_persistent", "epilogue_subtile", "idle_sms")


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
    epilogue_subtile: int | None
    idle_sms: int
    occupancy_target: int = 1


class InapplicableConstraint(Exception):
    pass


_opt_flags_constraints: ContextVar[dict | None] = ContextVar("tk_double_constraints", default=None)
_opt_flags: ContextVar[OptFlags | None] = ContextVar("tk_double_flags", default=None)


def _constraints() -> dict:
    return _opt_flags_constraints.get() or {}


def update_opt_flags_constraints(constraints: dict) -> None:
    _opt_flags_constraints.set({**_constraints(), **constraints})


def reset_opt_flags_constraints() -> None:
    _opt_flags_constraints.set(None)


@contextlib.contextmanager
def scoped_opt_flags_constraints(constraints: dict) -> Iterator[None]:
    token = _opt_flags_constraints.set({**_constraints(), **constraints})
    try:
        yield
    finally:
        _opt_flags_constraints.reset(token)


def reset_opt_flags() -> None:
    _opt_flags.set(None)


def set_opt_flags(opt_flags: OptFlags) -> None:
    assert not _constraints(), "double: constraints and a flags override do not mix"
    assert _opt_flags.get() is None, "double: flags override already set"
    _opt_flags.set(opt_flags)


@contextlib.contextmanager
def scoped_opt_flags(opt_flags: OptFlags) -> Iterator[None]:
    token = _opt_flags.set(opt_flags)
    try:
        yield
    finally:
        _opt_flags.reset(token)


def make_opt_flags(out_dtype, lhs_dtype, rhs_dtype, precision_config, batch_size, m, n, k, ragged_metadata,
                   can_use_persistent_tma, can_use_split_k, epilogue_effective_itemsize, x_transpose, has_y_acc_in,
                   block_k, **later_options):
    constraints = _constraints()
    if constraints.get("is_persistent") and not can_use_persistent_tma:
        raise InapplicableConstraint("double: is_persistent=True needs TMA")
    if (constraints.get("split_k") or 1) > 1 and not can_use_split_k:
        raise InapplicableConstraint("double: split_k > 1 not possible here")
    override = _opt_flags.get()
    if override is not None:
        assert not constraints
        return override
    n_experts = 1 if ragged_metadata is None else ragged_metadata.slice_sizes.shape[0]
    return OptFlags(**core.choose(m, n, k, n_experts, constraints, SUPPORTED))
