"""Preflight to a shipped cache, then a server start that compiles no failing tile.

Build step (any machine, no GPU): ``resilient-moe preflight --arch gfx950 --shapes ... --write-cache
DIR/tiling-v1.json`` compiles the server's MoE GEMM for a virtual MI355X under the server's policy and
records the tile that fits. Server start: a fresh Python process with ``RESILIENT_MOE_CACHE_DIR=DIR``
(and the same policy, dtype and Triton, which are part of each cache key) reads the winner instead of
stepping down from a tile that does not fit: it logs ``tiling.cache_hit`` and no ``tiling.downgrade``.
The policy's default tile (256x256x64 at 4 stages) needs more LDS than gfx950 has, as a table tuned
for another chip would. Without a GPU, the server's kernels run in the Triton interpreter.

Run: python examples/preflight_ship_cache.py [DIR]    (default DIR: a temporary folder)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import resilient_moe as rm

POLICY = """\
version: 1
arch:
  gfx950: {default: {block_m: 256, block_n: 256, block_k: 64, num_stages: 4, num_warps: 8}}
"""
TOKENS, EXPERTS, TOP_K, K, N = 16, 4, 2, 128, 256
SHAPES = f"- {{name: up, mode: gather, experts: {EXPERTS}, top_k: {TOP_K}, k: {K}, n: {N}}}\n"  # the server's GEMM


def build(folder: Path) -> None:
    """The build step: preflight the server's GEMM for gfx950 and write the cache file to ship."""
    (folder / "policy.yaml").write_text(POLICY)
    (folder / "shapes.yaml").write_text(SHAPES)
    command = ["preflight", "--arch", "gfx950", "--shapes", str(folder / "shapes.yaml"), "--dtype", "fp16",
               "--tokens", str(TOKENS), "--policy", str(folder / "policy.yaml"),
               "--write-cache", str(folder / "tiling-v1.json")]
    print(f"$ resilient-moe {' '.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "resilient_moe.cli", *command], check=True)


def start_server(folder: Path) -> list[dict[str, Any]]:
    """A fresh process, configured the way a server is, makes the GEMM's first call; returns its events."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESILIENT_MOE_")}
    env.update(RESILIENT_MOE_CACHE_DIR=str(folder), RESILIENT_MOE_TARGET="gfx950",
               RESILIENT_MOE_POLICY=str(folder / "policy.yaml"))
    server = subprocess.run([sys.executable, __file__, "--serve"], env=env, stdout=subprocess.PIPE, text=True,
                            check=True)
    return json.loads(server.stdout)


class Events(logging.Handler):
    """Keeps the fields of each event (``record.resilient_moe``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(record.resilient_moe)  # type: ignore[attr-defined]


def serve() -> None:
    """The server process: its first MoE call, with every event it logs kept and printed as JSON."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before resilient_moe imports a kernel

    events = Events()
    logger = logging.getLogger("resilient_moe")
    logger.setLevel(logging.DEBUG)  # tiling.cache_hit is a debug event
    logger.addHandler(events)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(TOKENS, K, device=device, dtype=torch.float16)
    w = torch.randn(EXPERTS, K, N, device=device, dtype=torch.float16) / K**0.5
    rm.moe_matmul(x, w, rm.route(torch.randn(TOKENS, EXPERTS, device=device), TOP_K), mode="gather")
    print(json.dumps(events.fields))


def main(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    build(folder)
    events = start_server(folder)
    names = [event["event"] for event in events]
    print(f"\nserver start with RESILIENT_MOE_CACHE_DIR={folder}: events {names}")
    for event in events:
        if event["event"] == "tiling.cache_hit":
            print(f"  tiling.cache_hit: {rm.TileConfig(**event['config'])} read from {event['source']}")
    ok = "tiling.cache_hit" in names and "tiling.downgrade" not in names
    print("no tiling.downgrade: the server compiled no failing tile" if ok else "the server stepped down: cache missed")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    elif len(sys.argv) > 1:
        raise SystemExit(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            raise SystemExit(main(Path(tmp)))
