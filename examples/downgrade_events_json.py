"""Downgrade events as JSON lines, through a stdlib logging handler on the logger "resilient_moe".

Runs one MoE GEMM whose policy's default tile (256x256x64, 4 stages) needs more LDS than a virtual
MI355X (gfx950) has, so the dispatcher steps down and logs it. The policy compiles every rung
(``ladder: {skip_predicted: false}``): the tile meets the real ``OutOfResources`` of a gfx950 compile,
where the shipped default would step over it uncompiled (``"predicted": true``). With
``RESILIENT_MOE_LOG_FORMAT=json`` each record's message is one JSON object (ship it to your log
pipeline as it is); ``record.resilient_moe`` holds the same event as a dict, for handlers that want
fields rather than text. No GPU needed: without one, kernels run in the Triton interpreter.

Run: python examples/downgrade_events_json.py
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

os.environ["RESILIENT_MOE_LOG_FORMAT"] = "json"
os.environ.setdefault("RESILIENT_MOE_TARGET", "gfx950")  # compile every tile for a virtual MI355X first
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # both before resilient_moe imports a kernel

import resilient_moe as rm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOO_BIG = {"block_m": 256, "block_n": 256, "block_k": 64, "num_stages": 4, "num_warps": 8}  # > gfx950's 163840 B


class Fields(logging.Handler):
    """Keeps each event's fields: the dict the library attaches to the record as ``record.resilient_moe``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.resilient_moe)  # type: ignore[attr-defined]


def main() -> int:
    logger = logging.getLogger("resilient_moe")
    logger.setLevel(logging.DEBUG)  # downgrade: warning, selected: info, cache_hit: debug
    fields = Fields()
    logger.addHandler(fields)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "events.jsonl")
        lines = logging.FileHandler(log)
        lines.setFormatter(logging.Formatter("%(message)s"))  # the message is the JSON object
        logger.addHandler(lines)

        policy = rm.Policy.model_validate(
            {"version": 1, "ladder": {"skip_predicted": False}, "arch": {"gfx950": {"default": TOO_BIG}}}
        )
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 128, generator=g).to(DEVICE, torch.float16)
        w = (torch.randn(4, 128, 256, generator=g) / 8).to(DEVICE, torch.float16)
        routing = rm.route(torch.randn(16, 4, generator=g).to(DEVICE), top_k=2)
        y = rm.moe_matmul(x, w, routing, mode="gather", policy=policy)

        lines.close()
        text = log.read_text()
    print(f"{log.name}, as the handler wrote it:\n{text}")
    events = [json.loads(line) for line in text.splitlines()]
    for event in events:
        if event["event"] == "tiling.downgrade":
            how = "known without compiling it" if event["predicted"] else "compiled, did not fit"
            print(f"downgrade on {event['arch']}: {rm.TileConfig(**event['from'])} needs {event['required']} B > "
                  f"{event['limit']} B ({how}) -> {rm.TileConfig(**event['to'])}")
        elif event["event"] == "tiling.selected":
            print(f"selected {rm.TileConfig(**event['config'])} after {event['attempts']} attempt(s)")
    print(f"record.resilient_moe holds the same events as dicts: {fields.events == events}")
    ok = torch.allclose(y.float(), rm.moe_matmul_reference(x, w, routing, mode="gather").float(), atol=2e-2)
    print(f"result matches rm.moe_matmul_reference: {ok}")
    return 0 if ok and any(e["event"] == "tiling.downgrade" for e in events) else 1


if __name__ == "__main__":
    raise SystemExit(main())
