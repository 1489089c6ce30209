"""How a backend times one tile for ``ladder.compare``: CUDA events around plain calls, no cache-flush
buffer to allocate (triton's do_bench takes 256 MB), so a server whose memory is spoken for can still
recover. A call whose host path outlasts its kernels (an engine's Python fused-experts call) is queued
behind a GPU wait, else the events measure the host."""

from __future__ import annotations

import functools
import time
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


def queued_ms(run: Callable[[], None]) -> float:
    """Mean device milliseconds of ``run`` with its host path left out: the runs are queued behind a GPU
    wait (``torch.cuda._sleep``) long enough for the host to enqueue them all, so they execute back to
    back. No CUDA graph is captured: a capture would break other threads' launches and generators."""
    run()
    started = time.perf_counter()
    run()
    host_ms = (time.perf_counter() - started) * 1e3
    times = max(3, min(100, int(TIMED_MS / max(elapsed_ms(run, 1), 1e-3))))
    torch.cuda._sleep(int(1.5 * host_ms * times * _cycles_per_ms(torch.cuda.current_device())))
    return elapsed_ms(run, times)


@functools.cache
def _cycles_per_ms(device: int) -> float:
    """The GPU clock as ``torch.cuda._sleep`` counts it, measured once per device."""
    cycles = 20_000_000
    return cycles / elapsed_ms(lambda: torch.cuda._sleep(cycles), 1)
