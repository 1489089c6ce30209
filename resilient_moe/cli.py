"""``resilient-moe``: run the demo, check a policy, inspect the tiling cache, preflight a chip you do not have.

Commands and their arguments only: preflight.py decides, render.py draws the tables. Building the parser
imports neither Triton nor torch (whether Triton interprets is decided after it), so each command
imports what it runs inside its function.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import reprlib
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from .cache import CACHE_DIR_ENV, FILE_NAME
from .models import PRESETS, Gemm
from .policy import POLICY_ENV
from .targets import ASYNC_COPY_ENV, Chip, chip

if TYPE_CHECKING:
    from .policy import Policy
    from .preflight import Compiler

DTYPES: dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
UPSTREAM_DTYPES = ("bf16", "fp8", "mxfp4")  # backends.upstream.preflight.DTYPES (kept here: no torch at parse time)
AITER_KERNELS = ("moe_gemm_a8w4", "moe_gemm_a4w4", "moe_gemm_a8w8")
ENGINE_DTYPES = ("bf16", "fp16", "fp8_w8a8", "int8_w8a8")  # the engines' dtype selectors (bf16, fp16: none)
DEFAULT_TOKENS: tuple[int, ...] = (1, 64, 4096)


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run()


def _policy_check(args: argparse.Namespace) -> int:
    from .policy import PolicyError, load_policy

    try:
        policy = load_policy(args.file)
    except PolicyError as err:
        print(err, file=sys.stderr)
        return 1
    ladder = policy.ladder
    print(f"{args.file}: OK")
    print(f"  ladder: {' -> '.join(ladder.order)}, factor {ladder.factor}, at most {ladder.max_attempts} attempts, "
          f"floors block_n {ladder.min_block_n} block_m {ladder.min_block_m} num_stages {ladder.min_num_stages}")
    print(f"  rungs the kernel's estimate puts over the limit: {'skipped, not compiled' if ladder.skip_predicted else 'compiled'}")
    trim = "first cut to that" if ladder.trim_block_m else "moves only in its place in the order"
    print(f"  block_m above twice the rows an expert gets: {trim}")
    single = "only once every other move is at its floor" if ladder.single_stage_last else "in its place in the order"
    print(f"  one stage (no pipelining): {single}")
    second = (f" and the ladder's landing begun with one {ladder.order[1]} step"
              if ladder.compare_second_move and len(ladder.order) > 1 else "")
    below = "kept: the first tile that fits wins" if ladder.compare == 0 else (
        f"timed against the {ladder.compare} fitting rung{'s' if ladder.compare > 1 else ''} below it{second} on a GPU, "
        "the fastest kept")
    print(f"  after a recovery, the landing tile: {below}")
    forms = {"never": "never", "recovery": "after a recovery", "always": "on every shape class's first call"}
    print(f"  a persistent tile timed against its one-tile form on a GPU: {forms[ladder.compare_forms]}")
    print(f"  on_exhausted: {policy.on_exhausted}")
    for arch, section in policy.arch.items():
        print(f"  {arch}: default {section.default.values() or '-'}, pin {section.pin.values() or '-'}")
    return 0


def _cache_show(args: argparse.Namespace) -> int:
    from .cache import default_cache

    cache = default_cache()
    entries = cache.entries()
    if args.json:
        print(json.dumps(entries, indent=1, sort_keys=True))
        return 0
    print(f"{cache.path}: {len(entries)} winner(s)")
    for key, entry in sorted(entries.items()):
        print(f"  {key}\n    -> {_entry_line(entry)}")
    return 0


def _entry_line(entry: Any) -> str:
    """What ``cache show`` prints for one entry. The file is anyone's to edit: an entry lookups ignore
    is shown as such, not a crash of the command."""
    from .cache import _winner_from

    try:
        _winner_from(entry)
    except (TypeError, ValueError):
        return f"malformed entry (lookups ignore it): {reprlib.repr(entry)}"
    attempts = entry.get("attempts")
    failed = [a for a in attempts if isinstance(a, dict) and "required" in a] if isinstance(attempts, list) else []
    return f"{entry['config']} ({len(failed)} config(s) did not fit; source {entry.get('source', '?')})"


def _cache_clear(args: argparse.Namespace) -> int:
    from .cache import default_cache

    cache = default_cache()
    try:
        removed = cache.clear()
    except OSError as err:  # e.g. a directory where the file should be
        print(f"{cache.path}: cannot remove: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"{cache.path}: {'removed' if removed else 'nothing to remove'}")
    return 0


def _policy(args: argparse.Namespace) -> Policy:
    """--policy, else what a server without one uses (RESILIENT_MOE_POLICY, else the shipped default)."""
    from .policy import active_policy, load_policy

    return load_policy(args.policy) if args.policy else active_policy()


def _compiler(args: argparse.Namespace) -> Compiler:
    """The bar only on a terminal: in CI logs, carriage returns are noise."""
    from .preflight import Compiler

    return Compiler(sys.stderr if sys.stderr.isatty() else None, f"compiling for {args.arch.name}", args.jobs)


def _describe_chip(target: Chip) -> str:
    return f"{target.name} ({target.examples}), limit {target.max_shared_mem} bytes of shared memory per block"


def _preflight_command(args: argparse.Namespace) -> int:
    import torch

    from .cache import TilingCache
    from .models import ShapesError, load_shapes
    from .policy import PolicyError
    from .preflight import run
    from .render import preflight_table
    from .targets import describe_compiler

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
    if args.async_copy:
        os.environ[ASYNC_COPY_ENV] = "1"
    if args.no_async_copy:
        os.environ[ASYNC_COPY_ENV] = "0"
    if args.kernel in AITER_KERNELS:
        return _preflight_aiter(args, policy)
    allowed = ENGINE_DTYPES if args.engine else UPSTREAM_DTYPES if args.kernel == "matmul_ogs" else tuple(DTYPES)
    if args.dtype not in allowed:
        print(f"--dtype: {args.engine or args.kernel} preflight takes {', '.join(allowed)}, got {args.dtype!r}", file=sys.stderr)
        return 2
    if args.engine is not None:
        return _preflight_engine(args, policy)
    if args.write_configs is not None:
        print("--write-configs writes an engine's tuned-config files: give --engine too", file=sys.stderr)
        return 2
    if args.kernel == "matmul_ogs":
        return _preflight_upstream(args, gemms, path)
    cache = TilingCache(path)
    try:
        rows = run(gemms, args.tokens, args.arch, getattr(torch, DTYPES[args.dtype]), policy, cache, _compiler(args))
    except OSError as err:
        print(f"resilient-moe preflight: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**_report(args, path), "policy": policy.fingerprint, "rows": [r.as_dict() for r in rows]}, indent=1))
    else:
        print(f"{args.model or args.shapes}, {args.dtype}, on {_describe_chip(args.arch)}; triton {describe_compiler(args.arch.name)}")
        print(preflight_table(rows, policy))
        crashed = sum(not r.default_fits for r in rows)
        print(f"\n{crashed} of {len(rows)} default tiles do not fit {args.arch.name}; "
              f"{sum(r.chosen is None for r in rows)} GEMMs have no fitting tile")
        if path is not None:
            print(f"{path}: {len(cache.entries())} winners; start the server with {CACHE_DIR_ENV}={path.parent.resolve()} "
                  f"(the same policy, dtype and Triton {version('triton')}: they are part of each key)")
    return 1 if any(r.chosen is None for r in rows) else 0


def _report(args: argparse.Namespace, path: Path | None) -> dict[str, Any]:
    """The header of a ``preflight --json`` report: what produced its rows (``preflight diff`` reads it)."""
    import triton

    from .preflight_diff import REPORT_FORMAT
    from .targets import describe_compiler

    return {
        "format": REPORT_FORMAT, "triton": triton.__version__, "compiler": describe_compiler(args.arch.name),
        "arch": args.arch.name, "limit": args.arch.max_shared_mem, "dtype": args.dtype,
        "model": args.model or args.shapes, "tokens": list(args.tokens), "cache": None if path is None else str(path),
    }


def _preflight_upstream(args: argparse.Namespace, gemms: Sequence[Gemm], path: Path | None) -> int:
    """``preflight --kernel matmul_ogs``: upstream's own tiles, on this GPU machine, compiled for the chip."""
    import torch

    from .render import upstream_table
    from .targets import describe_compiler

    if not torch.cuda.is_available():
        print("--kernel matmul_ogs: upstream triton_kernels builds its routing and layouts on a GPU; run this on a "
              "GPU machine (any NVIDIA GPU; every tile is compiled for --arch, nothing of it runs)", file=sys.stderr)
        return 2
    if path is not None:
        os.environ[CACHE_DIR_ENV] = str(path.parent)
    if args.policy:
        os.environ[POLICY_ENV] = args.policy
    from .backends.upstream.preflight import run as run_upstream

    try:
        rows = run_upstream(gemms, args.tokens, args.arch, args.dtype)
    except ImportError as err:
        print(f"resilient-moe preflight --kernel matmul_ogs: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**_report(args, path), "kernel": "triton_kernels.matmul_ogs", "rows": [r.as_dict() for r in rows]},
                         indent=1))
    else:
        print(f"upstream matmul_ogs, {args.model or args.shapes}, {args.dtype}, on {_describe_chip(args.arch)}; "
              f"triton {describe_compiler(args.arch.name)}")
        print(upstream_table(rows))
        print(f"\n{sum(not r.fits for r in rows)} of {len(rows)} upstream defaults do not fit {args.arch.name}; "
              f"{sum(r.landed is None for r in rows)} GEMMs have no fitting tile")
        if path is not None:
            print(f"{path}: winners recorded; start the server with {CACHE_DIR_ENV}={path.parent.resolve()}")
    return 1 if any(r.landed is None for r in rows) else 0


