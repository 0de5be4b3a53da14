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


def configure(level: str | None = None, fmt: str | None = None) -> None:
    level = (level or os.environ.get("EXTAUTHZ_LOG_LEVEL", "info")).upper()
    fmt = fmt or os.environ.get("EXTAUTHZ_LOG_FORMAT", "json")
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
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)
