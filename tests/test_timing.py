"""backends.timing on a GPU: a queued timing measures the device, not the host, and captures nothing."""

from __future__ import annotations

import pytest
import torch

from resilient_moe.backends.timing import queued_ms, timed_ms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: CUDA events and torch.cuda._sleep")


def test_queued_ms_times_the_kernels_not_the_host() -> None:
    x = torch.randn(64, 64, device="cuda")

    def host_bound() -> None:  # many tiny launches: eager timing measures the Python loop
        y = x
        for _ in range(200):
            y = y + 1.0

    queued, eager = queued_ms(host_bound), timed_ms(host_bound)
    assert 0 < queued < eager / 2
    assert not torch.cuda.is_current_stream_capturing()