def _preflight_engine(args: argparse.Namespace, policy: Policy) -> int:
    """``preflight --engine sglang``: the engine's own config per M row, compiled for the chip; the rows
    written where --write-configs is given, each one fitting."""
    from .backends.engines import configs
    from .backends.engines.configs import engine_tuning
    from .render import engine_table
    from .targets import describe_compiler

    if args.model is None:
        print("--engine takes --model (a preset): the engine's files are per layer shape", file=sys.stderr)
        return 2
    if args.device_name is None and args.write_configs is not None:
        print("--write-configs needs --device-name, as the engine reads it on the target (torch.cuda.get_device_name(), "
              "e.g. 'NVIDIA GeForce RTX 4090'): it names the files", file=sys.stderr)
        return 2
    model = PRESETS[args.model]
    if model.intermediate % args.tp:
        print(f"--tp {args.tp} does not divide {args.model}'s intermediate size {model.intermediate}", file=sys.stderr)
        return 2
    limit = args.shared_memory_limit or args.arch.max_shared_mem
    eight_bit = args.dtype in ("fp8_w8a8", "int8_w8a8")
    layer = configs.layer_for(model.experts, model.hidden, model.intermediate // args.tp, model.top_k,
                              args.dtype if eight_bit else None, "float16" if args.dtype == "fp16" else "bfloat16",
                              args.block_shape if eight_bit else None, tokens=1)
    device = args.device_name or "the target"
    try:
        tuning = engine_tuning(args.engine)
        rows = configs.plan(tuning, layer, args.arch, limit, args.device_name or "", policy)
    except (ImportError, RuntimeError, NotImplementedError) as err:
        print(f"resilient-moe preflight --engine {args.engine}: {err}", file=sys.stderr)
        return 2 if isinstance(err, (ImportError, NotImplementedError)) else 1
    print(f"{args.engine} {tuning.version} fused_moe_kernel, {args.model} (tp {args.tp}), {args.dtype}"
          f"{'' if layer.block_shape is None else f' block {layer.block_shape[0]}x{layer.block_shape[1]}'}, on "
          f"{args.arch.name} with {limit} bytes of shared memory per block ({device}); triton {describe_compiler(args.arch.name)}")
    print(engine_table(rows, args.arch.backend))
    print(f"\n{sum(not r.fits for r in rows)} of {len(rows)} of the engine's configs do not fit")
    if args.write_configs is not None:
        directory = Path(args.write_configs)
        for path in configs.write(tuning, rows, layer, args.device_name, directory):
            print(f"wrote {path}")
        folder = tuning.folder(directory)
        where = "" if folder == directory else f" (it reads {folder.relative_to(directory)}/: this Triton's folder)"
        print(f"serve with {tuning.env}={directory.resolve()}{where}")
    return 0


