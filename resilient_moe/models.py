"""The MoE GEMMs of a model, for preflight: built-in presets and a YAML shapes file.

A model's MoE layer is two GEMMs per token batch: the up-projection (gather, gate and up fused, so
N = 2 x intermediate, K = hidden) and the down-projection (scatter, K = intermediate, N = hidden).
A shapes file describes one model with the same fields as a preset, or lists GEMMs one by one.
No torch or Triton here: the CLI builds its parser before it decides how Triton runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from ._schema import Frozen, Positive, describe_invalid, read_yaml


class _Routed(Frozen):
    """Fields every MoE GEMM has: how many experts, how many each token picks, and whether a bias is added."""

    experts: Positive
    top_k: Positive
    bias: bool = False  # part of the cache key: a server passing a bias needs winners found with one

    @model_validator(mode="after")
    def _top_k_within_experts(self) -> _Routed:
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed experts ({self.experts})")
        return self


class Gemm(_Routed):
    """One MoE GEMM as the kernel sees it: w is [experts, k, n], each token has top_k rows."""

    name: str = Field(min_length=1)
    mode: Literal["gather", "scatter"]
    k: Positive
    n: Positive


class MoeModel(_Routed):
    """A model's MoE layer; its two GEMMs follow from these fields."""

    name: str = Field(min_length=1)
    hidden: Positive
    intermediate: Positive  # per expert (DeepSeek's moe_intermediate_size)

    def gemms(self) -> tuple[Gemm, Gemm]:
        routed = {"experts": self.experts, "top_k": self.top_k, "bias": self.bias}
        return (
            Gemm(name="up", mode="gather", k=self.hidden, n=2 * self.intermediate, **routed),
            Gemm(name="down", mode="scatter", k=self.intermediate, n=self.hidden, **routed),
        )


PRESETS: dict[str, MoeModel] = {
    m.name: m
    for m in (
        MoeModel(name="deepseek-v3", experts=256, top_k=8, hidden=7168, intermediate=2048),
        MoeModel(name="qwen3-235b-a22b", experts=128, top_k=8, hidden=4096, intermediate=1536),
        MoeModel(name="qwen3-30b-a3b", experts=128, top_k=8, hidden=2048, intermediate=768),
        MoeModel(name="gpt-oss-120b", experts=128, top_k=4, hidden=2880, intermediate=2880, bias=True),
        MoeModel(name="mixtral-8x7b", experts=8, top_k=2, hidden=4096, intermediate=14336),
    )
}


class ShapesError(ValueError):
    """A shapes file that cannot be used; the message names the file, the field and the value."""


_GEMM_LIST = TypeAdapter(list[Gemm])


def load_shapes(path: str | os.PathLike[str]) -> tuple[Gemm, ...]:
    """Read a shapes file: a mapping is one model (preset fields), a list is GEMMs (name, mode, experts, top_k, k, n)."""
    path = Path(path)
    data = read_yaml(path, "shapes", ShapesError)
    if not (isinstance(data, dict) or (isinstance(data, list) and data)):
        raise ShapesError(
            f"{path}: a shapes file is a model (name, experts, top_k, hidden, intermediate) "
            f"or a non-empty list of GEMMs (name, mode, experts, top_k, k, n), got {data!r}"
        )
    try:
        if isinstance(data, dict):
            return MoeModel.model_validate(data).gemms()
        gemms = tuple(_GEMM_LIST.validate_python(data))
    except ValidationError as err:
        raise ShapesError(describe_invalid(err, data, str(path), "shapes")) from None
    names = [g.name for g in gemms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ShapesError(f"{path}: GEMM names must be unique, {repeated[0]!r} is used more than once")
    return gemms
