"""Asserting on resilient_moe's events in your tests, like ``structlog.testing.capture_logs``.

::

    from resilient_moe.testing import capture

    def test_my_server_recovers() -> None:
        with capture() as events:
            run_my_moe_layer()
        assert [e["event"] for e in events if e["event"].startswith("tiling.")] == ["tiling.downgrade", "tiling.selected"]

Each event is the dict of fields docs/events.md lists, with ``event`` (its name) and ``log_level``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from structlog.testing import LogCapture
from structlog.typing import EventDict


@contextlib.contextmanager
def capture() -> Iterator[list[EventDict]]:
    """Collect the events emitted inside as dicts, in order, instead of sending them to stdlib logging.

    Every level is captured, whatever the ``resilient_moe`` logger's level; events the library mutes
    (preflight's simulated attempts) are not. Not thread-safe: it swaps the process-wide pipeline."""
    from . import events  # here, not above: events re-exports this function as events.capture

    cap = LogCapture()
    with events._sent_to(cap):
        yield cap.entries
