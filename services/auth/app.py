"""Wiring of the auth service: the API, the assertion signer, the outbox relay and the consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from ..common.crypto import Keyring
from ..common.pages import PAGES, Pages, page_middleware
from ..common.runtime import Runtime, cancel_and_wait
from ..common.service import ServiceSpec, periodic_ctx, workers_ctx
from ..common.web import RUNTIME, create_base_app
from . import admin_pages, api, metrics, pages  # noqa: F401 - metrics: its counters count the events written
from .consumers import build_consumers
from .handlers.context import SCHEMA, Auth
from .handlers.prompt import PageConfig
from .handlers.retention import purge_expired
from .tokens import Signer

PURGE_INTERVAL = 3600.0  # rows are kept 7 days past expiry (common.pages.EXPIRED_KEPT); an hour more is no matter


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    keyring = Keyring(runtime.settings.secret_keys)
    signer = await Signer(runtime.settings.issuer_url).load(runtime.pool, keyring)
    app[api.AUTH] = Auth(runtime.pool, keyring, signer)
    # Picks up rotated keys (and drops expired ones) in every process; see tokens.py.
    reload = asyncio.create_task(signer.run(runtime.pool, keyring), name="auth-signing-keys")
    try:
        yield
    finally:
        await cancel_and_wait(reload)


async def _purge(app: web.Application) -> None:
    runtime = app[RUNTIME]
    await purge_expired(runtime.pool, timedelta(days=runtime.settings.login_retention_days))


def _pages(runtime: Runtime, app: web.Application) -> None:
    """The hosted pages' templates, keys and return URLs (see services/auth/pages.py)."""
    settings = runtime.settings
    app[PAGES] = Pages(
        [Path(__file__).parent / "templates"],
        csrf_key=Keyring(settings.secret_keys).derive("page-csrf"),
        secure_cookies=settings.public_url.startswith("https://"),
        product_name=settings.product_name,
        public_url=settings.public_url,
    )
    # Loopback return URLs are for development: allowed while the development secret key is in use.
    app[api.PAGE_CONFIG] = PageConfig(settings.public_url, settings.return_urls, settings.uses_dev_secret_key)
    app.middlewares.append(page_middleware)
    pages.add_routes(app)
    admin_pages.add_routes(app)


def create_app(runtime: Runtime) -> web.Application:
    """The auth app; its resources open and close with the app's lifetime."""
    app = create_base_app(runtime, SERVICE.name, SCHEMA)
    app.cleanup_ctx.append(_auth_ctx)
    app.cleanup_ctx.append(workers_ctx(SERVICE))
    app.cleanup_ctx.append(periodic_ctx("auth-purge", PURGE_INTERVAL, _purge))
    api.add_routes(app)
    _pages(runtime, app)
    return app


SERVICE = ServiceSpec("auth", SCHEMA, Path(__file__).parent / "migrations", "auth_port", create_app,
                      consumers=build_consumers, publishes=True)
