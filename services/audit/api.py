"""HTTP API of the audit log (role auditor): pages, NDJSON export, chain verification."""

from __future__ import annotations

import json
import re

import structlog
from aiohttp import web
from multidict import MultiDictProxy

from ..common.apikeys import Principal
from ..common.errors import BadRequest, NotFound
from ..common.logs import get_logger
from ..common.web import RUNTIME, current_correlation_id, json_response, require_role
from . import handlers
from .domain import DEFAULT_LIMIT, MAX_LIMIT, AuditRuleError, Entry, Filters, entry_json, parse_time

log = get_logger("audit.api")

NDJSON = "application/x-ndjson"
_PARAMS = {"company_id", "type", "account_id", "since", "until", "after", "limit"}
_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,99}$")
_MAX_TYPES = 50


def _single(query: MultiDictProxy[str], name: str) -> str | None:
    values = query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"Give '{name}' once.", code="invalid_parameter", parameter=name)
    return values[0] if values else None


def _id(query: MultiDictProxy[str], name: str) -> str | None:
    value = _single(query, name)
    if value is not None and not 1 <= len(value) <= 128:
        raise BadRequest(f"'{name}' must be 1 to 128 characters.", code="invalid_parameter", parameter=name)
    return value


def _time(query: MultiDictProxy[str], name: str):
    value = _single(query, name)
    if value is None:
        return None
    try:
        return parse_time(value)
    except AuditRuleError as exc:
        raise BadRequest(
            f"'{name}' must be an ISO 8601 timestamp such as 2024-05-01T12:00:00Z.",
            code="invalid_parameter",
            parameter=name,
        ) from exc


def parse_query(query: MultiDictProxy[str], principal: Principal, *, ndjson: bool) -> tuple[Filters, int | None]:
    """Filters and limit from the query string, narrowed to the caller's company.

    A company-bound key asking for another company gets 404, as if it did not exist.
    """
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise BadRequest(
            f"Unknown query parameter '{unknown[0]}'; use {', '.join(sorted(_PARAMS))}.",
            code="unknown_parameter",
            parameter=unknown[0],
        )
    company_id = _id(query, "company_id")
    if principal.company_id is not None:
        if company_id is not None and company_id != principal.company_id:
            raise NotFound("No such company.", code="company_not_found")
        company_id = principal.company_id
    types: list[str] = []
    for raw in query.getall("type", []):
        types.extend(t.strip() for t in raw.split(",") if t.strip())
    if len(types) > _MAX_TYPES or not all(_TYPE.match(t) for t in types):
        raise BadRequest(
            f"'type' takes up to {_MAX_TYPES} event types such as MfaDisabled, comma-separated.",
            code="invalid_parameter",
            parameter="type",
        )
    since, until = _time(query, "since"), _time(query, "until")
    if since is not None and until is not None and since >= until:
        raise BadRequest("'since' must be earlier than 'until'.", code="invalid_parameter", parameter="since")
    after_raw = _single(query, "after")
    after = 0
    if after_raw is not None:
        if not after_raw.isascii() or not after_raw.isdigit() or len(after_raw) > 18:
            raise BadRequest("'after' must be a cursor returned as next_cursor.", code="invalid_cursor", parameter="after")
        after = int(after_raw)
    limit_raw = _single(query, "limit")
    limit: int | None = None if ndjson else DEFAULT_LIMIT
    if limit_raw is not None:
        if not limit_raw.isascii() or not limit_raw.isdigit() or not 1 <= int(limit_raw) <= MAX_LIMIT:
            raise BadRequest(f"'limit' must be 1 to {MAX_LIMIT}.", code="invalid_parameter", parameter="limit")
        limit = int(limit_raw)
    filters = Filters(
        company_id=company_id,
        types=tuple(dict.fromkeys(types)),
        subject=_id(query, "account_id"),
        since=since,
        until=until,
        after=after,
    )
    return filters, limit


def _wants_ndjson(request: web.Request) -> bool:
    return NDJSON in request.headers.get("Accept", "")


async def list_events(request: web.Request) -> web.StreamResponse:
    """GET /v1/audit/events: a page of rows with a cursor, or every row as NDJSON."""
    principal = require_role(request, "auditor")
    ndjson = _wants_ndjson(request)
    filters, limit = parse_query(request.query, principal, ndjson=ndjson)
    structlog.contextvars.bind_contextvars(audit_company=filters.company_id, audit_format="ndjson" if ndjson else "json")
    if ndjson:
        return await _export(request, filters, limit)
    assert limit is not None
    pool = request.app[RUNTIME].pool
    entries, next_seq = await handlers.list_page(pool, filters, limit)
    next_cursor = None if next_seq is None else str(next_seq)
    # Rows are spliced in as stored, so what the client reads is byte for byte what was hashed.
    body = '{"events":[' + ",".join(entry_json(e) for e in entries) + '],"next_cursor":' + json.dumps(next_cursor) + "}"
    return web.Response(body=body.encode(), content_type="application/json")


async def _export(request: web.Request, filters: Filters, limit: int | None) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": NDJSON,
            "Cache-Control": "no-store",
            "X-Correlation-ID": current_correlation_id() or "",
        }
    )

    async def write(chunk: list[Entry]) -> None:
        # Prepared on the first chunk, so a failure before any row still gets a problem+json answer.
        if not response.prepared:
            await response.prepare(request)
        await response.write(("\n".join(entry_json(e) for e in chunk) + "\n").encode())

    pool = request.app[RUNTIME].pool
    assert pool is not None
    rows = 0
    try:
        rows = await handlers.export(pool, filters, limit, write)
        if not response.prepared:
            await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        log.info("audit_export_interrupted", reason="client_disconnected")
        return response
    except Exception:
        if not response.prepared:
            raise  # nothing sent yet: the edge answers with problem+json
        # Headers are out: the only honest signal left is to cut the stream short (no final chunk).
        log.exception("audit_export_failed")
        if request.transport is not None:
            request.transport.abort()
        return response
    structlog.contextvars.bind_contextvars(audit_rows=rows)
    return response


async def verify(request: web.Request) -> web.Response:
    """GET /v1/audit/verify: recompute the whole chain and name the first broken row."""
    principal = require_role(request, "auditor")
    pool = request.app[RUNTIME].pool
    assert pool is not None
    result = await handlers.verify(pool)
    broken = None
    if result.broken is not None:
        b = result.broken
        broken = {"seq": b.seq, "reason": b.reason, "detail": b.detail}
        # The row's id is shown only to whoever may see the row.
        if b.event_id is not None and principal.sees(b.company_id):
            broken["event_id"] = b.event_id
    body: dict = {"ok": result.ok, "first_broken": broken}
    if principal.company_id is None:
        # Sizes of the whole log are other tenants' business for a company-bound key.
        body["rows_checked"] = result.rows
        body["head"] = {"seq": result.head_seq, "hash": result.head_hash.hex()}
    return json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/audit/events", list_events)
    app.router.add_get("/v1/audit/verify", verify)
