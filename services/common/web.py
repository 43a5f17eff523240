"""The HTTP edge shared by every service: app factory, middlewares, health, readiness, metrics.

- every request gets a correlation id (`X-Correlation-ID` in, or a new one) bound to the log
  context and carried into the events it causes;
- `MfaError` and aiohttp's own HTTP errors become RFC 9457 problem+json with a stable `code`;
  anything else is a logged 500 `internal_error`, never a stack trace to the client;
- `/v1/*` needs `Authorization: Bearer <api key>`; handlers check the role with `require_role`;
- one summary log line per request.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import fastjsonschema
import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from . import strictjson
from .apikeys import Principal
from .errors import DATABASE_UNAVAILABLE, BadRequest, Forbidden, MfaError, PayloadTooLarge, Unauthorized
from .logs import get_logger
from .metrics import HTTP_LATENCY, HTTP_REQUESTS, exposition
from .outbox import backlog
from .runtime import Runtime

log = get_logger("http")

RUNTIME = web.AppKey("runtime", Runtime)
SERVICE_NAME = web.AppKey("service_name", str)
# RequestKey arrived in aiohttp 3.12; a plain string key works the same on older versions.
PRINCIPAL = web.RequestKey("principal", Principal) if hasattr(web, "RequestKey") else "principal"
PROBLEM_TYPE = "application/problem+json"
MAX_BODY = 64 * 1024
READ_CHUNK = 64 * 1024
# Query values, path segments and multipart part names may hold no control character: PostgreSQL
# refuses U+0000 in text, and none of them has a use for the others.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
# The id goes into logs, the outbox, the AMQP `correlation_id` property (at most 255 bytes) and
# the response header: only plain ASCII that every one of them carries as is.
_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,100}")


def problem(status: int, code: str, detail: str, title: str | None = None, **extra: Any) -> web.Response:
    """An RFC 9457 problem+json response with a stable `code` member."""
    body = {
        "type": f"urn:mfa:problem:{code}",
        "title": title or code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }
    correlation_id = structlog.contextvars.get_contextvars().get("correlation_id")
    if correlation_id:
        body["correlation_id"] = correlation_id
    return web.Response(status=status, body=dumps(body), content_type=PROBLEM_TYPE)


_HTTP_CODES = {
    404: "route_not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def edge_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Correlation id, error mapping, API key check, metrics and the summary log line."""
    started = time.perf_counter()
    service = request.app[SERVICE_NAME]
    correlation_id = _correlation_id(request.headers.get("X-Correlation-ID", ""))
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service, correlation_id=correlation_id)
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        check_request_text(request)
        if request.path.startswith("/v1/"):
            await authenticate(request)
        response = await handler(request)
    except MfaError as exc:
        response = problem(exc.status, exc.code, exc.detail, exc.title, **exc.extra)
        if "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = problem(exc.status, code, exc.text or exc.reason, exc.reason)
    except DATABASE_UNAVAILABLE as exc:
        log.error("dependency_unavailable", error=str(exc))
        response = problem(503, "unavailable", "A dependency is unavailable; try again shortly.")
    except Exception:
        log.exception("unhandled_error")
        response = problem(500, "internal_error", "Unexpected error; it has been logged.")
    response.headers["X-Correlation-ID"] = correlation_id
    elapsed = time.perf_counter() - started
    _requests_counted(service, request.method, route, response.status).inc()
    _latency_of(service, route).observe(elapsed)
    log.info(
        "http_request",
        method=request.method,
        route=route,
        status=response.status,
        duration_ms=round(elapsed * 1000, 2),
    )
    return response


# The metrics' children by label values: `labels()` takes a lock and builds a key on every call.
@functools.lru_cache(maxsize=1024)
def _requests_counted(service: str, method: str, route: str, status: int):
    return HTTP_REQUESTS.labels(service, method, route, str(status))


@functools.lru_cache(maxsize=256)
def _latency_of(service: str, route: str):
    return HTTP_LATENCY.labels(service, route)


def check_request_text(request: web.Request) -> None:
    """400 `invalid_characters` for a control character (U+0000 above all) in the path or a query value.

    One check at the edge, so no handler passes such text to the database (a 500) or to a log.
    """
    if CONTROL_CHARACTERS.search(request.path):
        raise BadRequest("The path holds a control character.", code="invalid_characters")
    for name, value in request.query.items():
        if CONTROL_CHARACTERS.search(name) or CONTROL_CHARACTERS.search(value):
            field = CONTROL_CHARACTERS.sub("\ufffd", name)[:100]
            raise BadRequest(f"The query parameter {field} holds a control character.", code="invalid_characters",
                             field=field)


def _correlation_id(sent: str) -> str:
    """The caller's `X-Correlation-ID` when it is a plain token, else a fresh one (the request still runs)."""
    return sent if _CORRELATION_ID.fullmatch(sent) else str(uuid.uuid4())


