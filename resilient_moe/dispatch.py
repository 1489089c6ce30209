"""How a call finds a tile that fits: the cached winner, else try the default, catch OutOfResources,
step down, record; one protocol for every backend (``resolve``), returning a ``Resolution``.

The dispatcher knows nothing about any kernel: a backend hands it a key, an ``attempt(config)`` that
compiles and launches, and on a miss a ``Call``: its own default tile, and optionally a lower bound of
a tile's shared memory with the chip's limit (a rung certain not to fit is stepped over without a
compile) and a timer. Only ``triton.runtime.errors.OutOfResources`` is caught; every other error
reaches the caller unchanged.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from triton.runtime.errors import OutOfResources

from . import events
from .cache import REFERENCE, Key, TilingCache, key_text
from .config import TileConfig
from .ladder import rungs
from .policy import Ladder, Policy

T = TypeVar("T")


@dataclass(frozen=True)
class Attempt:
    """One config tried: ``resource`` and the byte counts are set when it did not fit. ``predicted``:
    not compiled, because the kernel's lower bound (then ``required``) is already over the limit."""

    config: TileConfig
    resource: str | None = None
    required: int | None = None
    limit: int | None = None
    predicted: bool = False

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.config.as_dict()}
        if self.resource is not None:
            out.update(resource=self.resource, required=self.required, limit=self.limit, predicted=self.predicted)
        return out

    def __str__(self) -> str:
        at_least = "at least " if self.predicted else ""
        return f"{self.config.as_dict()}: {self.resource} required {at_least}{self.required}, limit {self.limit}"


