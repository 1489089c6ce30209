"""Faults the library must survive: files holding bytes they should not, policies that parse but do not
fit a chip, compiles that hang, parents that die, threads in the interpreter, careless calls.

Each test injects one fault; docs/reliability.md lists them with their trials and what was measured.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import resilient_moe as rm
from resilient_moe import cli, events
from resilient_moe.cache import FORMAT, TilingCache
from resilient_moe.config import TileConfig
from resilient_moe.policy import (
    POLICY_ENV,
    Policy,
    PolicyError,
    _policy_from,
    active_policy,
    environment_policy,
    load_policy,
    parse_policy,
)

from conftest import OVER_GFX950, policy_with, problem

COMPILE_TIMEOUT_ENV = "RESILIENT_MOE_COMPILE_TIMEOUT"
KEY = ("resilient_moe.moe_matmul", "gather", "gfx950", 4096, 7168)
CONFIG = TileConfig(64, 128, 64, group_m=8, num_warps=4, num_stages=3)
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
REPO = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

INVALID_UTF8 = b"version: 1\nladder: \x80\xff\xfe\n"
DEEP_JSON = b"[" * 100_000 + b"]" * 100_000
DEEP_YAML = b"version: 1\nladder: " + b"[" * 1000 + b"]" * 1000 + b"\n"


def alias_bomb(levels: int = 9) -> str:
    """About 1 KB of YAML that expands to 10**levels strings under a key no policy knows."""
    lines = ["version: 1", "bomb:", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def _subprocess_env(**extra: str) -> dict[str, str]:
    """This environment for a child Python, minus the interpreter switch (children decide for themselves)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RESILIENT_MOE_TARGET")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *extra.pop("PYTHONPATH", "").split(os.pathsep)]).rstrip(os.pathsep)
    return {**env, **extra}


@pytest.fixture
def fresh_env_policy() -> Iterator[None]:
    _policy_from.cache_clear()
    environment_policy.cache_clear()
    yield
    _policy_from.cache_clear()
    environment_policy.cache_clear()


# 2. Cache file bytes: whatever the file holds, it is set aside with an event, never a crash.


