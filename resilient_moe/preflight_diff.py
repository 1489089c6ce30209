"""``resilient-moe preflight diff A.json B.json``: what changes between two preflight reports.

The use it exists for: the same model and chip preflighted under the Triton in production and under
the one to upgrade to. Shared-memory bytes move between compiler versions (Triton 3.9 keeps one more
LDS buffer per tile on gfx950 than 3.6), so a default that fits today can stop fitting, and the tile
the ladder lands on can change. The diff lists those GEMMs with the bytes on each side, before the
upgrade is deployed. Pure functions over the two reports' JSON: nothing is compiled here; the table
the command prints is ``render.diff_table``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_FORMAT = "resilient_moe.preflight"
"""The ``format`` field of ``resilient-moe preflight --json``; the diff reads no other JSON."""


class ReportError(ValueError):
    """A file that is not a preflight report; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Report:
    """One preflight report: where it was compiled and its rows, by (gemm, mode, tokens)."""

    path: str
    triton: str
    arch: str
    limit: int
    dtype: str
    compiler: str
    rows: dict[tuple[str, str, int], dict[str, Any]]

    def describe(self) -> str:
        return f"triton {self.triton}, {self.arch} (limit {self.limit} B), {self.dtype}: {self.path}"


def load_report(path: str | Path) -> Report:
    """Read a ``preflight --json`` report; anything else raises ReportError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ReportError(f"{path}: not a readable JSON file: {err}") from None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise ReportError(f"{path}: not a report of `resilient-moe preflight --json` (format {REPORT_FORMAT!r})")
    try:
        rows = {(r["gemm"], r["mode"], int(r["tokens"])): r for r in data["rows"]}
        return Report(str(path), str(data["triton"]), str(data["arch"]), int(data["limit"]), str(data["dtype"]),
                      str(data.get("compiler", data["triton"])), rows)
    except (KeyError, TypeError, ValueError) as err:
        raise ReportError(f"{path}: a preflight report without the field {err}") from None


@dataclass(frozen=True)
class Change:
    """One GEMM at one token count in both reports (a side is None where the report lacks the row)."""

    gemm: str
    mode: str
    tokens: int
    a: dict[str, Any] | None
    b: dict[str, Any] | None

    def what(self) -> list[str]:
        """What changed, worst first; empty when the two rows agree."""
        a, b = self.a, self.b
        if a is None or b is None:
            return ["only in A" if b is None else "only in B"]
        out = []
        if a["chosen"] is not None and b["chosen"] is None:
            out.append("no tile fits B")
        if a["default_fits"] and not b["default_fits"]:
            out.append("default stops fitting")
        elif b["default_fits"] and not a["default_fits"]:
            out.append("default starts fitting")
        if a["default"] != b["default"]:
            out.append("default tile changes")
        if a["chosen"] != b["chosen"] and not (a["chosen"] is not None and b["chosen"] is None):
            out.append("chosen tile changes")
        if not out and (a["default_bytes"], a["chosen_bytes"]) != (b["default_bytes"], b["chosen_bytes"]):
            out.append("bytes only")
        return out

    @property
    def outcome_changes(self) -> bool:
        """What a server would notice: whether the default fits, or which tile runs."""
        return bool(self.what()) and self.what() != ["bytes only"]


def compare(a: Report, b: Report) -> list[Change]:
    """Every row of either report, in A's order, then the rows only B has."""
    keys = [*a.rows, *(k for k in b.rows if k not in a.rows)]
    return [Change(*key, a.rows.get(key), b.rows.get(key)) for key in keys]
