"""The notifier's typed app keys, in one place (app and consumers both read them)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..common.consumer import DEFAULT_RETRY_DELAYS
from .handlers import Notifier
from .mailer import Mailer
from .sink import MailSink

PREFETCH = 16


@dataclass(frozen=True)
class ConsumerOptions:
    """How the notifier's consumer runs; tests pass their own queue and shorter delays."""

    queue: str | None = None
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    prefetch: int = PREFETCH


NOTIFIER = web.AppKey("notifier", Notifier)
MAILER = web.AppKey("notifier_mailer", Mailer)
SINK = web.AppKey("notifier_sink", MailSink)  # only when no MFA_SMTP_HOST is set
CONSUMER_OPTIONS = web.AppKey("notifier_consumer_options", ConsumerOptions)
