"""``resilient-moe``: run the demo, check a policy, inspect the tiling cache, preflight a chip you do not have."""

from __future__ import annotations

import argparse
import json
import os
import reprlib
import signal
import sys
from collections.abc import Sequence
from typing import Any


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
    trim = "first cut to the rows per expert" if ladder.trim_block_m else "moves only in its place in the order"
    print(f"  block_m above the rows an expert gets: {trim}")
    below = "kept: the first tile that fits wins" if ladder.compare == 0 else (
        f"timed against the {ladder.compare} fitting rung{'s' if ladder.compare > 1 else ''} below it on a GPU, "
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

    from . import preflight

    preflight.add_commands(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; its exit status. A reader that leaves early (``| head``) ends it quietly, with the
    status of a process killed by SIGPIPE, as other command-line tools do."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:2] == ["preflight", "diff"]:
            from .preflight import diff_parser

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
