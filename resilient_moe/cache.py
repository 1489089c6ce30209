"""Where winners are stored: an in-process map for the hot path, a JSON file for the next process.

A hit costs one dict lookup. The file is read on a miss (when it changed since the last read) and
written by merging under an exclusive lock, then an atomic rename, so several server processes can
share one cache directory. A file that cannot be parsed, or that another tool wrote, is set aside
(renamed, never deleted) with a warning event and rebuilt: a bad cache never takes a server down.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import events
from .config import TileConfig

CACHE_DIR_ENV = "RESILIENT_MOE_CACHE_DIR"
FILE_NAME = "tiling-v1.json"
FORMAT = "resilient_moe.tiling"
VERSION = 1

Key = tuple[Any, ...]
"""A cache key: a flat tuple of strs and ints. Its text form ('|'-joined) keys the file."""

REFERENCE = "reference"
"""Recorded instead of a config when every rung failed and the policy falls back to the torch reference."""

Winner = TileConfig | str

MAX_DEPTH = 8
"""Levels of nesting an entry may have: ours have 4 (entry, attempts, attempt, config); a file nested
deeper is not ours, and Python's JSON writer, which recurses, might not write it back."""

STALE_TEMPORARY_S = 60.0
"""Age after which a temporary file next to the cache is a killed writer's leftover: a writer holds the
lock while its temporary exists, and writes it within milliseconds."""

def default_dir() -> Path:
    """RESILIENT_MOE_CACHE_DIR, else $XDG_CACHE_HOME/resilient_moe, else ~/.cache/resilient_moe."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resilient_moe"


def row_bucket(rows: int) -> int:
    """Shape class of a row count: the next power of two (winners are shared within a class)."""
    return 1 << (rows - 1).bit_length()


def key_text(key: Key) -> str:
    return "|".join(str(part) for part in key)


def _winner_from(entry: Any) -> Winner:
    if not isinstance(entry, dict) or "config" not in entry:
        raise ValueError(f"entry must be a mapping with 'config', got {entry!r}")
    config = entry["config"]
    if config == REFERENCE:
        return REFERENCE
    if not isinstance(config, dict):
        raise ValueError(f"config must be a mapping or {REFERENCE!r}, got {config!r}")
    return TileConfig(**config)


class TilingCache:
    """Winners per key, in memory and (unless ``path`` is None) in one JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.memory: dict[Key, Winner] = {}
        self.resolutions: dict[Key, Any] = {}  # dispatch.Resolution per key: how this process settled it
        self._listeners: list[Callable[[], None]] = []
        self._forgotten: set[str] = set()  # key texts whose file entry is stale
        self._file: dict[str, dict[str, Any]] = {}
        self._file_stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def lookup(self, key: Key) -> Winner | None:
        """The winner for ``key``: memory first, then the file (a miss costs one stat of the file)."""
        found = self.memory.get(key)
        if found is not None or self.path is None:
            return found
        text = key_text(key)
        with self._lock:
            self._refresh()
            entry = None if text in self._forgotten else self._file.get(text)
        if entry is None:
            return None
        try:
            winner = _winner_from(entry)
        except (TypeError, ValueError) as err:
            events.cache_corrupt(path=str(self.path), key=key_text(key), error=str(err), action="entry ignored")
            return None
        self.memory[key] = winner
        events.cache_hit(key=key_text(key), config=_show(winner), source=str(self.path))
        return winner

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a winner changes or is forgotten: what a backend built from winners
        (the builtin's bound launches) is dropped with them."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def record(self, key: Key, winner: Winner, attempts: list[dict[str, Any]], source: str = "runtime") -> str | None:
        """Remember a winner in memory and persist it; a failed write is an event and the returned
        error text, never an exception (the in-memory winner still serves)."""
        self.memory[key] = winner
        self._changed()
        if self.path is None:
            return None
        entry = {"config": _show(winner), "attempts": attempts, "source": source, "recorded": time.time()}
        try:
            self.update({key_text(key): entry})
        except OSError as err:
            events.cache_write_failed(path=str(self.path), key=key_text(key), error=str(err))
            return str(err)
        return None

    def forget(self, key: Key) -> None:
        """Drop one winner from memory (a stale one: it no longer fits); the file's entry is replaced
        when the new winner is recorded, and ignored until then."""
        self.memory.pop(key, None)
        self._forgotten.add(key_text(key))
        self._changed()

    def update(self, entries: dict[str, dict[str, Any]]) -> None:
        """Merge entries into the file under an exclusive lock, then replace it atomically."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, _locked(self.path):
            self._remove_stale_temporaries()
            merged = {**self._read(), **entries}
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump({"format": FORMAT, "version": VERSION, "entries": merged}, out, indent=1, sort_keys=True)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._file, self._file_stamp = merged, _stamp(self.path)
            self._forgotten.difference_update(entries)

    def entries(self) -> dict[str, dict[str, Any]]:
        """The persisted entries, by key text (for ``resilient-moe cache show``)."""
        with self._lock:
            self._refresh()
            return dict(self._file)

    def clear(self) -> bool:
        """Forget every winner, in memory and on disk; True if a file was removed."""
        with self._lock:
            self.memory.clear()
            self.resolutions.clear()
            self._forgotten.clear()
            self._changed()
            self._file, self._file_stamp = {}, None
            if self.path is None or not self.path.exists():
                return False
            self.path.unlink()
            return True

    def _remove_stale_temporaries(self) -> None:
        """Delete what writers killed mid-write left (``tempfile`` names: the file's name, then ``.tmp``)."""
        assert self.path is not None
        cutoff = time.time() - STALE_TEMPORARY_S
        for leftover in self.path.parent.glob(f"{glob.escape(self.path.name)}*.tmp"):
            with contextlib.suppress(OSError):  # another writer may have removed it first
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    def _refresh(self) -> None:
        stamp = _stamp(self.path)
        if stamp != self._file_stamp:
            self._file, self._file_stamp = self._read(), stamp

    def _read(self) -> dict[str, dict[str, Any]]:
        """The file's entries; a file that is not ours is renamed aside and counts as empty."""
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:
            events.cache_corrupt(path=str(self.path), error=str(err), action="ignored")
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError
            if not (isinstance(data, dict) and data.get("format") == FORMAT and data.get("version") == VERSION):
                raise ValueError(f"not a {FORMAT} v{VERSION} file")
            entries = data.get("entries")
            if not isinstance(entries, dict):
                raise ValueError("'entries' must be a mapping")
            if _deeper_than(entries, MAX_DEPTH):
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            return entries
        except (ValueError, RecursionError) as err:  # RecursionError: JSON nested past Python's stack
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}-{os.getpid()}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            events.cache_corrupt(path=str(self.path), error=str(err), action="renamed", moved_to=str(aside))
            return {}


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether lists and mappings nest in ``data`` more than ``limit`` levels (walked without recursion)."""
    level: list[Any] = [data]
    for _ in range(limit + 1):
        level = [
            child for item in level if isinstance(item, (dict, list))
            for child in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return False
    return True


def _show(winner: Winner) -> dict[str, int] | str:
    return winner if isinstance(winner, str) else winner.as_dict()


def _stamp(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat() if path is not None else None
    except OSError:
        return None
    return None if st is None else (st.st_mtime_ns, st.st_size)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_cache() -> TilingCache:
    """The process's cache, in ``default_dir()`` (read once; ``settings.reset()`` forgets it)."""
    from . import settings

    return settings.cache()
