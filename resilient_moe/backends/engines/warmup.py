"""Resolving the batch sizes an engine captures in CUDA graphs before it captures them.

A tile search compiles, and may compile tiles that do not fit: neither may happen inside a capture.
``warm_up`` runs the MoE call eagerly at every batch size, so each shape class's winner is found (and
written to the cache file for the next process) first; a capture then finds every winner in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ... import settings
from ...dispatch import Resolution


def warm_up(run: Callable[[int], Any], batch_sizes: Iterable[int]) -> dict[int, Resolution]:
    """Call ``run(m)`` (one MoE forward of ``m`` tokens through a patched engine, or a whole model step)
    for each batch size, eagerly, and return how each call's tiles were settled, by batch size.

    SGLang captures ``--cuda-graph-bs`` (default up to 160 or 256 by chip); vLLM captures
    ``compilation_config.cudagraph_capture_sizes``. Call it after ``patch_sglang()`` / ``patch_vllm()``
    and before the capture; a miss during a capture afterwards raises ``CaptureMissError``."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("warm_up runs the calls eagerly: call it before the CUDA-graph capture, not inside it")
    resolutions = settings.cache().resolutions
    settled: dict[int, Resolution] = {}
    for size in dict.fromkeys(batch_sizes):
        before = dict(resolutions)
        run(size)
        changed = [r for key, r in resolutions.items() if before.get(key) is not r]
        if changed:
            settled[size] = changed[-1]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return settled