def _preflight_aiter(args: argparse.Namespace, policy: Policy) -> int:
    """``preflight --kernel moe_gemm_a8w4``: aiter's own config for each GEMM of the model at each token
    count, its LDS compiled for the chip, and the ladder's landing where it does not fit."""
    from .backends.aiter import ops, preflight, source
    from .render import aiter_table
    from .targets import describe_compiler

    if args.model is None:
        print("--kernel moe_gemm_*: give --model (a preset)", file=sys.stderr)
        return 2
    op = ops.OPS[args.kernel]
    try:
        module = source.module(op.module, args.aiter_source, args.arch.name)
    except ImportError as err:
        print(f"resilient-moe preflight --kernel {args.kernel}: {err}", file=sys.stderr)
        return 2
    ops.hook(module)
    model = PRESETS[args.model]
    swizzle = "CDNA4_SCALE" if args.swizzle == "cdna4" else None
    pad = 256 if swizzle else 32  # the CDNA4 swizzle unswizzles scales in 256-wide K blocks
    hidden, intermediate = (-(-size // pad) * pad for size in (model.hidden, model.intermediate // args.tp))
    shapes = preflight.model_shapes(model.experts, model.top_k, hidden, intermediate, model.bias, swizzle)
    rows = preflight.plan(op, module, shapes, list(args.tokens), args.arch, policy)
    if args.json:
        print(json.dumps({"kernel": args.kernel, "aiter": str(args.aiter_source or source.version()), "arch": args.arch.name,
                          "limit": args.arch.max_shared_mem, "compiler": describe_compiler(args.arch.name),
                          "model": args.model, "hidden": hidden, "intermediate": intermediate, "swizzle": swizzle,
                          "rows": [preflight.as_dict(r) for r in rows]}, indent=1, default=str))
        return 0
    print(f"aiter {args.kernel} ({args.aiter_source or source.version()}), {args.model} (tp {args.tp}; hidden {hidden}, "
          f"intermediate {intermediate}, swizzle {swizzle}), on {_describe_chip(args.arch)}; triton "
          f"{describe_compiler(args.arch.name)}")
    print(aiter_table(rows))
    print(f"\n{sum(not r.fits for r in rows)} of {len(rows)} of aiter's configs do not fit {args.arch.name}")
    return 1 if any(r.landed is None for r in rows) else 0


def _doctor(args: argparse.Namespace) -> int:
    """What this process would use: Triton, the chip, the policy, the cache, every upstream copy."""
    import triton

    from .backends.upstream.patch import patched
    from .backends.upstream.copies import ROOTS, copies
    from .settings import cache
    from .targets import placement

    if args.patch:
        from .backends.upstream import patch_triton_kernels

        patch_triton_kernels()
    print(f"triton {triton.__version__} ({os.path.dirname(triton.__file__)})")
    try:
        where = placement()
        print(f"placement: {where.arch}" + (" (virtual, RESILIENT_MOE_TARGET)" if where.virtual else "")
              + (" (interpreter)" if where.interpreter else ""))
    except RuntimeError as err:  # no GPU driver, no interpreter, no target
        print(f"placement: none ({err}); set TRITON_INTERPRET=1 or RESILIENT_MOE_TARGET on a machine without a GPU")
    print(f"policy: {os.environ.get(POLICY_ENV) or 'shipped default'}; cache: {cache().path}")
    for root in ROOTS[1:]:
        if args.import_vendored:
            with contextlib.suppress(ImportError):
                importlib.import_module(root)
    try:
        found = copies()
    except ImportError as err:
        print(f"upstream triton_kernels: {err}")
        return 1
    if not found:
        print(f"upstream triton_kernels: no copy imported ({', '.join(ROOTS)}); vendored copies are listed once "
              "their engine imported them (or with --import-vendored)")
    for up in found:
        names = patched(up.fn)
        print(f"{up.module.__name__}: {up.flavor}, source {up.source}, {up.module.__file__}\n"
              f"  make_opt_flags hooked: {up.current()}; patched where: {', '.join(names) if names else 'nowhere'}")
    return 0


def _explain_command(args: argparse.Namespace) -> int:
    import torch
    from pydantic import ValidationError

    from .policy import PolicyError
    from .preflight import explain
    from .render import explain_plot, explain_table
    from .targets import describe_compiler

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
    rows = args.tokens * gemm.top_k
    print(f"moe_matmul {gemm.mode}, {args.dtype}: {args.tokens} tokens x top-{gemm.top_k} = {rows} rows, "
          f"K {gemm.k}, N {gemm.n}, {gemm.experts} experts ({-(-rows // gemm.experts)} rows per expert)\n"
          f"on {_describe_chip(args.arch)}; triton {describe_compiler(args.arch.name)}")
    print(explain_table(steps, args.arch.max_shared_mem))
    if args.plot is not None:
        explain_plot(steps, args.arch, args.plot)
        print(f"wrote {args.plot}")
    return 0 if any(s.picked for s in steps) else 1


def _diff_command(args: argparse.Namespace) -> int:
    from .preflight_diff import ReportError, compare, load_report
    from .render import diff_table

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
        print(diff_table(a, b, changes, every_row=args.all))
    return 1 if any(c.outcome_changes for c in changes) else 0


def _chip_arg(text: str) -> Chip:
    try:
        return chip(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _block_shape_arg(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"a quant block is N,K with two positive integers, e.g. 128,128; got {text!r}")
    return int(parts[0]), int(parts[1])


def _tokens_arg(text: str) -> tuple[int, ...]:
    return tuple(dict.fromkeys(_positive(part) for part in text.split(",")))


def _common(parser: argparse.ArgumentParser) -> None:
    """The arguments ``preflight`` and ``explain`` share: the chip, the dtype, the policy, the compile processes."""
    parser.add_argument("--arch", type=_chip_arg, required=True, metavar="CHIP",
                        help="target chip: gfx950 (MI355X), gfx942 (MI300X), sm_90 (H100), sm_100 (B200), ...")
    parser.add_argument("--dtype", choices=list(dict.fromkeys([*DTYPES, *UPSTREAM_DTYPES, *ENGINE_DTYPES])), default="bf16",
                        help="activation and weight dtype (default bf16; fp8 and mxfp4 with --kernel matmul_ogs; "
                        "fp8_w8a8 and int8_w8a8 with --engine)")
    parser.add_argument("--policy", metavar="FILE",
                        help="fallback policy YAML (default: RESILIENT_MOE_POLICY, else the shipped policy); "
                        "the server must use the same one")
    parser.add_argument("--jobs", type=_positive, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="parallel compile processes (default min(4, CPUs))")


def _add_preflight_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    pre.add_argument("--kernel", choices=("moe_matmul", "matmul_ogs", *AITER_KERNELS), default="moe_matmul",
                     help="moe_matmul: the builtin kernel (no GPU needed); matmul_ogs: upstream triton_kernels' own "
                     f"tiles ({', '.join(UPSTREAM_DTYPES)}; runs upstream's host code, so needs a GPU machine); "
                     "moe_gemm_a8w4/a4w4/a8w8: aiter's Triton MoE GEMMs in their own formats (no GPU needed)")
    copy = pre.add_mutually_exclusive_group()
    copy.add_argument("--async-copy", action="store_true",
                      help=f"compile as with {ASYNC_COPY_ENV}=1 (AMD: one LDS buffer more per tile)")
    copy.add_argument("--no-async-copy", action="store_true",
                      help=f"compile as with {ASYNC_COPY_ENV}=0 (Triton 3.9 copies asynchronously on gfx950 by default)")
    aiter = pre.add_argument_group("aiter's kernels (--kernel moe_gemm_*)")
    aiter.add_argument("--aiter-source", metavar="DIR",
                       help="a checkout of ROCm/aiter (the folder holding aiter/ops/triton), imported without aiter's "
                       "compiled parts; default: RESILIENT_MOE_AITER_SOURCE, else the installed aiter")
    aiter.add_argument("--swizzle", choices=("cdna4", "none"), default="cdna4",
                       help="weight-scale layout: cdna4 (aiter's on gfx950; sizes padded to 256) or none")
    engine = pre.add_argument_group("an engine's own kernel (--engine)")
    engine.add_argument("--engine", choices=("sglang", "vllm"),
                        help="check the engine's own fused_moe_kernel configs (its tuned file for --device-name, else its "
                        "default) for every M row its tuning script writes; needs the engine installed, not a GPU")
    engine.add_argument("--device-name", metavar="NAME",
                        help="the target's name as torch reports it ('NVIDIA GeForce RTX 4090'): the tuned file the engine "
                        "finds there, and the names of the files written")
    engine.add_argument("--write-configs", metavar="DIR",
                        help="write the engine's own config files, every row fitting, under DIR (SGLang: "
                        "DIR/configs/triton_X_Y_Z/, up- and down-projection files, serve with SGLANG_MOE_CONFIG_DIR=DIR; "
                        "vLLM: one file in DIR, serve with VLLM_TUNED_CONFIG_FOLDER=DIR)")
    engine.add_argument("--block-shape", type=_block_shape_arg, metavar="N,K",
                        help="block-scaled fp8/int8 weights' quant block, e.g. 128,128 (DeepSeek-V3, Qwen3 FP8)")
    engine.add_argument("--tp", type=_positive, default=1, metavar="N",
                        help="tensor-parallel ranks: each holds intermediate/N of every expert (default 1)")
    engine.add_argument("--shared-memory-limit", type=_positive, metavar="BYTES",
                        help="what-if: the chip with this many bytes of shared memory per block (default: its own)")
    pre.set_defaults(func=_preflight_command, engine=None, write_configs=None)

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


def parser() -> argparse.ArgumentParser:
    from . import __version__

    top = argparse.ArgumentParser(
        prog="resilient-moe",
        description="Keeps Triton MoE GEMMs running when a tile does not fit the chip's shared memory: "
        "tries the default tile, steps down a policy's ladder on OutOfResources, caches the winner.",
        epilog="Environment: RESILIENT_MOE_POLICY (policy YAML), RESILIENT_MOE_CACHE_DIR (where winners are kept), "
        "RESILIENT_MOE_TARGET (compile for a chip you do not have, e.g. gfx950), "
        "RESILIENT_MOE_LOG_FORMAT=json (one JSON event per line).",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a small MoE layer that recovers from a tile that does not fit",
                          description="Run a small MoE layer (gather GEMM, SwiGLU, scatter GEMM) with a tile table "
                          "that is too big for the chip; on a CPU, kernels run in the Triton interpreter against a virtual MI355X.")
    demo.set_defaults(func=_demo)

    policy = sub.add_parser("policy", help="work with fallback policy files").add_subparsers(dest="action", required=True, metavar="ACTION")
    check = policy.add_parser("check", help="validate a policy YAML file and print what it does")
    check.add_argument("file", help="path to the policy YAML")
    check.set_defaults(func=_policy_check)

    cache = sub.add_parser("cache", help="inspect or clear the persistent cache of winning tiles").add_subparsers(dest="action", required=True, metavar="ACTION")
    show = cache.add_parser("show", help="list cached winners and what did not fit")
    show.add_argument("--json", action="store_true", help="print the raw entries as JSON")
    show.set_defaults(func=_cache_show)
    clear = cache.add_parser("clear", help="forget every cached winner")
    clear.set_defaults(func=_cache_clear)

    doctor = sub.add_parser("doctor", help="what this process would use: Triton, chip, policy, cache, upstream copies",
                            description="Print the Triton in use, the placement (GPU, virtual chip or interpreter), the "
                            "policy and cache, and every upstream triton_kernels copy imported (the standalone package; "
                            "vLLM's and SGLang's vendored ones): its version flavor, source hash, whether its "
                            "make_opt_flags is hooked and where patch_triton_kernels() put ours.")
    doctor.add_argument("--import-vendored", action="store_true",
                        help="also import vllm.third_party.triton_kernels and sglang.third_party.triton_kernels")
    doctor.add_argument("--patch", action="store_true", help="apply patch_triton_kernels() first, then report")
    doctor.set_defaults(func=_doctor)

    _add_preflight_commands(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; its exit status. A reader that leaves early (``| head``) ends it quietly, with the
    status of a process killed by SIGPIPE, as other command-line tools do."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:2] == ["preflight", "diff"]:
            args = diff_parser().parse_args(argv[2:])
        else:
            args = parser().parse_args(argv)
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE
    return status


if __name__ == "__main__":
    sys.exit(main())
