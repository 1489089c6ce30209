"""Rung generation: order, floors, monotone shrinking, no repeats (property-tested)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_moe.config import TileConfig
from resilient_moe.ladder import PIPELINED, rungs, step
from resilient_moe.policy import Ladder

MOVES = ("block_n", "block_m", "block_k", "num_stages", "num_warps")
pow2 = st.sampled_from([16, 32, 64, 128, 256, 512])

configs = st.builds(
    TileConfig,
    block_m=pow2,
    block_n=pow2,
    block_k=pow2,
    group_m=st.integers(1, 16),
    num_warps=st.sampled_from([1, 2, 4, 8, 16]),
    num_stages=st.integers(1, 8),
)
ladders = st.builds(
    Ladder,
    order=st.permutations(MOVES).flatmap(lambda p: st.integers(1, len(p)).map(lambda n: tuple(p[:n]))),
    min_block_n=st.sampled_from([16, 32, 64]),
    min_block_m=st.sampled_from([16, 32, 64]),
    min_block_k=st.sampled_from([16, 32]),
    min_num_stages=st.integers(1, 3),
    min_num_warps=st.sampled_from([1, 2, 4]),
    factor=st.sampled_from([2, 4]),
    max_attempts=st.integers(1, 64),
)


def changed(before: TileConfig, after: TileConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(TileConfig) if getattr(before, f.name) != getattr(after, f.name)}


@settings(max_examples=300, deadline=None)
@given(configs, ladders)
def test_rungs_shrink_one_field_at_a_time_in_policy_order(start: TileConfig, ladder: Ladder) -> None:
    out = rungs(start, ladder, ladder.order)
    previous, position = start, 0
    for rung in out:
        (field,) = changed(previous, rung)  # exactly one field moves per rung
        assert getattr(rung, field) < getattr(previous, field)
        if field == "num_stages" and rung.num_stages < PIPELINED:  # the single stage comes last
            assert all(step(rung, move, ladder) is None for move in ladder.order if move != "num_stages")
        else:
            position_of = ladder.order.index(field)
            assert position_of >= position, "a later move never comes back to an earlier one"
            position = position_of
        previous = rung
    assert len(out) == len(set(out)) and start not in out
    assert len(out) <= ladder.max_attempts - 1


def test_without_single_stage_last_num_stages_runs_to_its_floor_in_its_place() -> None:
    start = TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=3)
    ladder = Ladder(single_stage_last=False)
    assert [(r.block_n, r.num_stages) for r in rungs(start, ladder, ladder.order)][:3] == [(256, 2), (256, 1), (128, 1)]


@settings(max_examples=300, deadline=None)
@given(configs, ladders)
def test_rungs_respect_floors_and_pins(start: TileConfig, ladder: Ladder) -> None:
    pinned = {ladder.order[0]}
    for rung in rungs(start, ladder, ladder.order, pinned):
        assert getattr(rung, ladder.order[0]) == getattr(start, ladder.order[0])
        for move in ("block_n", "block_m", "block_k"):
            if getattr(rung, move) != getattr(start, move):
                assert getattr(rung, move) >= getattr(ladder, f"min_{move}")
        if rung.num_stages != start.num_stages:
            assert rung.num_stages >= ladder.min_num_stages
        if rung.num_warps != start.num_warps:
            assert rung.num_warps >= ladder.min_num_warps


@settings(max_examples=200, deadline=None)
@given(configs, ladders)
def test_each_move_runs_to_its_floor_when_attempts_allow(start: TileConfig, ladder: Ladder) -> None:
    roomy = ladder.model_copy(update={"max_attempts": 64})
    out = rungs(start, roomy, roomy.order)
    last = out[-1] if out else start
    for move in roomy.order:
        assert step(last, move, roomy) is None


def test_default_order_drops_stages_to_two_then_block_n_then_block_m_then_the_last_stage() -> None:
    start = TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=3)
    out = rungs(start, Ladder(max_attempts=64), Ladder().order)
    assert [(r.block_m, r.block_n, r.num_stages) for r in out] == [
        (128, 256, 2), (128, 128, 2), (128, 64, 2), (128, 32, 2), (128, 16, 2),
        (64, 16, 2), (32, 16, 2), (16, 16, 2), (16, 16, 1),
    ]


def test_plain_order_is_block_n_then_block_m_then_num_stages() -> None:
    start = TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=3)
    plain = Ladder(order=("block_n", "block_m", "num_stages"))
    out = rungs(start, plain, plain.order)
    assert [(r.block_m, r.block_n, r.num_stages) for r in out] == [
        (128, 128, 3), (128, 64, 3), (128, 32, 3), (128, 16, 3),
        (64, 16, 3), (32, 16, 3), (16, 16, 3), (16, 16, 2), (16, 16, 1),
    ]


def test_first_rung_cuts_block_m_to_twice_the_rows_per_expert() -> None:
    start = TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=5)
    out = rungs(start, Ladder(), Ladder().order, rows_per_expert=2)  # decode: 64 tokens x 8 over 256 experts
    assert [(r.block_m, r.block_n, r.num_stages) for r in out][:3] == [(16, 256, 5), (16, 256, 4), (16, 256, 3)]
    assert [r.block_m for r in rungs(start, Ladder(), Ladder().order, rows_per_expert=16)][0] == 32
    assert [r.block_m for r in rungs(start, Ladder(), Ladder().order, rows_per_expert=20)][0] == 64
    assert rungs(start, Ladder(), Ladder().order, rows_per_expert=40) == rungs(start, Ladder(), Ladder().order)


def test_block_m_is_not_cut_when_disabled_pinned_out_of_moves_or_out_of_attempts() -> None:
    start = TileConfig(128, 256, 64, group_m=8, num_warps=8, num_stages=5)
    untrimmed = rungs(start, Ladder(), Ladder().order)
    assert rungs(start, Ladder(trim_block_m=False), Ladder().order, rows_per_expert=2) == untrimmed
    assert all(r.block_m == 128 for r in rungs(start, Ladder(), Ladder().order, {"block_m"}, rows_per_expert=2))
    assert rungs(start, Ladder(), ("num_stages",), rows_per_expert=2)[0].block_m == 128
    assert rungs(start, Ladder(max_attempts=1), Ladder().order, rows_per_expert=2) == []


@settings(max_examples=200, deadline=None)
@given(configs, ladders, st.integers(1, 4096))
def test_cut_rung_comes_first_respects_the_floor_and_the_rest_follow_the_order(
    start: TileConfig, ladder: Ladder, rows_per_expert: int
) -> None:
    out = rungs(start, ladder, ladder.order, rows_per_expert=rows_per_expert)
    plain = rungs(start, ladder.model_copy(update={"trim_block_m": False}), ladder.order)
    if out == plain:
        return
    cut = out[0]
    assert changed(start, cut) == {"block_m"}
    assert ladder.min_block_m <= cut.block_m < start.block_m
    assert cut.block_m == ladder.min_block_m or cut.block_m // 2 < 2 * rows_per_expert <= cut.block_m
    assert out[1:] == rungs(cut, ladder.model_copy(update={"max_attempts": ladder.max_attempts - 1}), ladder.order)
