"""Wiring of the auth service: the API, the assertion signer, the outbox relay and the consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ..common.crypto import Keyring
from ..common.pages import PAGES, Pages, page_middleware
from ..common.runtime import Runtime, cancel_and_wait
from ..common.service import ServiceSpec, workers_ctx
from ..common.web import RUNTIME, create_base_app
from . import api, consumers, metrics, pages  # noqa: F401 - metrics: its counters count the events written
from .handlers.context import SCHEMA, Auth
from .handlers.prompt import PageConfig
from .tokens import Signer


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    assert runtime.pool is not None
    keyring = Keyring(runtime.settings.secret_keys)
    signer = await Signer(runtime.settings.issuer_url).load(runtime.pool, keyring)
    app[api.AUTH] = Auth(runtime.pool, keyring, signer)
    # Picks up rotated keys (and drops expired ones) in every process; see tokens.py.
    reload = asyncio.create_task(signer.run(runtime.pool, keyring), name="auth-signing-keys")
    try:
        yield
    finally:
        await cancel_and_wait(reload)


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


def create_app(runtime: Runtime) -> web.Application:
    """The auth app; its resources open and close with the app's lifetime."""
    app = create_base_app(runtime, "auth", SCHEMA)
    app.cleanup_ctx.append(_auth_ctx)
    app.cleanup_ctx.append(workers_ctx(SCHEMA, lambda rt: consumers.consumers(rt, app[api.AUTH])))
    api.add_routes(app)
    _pages(runtime, app)
    return app


SERVICE = ServiceSpec("auth", SCHEMA, Path(__file__).parent / "migrations", "auth_port", create_app)
