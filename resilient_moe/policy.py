"""The fallback policy: which moves the ladder may make, how far, and what happens when it runs out.

Precedence, written once: an explicit ``policy=`` argument > ``RESILIENT_MOE_POLICY`` (a YAML path) >
the shipped ``policies/default.yaml``. A bad file fails at load with the file, the field and the value.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._schema import Frozen, Positive, describe_invalid, power_of_two, read_yaml, short
from .config import check_tile_field

POLICY_ENV = "RESILIENT_MOE_POLICY"

Move = Literal["block_n", "block_m", "block_k", "num_stages", "num_warps"]
Resource = Literal["shared memory", "threads", "tensor memory"]


class Ladder(Frozen):
    """How rungs are generated from the default tile (see ``ladder.py``)."""

    order: tuple[Move, ...] = ("num_stages", "block_n", "block_m")  # keeps the MMA tile (docs/design.md, "Ladder")
    min_block_n: Positive = 16
    min_block_m: Positive = 16
    min_block_k: Positive = 16
    min_num_stages: Annotated[int, Field(ge=1)] = 1
    min_num_warps: Annotated[int, Field(ge=1)] = 1
    factor: Annotated[int, Field(ge=2)] = 2
    max_attempts: Annotated[int, Field(ge=1, le=64)] = 12
    skip_predicted: bool = True  # a rung the kernel's lower bound puts over the limit is not compiled
    single_stage_last: bool = True  # num_stages goes below 2 only when no other move is left (ladder.rungs)
    trim_block_m: bool = True  # the first rung cuts block_m to twice the mean rows per expert (ladder.rungs)
    compare: Annotated[int, Field(ge=0, le=8)] = 1  # time the landing tile against this many rungs below it
    compare_second_move: bool = True  # and against the landing begun with one step of the second move
    compare_forms: Literal["never", "recovery", "always"] = "recovery"  # time the tile against its other forms

    @field_validator("order")
    @classmethod
    def _no_repeats(cls, order: tuple[Move, ...]) -> tuple[Move, ...]:
        if not order:
            raise ValueError("order must name at least one move")
        if len(set(order)) != len(order):
            raise ValueError(f"order repeats a move: {list(order)}")
        return order

    @field_validator("factor")
    @classmethod
    def _pow2(cls, value: int, info: ValidationInfo) -> int:
        return power_of_two(info.field_name, value)

    @field_validator("min_block_n", "min_block_m", "min_block_k", "min_num_stages", "min_num_warps")
    @classmethod
    def _floor_fits_triton(cls, value: int, info: ValidationInfo) -> int:
        return check_tile_field(info.field_name.removeprefix("min_"), value, info.field_name)


class TileFields(Frozen):
    """A partial tile: the fields it names override, the others stay as they were."""

    block_m: Positive | None = None
    block_n: Positive | None = None
    block_k: Positive | None = None
    group_m: Annotated[int, Field(gt=0)] | None = None
    num_warps: Positive | None = None
    num_stages: Annotated[int, Field(ge=1)] | None = None
    is_persistent: StrictBool | None = None

    @field_validator("block_m", "block_n", "block_k", "group_m", "num_warps", "num_stages")
    @classmethod
    def _fits_triton(cls, value: int | None, info: ValidationInfo) -> int | None:
        """What TileConfig accepts, checked at load: an absurd tile must not reach the first call's compile."""
        return None if value is None else check_tile_field(info.field_name, value)

    def values(self) -> dict[str, int | bool]:
        return self.model_dump(exclude_none=True)


class ArchSection(Frozen):
    """Per-chip overrides: ``default`` replaces the heuristic's tile, ``pin`` holds fields on every rung."""

    default: TileFields = TileFields()
    pin: TileFields = TileFields()


def _default_triggers() -> dict[Resource, tuple[Move, ...]]:
    return {
        "shared memory": ("block_n", "block_m", "block_k", "num_stages"),
        "tensor memory": ("block_n", "block_m"),
        "threads": ("num_warps",),
    }


class Policy(Frozen):
    """What the dispatcher does when a tile does not fit."""

    version: Literal[1] = 1
    ladder: Ladder = Ladder()
    on_exhausted: Literal["raise", "reference"] = "raise"
    triggers: dict[Resource, tuple[Move, ...]] = Field(default_factory=_default_triggers)
    arch: dict[str, ArchSection] = Field(default_factory=dict)

    @field_validator("triggers")
    @classmethod
    def _shared_memory_listed(cls, triggers: dict[Resource, tuple[Move, ...]]) -> dict[Resource, tuple[Move, ...]]:
        """Rejected at load, not a KeyError at the first shortage: 'shared memory' is the resource that runs
        out, and its moves serve every resource the triggers do not name."""
        if "shared memory" not in triggers:
            raise ValueError(
                f"triggers must list 'shared memory' (its moves also serve resources not listed; "
                f"'shared memory: []' allows none), got {list(triggers)}"
            )
        return triggers

    @model_validator(mode="after")
    def _arch_names_known(self) -> Policy:
        from .targets import CHIPS

        unknown = [name for name in self.arch if name not in CHIPS and name != "interpreter"]
        if unknown:
            raise ValueError(f"arch: unknown chip {short(unknown[0])}; known: {', '.join(CHIPS)}")
        return self

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of the content: a winner found under one policy is not reused under another."""
        return hashlib.sha1(self.model_dump_json().encode()).hexdigest()[:10]

    def for_arch(self, arch: str) -> ArchSection:
        return self.arch.get(arch, ArchSection())

    def moves_for(self, resource: str) -> tuple[Move, ...]:
        """The ladder's moves allowed for this resource, in the ladder's order."""
        allowed = self.triggers.get(resource, self.triggers["shared memory"])  # type: ignore[call-overload]
        return tuple(move for move in self.ladder.order if move in allowed) or tuple(allowed)


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file, the field and the value."""


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy YAML file."""
    return parse_policy(read_yaml(Path(path), "policy", PolicyError), source=str(path))


def parse_policy(data: object, source: str = "<policy>") -> Policy:
    """Validate already-parsed policy data; errors name ``source``, each field path and its value."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping with at least 'version: 1', got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(describe_invalid(err, data, source, "policy")) from None


def shipped_policy(name: str) -> Path:
    """A policy file shipped with the package (``policies/`` of a source checkout, when not installed)."""
    try:
        folder = Path(str(importlib.resources.files("resilient_moe.policies")))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parent.parent / "policies"
    return folder / name


def default_policy_path() -> Path:
    return shipped_policy("default.yaml")


@functools.cache
def _policy_from(path: str) -> Policy:
    """Read once per process. A broken file named by the environment must not take a server down
    mid-flight: it is reported at error level and the shipped default is used instead."""
    try:
        return load_policy(path)
    except PolicyError as err:
        fallback = default_policy_path()
        if Path(path) == fallback:
            raise
        from . import events

        events.policy_invalid(path=path, error=str(err), using=str(fallback))
        return load_policy(fallback)


@functools.cache
def environment_policy() -> Policy:
    """RESILIENT_MOE_POLICY, else the shipped default; read once per process (it is on every call's path)."""
    return _policy_from(os.environ.get(POLICY_ENV) or str(default_policy_path()))


def active_policy(policy: Policy | None = None) -> Policy:
    """The policy for a call, by the precedence above."""
    return environment_policy() if policy is None else policy
