"""The public op: empty inputs return sentinels without a launch; the hot path stays a lookup."""

from __future__ import annotations

import pytest
import torch

import resilient_moe as rm
from resilient_moe.backends.builtin import launch
from resilient_moe.testing import capture


@pytest.fixture
def no_launch(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("an empty input must not reach the kernel")

    monkeypatch.setattr(launch.KernelLaunch, "run", forbidden)


@pytest.mark.parametrize("mode", ["gather", "scatter"])
def test_zero_tokens_give_correctly_shaped_zeros_without_a_launch(mode: str, no_launch) -> None:
    routing = rm.route(torch.randn(0, 4), 2)
    x = torch.randn(0, 32, dtype=torch.float16)
    w = torch.randn(4, 32, 64, dtype=torch.float16)
    with capture() as logs:
        y = rm.moe_matmul(x, w, routing, mode)
    assert y.shape == (0, 64) and y.dtype == torch.float16
    assert logs[0]["event"] == "moe.empty_input"


def test_no_token_on_a_local_expert_gives_zeros_and_sentinel_indices(no_launch) -> None:
    logits = torch.full((5, 8), -10.0)
    logits[:, :2] = 10.0  # every token picks experts 0 and 1; this rank holds experts 4..7
    routing = rm.route(logits, 2, expert_range=(4, 8))
    assert routing.n_rows == 0 and bool((routing.slot_to_row == -1).all())
    x = torch.randn(5, 32, dtype=torch.float16)
    h = rm.moe_matmul(x, torch.randn(4, 32, 16, dtype=torch.float16), routing, "gather")
    assert h.shape == (0, 16)
    y = rm.moe_matmul(h.new_zeros(0, 16), torch.randn(4, 16, 32, dtype=torch.float16), routing, "scatter")
    assert y.shape == (5, 32) and not y.any()


def test_empty_input_still_checks_shapes() -> None:
    routing = rm.route(torch.randn(0, 4), 2)
    with pytest.raises(ValueError, match="w.dtype"):
        rm.moe_matmul(torch.randn(0, 32, dtype=torch.float16), torch.randn(4, 32, 64), routing)


def test_cached_call_matches_reference_and_emits_nothing() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    routing = rm.route(torch.randn(8, 4, device=device), 2)
    x = torch.randn(8, 32, dtype=torch.float16, device=device)
    w = (torch.randn(4, 32, 64, device=device) / 6).to(torch.float16)
    bias = torch.randn(4, 64, dtype=torch.float16, device=device)
    first = rm.moe_matmul(x, w, routing, "gather", bias)
    with capture() as logs:
        second = rm.moe_matmul(x, w, routing, "gather", bias)
    assert logs == []
    torch.testing.assert_close(second, first)
    torch.testing.assert_close(first, rm.moe_matmul_reference(x, w, routing, "gather", bias), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("mode", ["gather", "scatter"])
def test_out_is_written_and_returned_like_a_new_result(mode: str) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    routing = rm.route(torch.randn(8, 4, device=device), 2)
    x = torch.randn(8 if mode == "gather" else routing.n_rows, 32, dtype=torch.float16, device=device)
    w = (torch.randn(4, 32, 64, device=device) / 6).to(torch.float16)
    fresh = rm.moe_matmul(x, w, routing, mode)
    for _ in range(2):  # the resolving call, then the cached one
        out = torch.full_like(fresh, float("nan"))
        assert rm.moe_matmul(x, w, routing, mode, out=out) is out
        torch.testing.assert_close(out, fresh)


def test_out_of_the_wrong_shape_or_dtype_is_named() -> None:
    routing = rm.route(torch.randn(8, 4), 2)
    x, w = torch.randn(8, 32, dtype=torch.float16), torch.randn(4, 32, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"out.shape \(8, 64\) must be \(16, 64\) in gather mode"):
        rm.moe_matmul(x, w, routing, "gather", out=torch.empty(8, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"out.dtype \(torch.float32\) must equal x.dtype \(torch.float16\)"):
        rm.moe_matmul(x, w, routing, "gather", out=torch.empty(16, 64))


def test_out_of_an_empty_call_is_zeroed_without_a_launch(no_launch) -> None:
    routing = rm.route(torch.randn(0, 4), 2)
    out = torch.full((0, 64), 1.0, dtype=torch.float16)
    assert rm.moe_matmul(torch.randn(0, 32, dtype=torch.float16), torch.randn(4, 32, 64, dtype=torch.float16),
                         routing, "scatter", out=out) is out
    logits = torch.full((5, 8), -10.0)
    logits[:, :2] = 10.0
    remote = rm.route(logits, 2, expert_range=(4, 8))  # no row on this rank: scatter gives zeros
    out = torch.ones(5, 32, dtype=torch.float16)
    y = rm.moe_matmul(torch.zeros(0, 16, dtype=torch.float16), torch.randn(4, 16, 32, dtype=torch.float16), remote,
                      "scatter", out=out)
    assert y is out and not out.any()
