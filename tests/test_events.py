"""Events go through stdlib logging, as logfmt or one JSON object per line."""

from __future__ import annotations

import json
import logging

from resilient_moe import events


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
