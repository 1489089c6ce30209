"""``resilient-moe preflight`` and ``explain``: which tile each MoE GEMM gets on a chip you do not have.

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

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, get_args

from pydantic import ValidationError

from .cache import CACHE_DIR_ENV, FILE_NAME, TilingCache, key_text
from .config import TileConfig
from .models import PRESETS, Gemm, ShapesError, load_shapes
from .policy import Policy, PolicyError, active_policy, load_policy
from .preflight_diff import REPORT_FORMAT, ReportError, compare, load_report, render
from .targets import Chip, chip, describe_compiler

if TYPE_CHECKING:
    import torch

    from .backends.builtin.launch import KernelLaunch, Operands
    from .dispatch import Call
    from .virtual import Compiled, CompileJob

DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_TOKENS: tuple[int, ...] = (1, 64, 4096)


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

    The events of this resolve are simulations, so they are captured: logs keep counting only real
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
    with events.capture():
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


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Iterable[int] = ()) -> str:
    """Plain aligned text; columns in ``right`` are right-aligned (numbers)."""
    cells = [list(header), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    align = set(right)
    return "\n".join(
        "  ".join(c.rjust(w) if i in align else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in cells
    )


def _chosen(row: Row, policy: Policy) -> str:
    if row.chosen is not None:
        return str(row.chosen)
    return "none: torch reference" if policy.on_exhausted == "reference" else "none fits"


def _render_rows(rows: Sequence[Row], policy: Policy) -> str:
    header = (
        "gemm", "mode", "tokens", "default tile", "default bytes", "fits?", "chosen tile", "chosen bytes", "attempts",
        "compiled",
    )
    body = [
        (
            r.gemm, r.mode, r.tokens, str(r.default), r.default_bytes, "yes" if r.default_fits else "NO",
            _chosen(r, policy), "-" if r.chosen_bytes is None else r.chosen_bytes,
            *(("cached", "-") if r.cached else (r.attempts, r.compiled)),
        )
        for r in rows
    ]
    return table(header, body, right=(2, 4, 7, 8, 9))


def _policy(args: argparse.Namespace) -> Policy:
    """--policy, else what a server without one uses (RESILIENT_MOE_POLICY, else the shipped default)."""
    return load_policy(args.policy) if args.policy else active_policy()


def _compiler(args: argparse.Namespace) -> Compiler:
    """The bar only on a terminal: in CI logs, carriage returns are noise."""
    return Compiler(sys.stderr if sys.stderr.isatty() else None, f"compiling for {args.arch.name}", args.jobs)


def _describe_chip(target: Chip) -> str:
    return f"{target.name} ({target.examples}), limit {target.max_shared_mem} bytes of shared memory per block"


def _preflight_command(args: argparse.Namespace) -> int:
    import torch
    import triton

    try:
        gemms = load_shapes(args.shapes) if args.shapes else PRESETS[args.model].gemms()
        policy = _policy(args)
    except (ShapesError, PolicyError) as err:
        print(err, file=sys.stderr)
        return 2
    path = None if args.write_cache is None else Path(args.write_cache)
    if path is not None and path.name != FILE_NAME:
        print(
            f"--write-cache: servers read {CACHE_DIR_ENV}/{FILE_NAME}, so the file must be named {FILE_NAME}, "
            f"got {path.name!r} (e.g. --write-cache moe-cache/{FILE_NAME}, then {CACHE_DIR_ENV}=moe-cache)",
            file=sys.stderr,
        )
        return 2
    cache = TilingCache(path)
    try:
        rows = run(gemms, args.tokens, args.arch, getattr(torch, DTYPES[args.dtype]), policy, cache, _compiler(args))
    except OSError as err:
        print(f"resilient-moe preflight: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({
            "format": REPORT_FORMAT, "triton": triton.__version__, "compiler": describe_compiler(args.arch.name),
            "arch": args.arch.name, "limit": args.arch.max_shared_mem, "dtype": args.dtype,
            "model": args.model or args.shapes, "tokens": list(args.tokens), "policy": policy.fingerprint,
            "cache": None if path is None else str(path), "rows": [r.as_dict() for r in rows],
        }, indent=1))
    else:
        print(f"{args.model or args.shapes}, {args.dtype}, on {_describe_chip(args.arch)}; triton {describe_compiler(args.arch.name)}")
        print(_render_rows(rows, policy))
        crashed = sum(not r.default_fits for r in rows)
        print(f"\n{crashed} of {len(rows)} default tiles do not fit {args.arch.name}; "
              f"{sum(r.chosen is None for r in rows)} GEMMs have no fitting tile")
        if path is not None:
            print(f"{path}: {len(cache.entries())} winners; start the server with {CACHE_DIR_ENV}={path.parent.resolve()} "
                  f"(the same policy, dtype and Triton {version('triton')}: they are part of each key)")
    return 1 if any(r.chosen is None for r in rows) else 0


def _explain_command(args: argparse.Namespace) -> int:
    import torch

    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        print("--plot needs matplotlib, which is not installed: pip install matplotlib", file=sys.stderr)
        return 2
    try:
        gemm = Gemm(name="explain", mode=args.mode, experts=args.experts, top_k=args.top_k, k=args.k, n=args.n)
        policy = _policy(args)
    except ValidationError as err:
        print("resilient-moe explain: " + "; ".join(e["msg"] for e in err.errors()), file=sys.stderr)
        return 2
    except PolicyError as err:
        print(err, file=sys.stderr)
        return 2
    steps = explain(gemm, args.tokens, args.arch, getattr(torch, DTYPES[args.dtype]), policy, _compiler(args))
    limit = args.arch.max_shared_mem
    rows = args.tokens * gemm.top_k
    print(f"moe_matmul {gemm.mode}, {args.dtype}: {args.tokens} tokens x top-{gemm.top_k} = {rows} rows, "
          f"K {gemm.k}, N {gemm.n}, {gemm.experts} experts ({-(-rows // gemm.experts)} rows per expert)\n"
          f"on {_describe_chip(args.arch)}; triton {describe_compiler(args.arch.name)}")
    body = [
        (
            "default" if i == 0 else f"rung {i}", str(s.config), s.shared, f"{100 * s.shared / limit:.0f}%",
            "yes" if s.fits else "NO", _note(s),
        )
        for i, s in enumerate(steps)
    ]
    print(table(("step", "tile", "bytes", "of limit", "fits?", ""), body, right=(2, 3)))
    if args.plot is not None:
        _plot(steps, args.arch, args.plot)
        print(f"wrote {args.plot}")
    return 0 if any(s.picked for s in steps) else 1


def _diff_command(args: argparse.Namespace) -> int:
    try:
        a, b = load_report(args.a), load_report(args.b)
    except ReportError as err:
        print(f"resilient-moe preflight diff: {err}", file=sys.stderr)
        return 2
    if (a.arch, a.dtype) != (b.arch, b.dtype):
        print(f"note: the reports are for different chips or dtypes ({a.arch} {a.dtype}, {b.arch} {b.dtype})",
              file=sys.stderr)
    changes = compare(a, b)
    if args.json:
        print(json.dumps([{"gemm": c.gemm, "mode": c.mode, "tokens": c.tokens, "change": c.what(), "a": c.a, "b": c.b}
                          for c in changes if args.all or c.what()], indent=1))
    else:
        print(render(a, b, changes, every_row=args.all))
    return 1 if any(c.outcome_changes for c in changes) else 0


def diff_parser() -> argparse.ArgumentParser:
    """``resilient-moe preflight diff``: a parser of its own, since ``preflight`` requires --arch and a model."""
    parser = argparse.ArgumentParser(
        prog="resilient-moe preflight diff",
        description="Compare two `resilient-moe preflight --json` reports, e.g. the same model and chip under the "
        "Triton you run and the one you upgrade to: the GEMMs whose default tile stops (or starts) fitting, whose "
        "chosen tile changes, or that no tile fits, with the bytes on each side. Exit code 1 if a default's fit or "
        "a chosen tile changes, 0 if only bytes moved, 2 for a file that is not a report.",
    )
    parser.add_argument("a", metavar="A.json", help="the report of today's setup (e.g. triton 3.6)")
    parser.add_argument("b", metavar="B.json", help="the report of the setup to check (e.g. triton 3.9)")
    parser.add_argument("--all", action="store_true", help="list every GEMM call, not only those that differ")
    parser.add_argument("--json", action="store_true", help="print the differing rows as JSON")
    parser.set_defaults(func=_diff_command)
    return parser


def _note(step: Step) -> str:
    if step.picked:
        return "<- dispatcher picks"
    return "skipped uncompiled (lower bound over the limit)" if step.predicted else ""


def _plot(steps: Sequence[Step], target: Chip, path: str) -> None:
    """A bar per config (picked green, fitting blue, over the limit red) and the chip's limit as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(steps) + 2), 4.5))
    colors = ["tab:green" if s.picked else "tab:blue" if s.fits else "tab:red" for s in steps]
    ax.bar(range(len(steps)), [s.shared for s in steps], color=colors)
    ax.axhline(target.max_shared_mem, color="black", linestyle="--", label=f"{target.name} limit ({target.max_shared_mem} B)")
    ax.set_xticks(range(len(steps)), [str(s.config) for s in steps], rotation=45, ha="right")
    ax.set_ylabel("shared memory per block (bytes)")
    ax.set_title("default, then each rung of the ladder (green: the dispatcher's pick)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _chip_arg(text: str) -> Chip:
    try:
        return chip(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _tokens_arg(text: str) -> tuple[int, ...]:
    return tuple(dict.fromkeys(_positive(part) for part in text.split(",")))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", type=_chip_arg, required=True, metavar="CHIP",
                        help="target chip: gfx950 (MI355X), gfx942 (MI300X), sm_90 (H100), sm_100 (B200), ...")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16", help="activation and weight dtype (default bf16)")
    parser.add_argument("--policy", metavar="FILE",
                        help="fallback policy YAML (default: RESILIENT_MOE_POLICY, else the shipped policy); "
                        "the server must use the same one")
    parser.add_argument("--jobs", type=_positive, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="parallel compile processes (default min(4, CPUs))")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``preflight`` and ``explain``; each sets ``func(args) -> exit code``."""
    pre = subparsers.add_parser(
        "preflight",
        help="which tile each MoE GEMM of a model gets on a chip, and a cache file to ship",
        description="For every MoE GEMM of a model (up-projection: gather, N = 2 x intermediate, K = hidden; "
        "down-projection: scatter, K = intermediate, N = hidden) at each token count: the default tile and "
        "its bytes, whether it fits the chip, the tile the policy's ladder lands on and the attempts it takes. "
        "Compiles for the chip on this machine; no GPU needed. Exit code 1 if some GEMM has no fitting tile.",
        epilog="resilient-moe preflight diff A.json B.json compares two --json reports: run preflight under the "
        "Triton you have and the one you upgrade to, and see which tiles stop fitting before you deploy it.",
    )
    _common(pre)
    source = pre.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", choices=PRESETS, help="a built-in model preset")
    source.add_argument("--shapes", metavar="FILE",
                        help="YAML: a model (name, experts, top_k, hidden, intermediate, bias) or a list of GEMMs "
                        "(name, mode, experts, top_k, k, n, bias)")
    pre.add_argument("--tokens", type=_tokens_arg, default=DEFAULT_TOKENS, metavar="T,T,...",
                     help="token counts per batch (default 1,64,4096); a winner serves every count whose "
                     "tokens x top-k rounds up to the same power of two")
    pre.add_argument("--write-cache", metavar="FILE",
                     help=f"record the winners in FILE, which must be named {FILE_NAME}; point the server's "
                     f"{CACHE_DIR_ENV} at its folder (existing entries are kept)")
    pre.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    pre.set_defaults(func=_preflight_command)

    exp = subparsers.add_parser(
        "explain",
        help="one GEMM call's whole ladder, with the bytes of each tile against the chip's limit",
        description="Compile the default tile and every rung of the policy's shared-memory ladder for the chip "
        "(all of them, not stopping at the first fit), print the bytes of each against the limit and mark the "
        "one the dispatcher picks. Exit code 1 if none fits.",
    )
    _common(exp)
    exp.add_argument("--m", dest="tokens", type=_positive, required=True, metavar="TOKENS",
                     help="tokens in the batch (the GEMM has tokens x top-k rows)")
    exp.add_argument("--n", type=_positive, required=True, help="output features (up-projection: 2 x intermediate)")
    exp.add_argument("--k", type=_positive, required=True, help="input features (the reduction)")
    exp.add_argument("--experts", type=_positive, required=True, help="number of experts")
    exp.add_argument("--top-k", type=_positive, required=True, help="experts per token")
    exp.add_argument("--mode", choices=get_args(Gemm.model_fields["mode"].annotation), default="gather",
                     help="gather: up-projection (tokens in); scatter: down-projection (rows in, summed per token)")
    exp.add_argument("--plot", metavar="PNG", help="also write a bar chart of the ladder (needs matplotlib)")
    exp.set_defaults(func=_explain_command)