@pytest.mark.parametrize(
    "content",
    [
        INVALID_UTF8,
        DEEP_JSON,
        json.dumps({"format": FORMAT, "version": 1, "entries": {"k": {"config": [[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]}}}).encode(),
    ],
    ids=["invalid-utf8", "100000-deep", "entry-20-deep"],
)
def test_cache_file_of_bad_bytes_is_set_aside_and_rebuilt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    fresh = TilingCache(path)
    with events.capture() as logs:
        assert fresh.lookup(KEY) is None
    (warning,) = logs
    assert warning["event"] == "cache.corrupt" and warning["action"] == "renamed"
    assert Path(warning["moved_to"]).read_bytes() == content  # the evidence is kept
    fresh.record(KEY, CONFIG, [])
    assert TilingCache(path).lookup(KEY) == CONFIG


# 3. Policy file bytes: a PolicyError naming the file, from the loader, the CLI and the environment.

BAD_POLICY_BYTES = pytest.mark.parametrize("content", [INVALID_UTF8, DEEP_YAML], ids=["invalid-utf8", "1000-deep"])


@BAD_POLICY_BYTES
def test_policy_file_of_bad_bytes_is_a_policy_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in str(err.value) and len(str(err.value)) < 1000


@BAD_POLICY_BYTES
def test_policy_check_of_bad_bytes_exits_1_with_the_error(tmp_path: Path, content: bytes, capsys) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    assert cli.main(["policy", "check", str(path)]) == 1
    assert str(path) in capsys.readouterr().err


@BAD_POLICY_BYTES
def test_env_policy_of_bad_bytes_falls_back_to_the_default(
    tmp_path: Path, content: bytes, monkeypatch, fresh_env_policy
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    monkeypatch.setenv(POLICY_ENV, str(path))
    with events.capture() as logs:
        assert active_policy() == Policy()
    assert [e["event"] for e in logs] == ["policy.invalid"] and str(path) in logs[0]["error"]


def test_alias_bomb_is_rejected_at_once_with_a_short_message(tmp_path: Path) -> None:
    """Run in a child: before the bound, this load never finished (the error repr'd 10**9 strings)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert len(path.read_bytes()) < 1100
    script = textwrap.dedent(f"""
        import os, time
        from resilient_moe import cli, events
        from resilient_moe.policy import PolicyError, active_policy, load_policy, Policy
        start = time.perf_counter()
        try:
            load_policy({str(path)!r})
        except PolicyError as err:
            message = str(err)
        assert {str(path)!r} in message and len(message) < 1000, message
        assert cli.main(["policy", "check", {str(path)!r}]) == 1
        os.environ["RESILIENT_MOE_POLICY"] = {str(path)!r}
        with events.capture() as logs:
            assert active_policy() == Policy()
        assert [e["event"] for e in logs] == ["policy.invalid"]
        print(f"{{time.perf_counter() - start:.3f}}")
    """)
    done = subprocess.run([sys.executable, "-c", script], env=_subprocess_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 2.0


def test_aliases_within_bounds_still_load(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text("version: 1\narch:\n  gfx950: &amd {pin: {num_warps: 8}}\n  gfx942: *amd\n")
    assert load_policy(path).for_arch("gfx942").pin.values() == {"num_warps": 8}


# 4. Triggers without a 'shared memory' entry: rejected at load, not a KeyError at the first shortage.


@pytest.mark.parametrize("triggers", [{}, {"threads": ["num_warps"]}], ids=["empty", "threads-only"])
def test_triggers_without_shared_memory_are_rejected_at_load(triggers: dict) -> None:
    with pytest.raises(PolicyError, match="triggers.*'shared memory'"):
        parse_policy({"version": 1, "triggers": triggers})


def test_shared_memory_with_no_moves_exhausts_the_ladder(target) -> None:
    target("gfx950")
    x, w, routing = problem()
    policy = policy_with("gfx950", OVER_GFX950, triggers={"shared memory": []})
    with pytest.raises(rm.LadderExhaustedError) as err:
        rm.moe_matmul(x, w, routing, policy=policy)
    assert len(err.value.attempts) == 1


# 5. Tiles Triton and the chips cannot take: rejected at load.


@pytest.mark.parametrize(
    ("yaml_text", "names"),
    [
        ("arch: {gfx950: {default: {block_m: 1048576}}}", ["arch.gfx950.default.block_m", "1048576", "1024"]),
        ("arch: {gfx950: {default: {num_stages: 1000000}}}", ["arch.gfx950.default.num_stages", "1000000", "8"]),
        ("arch: {gfx950: {pin: {num_warps: 1024}}}", ["arch.gfx950.pin.num_warps", "1024", "32"]),
        ("arch: {sm_90: {pin: {num_warps: 12}}}", ["arch.sm_90.pin.num_warps", "12", "power of two"]),
        ("ladder: {min_block_n: 2048}", ["ladder.min_block_n", "2048", "1024"]),
        ("ladder: {min_num_stages: 9}", ["ladder.min_num_stages", "9", "8"]),
        ("ladder: {min_num_warps: 64}", ["ladder.min_num_warps", "64", "32"]),
    ],
)
def test_tiles_beyond_triton_limits_are_rejected_at_load(tmp_path: Path, yaml_text: str, names: list[str]) -> None:
    path = tmp_path / "absurd.yaml"
    path.write_text("version: 1\n" + yaml_text + "\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    for name in [str(path), *names]:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("block_m", 2048, "at most 1024"), ("num_stages", 10**6, "at most 8"), ("num_warps", 64, "at most 32"),
     ("num_warps", 6, "a power of two")],
)
def test_tile_config_rejects_what_triton_cannot_compile(field: str, value: int, says: str) -> None:
    with pytest.raises(ValueError, match=f"TileConfig.{field} must be {says}.*{value}"):
        CONFIG.replace(**{field: value})


# 9. Leftovers of killed writers: removed on the next write once stale; the file stays parseable.

WRITER = """
import itertools, sys
from pathlib import Path
from resilient_moe.cache import TilingCache
from resilient_moe.config import TileConfig
cache = TilingCache(Path(sys.argv[1]))
print("ready", flush=True)
for i in itertools.count():
    cache.record(("k", sys.argv[2], i), TileConfig(16, 16, 16, 1, 1, 1), [])
"""


def _temporaries(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}*.tmp"))


def test_stale_temporaries_are_removed_on_the_next_write_fresh_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    stale, fresh = tmp_path / "c.jsonabc123.tmp", tmp_path / "c.jsondef456.tmp"
    for leftover in (stale, fresh):
        leftover.write_text('{"half')
    old = time.time() - 120
    os.utime(stale, (old, old))
    TilingCache(path).record(KEY, CONFIG, [])
    assert _temporaries(path) == [fresh]


def test_sigkill_mid_write_leaves_a_parseable_file_and_only_stale_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    rng = random.Random(0)
    recorded = 0
    for trial in range(10):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(trial)], stdout=subprocess.PIPE,
                                  env=_subprocess_env())
        assert writer.stdout.readline() == b"ready\n"  # type: ignore[union-attr]
        time.sleep(rng.uniform(0.05, 0.3))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        with events.capture() as logs:
            entries = TilingCache(path).entries()
        assert logs == [] and len(entries) >= recorded
        recorded = len(entries)
    assert recorded > 10
    old = time.time() - 120
    for leftover in _temporaries(path):
        os.utime(leftover, (old, old))
    TilingCache(path).record(KEY, CONFIG, [])
    assert _temporaries(path) == []
