"""Text tables and plots for the CLI; no decisions.

Each function turns what preflight (``Row``, ``Step``) or the report diff (``Change``) already decided
into text, or a PNG for ``explain --plot``. Nothing here compiles, resolves or reads files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .config import TileConfig

if TYPE_CHECKING:
    from .backends.aiter.preflight import Row as AiterRow
    from .backends.engines.configs import Row as EngineRow
    from .backends.upstream.preflight import UpstreamRow
    from .policy import Policy
    from .preflight import Row, Step
    from .preflight_diff import Change, Report
    from .targets import Chip


def table(header: Sequence[str], rows: Sequence[Sequence[object]], right: Iterable[int] = ()) -> str:
    """Plain aligned text; columns in ``right`` are right-aligned (numbers)."""
    cells = [list(header), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    align = set(right)
    return "\n".join(
        "  ".join(c.rjust(w) if i in align else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in cells
    )


def preflight_table(rows: Sequence[Row], policy: Policy) -> str:
    """``resilient-moe preflight``: one line per GEMM call, its default tile against the one it gets."""
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


def _chosen(row: Row, policy: Policy) -> str:
    if row.chosen is not None:
        return str(row.chosen)
    return "none: torch reference" if policy.on_exhausted == "reference" else "none fits"


def explain_table(steps: Sequence[Step], limit: int) -> str:
    """``resilient-moe explain``: the default and each rung, with its bytes against ``limit``."""
    body = [
        (
            "default" if i == 0 else f"rung {i}", str(s.config), s.shared, f"{100 * s.shared / limit:.0f}%",
            "yes" if s.fits else "NO", _note(s),
        )
        for i, s in enumerate(steps)
    ]
    return table(("step", "tile", "bytes", "of limit", "fits?", ""), body, right=(2, 3))


def _note(step: Step) -> str:
    if step.picked:
        return "<- dispatcher picks"
    return "skipped uncompiled (lower bound over the limit)" if step.predicted else ""


def explain_plot(steps: Sequence[Step], target: Chip, path: str) -> None:
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


def diff_table(a: Report, b: Report, changes: Sequence[Change], every_row: bool = False) -> str:
    """``resilient-moe preflight diff``: a table of the rows that differ (``every_row``: all of them) and a
    one-line summary."""
    shown = [c for c in changes if every_row or c.what()]
    body = []
    for c in shown:
        side_a, side_b = c.a or {}, c.b or {}
        default = _tile(side_a.get("default") or side_b.get("default"))
        if c.a is not None and c.b is not None and c.a["default"] != c.b["default"]:
            default = f"{_tile(c.a['default'])} -> {_tile(c.b['default'])}"
        body.append((
            c.gemm, c.mode, c.tokens, default,
            side_a.get("default_bytes", "-"), side_b.get("default_bytes", "-"),
            _fits(side_a), _fits(side_b),
            _tile(side_a["chosen"]) if c.a else "-", _tile(side_b["chosen"]) if c.b else "-",
            ", ".join(c.what()) or "same",
        ))
    header = ("gemm", "mode", "tokens", "default tile", "A bytes", "B bytes", "A fits", "B fits", "A chosen",
              "B chosen", "change")
    lines = [f"A: {a.describe()}", f"B: {b.describe()}", ""]
    lines.append(table(header, body, right=(2, 4, 5)) if body else "no GEMM differs")
    stop = sum("default stops fitting" in c.what() for c in changes)
    start = sum("default starts fitting" in c.what() for c in changes)
    chosen = sum("chosen tile changes" in c.what() for c in changes)
    lost = sum("no tile fits B" in c.what() for c in changes)
    lines.append(f"\n{len(changes)} GEMM calls: {stop} default tiles stop fitting under B, {start} start fitting, "
                 f"{chosen} chosen tiles change, {lost} have no fitting tile under B")
    return "\n".join(lines)


def _tile(config: dict[str, Any] | None) -> str:
    if config is None:
        return "none fits"
    return str(TileConfig(**config))


def _fits(row: dict[str, Any]) -> str:
    if not row:
        return "-"
    return "yes" if row["default_fits"] else "NO"


def upstream_table(rows: Sequence[UpstreamRow]) -> str:
    """``preflight --kernel matmul_ogs``: upstream's default per GEMM, its bytes, and where the ladder landed."""
    body = []
    for r in rows:
        default = "-" if r.default is None else _tile(r.default.as_dict())
        landed = r.error or ("-" if r.landed is None else _tile(r.landed.as_dict()))
        fits = "yes" if r.fits else "no" if r.default is not None else "-"
        bytes_ = "-" if r.default_bytes is None else str(r.default_bytes)
        body.append((r.gemm, r.tokens, default, bytes_, fits, landed, "-" if r.landed_bytes is None else r.landed_bytes,
                     r.attempts, r.origin))
    return table(("gemm", "tokens", "upstream default", "bytes", "fits", "landed", "bytes", "attempts", "from"), body,
                 right=(1, 3, 6, 7))


def engine_table(rows: Sequence[EngineRow], backend: str) -> str:
    """``preflight --engine``: per M row, the engine's own config and its bytes, and the row written."""
    from .backends.engines.fused_moe import as_tile

    body = [(r.tokens, str(as_tile(r.default, backend)), r.default_bytes, "yes" if r.fits else "NO",
             str(as_tile(r.written, backend)), r.written_bytes, r.compiled) for r in rows]
    return table(("M", "engine's config", "bytes", "fits", "written", "bytes", "compiled"), body, right=(0, 2, 5, 6))


def aiter_table(rows: Sequence[AiterRow]) -> str:
    """``preflight --kernel moe_gemm_*``: per GEMM and token count, aiter's config and its LDS, where the
    ladder lands, what a recovery on the chip times against it, and aiter's own stage picker."""
    def tile(config: dict[str, Any] | None) -> str:
        if config is None:
            return "-"
        return f"{config['block_m']}x{config['block_n']}x{config['block_k']} s{config['num_stages']} w{config['num_warps']}"

    body = [(r.shape.name, r.tokens, r.block_m, tile(r.own), r.own_bytes, "yes" if r.fits else "NO",
             "" if r.fits else tile(r.landed), "" if r.fits else r.landed_bytes,
             "" if r.second is None else f"{tile(r.second)} ({r.second_bytes})",
             "-" if r.picked_stages is None else r.picked_stages) for r in rows]
    return table(("gemm", "tokens", "block_m", "aiter's config", "LDS", "fits", "landed", "LDS", "timed against it",
                  "aiter's picker"), body, right=(1, 2, 4, 7))
