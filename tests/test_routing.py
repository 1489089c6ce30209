import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_moe.routing import NON_LOCAL, Routing, route


def check_invariants(r: Routing, expert_idx: torch.Tensor, start: int) -> None:
    """Properties every consumer relies on, checked against the explicit expert choices."""
    flat = expert_idx.reshape(-1).long()
    local = (flat >= start) & (flat < start + r.n_experts)
    assert r.n_rows == int(local.sum())
    for name in ("expert_offsets", "gather_idx", "scatter_idx", "slot_to_row", "expert_idx"):
        assert getattr(r, name).dtype == torch.int32, name
    assert r.gammas.dtype == torch.float32
    assert r.expert_offsets.shape == (r.n_experts + 1,)
    assert r.gather_idx.shape == r.scatter_idx.shape == (r.n_rows,)
    assert r.slot_to_row.shape == (r.n_tokens * r.top_k,)

    slots = r.scatter_idx.long()
    row_expert = flat[slots] - start
    counts = torch.bincount(row_expert, minlength=r.n_experts)
    assert r.expert_offsets.tolist() == [0] + torch.cumsum(counts, 0).tolist()
    assert torch.all(row_expert[1:] >= row_expert[:-1])
    same_expert = row_expert[1:] == row_expert[:-1]
    assert torch.all(slots[1:][same_expert] > slots[:-1][same_expert]), "sort must be stable"
    assert torch.equal(r.gather_idx.long(), slots // r.top_k)
    assert torch.equal(r.slot_to_row.long()[slots], torch.arange(r.n_rows))
    assert torch.all(r.slot_to_row[~local] == NON_LOCAL)


def test_route_topk_and_softmax_gammas() -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 8, dtype=torch.float16)
    r = route(logits, 3)
    values, idx = torch.topk(logits, 3, dim=1)
    assert torch.equal(r.expert_idx, idx.int())
    torch.testing.assert_close(r.gammas, torch.softmax(values.float(), dim=1))
    torch.testing.assert_close(r.gammas.sum(1), torch.ones(16))
    assert (r.n_tokens, r.top_k, r.n_experts, r.n_rows) == (16, 3, 8, 48)
    check_invariants(r, r.expert_idx, 0)


def test_expert_range_keeps_local_rows_only() -> None:
    torch.manual_seed(1)
    r = route(torch.randn(32, 8), 2, expert_range=(2, 5))
    assert r.n_experts == 3
    assert 0 < r.n_rows < 64
    check_invariants(r, r.expert_idx, 2)
    local_experts = r.expert_idx.reshape(-1)[r.scatter_idx.long()]
    assert torch.all((local_experts >= 2) & (local_experts < 5))


def test_from_experts_skewed_with_empty_experts() -> None:
    expert_idx = torch.tensor([[0, 3], [0, 1], [0, 3], [3, 0], [0, 1]])
    gammas = torch.full((5, 2), 0.5)
    r = Routing.from_experts(expert_idx, gammas, n_experts=6)
    assert r.expert_offsets.tolist() == [0, 5, 7, 7, 10, 10, 10]
    assert r.scatter_idx[:5].tolist() == [0, 2, 4, 7, 8]
    check_invariants(r, expert_idx, 0)


def test_zero_tokens() -> None:
    r = route(torch.empty(0, 8), 2)
    assert r.n_rows == 0
    assert r.expert_offsets.tolist() == [0] * 9
    assert r.gather_idx.numel() == r.slot_to_row.numel() == 0
    assert r.expert_idx.shape == r.gammas.shape == (0, 2)
    assert route(torch.empty(0, 8), 2, expert_range=(0, 4)).n_rows == 0


def test_no_host_sync_without_expert_range() -> None:
    """Meta tensors fail on any host read, so this proves route() never synchronizes."""
    r = route(torch.empty(16, 8, device="meta"), 2)
    assert r.n_rows == 32
    assert r.expert_offsets.device.type == "meta"


def test_routing_is_frozen() -> None:
    r = route(torch.randn(4, 4), 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.n_rows = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("logits", "top_k", "expert_range", "match"),
    [
        (torch.randn(4, 8), 0, None, r"top_k .* got 0"),
        (torch.randn(4, 8), 9, None, r"top_k .* got 9"),
        (torch.randn(8), 2, None, r"logits must be 2-D .* \(8,\)"),
        (torch.randn(4, 8), 2, (4, 4), r"expert_range \(4, 4\)"),
        (torch.randn(4, 8), 2, (-1, 4), r"expert_range \(-1, 4\)"),
        (torch.randn(4, 8), 2, (2, 9), r"expert_range \(2, 9\) .* \(8\)"),
    ],
)
def test_route_rejects_bad_arguments(
    logits: torch.Tensor, top_k: int, expert_range: tuple[int, int] | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        route(logits, top_k, expert_range=expert_range)


def test_from_experts_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"gammas.shape \(4, 3\) must equal expert_idx.shape \(4, 2\)"):
        Routing.from_experts(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 3), 8)
    with pytest.raises(ValueError, match=r"expert_idx must be 2-D"):
        Routing.from_experts(torch.zeros(4, dtype=torch.long), torch.zeros(4), 8)
    with pytest.raises(ValueError, match=r"n_experts must be >= 1, got 0"):
        Routing.from_experts(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2), 0)


@settings(max_examples=60, deadline=None)
@given(
    n_tokens=st.integers(0, 40),
    n_experts=st.integers(1, 12),
    data=st.data(),
)
def test_invariants_hold_for_any_routing(n_tokens: int, n_experts: int, data: st.DataObject) -> None:
    top_k = data.draw(st.integers(1, n_experts))
    start = data.draw(st.integers(0, n_experts - 1))
    stop = data.draw(st.integers(start + 1, n_experts))
    expert_range = data.draw(st.sampled_from([None, (start, stop)]))
    seed = data.draw(st.integers(0, 2**31 - 1))
    logits = torch.randn(n_tokens, n_experts, generator=torch.Generator().manual_seed(seed))
    r = route(logits, top_k, expert_range=expert_range)
    check_invariants(r, r.expert_idx, 0 if expert_range is None else start)
