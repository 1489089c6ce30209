"""What a format and a layout allow the ladder (backends/upstream/formats.py), and the parts of
an upstream call the key describes. The layouts and tensors here are stand-ins written for these tests,
named like upstream's classes because the rules go by class name (a vendored copy has its own classes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

import resilient_moe as rm
from resilient_moe.backends.upstream import formats
from resilient_moe.policy import Policy
from resilient_moe.dispatch import Call, candidates

DEFAULT = rm.TileConfig(block_m=64, block_n=256, block_k=128, group_m=8, num_warps=8, num_stages=4)


@dataclass
class HopperMXScaleLayout:  # stand-in: upstream's class of this name is swizzled for num_warps
    num_warps: int
    mx_axis: int = 1


class HopperMXValueLayout:
    pass


class BlackwellMXScaleLayout:
    pass


class CDNA4MXScaleLayout:
    pass


@dataclass
class Storage:
    data: torch.Tensor
    layout: Any


@dataclass
class Tensor:  # stand-in for upstream's Tensor wrapper: a dtype and a storage with a layout
    storage: Storage
    dtype: Any


@dataclass
class FP4:
    bitwidth: int = 4

    def __str__(self) -> str:
        return "float4_e2m1"


@dataclass
class PrecisionConfig:
    weight_scale: Any = None
    out_dtype: torch.dtype | None = None
    max_num_imprecise_acc: int | None = None
    limit: float | None = None


def wrapped(layout: Any, dtype: Any = torch.uint8) -> Tensor:
    return Tensor(Storage(torch.zeros(1), layout), dtype)


X = torch.zeros(2, 2, dtype=torch.bfloat16)
W_MX = wrapped(HopperMXValueLayout(), FP4())


def ladder(call_rules: formats.Rules) -> list[rm.TileConfig]:
    call = Call(kernel="formats", key=("formats",), arch="sm_90", shape={}, default=DEFAULT,
                tied=call_rules.tied, floors=call_rules.floors)
    return candidates(call, Policy.model_validate({"version": 1, "ladder": {"order": ["block_k", "block_n", "num_stages"]}}))


def test_hopper_mx_scales_tie_num_warps_and_keep_block_n_and_k_where_the_swizzle_serves_them() -> None:
    rules = formats.rules(DEFAULT, {}, X, W_MX, PrecisionConfig(wrapped(HopperMXScaleLayout(8))), ragged=True)
    assert rules.tied == {"num_warps"} and rules.floors == {"block_n": 256, "block_k": 64, "block_m": 16}
    tiles = ladder(rules)
    assert {t.num_warps for t in tiles} == {8} and min(t.block_n for t in tiles) == 256 and min(t.block_k for t in tiles) == 64
    assert min(t.num_stages for t in tiles) == 1  # the rest still moves


@pytest.mark.parametrize(("scale", "floors"), [
    (BlackwellMXScaleLayout(), {"block_n": 128, "block_k": 128}),
    (CDNA4MXScaleLayout(), {"block_n": 32, "block_k": 256}),
    (None, {}),
])
def test_each_scale_layout_has_its_least_block_n_and_k(scale, floors) -> None:
    config = PrecisionConfig(None if scale is None else wrapped(scale))
    assert formats.rules(DEFAULT, {}, X, torch.zeros(1, dtype=torch.bfloat16), config, ragged=False).floors == floors


def test_mx_and_8_bit_operands_need_block_k_of_32() -> None:
    fp8 = torch.zeros(1, dtype=torch.float8_e4m3fn)
    assert formats.rules(DEFAULT, {}, fp8, fp8, None, ragged=False).floors == {"block_k": 32}
    assert formats.rules(DEFAULT, {}, X, W_MX, PrecisionConfig(torch.zeros(1)), ragged=False).floors == {"block_k": 32}


def test_a_constrained_field_is_tied_and_loses_its_floor() -> None:
    rules = formats.rules(DEFAULT, {"block_k": 128, "split_k": 1}, X, W_MX, PrecisionConfig(wrapped(CDNA4MXScaleLayout())), ragged=False)
    assert rules.tied == {"block_k"} and rules.floors == {"block_n": 32}
    assert {t.block_k for t in ladder(rules)} == {128}


def test_the_key_text_holds_layouts_scales_and_switches_but_not_scale_values() -> None:
    first = PrecisionConfig(wrapped(HopperMXScaleLayout(8)), torch.bfloat16, None, 7.0)
    again = PrecisionConfig(wrapped(HopperMXScaleLayout(8)), torch.bfloat16, None, 9.0)
    assert formats.precision(first) == formats.precision(again)
    assert "HopperMXScaleLayout(mx_axis=1,num_warps=8)" in formats.precision(first) and "bfloat16" in formats.precision(first)
    assert formats.precision(PrecisionConfig(wrapped(HopperMXScaleLayout(4)))) != formats.precision(PrecisionConfig(wrapped(HopperMXScaleLayout(8))))
    assert formats.precision(PrecisionConfig(max_num_imprecise_acc=32)) != formats.precision(PrecisionConfig())
    assert formats.operand(W_MX) == "float4_e2m1:HopperMXValueLayout" and formats.operand(X) == "bfloat16"
    assert formats.constraints_text({"split_k": 1, "block_m": 16}) == "block_m=16,split_k=1"


def test_the_fused_activation_is_named_with_its_reduction() -> None:
    @dataclass
    class FnSpecs:
        name: str
        reduction_n: int

    @dataclass
    class FusedActivation:
        specs: FnSpecs

    assert formats.activation(FusedActivation(FnSpecs("swiglu", 2))) == "swiglu/2" and formats.activation(None) == "-"
