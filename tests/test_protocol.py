"""The dispatcher's contract with a backend, at the level of ``dispatch.resolve``: what a ``Call`` states
about its format (fields it ties, least legal values) bounds every rung the ladder tries. The attempt
here raises Triton's own ``OutOfResources`` from a byte count, so no kernel compiles: these tests are
about which tiles are asked for, the same for every backend."""

from __future__ import annotations

import pytest
from triton.runtime.errors import OutOfResources

import resilient_moe as rm
from resilient_moe.cache import TilingCache
from resilient_moe.dispatch import Call, candidates, resolve

DEFAULT = rm.TileConfig(block_m=128, block_n=256, block_k=256, group_m=8, num_warps=8, num_stages=4)
LIMIT = 65536


def shared(config: rm.TileConfig) -> int:
    """Operand buffers of one bf16 tile, the stages the pipeline keeps."""
    return 2 * config.num_stages * config.block_k * (config.block_m + config.block_n)


def attempt(tried: list[rm.TileConfig]):
    def run(config: rm.TileConfig) -> rm.TileConfig:
        tried.append(config)
        if shared(config) > LIMIT:
            raise OutOfResources(shared(config), LIMIT, "shared memory")
        return config

    return run


def call(**format_rules) -> Call:
    return Call(kernel="protocol", key=("protocol", tuple(sorted(format_rules))), arch="sm_90", shape={}, default=DEFAULT,
                **format_rules)


POLICY = rm.Policy.model_validate({"version": 1, "ladder": {"order": ["block_k", "num_stages", "block_n", "block_m"]}})


def test_without_format_rules_the_ladder_moves_every_field_in_its_order() -> None:
    moved = {f for c in candidates(call(), POLICY) for f in ("block_k", "num_stages") if getattr(c, f) != getattr(DEFAULT, f)}
    assert moved == {"block_k", "num_stages"}
    assert min(c.block_k for c in candidates(call(), POLICY)) < 256


def test_a_tied_field_is_never_moved_and_the_climb_still_lands() -> None:
    tried: list[rm.TileConfig] = []
    winner, resolution = resolve(("tied",), attempt(tried), lambda: call(tied=frozenset({"block_k"})), POLICY, TilingCache(None))
    assert {c.block_k for c in tried} == {256}
    assert shared(winner) <= LIMIT and resolution.origin == "ladder" and len(resolution.attempts) == len(tried)
    assert all(c.block_k == 256 for c in candidates(call(tied=frozenset({"block_k"})), POLICY))


def test_a_floor_keeps_every_rung_at_or_above_the_formats_least_value() -> None:
    tried: list[rm.TileConfig] = []
    winner, _ = resolve(("floor",), attempt(tried), lambda: call(floors={"block_k": 128}), POLICY, TilingCache(None))
    assert min(c.block_k for c in tried) == 128 and shared(winner) <= LIMIT
    assert min(c.block_k for c in candidates(call(floors={"block_k": 128}), POLICY)) == 128


def test_a_floor_below_the_policys_floor_changes_nothing() -> None:
    policy = POLICY.model_copy(update={"ladder": POLICY.ladder.model_copy(update={"min_block_k": 64})})
    assert candidates(call(floors={"block_k": 16}), policy) == candidates(call(), policy)


@pytest.mark.parametrize("rules", [{"tied": frozenset({"num_warps", "block_k", "num_stages", "block_n", "block_m"})}])
def test_a_format_that_ties_every_move_exhausts_with_its_one_attempt(rules) -> None:
    with pytest.raises(rm.LadderExhaustedError) as err:
        resolve(("all-tied",), attempt([]), lambda: call(**rules), POLICY, TilingCache(None))
    assert [a.config for a in err.value.attempts] == [DEFAULT]
