"""Structured logging (structlog): JSON lines by default, key=value text for terminals.

Callers log only bounded, non-secret fields (reason, rule, provider, kid, iss, sub);
never a token, a cookie or a claim set.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO, cast

import structlog

from .errors import LogSettingError

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "text")
LEVEL_ENV = "EXTAUTHZ_LOG_LEVEL"
FORMAT_ENV = "EXTAUTHZ_LOG_FORMAT"

_level = logging.INFO


class _Stderr:
    """Whatever sys.stderr is at the moment of writing, not when logging was set up.

    A logger bound once (structlog caches them) must not keep a stream someone later
    replaced and closed: an embedding application, a test runner's capture.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _choice(value: str | None, source: str, allowed: tuple[str, ...]) -> str | None:
    if value is None or not value.strip():
        return None
    chosen = value.strip().lower()
    if chosen not in allowed:
        raise LogSettingError(f"{source}={value!r} is not one of {', '.join(allowed)}")
    return chosen


def settings(
    level: str | None = None, fmt: str | None = None, *, default_format: str | None = None
) -> tuple[str, str]:
    """The (level, format) to use: arguments, else the environment, else the defaults.

    An environment value is read only when the argument is absent; a bad one raises
    LogSettingError naming the variable (it never silently falls back).
    """
    chosen_level = (
        _choice(level, "log level", LEVELS)
        or _choice(os.environ.get(LEVEL_ENV), LEVEL_ENV, LEVELS)
        or "info"
    )
    # JSON for machines; key=value text when a person is watching a terminal.
    chosen_fmt = (
        _choice(fmt, "log format", FORMATS)
        or _choice(os.environ.get(FORMAT_ENV), FORMAT_ENV, FORMATS)
        or default_format
        or ("text" if sys.stderr.isatty() else "json")
    )
    return chosen_level, chosen_fmt


def configure(
    level: str | None = None, fmt: str | None = None, *, default_format: str | None = None
) -> None:
    """Set up logging; raises LogSettingError for a level or format outside the choices."""
    global _level
    level, fmt = settings(level, fmt, default_format=default_format)
    _level = logging.getLevelNamesMapping()[level.upper()]
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
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Stderr())),
        cache_logger_on_first_use=True,
    )


def debug_enabled() -> bool:
    """Cheap check so the allow path does not build log events nobody will see."""
    return _level <= logging.DEBUG


def get(name: str) -> Any:
    return structlog.get_logger(name)
