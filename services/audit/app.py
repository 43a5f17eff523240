"""Wiring of the audit service: the append-only event log, its consumer and its HTTP API."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..common.runtime import Runtime
from ..common.service import ServiceSpec, workers_ctx
from ..common.web import create_base_app
from .api import add_routes
from .consumers import build_consumers

SCHEMA = "audit"


def create_app(runtime: Runtime) -> web.Application:
    """The audit app; its consumer runs for the app's lifetime. It publishes nothing: no relay."""
    app = create_base_app(runtime, SERVICE.name, SCHEMA)
    add_routes(app)
    app.cleanup_ctx.append(workers_ctx(SERVICE))
    return app


SERVICE = ServiceSpec("audit", SCHEMA, Path(__file__).parent / "migrations", "audit_port", create_app,
                      consumers=build_consumers, publishes=False)
