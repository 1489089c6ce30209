"""Which tile each MoE GEMM gets on a chip you do not have: the engine of ``resilient-moe preflight``
and ``explain`` (their commands are in cli.py, their tables in render.py).

Every GEMM call goes through the run-time steps on meta tensors (shapes only, nothing allocated): the
key is ``builtin.cache_key``, the call ``builtin.plan``, the choice ``dispatch.resolve`` with
the policy. Only the attempt differs: it compiles for the chip and checks its limit (``virtual.fits``)
instead of launching. So the chosen tiles, and the cache file ``--write-cache`` writes, are what a
server's dispatcher would arrive at, by construction rather than by a second implementation.

Compiles are the slow part (0.2 to 4 s each): they run first, in parallel worker processes, and the
sequential resolve afterwards finds them memoized. Kernel modules are imported inside functions: the
CLI builds its parser before it decides whether Triton interprets.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from .cache import TilingCache, key_text
from .config import TileConfig
from .models import Gemm
from .policy import Policy
from .targets import Chip

if TYPE_CHECKING:
    import torch

    from .backends.builtin.launch import KernelLaunch, Operands
    from .dispatch import Call
    from .virtual import Compiled, CompileJob


@dataclass(frozen=True)
class Case:
    """One GEMM call at one token count, on meta tensors: what the dispatcher sees at run time."""

    gemm: Gemm
    tokens: int
    chip: Chip
    ops: Operands
    call: Call
    policy: Policy

    @property
    def start(self) -> TileConfig:
        return self.candidates[0]

    @functools.cached_property
    def candidates(self) -> list[TileConfig]:
        """The start and the shared-memory ladder below it, in the order the dispatcher tries them."""
        from .dispatch import candidates

        return candidates(self.call, self.policy)

    def launch(self, config: TileConfig) -> KernelLaunch:
        from .backends.builtin.launch import build

        return build(self.ops, config)

    def job(self, config: TileConfig) -> CompileJob:
        from . import virtual

        launch = self.launch(config)
        return virtual.job_for(launch.kernel, launch.args, launch.constexprs, self.chip.name)

    def predicted(self, config: TileConfig) -> bool:
        """Whether the dispatcher steps over this tile without compiling it (its lower bound is over the limit)."""
        from .dispatch import predicted_shortage

        return predicted_shortage(self.call, config, self.policy) is not None


def make_case(gemm: Gemm, tokens: int, target: Chip, dtype: torch.dtype, policy: Policy) -> Case:
    """Meta operands for ``tokens`` tokens, routed to every expert (no expert parallelism)."""
    import torch

    from .backends.builtin.launch import Operands
    from .backends.builtin.moe_matmul import cache_key, plan
    from .routing import route

    rows = tokens if gemm.mode == "gather" else tokens * gemm.top_k
    x = torch.empty(rows, gemm.k, dtype=dtype, device="meta")
    w = torch.empty(gemm.experts, gemm.k, gemm.n, dtype=dtype, device="meta")
    bias = torch.empty(gemm.experts, gemm.n, dtype=dtype, device="meta") if gemm.bias else None
    routing = route(torch.empty(tokens, gemm.experts, device="meta"), gemm.top_k)
    ops = Operands.checked(x, w, bias, routing, gemm.mode)
    call = dataclasses.replace(plan(ops, target.name, cache_key(ops, target.name, policy)), source="preflight")
    return Case(gemm, tokens, target, ops, call, policy)


@dataclass(frozen=True)
class Row:
    """Preflight's answer for one case. ``chosen`` is None when no rung fits (the call raises, or runs
    the torch reference if the policy says so); ``cached`` when the cache file already held the key.
    ``attempts`` counts the tiles the dispatcher tries, ``compiled`` those of them it compiles."""

    gemm: str
    mode: str
    tokens: int
    default: TileConfig
    default_bytes: int
    default_fits: bool
    chosen: TileConfig | None
    chosen_bytes: int | None
    attempts: int
    compiled: int
    cached: bool
    key: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def settle(case: Case, cache: TilingCache) -> Row:
    """Resolve like a server's first call, with an attempt that compiles for the chip and never runs.

    The events of this resolve are simulations, so they are muted: logs keep counting only real
    downgrades. A winner that could not be written is an error here, since writing it is the point."""
    from . import events, virtual
    from .dispatch import LadderExhaustedError, resolve

    compiled: list[TileConfig] = []

    def attempt(config: TileConfig) -> TileConfig:
        compiled.append(config)
        launch = case.launch(config)
        virtual.fits(launch.kernel, launch.args, launch.constexprs, case.chip.name)
        return config

    key = case.call.key
    with events.muted():
        cached = cache.lookup(key) is not None
        try:
            chosen, resolution = resolve(key, attempt, lambda: case.call, case.policy, cache, reference=lambda: None)
        except LadderExhaustedError as err:
            chosen, attempts = None, len(err.attempts)
        else:
            attempts = len(resolution.attempts)
            if resolution.write_error is not None:
                raise OSError(f"cannot write {cache.path}: {resolution.write_error}")
    default = virtual.measure(case.job(case.start))
    return Row(
        gemm=case.gemm.name,
        mode=case.gemm.mode,
        tokens=case.tokens,
        default=case.start,
        default_bytes=default.shared,
        default_fits=default.error is None,
        chosen=chosen,
        chosen_bytes=None if chosen is None else virtual.measure(case.job(chosen)).shared,
        attempts=attempts,
        compiled=len(compiled),
        cached=cached,
        key=key_text(key),
    )


class Compiler:
    """Compiles jobs in parallel worker processes, drawing a one-line bar on ``stream`` (None: silent)."""

    def __init__(self, stream: TextIO | None, label: str, processes: int) -> None:
        self.stream, self.label, self.processes = stream, label, processes
        self.done = self.total = 0

    def compile(self, jobs: Iterable[CompileJob]) -> dict[CompileJob, Compiled | BaseException]:
        from . import virtual

        todo = list(dict.fromkeys(jobs))
        self.total += len(todo)
        results: dict[CompileJob, Compiled | BaseException] = {}
        for job, result in virtual.compile_many(todo, self.processes):
            results[job] = result
            self.done += 1
            self._draw()
        return results

    def _draw(self) -> None:
        if self.stream is not None:
            filled = 30 * self.done // self.total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.total:
            self.stream.write("\n")


def warm(cases: Sequence[Case], policy: Policy, compiler: Compiler) -> None:
    """Compile every case's candidates in ladder order, in parallel, until one fits; not those the
    dispatcher steps over uncompiled.

    Each round gives every case still without a fitting tile its next ceil(processes / cases)
    candidates: the workers stay busy and little is compiled past the first fit. Only a warm-up:
    ``settle`` decides, and compiles anything this did not foresee (another resource's ladder)."""
    left = {i: [t for t in c.candidates if not c.predicted(t)] for i, c in enumerate(cases)}
    while left:
        width = -(-compiler.processes // len(left))
        batch = {i: [cases[i].job(config) for config in ladder[:width]] for i, ladder in left.items()}
        results = compiler.compile(job for jobs in batch.values() for job in jobs)
        left = {
            i: left[i][width:]
            for i, jobs in batch.items()
            if left[i][width:] and not any(_settled(results[job]) for job in jobs)
        }


def _settled(result: Compiled | BaseException) -> bool:
    """The ladder stops here: this config fits, or fails with an error resolve will raise."""
    return isinstance(result, BaseException) or result.error is None


def run(
    gemms: Sequence[Gemm],
    tokens: Sequence[int],
    target: Chip,
    dtype: torch.dtype,
    policy: Policy,
    cache: TilingCache,
    compiler: Compiler,
) -> list[Row]:
    """Each GEMM at each token count, as the dispatcher would resolve it on ``target``; winners go to ``cache``."""
    cases = [make_case(g, t, target, dtype, policy) for g in gemms for t in tokens]
    warm(cases, policy, compiler)
    compiler.close()
    return [settle(c, cache) for c in cases]


@dataclass(frozen=True)
class Step:
    """One config of a ladder with its measured bytes; ``picked`` marks the dispatcher's choice,
    ``predicted`` a tile it steps over without compiling."""

    config: TileConfig
    shared: int
    fits: bool
    picked: bool
    predicted: bool


def explain(gemm: Gemm, tokens: int, target: Chip, dtype: torch.dtype, policy: Policy, compiler: Compiler) -> list[Step]:
    """The whole shared-memory ladder of one call, every config compiled, not stopping at the first fit."""
    from . import virtual

    case = make_case(gemm, tokens, target, dtype, policy)
    ladder = case.candidates
    compiler.compile(case.job(config) for config in ladder)
    compiler.close()
    picked = settle(case, TilingCache(None)).chosen
    measured = [virtual.measure(case.job(config)) for config in ladder]
    return [Step(c, m.shared, m.error is None, c == picked, case.predicted(c)) for c, m in zip(ladder, measured)]
