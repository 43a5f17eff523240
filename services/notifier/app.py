"""Wiring of the notifier service: templates, SMTP (or the embedded sink), and its consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

from aiohttp import web

from ..common.consumer import DEFAULT_RETRY_DELAYS
from ..common.logs import get_logger
from ..common.runtime import Runtime
from ..common.service import ServiceSpec, workers_ctx
from ..common.web import RUNTIME, create_base_app
from .consumers import POOL_SPARE, PREFETCH, notifier_consumer
from .domain import TEMPLATE_KINDS
from .handlers import Notifier
from .mailer import Mailer, SmtpConfig
from .sink import MailSink
from .store import SCHEMA
from .templates import Catalog

log = get_logger("notifier")

NOTIFIER = web.AppKey("notifier", Notifier)
MAILER = web.AppKey("notifier_mailer", Mailer)
SINK = web.AppKey("notifier_sink", MailSink)  # only when no MFA_SMTP_HOST is set


def delivery_ctx(prefetch: int = PREFETCH):
    """A cleanup_ctx opening what delivery needs for the app's lifetime, and closing it after."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[RUNTIME].settings
        # A missing template or text fails at start-up, not at the first mail.
        catalog = Catalog.load(required=TEMPLATE_KINDS, product_name=settings.product_name)
        async with AsyncExitStack() as opened:  # closes, in reverse, whatever was opened
            if settings.smtp_host:
                smtp = SmtpConfig.from_settings(settings)
            else:
                sink = MailSink(settings.mail_dir)
                smtp = SmtpConfig(host=sink.host, port=await sink.start())
                opened.push_async_callback(sink.stop)
                app[SINK] = sink
            # Handlers hold a connection while SMTP answers; the process pool is sized for that
            # (ServiceSpec.pool_size below), so the notifier never starves services beside it.
            pool = app[RUNTIME].pool
            mailer = await Mailer(smtp).start()
            opened.push_async_callback(mailer.close)
            app[NOTIFIER] = Notifier.from_settings(settings, catalog=catalog, mailer=mailer, journal=pool)
            app[MAILER] = mailer
            log.info("notifier_ready", smtp=f"{smtp.host}:{smtp.port}", tls=smtp.tls, sink=SINK in app)
            yield

    return ctx


def create_app(
    runtime: Runtime,
    *,
    queue: str | None = None,
    retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
    prefetch: int = PREFETCH,
) -> web.Application:
    """The notifier app: /healthz, /readyz, /metrics, and its consumer for the app's lifetime."""
    app = create_base_app(runtime, "notifier", SCHEMA)
    app.cleanup_ctx.append(delivery_ctx(prefetch))
    # The notifier writes no events, so it runs no outbox relay.
    app.cleanup_ctx.append(
        workers_ctx(
            SCHEMA,
            lambda rt: [notifier_consumer(rt, app[NOTIFIER], queue=queue, retry_delays=retry_delays, prefetch=prefetch)],
            relay=False,
        )
    )
    return app

SERVICE = ServiceSpec(
    "notifier", SCHEMA, Path(__file__).parent / "migrations", "notifier_port", create_app,
    pool_size=PREFETCH + POOL_SPARE,
)
