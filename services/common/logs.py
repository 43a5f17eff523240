"""structlog set-up: JSON lines by default, a console renderer on request.

Context (correlation id, service, message id) is bound with contextvars at the edge,
so every line logged while handling a request or a message carries it.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

# Values that look like credentials are masked even if a caller logs them by mistake.
_SENSITIVE_KEYS = re.compile(r"(secret|token|password|code|api_key|authorization|otp)", re.I)
_ALLOWED_KEYS = {"code_kind", "status_code", "error_code", "code_count", "exit_code", "problem_code"}


def _redact(_logger, _name, event_dict):
    for key in list(event_dict):
        if key in _ALLOWED_KEYS:
            continue
        if _SENSITIVE_KEYS.search(key):
            event_dict[key] = "[redacted]"
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "json", stream=None, *, cache: bool = False) -> None:
    """Configure structlog and the stdlib root logger once per process (`stream`: stderr by default).

    `cache`: each logger binds its configuration on first use (a process configured once, `mfa`);
    without it every call binds anew, so a later configuration (a test's) reaches every logger.
    """
    stream = stream or sys.stderr
    renderer = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=cache,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")


def get_logger(name: str | None = None):
    """A structlog logger; `name` goes into every line as `logger`."""
    # Initial values keep the proxy lazy, so loggers made at import follow the later configuration.
    return structlog.get_logger() if name is None else structlog.get_logger(component=name)
