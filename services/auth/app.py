"""Wiring of the auth service: the API, the assertion signer, the outbox relay and the consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ..common.crypto import Keyring
from ..common.runtime import Runtime, cancel_and_wait
from ..common.service import ServiceSpec, workers_ctx
from ..common.web import RUNTIME, create_base_app
from . import api, metrics  # noqa: F401 - metrics: its counters count the events written
from .consumers import build_consumers
from .handlers.context import SCHEMA, Auth
from .tokens import Signer


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


def create_app(runtime: Runtime) -> web.Application:
    """The auth app; its resources open and close with the app's lifetime."""
    app = create_base_app(runtime, SERVICE.name, SCHEMA)
    app.cleanup_ctx.append(_auth_ctx)
    app.cleanup_ctx.append(workers_ctx(SERVICE))
    api.add_routes(app)
    return app


SERVICE = ServiceSpec("auth", SCHEMA, Path(__file__).parent / "migrations", "auth_port", create_app,
                      consumers=build_consumers, publishes=True)
