"""Structured events of every tiling decision, emitted through structlog into stdlib logging.

The library never configures structlog or logging globally: it owns a small processor pipeline and
hands each rendered event to the stdlib logger ``resilient_moe``, so host servers (vLLM, SGLang use
``logging``) route and filter our events with their own handlers and levels. The event dict rides
along as ``record.resilient_moe`` for handlers that want fields, not text.

Event names are stable identifiers; their fields are documented in docs/events.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .config import TILE_FIELDS, TileConfig
from .testing import capture as capture  # documented as events.capture in docs/events.md; lives in testing.py

LOGGER_NAME = "resilient_moe"
FORMAT_ENV = "RESILIENT_MOE_LOG_FORMAT"

_json = structlog.processors.JSONRenderer(sort_keys=False)
_logfmt = structlog.processors.LogfmtRenderer(key_order=["event"], bool_as_flag=False)


def _compact(value: Any) -> Any:
    """Tiles read as 128x256x64 s3 w8 g8 in text logs; other mappings as compact JSON."""
    if isinstance(value, dict) and value.keys() == set(TILE_FIELDS):
        return str(TileConfig(**value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return value


def _render(_: WrappedLogger, __: str, event_dict: EventDict) -> tuple[tuple[str], dict[str, Any]]:
    """Last step: text for stdlib's message (JSON when asked), the dict itself as ``extra``."""
    fields = dict(event_dict)
    if os.environ.get(FORMAT_ENV, "logfmt").strip().lower() == "json":
        text = _json(_, __, fields)
    else:
        text = _logfmt(_, __, {k: _compact(v) for k, v in fields.items()})
    return (text,), {"extra": {"resilient_moe": fields}}


_muted: contextvars.ContextVar[bool] = contextvars.ContextVar("resilient_moe_events_muted", default=False)


def _drop_muted(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    if _muted.get():
        raise structlog.DropEvent
    return event_dict


_pipeline: list[Any] = [_drop_muted, structlog.stdlib.filter_by_level, structlog.stdlib.add_log_level, _render]
_log = structlog.wrap_logger(
    logging.getLogger(LOGGER_NAME), processors=_pipeline, wrapper_class=structlog.stdlib.BoundLogger
)


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Drop the events emitted inside (in this thread or task only): for decisions that are simulations,
    like preflight's resolves for a chip that is not here, so logs count only real downgrades."""
    token = _muted.set(True)
    try:
        yield
    finally:
        _muted.reset(token)


@contextlib.contextmanager
def _sent_to(processor: Processor) -> Iterator[None]:
    """Every event that is not muted, at every level, goes to ``processor`` instead of stdlib logging
    (``resilient_moe.testing.capture``). The pipeline is process-global: not thread-safe."""
    saved = _pipeline.copy()
    _pipeline[:] = [_drop_muted, processor]
    try:
        yield
    finally:
        _pipeline[:] = saved


def configure_console(level: int = logging.INFO) -> None:
    """For the CLI and scripts: print our events on stderr, one per line (JSON with RESILIENT_MOE_LOG_FORMAT=json)."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(getattr(h, "_resilient_moe", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._resilient_moe = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def downgrade(**fields: Any) -> None:
    """A config did not fit; the next rung is tried. Fields: from, to, resource, required, limit, attempt,
    predicted (not compiled: the kernel's lower bound, then ``required``, is over the limit), arch, kernel, shape."""
    _log.warning("tiling.downgrade", **fields)


def selected(**fields: Any) -> None:
    """A config fitted and ran; it is now the cached winner for its key."""
    _log.info("tiling.selected", **fields)


def cache_hit(**fields: Any) -> None:
    """A winner came from the persistent cache (once per key and process: the in-memory hit path stays silent)."""
    _log.debug("tiling.cache_hit", **fields)


def exhausted(**fields: Any) -> None:
    """Every rung failed; the call raises, or falls back to the torch reference if the policy says so."""
    _log.error("tiling.exhausted", **fields)


def empty_input(**fields: Any) -> None:
    """Nothing to compute (zero tokens, or none routed to a local expert): sentinels, no launch."""
    _log.debug("moe.empty_input", **fields)


def cache_corrupt(**fields: Any) -> None:
    """The persistent cache file was unreadable or foreign; it was set aside and will be rebuilt."""
    _log.warning("cache.corrupt", **fields)


def cache_stale(**fields: Any) -> None:
    """A cached winner no longer fits (a file from another policy, machine or Triton): it is dropped and
    the ladder climbs from the default. Fields: key, config, resource, required, limit."""
    _log.warning("cache.stale", **fields)


def cache_write_failed(**fields: Any) -> None:
    """The winner could not be persisted (read-only or full disk); the in-process cache still holds it."""
    _log.warning("cache.write_failed", **fields)


def policy_invalid(**fields: Any) -> None:
    """The policy named by RESILIENT_MOE_POLICY is broken; the shipped default is used instead."""
    _log.error("policy.invalid", **fields)
