"""``resilient-moe demo``: a small MoE layer that survives a tile table that does not fit the chip.

The layer is gather GEMM (up-projection, gate and up fused), SwiGLU, scatter GEMM (down-projection).
Its policy is ``policies/demo.yaml``: a 256x256x64 tile at 4 stages on every chip, like a table tuned
for a chip with more shared memory. It needs 196608 bytes of LDS on gfx950 (limit 163840) and 262144
bytes of shared memory on sm_90 (limit 232448), so the dispatcher must step down, for real, on the
first run; the second run finds the winners in the persistent cache and compiles nothing.

Without a GPU the kernels run in the Triton interpreter and every tile is first compiled for a
virtual MI355X (gfx950); set RESILIENT_MOE_TARGET to pick another chip.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Layer:
    tokens: int
    experts: int
    top_k: int
    hidden: int
    ffn: int
    dtype: torch.dtype
    device: str


CPU_LAYER = Layer(tokens=64, experts=8, top_k=2, hidden=256, ffn=128, dtype=torch.float16, device="cpu")
GPU_LAYER = Layer(tokens=4096, experts=64, top_k=4, hidden=2048, ffn=1024, dtype=torch.bfloat16, device="cuda")


def prepare_environment() -> bool:
    """Choose the interpreter and a virtual gfx950 when there is no GPU; must run before kernels are imported."""
    gpu = torch.cuda.is_available()
    if not gpu:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ.setdefault("RESILIENT_MOE_TARGET", "gfx950")
    return gpu


class _Collector(logging.Handler):
    """Keeps our events' fields as they pass through stdlib logging (the integration hosts use too)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "resilient_moe", None)
        if fields is not None:
            self.events.append(fields)


def _tile(config: dict[str, int]) -> str:
    return f"{config['block_m']}x{config['block_n']}x{config['block_k']} s{config['num_stages']} w{config['num_warps']}"


def run() -> int:
    """Run the layer, print what the dispatcher did and the check against the torch reference."""
    gpu = prepare_environment()
    from . import events
    from .backends.builtin.moe_matmul import moe_matmul
    from .cache import default_cache
    from .policy import load_policy, shipped_policy
    from .reference import moe_matmul_reference
    from .routing import route
    from .targets import describe_compiler, placement

    events.configure_console(logging.INFO)
    collector = _Collector()
    logger = logging.getLogger(events.LOGGER_NAME)
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    for handler in logger.handlers:
        if handler is not collector:
            handler.setLevel(logging.INFO)

    layer = GPU_LAYER if gpu else CPU_LAYER
    where = placement()
    policy_file = shipped_policy("demo.yaml")
    policy = load_policy(policy_file)
    cache = default_cache()
    runs_on = "GPU" if gpu else "Triton interpreter (CPU)"
    chip = f", every tile compiled first for virtual {where.virtual.name} ({where.virtual.examples}, limit {where.virtual.max_shared_mem} B)" if where.virtual else ""
    rows_per_expert = -(-layer.tokens * layer.top_k // layer.experts)
    print(f"resilient-moe demo: MoE layer of {layer.tokens} tokens, {layer.experts} experts, top-{layer.top_k} "
          f"({rows_per_expert} rows per expert), hidden {layer.hidden}, ffn {layer.ffn}, "
          f"{str(layer.dtype).removeprefix('torch.')}")
    print(f"runs on: {runs_on}, arch {where.arch}{chip}")
    print(f"triton:  {describe_compiler(where.arch)}")
    print(f"policy:  {policy_file} (default tile 256x256x64 s4 on every chip)")
    print(f"cache:   {cache.path}\n")

    g = torch.Generator().manual_seed(0)
    x = torch.randn(layer.tokens, layer.hidden, generator=g).to(layer.device, layer.dtype)
    w1 = (torch.randn(layer.experts, layer.hidden, 2 * layer.ffn, generator=g) / layer.hidden**0.5).to(layer.device, layer.dtype)
    w2 = (torch.randn(layer.experts, layer.ffn, layer.hidden, generator=g) / layer.ffn**0.5).to(layer.device, layer.dtype)
    routing = route(torch.randn(layer.tokens, layer.experts, generator=g).to(layer.device), layer.top_k)

    def swiglu(h: torch.Tensor) -> torch.Tensor:
        gate, up = h.float().chunk(2, dim=-1)
        return (torch.nn.functional.silu(gate) * up).to(h.dtype)

    y = moe_matmul(swiglu(moe_matmul(x, w1, routing, "gather", policy=policy)), w2, routing, "scatter", policy=policy)
    ref_h = swiglu(moe_matmul_reference(x, w1, routing, "gather"))
    ref = moe_matmul_reference(ref_h, w2, routing, "scatter")
    error = (y.float() - ref.float()).abs().max().item()
    tolerance = 5e-2 * ref.float().abs().max().item()

    print()
    for name, kernel in (("up-projection (gather)", "gather"), ("down-projection (scatter)", "scatter")):
        mine = [e for e in collector.events if str(e.get("kernel", e.get("key", ""))).find(kernel) >= 0]
        downgrades = [e for e in mine if e["event"] == "tiling.downgrade"]
        hits = [e for e in mine if e["event"] == "tiling.cache_hit"]
        if hits:
            print(f"{name}: used the cache ({_tile(hits[0]['config'])}), no compile, no downgrade")
        for d in downgrades:
            known = " (known without compiling it)" if d.get("predicted") else ""
            print(f"{name}: {_tile(d['from'])} needs {d['required']} B > {d['limit']} B -> downgraded to {_tile(d['to'])}{known}")
        for s in (e for e in mine if e["event"] == "tiling.selected"):
            print(f"{name}: selected {_tile(s['config'])} after {s['attempts']} attempt(s)")
    ok = error <= tolerance
    print(f"\ncheck against the torch reference: max abs error {error:.3g} (tolerance {tolerance:.3g}): {'OK' if ok else 'MISMATCH'}")
    print(f"winners are cached in {cache.path}; run the demo again to see them used, `resilient-moe cache clear` to start over")
    logger.removeHandler(collector)
    return 0 if ok else 1
