"""Faults the library must survive: files holding bytes they should not, policies that parse but do not
fit a chip, compiles that hang, parents that die, threads in the interpreter, careless calls.

Each test injects one fault; docs/reliability.md lists them with their trials and what was measured.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
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
from unittest import mock

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resilient_moe as rm
from resilient_moe import cache, cli
from resilient_moe.cache import FORMAT, REFERENCE, TilingCache, key_text
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
from resilient_moe.targets import CHIPS
from resilient_moe.testing import capture
from resilient_moe.virtual.worker import CompileJob, Worker

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
    """This environment for a child Python, minus the interpreter switch (children decide for themselves);
    its PYTHONPATH keeps ours after the repository (the GPU machine's packages are installed there)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RESILIENT_MOE_TARGET")}
    paths = [str(REPO), *extra.pop("PYTHONPATH", "").split(os.pathsep), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
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
    with capture() as logs:
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
    with capture() as logs:
        assert active_policy() == Policy()
    assert [e["event"] for e in logs] == ["policy.invalid"] and str(path) in logs[0]["error"]


def test_alias_bomb_is_rejected_at_once_with_a_short_message(tmp_path: Path) -> None:
    """Run in a child: before the bound, this load never finished (the error repr'd 10**9 strings)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert len(path.read_bytes()) < 1100
    script = textwrap.dedent(f"""
        import os, time
        from resilient_moe import cli
        from resilient_moe.policy import PolicyError, active_policy, load_policy, Policy
        from resilient_moe.testing import capture
        start = time.perf_counter()
        try:
            load_policy({str(path)!r})
        except PolicyError as err:
            message = str(err)
        assert {str(path)!r} in message and len(message) < 1000, message
        assert cli.main(["policy", "check", {str(path)!r}]) == 1
        os.environ["RESILIENT_MOE_POLICY"] = {str(path)!r}
        with capture() as logs:
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


# 5. Compiles that hang, parents that die: the worker is killed, never left behind.

FAKE_KERNELS = '''
"""Stand-ins for @triton.jit functions, compiled by a worker: one that returns, one that never does."""
import ctypes
import pathlib


class _Compiled:
    class metadata:
        shared = 0

    def _init_handles(self):
        pass


class Fast:
    def warmup(self, *args, **kwargs):
        return _Compiled()


class Stuck:
    """Like a compiler pass stuck in C++: it holds the GIL (PyDLL does not release it) and never returns."""

    def warmup(self, *args, marker, **kwargs):
        pathlib.Path(marker).touch()
        ctypes.PyDLL(None).sleep(600)


FAST, STUCK = Fast(), Stuck()
'''


@pytest.fixture
def fake_kernels(tmp_path: Path, monkeypatch) -> Path:
    """A module of fake kernels on the path that workers inherit; returns the folder holding it."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    (folder / "fake_kernels.py").write_text(FAKE_KERNELS)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _stuck(marker: Path) -> CompileJob:
    return CompileJob("fake_kernels:STUCK", (), (("marker", str(marker)),), "gfx950")


FAST = CompileJob("fake_kernels:FAST", (), (), "gfx950")


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not: a container's init may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_stuck_compile_times_out_kills_its_worker_and_the_next_starts_afresh(
    fake_kernels: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(COMPILE_TIMEOUT_ENV, "2")
    worker = Worker()
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(worker.compile, _stuck(tmp_path / "started"))
        try:
            err = future.exception(timeout=30)
        finally:
            if not future.done() and worker._proc is not None:
                worker._proc.kill()  # without a timeout the compile never returns
    elapsed = time.perf_counter() - start
    assert isinstance(err, TimeoutError), repr(err)
    assert "fake_kernels:STUCK" in str(err) and "gfx950" in str(err) and "2 s" in str(err)
    assert COMPILE_TIMEOUT_ENV in str(err)
    assert elapsed < 20
    assert worker.compile(FAST).shared == 0  # a fresh worker
    worker.close()


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf"])
def test_compile_timeout_must_be_a_positive_number_of_seconds(fake_kernels: Path, monkeypatch, value: str) -> None:
    monkeypatch.setenv(COMPILE_TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=f"{COMPILE_TIMEOUT_ENV}.*{value}"):
        Worker().compile(FAST)


PARENT = """
import sys, threading, time
from resilient_moe.virtual.worker import CompileJob, Worker
worker = Worker()
fast = CompileJob("fake_kernels:FAST", (), (), "gfx950")
first = threading.Thread(target=worker.compile, args=(fast,))  # a thread that starts the worker, then ends
first.start()
first.join()
started = worker._proc.pid
stuck = CompileJob("fake_kernels:STUCK", (), (("marker", sys.argv[1]),), "gfx950")
threading.Thread(target=worker.compile, args=(stuck,), daemon=True).start()
print(started, flush=True)
time.sleep(600)
"""


def test_no_worker_outlives_its_parent_even_mid_compile(fake_kernels: Path, tmp_path: Path) -> None:
    """SIGKILL the parent while its worker is stuck in a compile that holds the GIL: the worker goes too.
    The worker was started by a thread that has since ended, and survived that."""
    marker = tmp_path / "compiling"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(marker)], stdout=subprocess.PIPE, text=True,
        env=_subprocess_env(PYTHONPATH=str(fake_kernels)),
    )
    worker_pid = int(parent.stdout.readline())  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the worker that ran the first compile was not the one asked for the second"
        assert _alive(worker_pid)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker_pid)
    finally:
        parent.kill()
        if _alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


# 6. CLI: malformed entries, a directory where the file should be, a closed pipe.


def test_cache_show_lists_a_malformed_entry_instead_of_crashing(cache_dir: Path, capsys) -> None:
    cache_dir.mkdir()
    good = {"config": CONFIG.as_dict(), "attempts": [{"config": {}, "required": 1}], "source": "runtime"}
    entries = {"good": good, "bad": "oops", "odd": {"config": 3, "attempts": "many"}, "odder": {"attempts": [1, None]}}
    (cache_dir / cache.FILE_NAME).write_text(json.dumps({"format": FORMAT, "version": 1, "entries": entries}))
    assert cli.main(["cache", "show"]) == 0
    out = capsys.readouterr().out
    assert "4 winner(s)" in out and "1 config(s) did not fit" in out
    assert "bad\n    -> malformed entry (lookups ignore it): 'oops'" in out
    assert "odd\n    -> malformed entry" in out and "odder\n    -> malformed entry" in out


def test_cache_clear_of_a_directory_says_so_and_exits_1(cache_dir: Path, capsys) -> None:
    (cache_dir / cache.FILE_NAME).mkdir(parents=True)
    assert cli.main(["cache", "clear"]) == 1
    err = capsys.readouterr().err
    assert str(cache_dir / cache.FILE_NAME) in err and "directory" in err.lower()


def test_policy_check_into_a_closed_pipe_exits_quietly() -> None:
    """``resilient-moe policy check FILE | head -0``: the reader is gone before the first write."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "resilient_moe.cli", "policy", "check", str(REPO / "policies" / "demo.yaml")],
            stdout=write, stderr=subprocess.PIPE, text=True, env=_subprocess_env(), timeout=60,
        )
    finally:
        os.close(write)
    assert done.returncode == 128 + signal.SIGPIPE and done.stderr == ""


# 7. Careless calls: a 2-D w, CPU tensors without the interpreter, bf16 in the interpreter.


@pytest.mark.parametrize("dims", [2, 1, 0])
def test_w_of_the_wrong_rank_is_named(dims: int) -> None:
    x, w, routing = problem()
    w = w[(0,) * (3 - dims)]
    with pytest.raises(ValueError, match=f"w must be 3-D .*got shape {tuple(w.shape)}".replace("(", r"\(").replace(")", r"\)")):
        rm.moe_matmul(x, w, routing)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cpu_tensors_without_the_interpreter_say_what_to_do() -> None:
    script = textwrap.dedent("""
        import torch, resilient_moe as rm
        x, w = torch.randn(4, 32, dtype=torch.float16), torch.randn(2, 32, 32, dtype=torch.float16)
        rm.moe_matmul(x, w, rm.route(torch.randn(4, 2), 1))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=_subprocess_env(), capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: x is on the CPU") and "TRITON_INTERPRET=1" in last and "GPU" in last, last


@pytest.mark.skipif(not INTERPRETING, reason="the Triton interpreter's bf16")
def test_bf16_in_the_interpreter_warns_that_results_are_wrong() -> None:
    x, w, routing = problem()
    with pytest.warns(RuntimeWarning, match="bf16.*interpreter"):
        rm.moe_matmul(x.bfloat16(), w.bfloat16(), routing)


# 8. Threads in the interpreter: its global state is the library's to guard.


def test_eight_threads_at_once_all_get_the_right_result() -> None:
    x, w, routing = problem()
    expected = rm.moe_matmul_reference(x, w, routing)
    rm.moe_matmul(x, w, routing)  # the winner is cached: the threads race in the launches, not the ladder
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: rm.moe_matmul(x, w, routing), range(8)))
    for result in results:
        torch.testing.assert_close(result, expected, atol=2e-2, rtol=2e-2)


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
        with capture() as logs:
            entries = TilingCache(path).entries()
        assert logs == [] and len(entries) >= recorded
        recorded = len(entries)
    assert recorded > 10
    old = time.time() - 120
    for leftover in _temporaries(path):
        os.utime(leftover, (old, old))
    TilingCache(path).record(KEY, CONFIG, [])
    assert _temporaries(path) == []


# Property tests: arbitrary bytes and structured input reach only the documented outcomes.


@FUZZ
@given(content=st.binary(max_size=300))
def test_cache_reader_over_arbitrary_bytes(tmp_path: Path, content: bytes) -> None:
    _read_back(tmp_path / "c.json", content)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TILE_FIELDS = ["block_m", "block_n", "block_k", "group_m", "num_warps", "num_stages", "is_persistent"]
TILE_VALUES = st.integers(-2, 2**21) | st.sampled_from([1, 16, 64, 1024, 2048]) | JSON
ENTRY = st.fixed_dictionaries(
    {}, optional={"config": st.just(REFERENCE) | st.dictionaries(st.sampled_from(TILE_FIELDS), TILE_VALUES) | JSON,
                  "attempts": JSON, "source": JSON}
) | JSON


@FUZZ
@given(entry=ENTRY)
def test_cache_reader_over_arbitrary_entries(tmp_path: Path, entry: object) -> None:
    """A file in our format whose entry is anything JSON holds: a winner, or the entry ignored."""
    content = json.dumps({"format": FORMAT, "version": 1, "entries": {key_text(KEY): entry}}).encode()
    _read_back(tmp_path / "c.json", content)


def _read_back(path: Path, content: bytes) -> None:
    """Only the documented outcomes: a winner or none, the file set aside with an event; then
    ``cache show`` lists it, and a write after it is read back."""
    path.write_bytes(content)
    reader = TilingCache(path)
    with capture() as logs:
        found = reader.lookup(KEY)
    assert found is None or found == REFERENCE or isinstance(found, TileConfig)
    assert {e["event"] for e in logs} <= {"cache.corrupt", "tiling.cache_hit"}
    if any(e["event"] == "cache.corrupt" and e["action"] == "renamed" for e in logs):
        assert not path.exists()
    with mock.patch.object(cache, "default_cache", lambda: reader), contextlib.redirect_stdout(io.StringIO()) as shown:
        assert cli.main(["cache", "show"]) == 0
    assert f"{len(reader.entries())} winner(s)" in shown.getvalue()
    reader.record(("other",), CONFIG, [])
    assert TilingCache(path).lookup(("other",)) == CONFIG


@FUZZ
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_policy_loader_over_arbitrary_bytes(tmp_path: Path, content: bytes) -> None:
    _load(tmp_path / "p.yaml", content)


LADDER_FIELDS = ["order", "min_block_n", "min_block_m", "min_block_k", "min_num_stages", "min_num_warps", "factor",
                 "max_attempts", "skip_predicted", "trim_block_m", "compare", "compare_forms"]
WORDS = st.sampled_from(["block_n", "block_m", "block_k", "num_stages", "num_warps", "shared memory", "threads",
                         "raise", "reference", "never", "always", 1, 2, 8, 16, 1024, 2048, True])
VALUES = st.recursive(WORDS | JSON, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
TILE = st.dictionaries(st.sampled_from(TILE_FIELDS) | st.text(max_size=6), TILE_VALUES, max_size=4)
POLICY = st.fixed_dictionaries(
    {},
    optional={
        "version": st.just(1) | VALUES,
        "ladder": st.dictionaries(st.sampled_from(LADDER_FIELDS) | st.text(max_size=6), VALUES, max_size=4) | VALUES,
        "on_exhausted": VALUES,
        "triggers": st.dictionaries(st.sampled_from(["shared memory", "threads", "tensor memory"]) | st.text(max_size=6),
                                    st.lists(WORDS, max_size=4) | VALUES, max_size=3),
        "arch": st.dictionaries(st.sampled_from([*CHIPS, "interpreter"]) | st.text(max_size=6),
                                st.fixed_dictionaries({}, optional={"default": TILE, "pin": TILE}) | VALUES, max_size=2),
        "extra": VALUES,
    },
)


@FUZZ
@given(data=POLICY)
def test_policy_loader_over_structured_yaml(tmp_path: Path, data: dict) -> None:
    policy = _load(tmp_path / "p.yaml", yaml.safe_dump(data).encode())
    if policy is not None:  # what validation lets through makes tiles that compile
        for section in policy.arch.values():
            CONFIG.replace(**{**section.default.values(), **section.pin.values()})


def _load(path: Path, content: bytes) -> Policy | None:
    """A policy, or a PolicyError naming the file in a short message: nothing else."""
    path.write_bytes(content)
    try:
        return load_policy(path)
    except PolicyError as err:
        assert str(path) in str(err) and len(str(err)) < 4000
        return None
