"""Wiring of the auth service (an empty shell until its issue lands)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..common.runtime import Runtime
from ..common.service import ServiceSpec, workers_ctx
from ..common.web import create_base_app

SCHEMA = "auth"


def create_app(runtime: Runtime) -> web.Application:
    app = create_base_app(runtime, "auth", SCHEMA)
    app.cleanup_ctx.append(workers_ctx(SCHEMA, lambda rt: []))
    return app


SERVICE = ServiceSpec("auth", SCHEMA, Path(__file__).parent / "migrations", "auth_port", create_app)