async def authenticate(request: web.Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Send 'Authorization: Bearer <api key>'.", code="missing_api_key")
    keys = request.app[RUNTIME].keys
    assert keys is not None
    principal = await keys.resolve(key.strip())
    if principal is None:
        raise Unauthorized("The API key is unknown or revoked.", code="invalid_api_key")
    request[PRINCIPAL] = principal
    structlog.contextvars.bind_contextvars(api_key_id=principal.key_id)
    return principal


def require_role(request: web.Request, *roles: str) -> Principal:
    """The caller's principal, or 403 `wrong_role` when its role is not one of `roles`."""
    principal: Principal = request[PRINCIPAL]
    if principal.role not in roles:
        raise Forbidden(f"This call needs an API key with role {' or '.join(roles)}.", code="wrong_role")
    return principal


def compile_schema(schema: dict) -> Callable[[Any], Any]:
    """Compile a request-body JSON Schema once (at import or app creation)."""
    return fastjsonschema.compile(schema)


async def read_json(request: web.Request, validate: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """The request body as a JSON object, checked against `validate`; 400 with a clear code otherwise."""
    raw = await read_body(request, MAX_BODY)
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = strictjson.loads(raw)
        except strictjson.UnstorableText as exc:
            raise BadRequest(
                f"The body holds U+0000 or an unpaired UTF-16 surrogate at {exc.path or 'the top level'}.",
                code="invalid_characters",
                **({"field": exc.path} if exc.path else {}),
            ) from exc
        except ValueError as exc:  # UnicodeDecodeError and too deep nesting included
            raise BadRequest(f"The body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.", code="invalid_json")
    if validate is not None:
        try:
            validate(body)
        except fastjsonschema.JsonSchemaValueException as exc:
            code, field = _schema_problem(exc)
            raise BadRequest(
                f"Invalid request: {exc.message}", code=code, **({"field": field} if field else {})
            ) from exc
        except fastjsonschema.JsonSchemaException as exc:
            raise BadRequest(f"Invalid request: {exc.message}", code="validation_failed") from exc
    return body


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes whether its length is declared or it comes chunked; 413 past it."""
    too_large = PayloadTooLarge(f"The body is larger than {limit} bytes.")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    while chunk := await request.content.read(READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


# fastjsonschema's failed keyword -> the problem code; any other keyword is `validation_failed`.
_SCHEMA_CODES = {"required": "missing_field", "additionalProperties": "unknown_field", "type": "wrong_type"}


def _schema_problem(exc: fastjsonschema.JsonSchemaValueException) -> tuple[str, str | None]:
    """The problem code and the path (`a.b[2].c`) of the member at fault, None for the body itself."""
    code = _SCHEMA_CODES.get(exc.rule or "", "validation_failed")
    # fastjsonschema names the failing value from "data", its name for the whole body: "data.b[2].c".
    path = (exc.name or "").removeprefix("data").removeprefix(".")
    member = None
    if isinstance(exc.value, dict) and isinstance(exc.definition, dict):
        # Both keywords fail on the object itself; its message lists the members only as a set.
        if code == "missing_field":
            member = next((k for k in exc.rule_definition or [] if k not in exc.value), None)
        elif code == "unknown_field":
            member = min((k for k in exc.value if k not in exc.definition.get("properties", {})), default=None)
    if member is not None:
        path = f"{path}.{member}" if path else member
    return code, path or None


# orjson encodes in C about ten times faster than json; datetimes and dataclasses are passed on
# to `default=str` as json.dumps did, so every answer keeps its form.
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(data: Any) -> bytes:
    """JSON of an answer body: orjson, or json for what orjson refuses (integers past 64 bits)."""
    try:
        return orjson.dumps(data, default=str, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(data, default=str).encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    """An `application/json` answer."""
    return web.Response(body=dumps(data), status=status, content_type="application/json", charset="utf-8")


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    checks = {"database": "ok", "broker": "ok"}
    try:
        await runtime.pool.fetchval("SELECT 1", timeout=2)
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if not runtime.broker_connected:
        checks["broker"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503)


def metrics_handler(*schemas: str):
    async def metrics(request: web.Request) -> web.Response:
        runtime = request.app[RUNTIME]
        try:
            for schema in schemas:
                await backlog(runtime.pool, schema)
        except Exception as exc:
            log.warning("backlog_unavailable", error=str(exc))
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


def create_base_app(runtime: Runtime, service: str, *schemas: str, client_max_size: int = MAX_BODY) -> web.Application:
    """An app with the shared middleware and /healthz, /readyz, /metrics; services add their routes.

    /metrics reports the outbox backlog of each of `schemas` (a service's own; `mfa relay`'s several).
    """
    app = web.Application(middlewares=[edge_middleware], client_max_size=client_max_size)
    app[RUNTIME] = runtime
    app[SERVICE_NAME] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(*schemas))
    return app


def current_correlation_id() -> str | None:
    """The correlation id bound for the request or message being handled."""
    return structlog.contextvars.get_contextvars().get("correlation_id")
