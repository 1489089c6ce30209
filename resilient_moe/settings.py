"""Process-global state, in one place: the environment variables, when each is read, the singletons
they feed, and ``reset()`` (structlog's ``_config.py`` is the model).

| variable | read | feeds |
|---|---|---|
| ``RESILIENT_MOE_POLICY`` | once, at the first call without ``policy=`` | ``policy.environment_policy`` |
| ``RESILIENT_MOE_CACHE_DIR`` | once, when the process cache is made | ``cache()`` |
| ``RESILIENT_MOE_TARGET``, ``TRITON_INTERPRET`` | once, at the first call | ``targets.placement`` |
| ``RESILIENT_MOE_SHARED_MEMORY_CAP`` | once, at the first call on a GPU | ``targets.cap_shared_memory`` |
| ``RESILIENT_MOE_ENGINES`` | when an engine loads its plugins | ``backends.patching.enabled`` |
| ``RESILIENT_MOE_LOG_FORMAT`` | at every event (a rare path) | ``events`` |
| ``TRITON_HIP_USE_ASYNC_COPY`` (Triton's) | at every miss: it changes what compiles | cache keys on AMD, virtual compiles |

A server sets them before its first MoE call; a test changes them, then calls ``reset()``.
"""

from __future__ import annotations

from typing import Any

from .cache import FILE_NAME, TilingCache, default_dir


class BoundedStore(dict[Any, Any]):
    """What a backend builds from winners, per exact operand layout (the builtin's bound launches):
    emptied whenever a winner changes, and when full, since decode batch sizes are many."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def put(self, key: Any, value: Any | None) -> None:
        if value is None:
            return
        if len(self) >= self.capacity:
            self.clear()
        self[key] = value


LAUNCHES = BoundedStore(4096)
"""The builtin's bound launches: read on every cached call (one dict lookup), cleared in place."""

_cache: TilingCache | None = None


def cache() -> TilingCache:
    """The process's tiling cache, in ``cache.default_dir()`` (read once)."""
    global _cache
    if _cache is None:
        _cache = TilingCache(default_dir() / FILE_NAME)
        _cache.on_change(LAUNCHES.clear)
    return _cache


def reset() -> None:
    """Forget every process-global decision: the cache object (winners stay on disk), bound launches,
    the placement and the environment's policy (re-read from the environment at the next call). For
    tests, and for tools that change the environment mid-process. Virtual compiles stay memoized:
    their jobs name everything they depend on."""
    global _cache
    from . import dispatch, policy, targets

    _cache = None
    LAUNCHES.clear()
    targets.placement.cache_clear()
    policy.environment_policy.cache_clear()
    policy._policy_from.cache_clear()
    dispatch.forget_locks()
