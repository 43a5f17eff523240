"""Wiring of the recovery service (an empty shell until its issue lands)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..common.runtime import Runtime
from ..common.service import ServiceSpec, workers_ctx
from ..common.web import create_base_app

SCHEMA = "recovery"


def create_app(runtime: Runtime) -> web.Application:
    app = create_base_app(runtime, "recovery", SCHEMA)
    app.cleanup_ctx.append(workers_ctx(SCHEMA, lambda rt: []))
    return app


SERVICE = ServiceSpec("recovery", SCHEMA, Path(__file__).parent / "migrations", "recovery_port", create_app)
