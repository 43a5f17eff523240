"""Wiring of the recovery service: HTTP API, helpdesk mailbox (SMTP), directory consumer, photo purge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ..common.crypto import Keyring
from ..common.logs import get_logger
from ..common.pages import PAGES, Pages, page_middleware
from ..common.runtime import Runtime
from ..common.service import ServiceSpec, periodic_ctx, workers_ctx
from ..common.web import RUNTIME, create_base_app
from . import handlers, metrics, pages  # noqa: F401 - metrics: its counters count the events written
from .api import LIMITS, MAX_FORM_BYTES, PARSERS, PUBLIC_URL, RATE_KEY, TOKEN_KEY, add_routes
from .consumers import build_consumers
from .domain import RateLimits
from .handlers import SCHEMA
from .inbound import InboundMailbox, MailboxHandler
from .workers import ParsePool

log = get_logger("recovery")

PURGE_INTERVAL = 3600.0  # photos expire after 30 days; checking hourly keeps them at most an hour longer


async def parse_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """The worker processes that parse mails and decode photos, for the app's lifetime."""
    await app[PARSERS].start()
    try:
        yield
    finally:
        await app[PARSERS].stop()


async def mailbox_ctx(app: web.Application) -> AsyncIterator[None]:
    """The helpdesk mailbox listens on settings.inbound_smtp_port for the app's lifetime."""
    runtime = app[RUNTIME]
    settings = runtime.settings
    handler = MailboxHandler(runtime.pool, rate_key=app[RATE_KEY], limits=app[LIMITS],
                             mailbox=(settings.helpdesk_email,), parsers=app[PARSERS])
    hostname = settings.helpdesk_email.rpartition("@")[2] or "mfa.localhost"
    mailbox = InboundMailbox(handler, settings.host, settings.inbound_smtp_port, hostname=hostname)
    await mailbox.start()
    try:
        yield
    finally:
        await mailbox.stop()


async def _purge(app: web.Application) -> None:
    """Delete photos of tickets open for 30 days, forget old rate-limit counters and expired console sign-ins."""
    pool = app[RUNTIME].pool
    await handlers.purge_expired_photos(pool)
    await handlers.prune_rate_limits(pool, app[LIMITS])
    await handlers.purge_expired_console_sign_ins(pool)


def create_app(runtime: Runtime, *, limits: RateLimits | None = None,
               parsers: ParsePool | None = None) -> web.Application:
    """The recovery app; `limits` overrides the intake rate limits, `parsers` the parse pool (tests)."""
    app = create_base_app(runtime, SERVICE.name, SCHEMA, client_max_size=MAX_FORM_BYTES)
    settings = runtime.settings
    app[LIMITS] = limits or RateLimits(per_sender=settings.recovery_rate_per_sender, per_ip=settings.recovery_rate_per_ip)
    keyring = Keyring(settings.secret_keys)
    app[RATE_KEY] = keyring.derive("recovery-rate-limit")
    app[PARSERS] = parsers or ParsePool()
    app[TOKEN_KEY] = handlers.console_token_key(keyring)
    app[PUBLIC_URL] = settings.recovery_public_url
    add_routes(app)
    # The public form and the helpdesk console (services/recovery/pages.py).
    app[PAGES] = Pages(
        [Path(__file__).parent / "templates"],
        csrf_key=keyring.derive("recovery-page-csrf"),
        secure_cookies=settings.recovery_public_url.startswith("https://"),
        product_name=settings.product_name,
        public_url=settings.recovery_public_url,
        page_paths=(pages.RECOVER_PATH,),
    )
    app.middlewares.append(page_middleware)
    pages.add_routes(app)
    app.cleanup_ctx.append(parse_pool_ctx)
    app.cleanup_ctx.append(workers_ctx(SERVICE))
    app.cleanup_ctx.append(mailbox_ctx)
    app.cleanup_ctx.append(periodic_ctx("recovery-purge", PURGE_INTERVAL, _purge))
    return app


SERVICE = ServiceSpec("recovery", SCHEMA, Path(__file__).parent / "migrations", "recovery_port", create_app,
                      consumers=build_consumers, publishes=True, extra_port_settings=("inbound_smtp_port",))
