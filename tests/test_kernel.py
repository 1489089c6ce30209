"""The Triton kernel against the torch reference; on CPU it runs under TRITON_INTERPRET=1."""

import os

import pytest
import torch

from resilient_moe.backends.builtin._kernel import _moe_matmul_kernel, _moe_matmul_persistent_kernel
from resilient_moe.backends.builtin.heuristics import default_config
from resilient_moe.backends.builtin.launch import KernelLaunch, _slot_sum, prepare
from resilient_moe.config import TileConfig
from resilient_moe.reference import moe_matmul_reference
from resilient_moe.routing import Routing, route

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
needs_kernel = pytest.mark.skipif(
    not INTERPRET and not torch.cuda.is_available(), reason="needs a GPU or TRITON_INTERPRET=1"
)
# The interpreter's tl.dot is wrong for bf16, so bf16 numerics are only checked on a GPU.
DTYPES = [
    torch.float16,
    torch.float32,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(INTERPRET, reason="bf16 dot")),
]
TOL = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-4}
SMALL = TileConfig(block_m=16, block_n=32, block_k=32, group_m=4, num_warps=4, num_stages=2)
PERSISTENT = SMALL.replace(is_persistent=True)


def operands(
    routing: Routing, mode: str, k: int, n: int, dtype: torch.dtype, with_bias: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    n_in = routing.n_tokens if mode == "gather" else routing.n_rows
    x = torch.randn(n_in, k, generator=g).to(DEVICE, dtype)
    w = (torch.randn(routing.n_experts, k, n, generator=g) / k**0.5).to(DEVICE, dtype)
    bias = torch.randn(routing.n_experts, n, generator=g).to(DEVICE, dtype) if with_bias else None
    return x, w, bias


def check(
    routing: Routing, mode: str, config: TileConfig, k: int, n: int, dtype: torch.dtype, with_bias: bool
) -> torch.Tensor:
    x, w, bias = operands(routing, mode, k, n, dtype, with_bias)
    y = prepare(x, w, bias, routing, mode, config).run()
    expected = moe_matmul_reference(x, w, routing, mode, bias)
    assert y.dtype == dtype
    torch.testing.assert_close(y, expected, atol=TOL[dtype], rtol=TOL[dtype])
    return y


def random_routing(n_tokens: int = 48, n_experts: int = 8, top_k: int = 2, **kwargs: object) -> Routing:
    logits = torch.randn(n_tokens, n_experts, generator=torch.Generator().manual_seed(n_tokens))
    return route(logits.to(DEVICE), top_k, **kwargs)  # type: ignore[arg-type]


@needs_kernel
@pytest.mark.parametrize("mode", ["gather", "scatter"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(
    ("config", "k", "n"),
    [
        (SMALL, 64, 64),
        (SMALL.replace(block_m=32, block_n=64), 80, 96),
    ],
    ids=["16x32x32-even", "32x64x32-ragged"],
)
def test_matches_reference(
    mode: str, dtype: torch.dtype, with_bias: bool, config: TileConfig, k: int, n: int
) -> None:
    check(random_routing(), mode, config, k, n, dtype, with_bias)


@needs_kernel
@pytest.mark.parametrize("mode", ["gather", "scatter"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("k", "n"), [(64, 64), (80, 96)], ids=["even", "ragged"])
def test_persistent_matches_reference(mode: str, dtype: torch.dtype, k: int, n: int) -> None:
    """The persistent kernel (a few programs off a GPU, each looping over tiles; W and the ragged side
    through TMA descriptors, which zero-fill K and clip N and the expert's rows), with bias."""
    routing = random_routing()
    x, w, bias = operands(routing, mode, k, n, dtype, True)
    assert prepare(x, w, bias, routing, mode, PERSISTENT).kernel is _moe_matmul_persistent_kernel
    check(routing, mode, PERSISTENT, k, n, dtype, with_bias=True)


@needs_kernel
@pytest.mark.parametrize("mode", ["gather", "scatter"])
def test_persistent_falls_back_where_tma_cannot_reach(mode: str) -> None:
    """Rows of 36 fp16 values are 72 bytes apart, not a multiple of 16: no TMA descriptor can cover W
    (or the ragged side), so the same tile runs as the one-tile kernel, with the same result."""
    routing = random_routing()
    x, w, bias = operands(routing, mode, 64, 36, torch.float16, True)
    assert prepare(x, w, bias, routing, mode, PERSISTENT).kernel is _moe_matmul_kernel
    check(routing, mode, PERSISTENT, 64, 36, torch.float16, with_bias=True)


@needs_kernel
@pytest.mark.parametrize("mode", ["gather", "scatter"])
@pytest.mark.parametrize("config", [SMALL, PERSISTENT], ids=["one-tile", "persistent"])
def test_skewed_routing_with_empty_experts(mode: str, config: TileConfig) -> None:
    """Expert 1 takes most rows (three m-tiles), experts 2, 4 and 6 get none."""
    first = torch.tensor([1] * 36 + [3, 5, 7, 0])
    second = torch.tensor([0, 3, 5, 7]).repeat(10)
    expert_idx = torch.stack([first, second], dim=1)
    gammas = torch.softmax(torch.randn(40, 2, generator=torch.Generator().manual_seed(3)), dim=1)
    routing = Routing.from_experts(expert_idx.to(DEVICE), gammas.to(DEVICE), n_experts=8)
    assert torch.diff(routing.expert_offsets).tolist() == [11, 36, 0, 11, 0, 11, 0, 11]
    check(routing, mode, config, 64, 64, torch.float32, with_bias=True)


@needs_kernel
@pytest.mark.parametrize("mode", ["gather", "scatter"])
def test_expert_range_leaves_non_local_slots_zero(mode: str) -> None:
    routing = random_routing(expert_range=(3, 6))
    assert 0 < routing.n_rows < routing.n_tokens * routing.top_k
    y = check(routing, mode, SMALL, 64, 64, torch.float16, with_bias=True)
    if mode == "scatter":
        no_local_slot = (routing.slot_to_row.view(routing.n_tokens, -1) < 0).all(1)
        assert no_local_slot.any()
        assert torch.all(y[no_local_slot] == 0)


@needs_kernel
def test_strided_weights() -> None:
    """W stored as [E, N, K] and viewed as [E, K, N]: the kernel must honour any strides."""
    routing = random_routing(n_tokens=16)
    x, w, bias = operands(routing, "gather", 64, 32, torch.float32, with_bias=True)
    w_t = w.transpose(1, 2).contiguous().transpose(1, 2)
    y = prepare(x, w_t, bias, routing, "gather", SMALL).run()
    torch.testing.assert_close(y, moe_matmul_reference(x, w, routing, "gather", bias), atol=1e-4, rtol=1e-4)


@needs_kernel
def test_up_then_down_projection_matches_dense_loop() -> None:
    """gather then scatter equals the per-token sum over slots, checked without the reference."""
    routing = random_routing(n_tokens=12, top_k=3)
    x, w1, b1 = operands(routing, "gather", 32, 64, torch.float32, with_bias=True, seed=1)
    _, w2, b2 = operands(routing, "gather", 64, 32, torch.float32, with_bias=True, seed=2)
    h = prepare(x, w1, b1, routing, "gather", SMALL).run()
    y = prepare(h, w2, b2, routing, "scatter", SMALL).run()
    expected = torch.zeros(12, 32, device=DEVICE)
    for t in range(12):
        for j in range(3):
            e = int(routing.expert_idx[t, j])
            expected[t] += routing.gammas[t, j] * ((x[t] @ w1[e] + b1[e]) @ w2[e] + b2[e])
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("mode", ["gather", "scatter"])
def test_zero_tokens(mode: str) -> None:
    routing = random_routing(n_tokens=0)
    x, w, _ = operands(routing, mode, 32, 32, torch.float32, with_bias=False)
    launch = prepare(x, w, None, routing, mode, SMALL)
    assert launch.grid == (0,)
    assert launch.run().shape == (0, 32)


def test_prepare_on_meta_tensors() -> None:
    """Shape-only: a launch for a DeepSeek-V3-sized problem is built without memory or a device, in both
    kernel forms (sm_90's default for it is persistent: one program per SM after a tile-map launch)."""
    n_tokens, top_k, n_experts, k, n = 4096, 8, 256, 7168, 4096
    routing = route(torch.empty(n_tokens, n_experts, device="meta"), top_k)
    for mode, n_in in (("gather", n_tokens), ("scatter", n_tokens * top_k)):
        x = torch.empty(n_in, k, dtype=torch.bfloat16, device="meta")
        w = torch.empty(n_experts, k, n, dtype=torch.bfloat16, device="meta")
        bias = torch.empty(n_experts, n, dtype=torch.bfloat16, device="meta")
        persistent = default_config(routing.n_rows, n, k, n_experts, torch.bfloat16, "sm_90")
        assert persistent.is_persistent and persistent.num_stages == 3
        for config in (persistent, persistent.replace(is_persistent=False)):
            launch = prepare(x, w, bias, routing, mode, config)
            assert isinstance(launch, KernelLaunch)
            assert launch.y.device.type == "meta"
            assert all(a.device.type == "meta" for a in launch.args if isinstance(a, torch.Tensor))
            assert launch.constexprs["SCATTER"] == (mode == "scatter")
            meta_parameters = {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages"}
            assert meta_parameters <= launch.constexprs.keys()
            if config.is_persistent:
                assert launch.grid == (4,)  # one program per SM; off a GPU, a few
                assert launch.before is not None and launch.before.y.shape == (2, n_tokens * top_k // 128 + n_experts)
            else:
                assert launch.grid == ((n_tokens * top_k // config.block_m + n_experts) * n // config.block_n,)
                assert launch.constexprs["EXPERTS_POW2"] == 256 and launch.before is None
    assert launch.y.shape == (n_tokens * top_k, n)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"x": torch.empty(8, 32)}, r"w.shape\[1\] \(K=64\) must equal x.shape\[1\] \(K=32\)"),
        ({"w": torch.empty(4, 64, 16)}, r"w.shape\[0\] \(E=4\) must equal routing.n_experts \(8\)"),
        ({"w": torch.empty(8, 64, 16, dtype=torch.float16)}, r"w.dtype \(torch.float16\) must equal x.dtype"),
        ({"x": torch.empty(8, 64, dtype=torch.int32)}, r"x.dtype \(torch.int32\) must be one of"),
        ({"x": torch.empty(7, 64)}, r"x.shape\[0\] \(7\) must equal routing.n_tokens \(8\)"),
        ({"bias": torch.empty(8, 15)}, r"bias.shape \(8, 15\) must be \(E, N\) = \(8, 16\)"),
        ({"mode": "combine"}, r"mode must be one of .* 'combine'"),
    ],
)
def test_prepare_rejects_bad_operands(change: dict[str, object], match: str) -> None:
    routing = route(torch.randn(8, 8), 2)
    kwargs: dict[str, object] = {
        "x": torch.empty(8, 64),
        "w": torch.empty(8, 64, 16),
        "bias": None,
        "mode": "gather",
    }
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        prepare(routing=routing, config=SMALL, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"block_m": 48}, r"TileConfig.block_m must be a power of two, got 48"),
        ({"num_stages": 0}, r"TileConfig.num_stages must be a positive int, got 0"),
        ({"group_m": 2.0}, r"TileConfig.group_m must be a positive int, got 2.0"),
    ],
)
def test_tile_config_validation(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SMALL.replace(**change)  # type: ignore[arg-type]


def test_tile_config_helpers() -> None:
    assert SMALL.replace(block_n=64).as_dict() == {**SMALL.as_dict(), "block_n": 64}


@pytest.mark.parametrize("arch", [None, "sm_90", "sm_80", "gfx950"])
@pytest.mark.parametrize(("n_rows", "block_m"), [(64, 16), (8 * 256, 16), (200 * 256, 128)])
def test_default_config_is_valid(arch: str | None, n_rows: int, block_m: int) -> None:
    config = default_config(n_rows, 4096, 7168, 256, torch.bfloat16, arch)
    assert config.block_m == block_m
    assert config.block_k == 64
    assert default_config(n_rows, 4096, 7168, 256, torch.float32, arch).block_k == 32


def test_offsets_are_64_bit_only_where_a_tensor_spans_2_31_elements() -> None:
    """Meta tensors: DeepSeek-V3's expert weights (7.5e9 elements) need int64 offsets, gpt-oss's do not."""
    for (e, k, n), wide in (((8, 7168, 4096), False), ((256, 7168, 4096), True), ((128, 2880, 5760), False)):
        routing = route(torch.empty(48, e, device="meta"), 2)
        x = torch.empty(48, k, dtype=torch.bfloat16, device="meta")
        w = torch.empty(e, k, n, dtype=torch.bfloat16, device="meta")
        assert prepare(x, w, None, routing, "gather", SMALL).constexprs["INDEX_64"] is wide, (e, k, n)


@needs_kernel
@pytest.mark.parametrize("mode", ["gather", "scatter"])
def test_the_64_bit_offset_path_gives_the_same_result(mode: str) -> None:
    """Small operands never need it, so it is forced here: the kernel's INDEX_64 branch is exact too."""
    routing = random_routing()
    config = SMALL.replace(block_m=32, block_n=64)
    x, w, bias = operands(routing, mode, 80, 96, torch.float32, True)
    launch = prepare(x, w, bias, routing, mode, config)
    assert launch.constexprs["INDEX_64"] is False
    launch.kernel[launch.grid](*launch.args, **{**launch.constexprs, "INDEX_64": True})
    expected = moe_matmul_reference(x, w, routing, mode, bias)
    torch.testing.assert_close(launch.finish(), expected, atol=TOL[torch.float32], rtol=TOL[torch.float32])


@needs_kernel
@pytest.mark.parametrize("top_k", [1, 2, 3, 8])
@pytest.mark.parametrize("index_64", [False, True])
def test_the_slot_sum_adds_each_tokens_rows_into_any_strided_out(top_k: int, index_64: bool) -> None:
    """Scatter mode's second kernel against an fp32 sum of each token's rows, found in expert order
    through slot_to_row; the output a transposed view, one program's columns past N masked (N=40 <
    BLOCK_N), the 64-bit offset branch forced."""
    routing = random_routing(n_tokens=12, top_k=top_k)
    y = torch.randn(12 * top_k, 40, generator=torch.Generator().manual_seed(top_k)).to(DEVICE, torch.float16)
    out = torch.full((40, 12), float("nan"), dtype=torch.float16, device=DEVICE).t()
    summed = _slot_sum(y, routing, out)
    summed.kernel[summed.grid](*summed.args, **{**summed.constexprs, "INDEX_64": index_64})
    expected = y.float()[routing.slot_to_row.long()].view(12, top_k, 40).sum(dim=1)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-3)


@needs_kernel
def test_the_slot_sum_skips_slots_without_a_local_row() -> None:
    """Under expert parallelism a slot routed to another rank (slot_to_row -1) adds nothing: no
    buffer of every slot is zeroed for it."""
    routing = random_routing(n_tokens=12, top_k=2, expert_range=(0, 4))
    y = torch.randn(routing.n_rows, 40, generator=torch.Generator().manual_seed(5)).to(DEVICE, torch.float16)
    out = torch.full((12, 40), float("nan"), dtype=torch.float16, device=DEVICE)
    _slot_sum(y, routing, out).launch()
    rows = routing.slot_to_row.long()
    local = (rows >= 0).view(12, 2, 1)
    expected = torch.where(local, y.float()[rows.clamp(min=0)].view(12, 2, 40), 0.0).sum(dim=1)
    assert not local.all() and local.any()
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-3)

