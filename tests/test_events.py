"""Events go through stdlib logging, as logfmt or one JSON object per line."""

from __future__ import annotations

import json
import logging

from resilient_moe import events
from resilient_moe.testing import capture


def test_events_reach_stdlib_logging_with_fields(caplog) -> None:
    with caplog.at_level(logging.INFO, logger=events.LOGGER_NAME):
        events.selected(config={"block_m": 64}, arch="gfx950")
    (record,) = caplog.records
    assert record.name == "resilient_moe" and record.levelno == logging.INFO
    assert record.resilient_moe["event"] == "tiling.selected"
    assert record.getMessage().startswith("event=tiling.selected")


def test_json_format_gives_one_object_a_line(caplog, monkeypatch) -> None:
    monkeypatch.setenv(events.FORMAT_ENV, "json")
    with caplog.at_level(logging.WARNING, logger=events.LOGGER_NAME):
        events.downgrade(**{"from": {"block_n": 256}, "to": {"block_n": 128}}, required=245760, limit=232448)
    (line,) = caplog.text.strip().splitlines()
    record = json.loads(line[line.index("{"):])
    assert record["event"] == "tiling.downgrade" and record["required"] == 245760 and record["from"] == {"block_n": 256}


def test_levels_filter_before_rendering(caplog) -> None:
    with caplog.at_level(logging.INFO, logger=events.LOGGER_NAME):
        events.cache_hit(key="k")
    assert caplog.records == []


def test_muted_events_reach_neither_logging_nor_capture(caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger=events.LOGGER_NAME), capture() as logs:
        with events.muted():
            events.downgrade(required=1, limit=0)
        events.selected(config={"block_m": 64})
    assert [e["event"] for e in logs] == ["tiling.selected"] and caplog.records == []
    with caplog.at_level(logging.DEBUG, logger=events.LOGGER_NAME):
        with events.muted():
            events.selected(config={"block_m": 64})
        events.cache_hit(key="k")
    assert [r.resilient_moe["event"] for r in caplog.records] == ["tiling.cache_hit"]
    assert events.capture is capture  # the name docs/events.md has always given
