"""Rungs: the configs tried after the default tile does not fit. Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable

from .config import TileConfig
from .policy import Ladder, Move


PIPELINED = 2
"""The fewest stages that still overlap a tile's loads with its MMA."""


def step(config: TileConfig, move: Move, ladder: Ladder, stages_floor: int | None = None) -> TileConfig | None:
    """One move's next smaller config, or None when that field is at its floor (``stages_floor``, where
    given, for num_stages)."""
    value = getattr(config, move)
    if move == "num_stages":
        smaller, floor = value - 1, stages_floor or ladder.min_num_stages
    elif move == "num_warps":
        smaller, floor = value // 2, ladder.min_num_warps
    else:
        smaller, floor = value // ladder.factor, getattr(ladder, f"min_{move}")
    return config.replace(**{move: smaller}) if smaller >= floor else None


def rungs(
    start: TileConfig,
    ladder: Ladder,
    moves: Iterable[Move],
    pinned: Iterable[str] = (),
    rows_per_expert: int | None = None,
) -> list[TileConfig]:
    """The configs after ``start``: each move in turn shrinks its field to the floor, keeping what the
    earlier moves did. Every rung is no larger than the one before in every field and smaller in one,
    so none repeats; at most ``max_attempts - 1`` rungs (the start is the first attempt).

    With ``ladder.single_stage_last``, num_stages stops at 2 until every other move is at its floor: a
    single stage loads each K step only after the last one's MMA, the loss aiter measured at up to 31%
    on MI355X when it dropped its MoE GEMMs to one stage.

    With ``ladder.trim_block_m`` and the mean ``rows_per_expert`` known, the first rung cuts block_m to
    the power of two at least twice those rows (at least ``min_block_m``): the rows past them are
    padding for nearly every expert, so that rung gives up shared memory and MMA work that computed
    nothing, while the experts routed more than the mean still fit one block.
    """
    frozen = set(pinned)
    allowed = [move for move in moves if move not in frozen]
    out: list[TileConfig] = []
    current = start
    if ladder.trim_block_m and rows_per_expert is not None and "block_m" in allowed and ladder.max_attempts > 1:
        useful = max(ladder.min_block_m, 1 << max(2 * rows_per_expert - 1, 0).bit_length())
        if useful < current.block_m:
            current = current.replace(block_m=useful)
            out.append(current)
    held = max(ladder.min_num_stages, PIPELINED) if ladder.single_stage_last else None
    passes = [(move, held) for move in allowed]
    if held is not None and "num_stages" in allowed:
        passes.append(("num_stages", None))  # one stage, no pipelining: only once nothing else is left
    for move, stages_floor in passes:
        while len(out) < ladder.max_attempts - 1 and (smaller := step(current, move, ladder, stages_floor)) is not None:
            current = smaller
            out.append(current)
    return out
