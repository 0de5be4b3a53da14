"""Structured logging (structlog): JSON lines by default, key=value text for terminals.

Callers log only bounded, non-secret fields (reason, rule, provider, kid, iss, sub);
never a token, a cookie or a claim set.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_level = logging.INFO


def configure(level: str | None = None, fmt: str | None = None) -> None:
    global _level
    level = (level or os.environ.get("EXTAUTHZ_LOG_LEVEL", "info")).upper()
    # JSON for machines; key=value text when a person is watching a terminal.
    fmt = (
        fmt or os.environ.get("EXTAUTHZ_LOG_FORMAT") or ("text" if sys.stderr.isatty() else "json")
    )
    _level = logging.getLevelNamesMapping().get(level, logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def debug_enabled() -> bool:
    """Cheap check so the allow path does not build log events nobody will see."""
    return _level <= logging.DEBUG


def get(name: str) -> Any:
    return structlog.get_logger(name)