class LadderExhaustedError(RuntimeError):
    """Every config the policy allows was out of resources; ``attempts`` lists them with their bytes."""

    def __init__(self, kernel: str, arch: str, shape: dict[str, Any], attempts: tuple[Attempt, ...]) -> None:
        self.kernel, self.arch, self.shape, self.attempts = kernel, arch, shape, attempts
        tried = "\n".join(f"  {a}" for a in attempts)
        super().__init__(
            f"{kernel} on {arch}, shape {shape}: no config fits after {len(attempts)} attempts "
            f"(loosen the policy's ladder floors or max_attempts, or set on_exhausted: reference)\n{tried}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.kernel, self.arch, self.shape, self.attempts)


@dataclass(frozen=True)
class Call:
    """What the dispatcher needs to know about one kernel call on a miss (built only then)."""

    kernel: str
    key: Key
    arch: str
    shape: dict[str, Any]
    default: TileConfig  # the backend's own choice, before the policy's per-arch section
    fields: dict[str, Any] = field(default_factory=dict)  # extra context for events
    source: str = "runtime"  # recorded with the winner: "runtime", or "preflight" for a shipped cache
    shared_lower_bound: Callable[[TileConfig], int] | None = None  # bytes a tile needs at least
    shared_limit: int | None = None  # the chip's bytes per block; None: no rung is skipped uncompiled
    rows_per_expert: int | None = None  # the mean, rounded up: lets the ladder cut a block_m that only pads
    timer: Callable[[TileConfig], float] | None = None  # ms of a launch of a tile; None where timing means nothing
    forms: Callable[[TileConfig], list[TileConfig]] | None = None  # the same tile run by another kernel form
    tied: frozenset[str] = frozenset()  # fields the call's format ties (e.g. num_warps to a scale layout): never moved
    floors: dict[str, int] = field(default_factory=dict)  # the format's least legal value of a field, e.g. block_k 256
    ceilings: dict[str, int] = field(default_factory=dict)  # its largest, e.g. block_k 128 under 128x128 quant blocks

    def ladder(self, policy: Policy) -> Ladder:
        """The policy's ladder with this call's floors raised to what its format allows."""
        raised = {f"min_{name}": max(value, getattr(policy.ladder, f"min_{name}")) for name, value in self.floors.items()}
        return policy.ladder.model_copy(update=raised) if raised else policy.ladder


@dataclass(frozen=True)
class Resolution:
    """How the dispatcher settled one call's key: the record backends, preflight and benchmarks read.

    ``origin`` is ``"cache"`` when the winner was known (in memory or in the file) and ran, ``"ladder"``
    when this call climbed. ``attempts`` are the configs tried on the way (none on a hit), ``compared``
    the tiles timed against each other, ``stale`` the cached winner that no longer fitted (it was
    dropped and the ladder climbed from the default), ``write_error`` why the winner was not persisted."""

    key: str
    winner: TileConfig | str
    origin: Literal["cache", "ladder"]
    attempts: tuple[Attempt, ...] = ()
    compared: tuple[dict[str, Any], ...] = ()
    stale: Attempt | None = None
    write_error: str | None = None


def starting_config(default: TileConfig, policy: Policy, arch: str) -> tuple[TileConfig, frozenset[str]]:
    """The first config tried on ``arch`` and the fields the ladder may not move there."""
    section = policy.for_arch(arch)
    pinned = section.pin.values()
    return default.replace(**{**section.default.values(), **pinned}), frozenset(pinned)


def _start(call: Call, policy: Policy) -> tuple[TileConfig, frozenset[str]]:
    """The call's first config and every field the ladder may not move: the policy's pins, the format's
    ties (a tied field keeps the call's own value, whatever the policy's arch default says) and
    ceilings (a policy's default above one comes down to it; rungs only shrink from there)."""
    start, pinned = starting_config(call.default, policy, call.arch)
    if call.tied:
        start = start.replace(**{name: getattr(call.default, name) for name in call.tied})
    over = {name: cap for name, cap in call.ceilings.items() if getattr(start, name) > cap}
    if over:
        start = start.replace(**over)
    return start, pinned | call.tied


def candidates(call: Call, policy: Policy) -> list[TileConfig]:
    """The start and the shared-memory ladder below it, in the order a climb tries them (preflight
    compiles them ahead, in parallel)."""
    start, pinned = _start(call, policy)
    moves = policy.moves_for("shared memory")
    return [start, *rungs(start, call.ladder(policy), moves, pinned, call.rows_per_expert)]


@dataclass(frozen=True)
class Fit:
    """Where a climb would land, found by compiling alone (preflight): nothing runs."""

    start_bytes: int  # what the start (the default, after the policy) needs
    landed: TileConfig | None  # the first candidate that fits; None: none does
    landed_bytes: int | None
    compiled: int  # candidates compiled (those the lower bound rules out are not)


def first_fit(call: Call, policy: Policy, bytes_of: Callable[[TileConfig], int]) -> Fit:
    """Compile the candidates (``bytes_of``: a tile's bytes on the chip) in the order a climb tries
    them, skipping those the lower bound puts over ``call.shared_limit``, to the first that fits."""
    limit = call.shared_limit if call.shared_limit is not None else math.inf
    compiled, start_bytes = 0, -1
    for tile in candidates(call, policy):
        if compiled and call.shared_lower_bound is not None and call.shared_lower_bound(tile) > limit:
            continue  # cannot fit: not compiled
        needed = bytes_of(tile)
        compiled += 1
        if compiled == 1:
            start_bytes = needed
        if needed <= limit:
            return Fit(start_bytes, tile, needed, compiled)
    return Fit(start_bytes, None, None, compiled)


_locks: dict[Key, threading.Lock] = {}
_locks_guard = threading.Lock()


def forget_locks() -> None:
    """For ``settings.reset()``: drop the per-key locks (none may be held)."""
    with _locks_guard:
        _locks.clear()


def _lock_for(key: Key) -> threading.Lock:
    """One lock per key: threads that miss on the same key do not compile the same failing rungs twice
    (the second finds the winner), and a slow compile for one shape blocks no other shape."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def resolve(
    key: Key,
    attempt: Callable[[TileConfig], T],
    describe: Callable[[], Call],
    policy: Policy,
    cache: TilingCache,
    reference: Callable[[], T] | None = None,
) -> tuple[T, Resolution]:
    """The whole protocol for one call: the cached winner runs; a miss, or a winner that no longer fits
    (``cache.stale``: a file from another policy, machine or Triton), climbs from the default, records
    the winner and returns how. ``describe`` builds the call's ``Call``, on a miss only (it may cost:
    the triton_kernels adapter learns upstream's default by running its host code)."""
    stale = None
    winner = cache.lookup(key)
    if winner is not None:
        ran = _run_cached(key, winner, attempt, reference, cache)
        if isinstance(ran, tuple):
            return ran
        stale = ran
    with _lock_for(key):
        winner = cache.lookup(key)
        if winner is not None and (stale is None or winner != stale.config):  # another thread climbed meanwhile
            ran = _run_cached(key, winner, attempt, reference, cache)
            if isinstance(ran, tuple):
                return ran
            stale = ran
        return _climb(describe(), attempt, policy, cache, reference, stale)


def _run_cached(
    key: Key, winner: TileConfig | str, attempt: Callable[[TileConfig], T], reference: Callable[[], T] | None,
    cache: TilingCache,
) -> tuple[T, Resolution] | Attempt | None:
    """Run a known winner; a winner that no longer fits is forgotten and returned as the failed attempt
    it was (None: nothing runnable, e.g. a reference fallback the backend cannot run)."""
    hit = Resolution(key_text(key), winner, "cache")
    if isinstance(winner, str):
        return None if reference is None else (reference(), hit)
    try:
        result = attempt(winner)
    except OutOfResources as err:
        failed = Attempt(winner, err.name, err.required, err.limit)
    else:
        cache.resolutions.setdefault(key, hit)  # a climb's record, where this process climbed, stays
        return result, hit
    cache.forget(key)
    events.cache_stale(key=key_text(key), config=winner.as_dict(), resource=failed.resource,
                       required=failed.required, limit=failed.limit)
    return failed


def _climb(
    call: Call,
    attempt: Callable[[TileConfig], T],
    policy: Policy,
    cache: TilingCache,
    reference: Callable[[], T] | None,
    stale: Attempt | None = None,
) -> tuple[T, Resolution]:
    config, pinned = _start(call, policy)
    start = config
    ladder = call.ladder(policy)
    tried: list[Attempt] = []
    pending: list[TileConfig] = []
    resource = None
    context = {"arch": call.arch, "kernel": call.kernel, "shape": call.shape, **call.fields}
    while True:
        failed = stale if stale is not None and config == stale.config else predicted_shortage(call, config, policy)
        if failed is None:
            try:
                result = attempt(config)
            except OutOfResources as err:
                failed = Attempt(config, err.name, err.required, err.limit)
            else:
                tried.append(Attempt(config))
                below = [*pending[: ladder.compare], *_second_move_first(call, start, config, ladder, policy, pinned, resource)]
                config, compared = _fastest(call, config, below, policy, pinned, recovered=len(tried) > 1)
                written = cache.record(call.key, config, [a.as_dict() for a in tried], call.source)
                timings = {"compared": compared} if compared else {}
                events.selected(
                    config=config.as_dict(), attempts=len(tried), key=key_text(call.key), **timings, **context
                )
                resolution = Resolution(key_text(call.key), config, "ladder", tuple(tried), tuple(compared), stale, written)
                cache.resolutions[call.key] = resolution
                return result, resolution
        tried.append(failed)
        if failed.resource != resource:  # a new kind of shortage: its own moves, from where we are
            resource = failed.resource
            pending = rungs(config, ladder, policy.moves_for(failed.resource), pinned, call.rows_per_expert)
        if not pending or len(tried) >= ladder.max_attempts:
            return _exhausted(call, tuple(tried), policy, cache, reference, context, stale)
        following = pending.pop(0)
        events.downgrade(
            **{"from": config.as_dict(), "to": following.as_dict()},
            resource=failed.resource,
            required=failed.required,
            limit=failed.limit,
            attempt=len(tried),
            predicted=failed.predicted,
            **context,
        )
        config = following


ROUNDS = 3
"""Timing rounds of ``_fastest``: the tiles are timed in alternation and each keeps its best round,
since a GPU's clocks ramp and drift by more than the differences compared (one tile, timed right after
a compile, measured 16% slower than the next)."""


def _second_move_first(
    call: Call, start: TileConfig, landed: TileConfig, ladder: Ladder, policy: Policy, pinned: frozenset[str],
    resource: str | None,
) -> list[TileConfig]:
    """Where the ladder lands begun with one step of its second move (``ladder.compare_second_move``, with
    ``ladder.compare`` at least 1), when a timer can compare it with the landing. The shipped order
    keeps the MMA tile and gives up stages; this keeps more stages on a tile half as wide: on SGLang's
    fp8 fused_moe under a 101376-byte cap, block_n 128 at 4 stages beat block_n 256 at 2
    (docs/design.md, "Ladder")."""
    if call.timer is None or not (ladder.compare and ladder.compare_second_move and resource):
        return []
    found = _second_landing(call, start, landed, ladder, policy, pinned, resource)
    return [] if found is None else [found]


def second_move_landing(call: Call, policy: Policy, landed: TileConfig, resource: str = "shared memory") -> TileConfig | None:
    """What a recovery on the chip would time against ``landed`` (``ladder.compare_second_move``), for
    preflight to show: the ladder begun with one step of its second move, first rung the lower bound
    says fits; None where the landing kept the first move's field or nothing is bounded."""
    start, pinned = _start(call, policy)
    return _second_landing(call, start, landed, call.ladder(policy), policy, pinned, resource)


def _second_landing(
    call: Call, start: TileConfig, landed: TileConfig, ladder: Ladder, policy: Policy, pinned: frozenset[str],
    resource: str,
) -> TileConfig | None:
    """The first rung the kernel's lower bound says fits, of the ladder begun with one step of its
    second move, when the landing gave up some of the first move's field (none without a bound)."""
    if call.shared_lower_bound is None or call.shared_limit is None:
        return None
    moves = policy.moves_for(resource)
    if len(moves) < 2 or getattr(landed, moves[0]) == getattr(start, moves[0]):
        return None
    second = moves[1]
    first_steps = rungs(start, ladder, (second, *(m for m in moves if m != second)), pinned, call.rows_per_expert)
    stepped = next((r for r in first_steps if getattr(r, second) != getattr(start, second)), None)  # after any trim
    if stepped is None:
        return None
    return next((rung for rung in [stepped, *rungs(stepped, ladder, moves, pinned)]
                 if call.shared_lower_bound(rung) <= call.shared_limit), None)


def _fastest(
    call: Call, landed: TileConfig, below: list[TileConfig], policy: Policy, pinned: frozenset[str], recovered: bool
) -> tuple[TileConfig, list[dict[str, Any]]]:
    """With a timer: the fastest of the tile that fits, the tiles ``below`` it that fit (after a recovery:
    the next ``ladder.compare`` rungs and the ladder's landing begun with one step of its second move),
    and its other kernel forms (``ladder.compare_forms``). The first tile that fits is not always the
    fastest: on an H100 the DeepSeek-V3 prefill GEMM runs 10% faster at one stage fewer, and on uniform
    routing 10 to 14% faster one tile per program than persistent. Without a timer, or with nothing to
    time against, the tile that fits."""
    when = policy.ladder.compare_forms
    forms = call.forms(landed) if call.forms is not None and (when == "always" or when == "recovery" and recovered) else []
    candidates = [*(form for form in forms if all(getattr(form, name) == getattr(landed, name) for name in pinned))]
    candidates += [c for c in below if c != landed and c not in candidates]
    timed = [landed, *(c for c in candidates if predicted_shortage(call, c, policy) is None)]
    if call.timer is None or len(timed) == 1:
        return landed, []
    best: dict[TileConfig, float] = {}
    for _ in range(ROUNDS):
        for config in list(timed):
            try:
                ms = call.timer(config)
            except OutOfResources:  # a candidate that does not fit after all (its first compile says so)
                timed.remove(config)
                continue
            best[config] = min(ms, best.get(config, ms))
    fastest = min(best, key=best.__getitem__)
    return fastest, [{"config": config.as_dict(), "ms": round(ms, 4)} for config, ms in best.items()]


def predicted_shortage(call: Call, config: TileConfig, policy: Policy) -> Attempt | None:
    """A shortage known without compiling: the kernel's lower bound is over the limit, so the compile
    could only fail. Counted as an attempt like a real one, so the ladder lands on the same tile."""
    if call.shared_lower_bound is None or call.shared_limit is None or not policy.ladder.skip_predicted:
        return None
    required = call.shared_lower_bound(config)
    if required <= call.shared_limit:
        return None
    return Attempt(config, "shared memory", required, call.shared_limit, predicted=True)


def _exhausted(
    call: Call,
    tried: tuple[Attempt, ...],
    policy: Policy,
    cache: TilingCache,
    reference: Callable[[], T] | None,
    context: dict[str, Any],
    stale: Attempt | None,
) -> tuple[T, Resolution]:
    fallback = policy.on_exhausted == "reference" and reference is not None
    events.exhausted(attempts=[a.as_dict() for a in tried], action="reference" if fallback else "raise", **context)
    if not fallback:
        raise LadderExhaustedError(call.kernel, call.arch, call.shape, tried)
    written = cache.record(call.key, REFERENCE, [a.as_dict() for a in tried], call.source)
    cache.resolutions[call.key] = resolution = Resolution(key_text(call.key), REFERENCE, "ladder", tried, (), stale, written)
    return reference(), resolution  # type: ignore[misc]
