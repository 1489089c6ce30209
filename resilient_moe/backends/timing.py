"""How a backend times one tile for ``ladder.compare``: CUDA events around plain calls, no cache-flush
buffer to allocate (triton's do_bench takes 256 MB), so a server whose memory is spoken for can still
recover. A call whose host path outlasts its kernels (an engine's Python fused-experts call) is timed
from a CUDA graph of it, else the events measure the host."""

from __future__ import annotations

from collections.abc import Callable

import torch

TIMED_MS = 10.0
"""About how long one timing round of a comparison runs a tile (at least 3 runs, at most 100)."""


def timed_ms(run: Callable[[], None]) -> float:
    """Mean device milliseconds of ``run``: once to compile (its result dropped), once to estimate,
    then enough runs for about ``TIMED_MS``."""
    run()
    estimate = elapsed_ms(run, 1)
    return elapsed_ms(run, max(3, min(100, int(TIMED_MS / max(estimate, 1e-3)))))


def elapsed_ms(run: Callable[[], None], times: int) -> float:
    """Mean device time of ``run`` over ``times`` back-to-back calls (synchronizes once)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(times):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / times


def replayed_ms(run: Callable[[], None]) -> float:
    """Mean device milliseconds of ``run`` replayed from a CUDA graph of one call (compiled before the
    capture). ``run`` must be capturable, as a call served from CUDA graphs is; a capture that fails
    raises (it also leaves torch's generator state unusable in the process, so it is not retried eagerly)."""
    run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    estimate = elapsed_ms(graph.replay, 1)
    return elapsed_ms(graph.replay, max(3, min(100, int(TIMED_MS / max(estimate, 1e-3)))))
