"""The persistent cache: atomic shared writes, corrupt or foreign files set aside, never a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from resilient_moe.cache import FORMAT, REFERENCE, TilingCache, key_text
from resilient_moe.config import TileConfig
from resilient_moe.testing import capture

CONFIG = TileConfig(64, 128, 64, group_m=8, num_warps=4, num_stages=3)
KEY = ("resilient_moe.moe_matmul", "gather", "gfx950", 4096, 7168)


def test_winner_survives_a_new_cache_object(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    TilingCache(path).record(KEY, CONFIG, [{"config": CONFIG.as_dict()}])
    fresh = TilingCache(path)
    with capture() as logs:
        assert fresh.lookup(KEY) == CONFIG
        assert fresh.lookup(KEY) == CONFIG
    assert [e["event"] for e in logs] == ["tiling.cache_hit"]  # once per key and process
    assert json.loads(path.read_text())["format"] == FORMAT


def test_reference_marker_round_trips(tmp_path: Path) -> None:
    TilingCache(tmp_path / "c.json").record(KEY, REFERENCE, [])
    assert TilingCache(tmp_path / "c.json").lookup(KEY) == REFERENCE


def test_corrupt_file_is_set_aside_with_a_warning_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"format": "resilient_moe.tiling", "version": 1, "entries": {"trunc')
    cache = TilingCache(path)
    with capture() as logs:
        assert cache.lookup(KEY) is None
    (warning,) = logs
    assert warning["event"] == "cache.corrupt" and warning["log_level"] == "warning"
    aside = Path(warning["moved_to"])
    assert aside.read_text().endswith('"trunc')  # the evidence is kept, not deleted
    cache.record(KEY, CONFIG, [])
    assert TilingCache(path).lookup(KEY) == CONFIG


def test_foreign_json_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"entries": {key_text(KEY): {"config": CONFIG.as_dict()}}}))
    with capture() as logs:
        assert TilingCache(path).lookup(KEY) is None
    assert logs[0]["event"] == "cache.corrupt"


def test_bad_entry_is_ignored_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    bad = {"config": {"block_m": 48, "block_n": 64, "block_k": 64, "group_m": 8, "num_warps": 4, "num_stages": 2}}
    path.write_text(json.dumps({"format": FORMAT, "version": 1, "entries": {key_text(KEY): bad}}))
    with capture() as logs:
        assert TilingCache(path).lookup(KEY) is None
    assert "power of two" in logs[0]["error"]


def test_unwritable_directory_keeps_the_winner_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = TilingCache(blocker / "c.json")
    with capture() as logs:
        cache.record(KEY, CONFIG, [])
    assert cache.lookup(KEY) == CONFIG
    assert logs[0]["event"] == "cache.write_failed"


def test_concurrent_writers_from_several_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    script = textwrap.dedent(f"""
        import sys
        from resilient_moe.cache import TilingCache
        from resilient_moe.config import TileConfig
        cache = TilingCache(__import__("pathlib").Path({str(path)!r}))
        for i in range(25):
            cache.record(("k", sys.argv[1], i), TileConfig(16, 16, 16, 1, 1, 1), [])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(p)]) for p in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    entries = TilingCache(path).entries()
    assert len(entries) == 100
    assert not list(tmp_path.glob("*.tmp"))


def test_clear_removes_memory_and_file(tmp_path: Path) -> None:
    cache = TilingCache(tmp_path / "c.json")
    cache.record(KEY, CONFIG, [])
    assert cache.clear() and cache.lookup(KEY) is None and not (tmp_path / "c.json").exists()
