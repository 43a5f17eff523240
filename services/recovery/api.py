"""HTTP in, JSON out: the recovery form and the helpdesk's ticket API."""

from __future__ import annotations

import dataclasses

from aiohttp import web

from ..common.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unavailable,
    UnsupportedMedia,
)
from ..common.events import Actor, iso
from ..common.multipart import multipart_parts, read_part
from ..common.web import (
    RUNTIME,
    compile_schema,
    current_correlation_id,
    json_response,
    read_json,
    require_role,
)
from . import handlers
from .domain import (
    AGENT_PATTERN,
    MAX_PHOTO_BYTES,
    PHOTO_EXTENSIONS,
    STATUSES,
    UNDECIDED,
    IntakeRequest,
    Photo,
    RateLimits,
    clean_company,
    clean_name,
    normalize_email,
    sniff_image,
    valid_email,
    valid_ip,
)
from .imaging import PhotoRejected, reencode_photo
from .workers import JobTimeout, ParsePool

LIMITS = web.AppKey("recovery_limits", RateLimits)
PARSERS = web.AppKey("recovery_parsers", ParsePool)
RATE_KEY = web.AppKey("recovery_rate_key", bytes)
TOKEN_KEY = web.AppKey("recovery_token_key", bytes)  # keys the hashes of console links and sessions
PUBLIC_URL = web.AppKey("recovery_public_url", str)

TEXT_FIELDS = ("email", "first_name", "last_name", "company_name", "ip")
REQUIRED_TEXT = ("email", "first_name", "last_name", "company_name")
MAX_TEXT_FIELD_BYTES = 1024
MAX_OTHER_PART_BYTES = 16 * 1024
MAX_FORM_BYTES = MAX_PHOTO_BYTES + 256 * 1024
# The form has six fields; a few unknown ones are tolerated, thousands of empty parts are not.
MAX_FORM_PARTS = 20

_AGENT = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": AGENT_PATTERN}
_validate_claim = compile_schema({
    "type": "object", "additionalProperties": False, "required": ["agent"],
    "properties": {"agent": _AGENT, "force": {"type": "boolean"}},
})
_validate_approve = compile_schema({
    "type": "object", "additionalProperties": False, "required": ["agent"],
    "properties": {"agent": _AGENT, "note": {"type": "string", "maxLength": 2000}},
})
_validate_helpdesk_session = compile_schema({
    "type": "object", "additionalProperties": False, "required": ["agent"], "properties": {"agent": _AGENT},
})
_validate_reject = compile_schema({
    "type": "object", "additionalProperties": False, "required": ["agent", "reason"],
    "properties": {"agent": _AGENT, "reason": {"type": "string", "minLength": 1, "maxLength": 2000, "pattern": r"\S"}},
})


async def read_form(request: web.Request, text_fields: tuple[str, ...] = TEXT_FIELDS) -> tuple[dict[str, str], bytes | None]:
    """The multipart form's `text_fields` and photo bytes, with limits on bytes and parts enforced while reading."""
    if request.content_type != "multipart/form-data":
        raise UnsupportedMedia("Send the request as multipart/form-data.", code="multipart_required")
    fields: dict[str, str] = {}
    photo: bytes | None = None
    other = 0
    too_large = PayloadTooLarge(f"The form is larger than {MAX_FORM_BYTES} bytes; the photo may be 10 MB at most.",
                                code="photo_too_large")
    async for part in multipart_parts(request, max_bytes=MAX_FORM_BYTES, max_parts=MAX_FORM_PARTS,
                                      too_large=too_large):
        name = part.name or ""
        if name == "photo":
            if photo is not None:
                raise BadRequest("Send one photo.", code="duplicate_field", field="photo")
            photo = await read_part(part, MAX_PHOTO_BYTES, PayloadTooLarge(
                "The photo is larger than 10 MB.", code="photo_too_large"))
        elif name in text_fields:
            if name in fields:
                raise BadRequest(f"The field {name} is sent twice.", code="duplicate_field", field=name)
            raw = await read_part(part, MAX_TEXT_FIELD_BYTES, BadRequest(
                f"The field {name} is too long.", code="field_too_long", field=name))
            try:
                fields[name] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadRequest(f"The field {name} is not UTF-8.", code="invalid_characters", field=name) from exc
        else:
            other += len(await read_part(part, MAX_OTHER_PART_BYTES, PayloadTooLarge(
                f"Unexpected part {name[:50]!r} is too large.", code="payload_too_large")))
            if other > MAX_OTHER_PART_BYTES:
                raise PayloadTooLarge("Too much unexpected data in the form.", code="payload_too_large")
    return fields, photo


def form_request(fields: dict[str, str], photo: bytes | None, remote: str | None) -> IntakeRequest:
    """Check the form's fields; a clear 400/415 for anything a ticket cannot be opened with."""
    missing = [f for f in REQUIRED_TEXT if not fields.get(f, "").strip()]
    if not photo:
        missing.append("photo")
    if missing:
        raise BadRequest(f"Missing fields: {', '.join(missing)}.", code="missing_field", missing=missing)
    email = fields["email"].strip()
    if not valid_email(email):
        raise BadRequest("The email is not a valid address.", code="invalid_email", field="email")
    names = {}
    for field in ("first_name", "last_name"):
        names[field] = clean_name(fields[field])
        if names[field] is None:
            raise BadRequest(f"The {field.replace('_', ' ')} holds characters a name cannot have.",
                             code="invalid_name", field=field)
    company = clean_company(fields["company_name"])
    if company is None:
        raise BadRequest("The company name is too long or holds control characters.", code="invalid_company_name",
                         field="company_name")
    ip = fields.get("ip", "").strip()
    if ip and not valid_ip(ip):
        raise BadRequest("The ip is not an IP address.", code="invalid_ip", field="ip")
    assert photo is not None
    kind = sniff_image(photo)
    if kind is None:
        raise UnsupportedMedia("The photo must be a JPEG, PNG or HEIC image.", code="unsupported_photo_type")
    return IntakeRequest(
        channel="form",
        email=email,
        first_name=names["first_name"] or "",
        last_name=names["last_name"] or "",
        company_name=company,
        photo=Photo(photo, kind),
        reply_to=email,
        sender=normalize_email(email),
        ip=ip or remote or "",
    )


async def checked_photo(parsers: ParsePool, data: bytes) -> Photo:
    """The photo decoded and re-encoded in the parse pool (no EXIF left); 400/413 when it is no usable image."""
    try:
        return await parsers.run(reencode_photo, data)
    except PhotoRejected as exc:
        if exc.code == "photo_too_large":
            raise PayloadTooLarge(exc.detail, code="photo_too_large") from exc
        if exc.code == "photo_unsupported_type":
            raise UnsupportedMedia(exc.detail, code="unsupported_photo_type") from exc
        raise BadRequest(exc.detail, code="photo_not_an_image", field="photo") from exc
    except JobTimeout as exc:
        raise Unavailable("The photo could not be checked in time; try again shortly.", code="intake_busy",
                          retry_after=30) from exc


async def submit_form(request: web.Request, fields: dict[str, str], photo: bytes | None, *, actor: Actor,
                      scope_company_id: str | None = None) -> handlers.IntakeResult:
    """A form's request from field checks to ticket: checks, rate limit, photo decoding, `open_ticket`.

    One path for the API and the public page `/recover`: the same 400/413/415/429 codes, the same
    ticket as a mail opens, and an answer that never says whether an account matched.
    """
    intake = form_request(fields, photo, request.remote)
    pool = request.app[RUNTIME].pool
    retry_after = await handlers.check_rate_limit(pool, request.app[RATE_KEY], request.app[LIMITS], intake)
    if retry_after is not None:
        raise TooManyRequests("Too many recovery requests; try again later.", code="rate_limited",
                              retry_after=retry_after)
    assert photo is not None  # form_request insists on one
    intake = dataclasses.replace(intake, photo=await checked_photo(request.app[PARSERS], photo))
    return await handlers.open_ticket(pool, intake, actor=actor, correlation_id=current_correlation_id(),
                                      scope_company_id=scope_company_id)


async def create_request(request: web.Request) -> web.Response:
    """POST /v1/recovery-requests: the same 202 whether or not the account exists."""
    principal = require_role(request, "service", "helpdesk")
    fields, photo = await read_form(request)
    result = await submit_form(request, fields, photo, actor=Actor("api_key", principal.key_id),
                               scope_company_id=principal.company_id)
    return json_response({"ticket_id": result.ticket_id}, status=202)


async def create_helpdesk_session(request: web.Request) -> web.Response:
    """POST /v1/helpdesk-sessions {agent}: a single-use sign-in link to the helpdesk console."""
    principal = require_role(request, "helpdesk")
    body = await read_json(request, _validate_helpdesk_session)
    link = await handlers.issue_helpdesk_link(request.app[RUNTIME].pool, request.app[TOKEN_KEY],
                                              request.app[PUBLIC_URL], body["agent"], principal)
    return json_response({"url": link.url, "expires_at": iso(link.expires_at)}, status=201)


def _ticket_id(request: web.Request) -> str:
    ticket_id = request.match_info["ticket_id"]
    if len(ticket_id) > 128:
        raise NotFound("No such recovery ticket.", code="ticket_not_found")
    return ticket_id


async def list_tickets(request: web.Request) -> web.Response:
    """GET /v1/recovery-tickets?status=open&limit=&after=: the queue, oldest first."""
    principal = require_role(request, "helpdesk")
    raw_status = request.query.get("status", ",".join(UNDECIDED))
    statuses = [s.strip() for s in raw_status.split(",") if s.strip()]
    if not statuses or any(s not in STATUSES for s in statuses):
        raise BadRequest(f"status must be a comma-separated list of {', '.join(STATUSES)}.", code="invalid_status")
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 200:
        raise BadRequest("limit must be a whole number from 1 to 200.", code="invalid_limit")
    page = await handlers.list_tickets(request.app[RUNTIME].pool, principal, statuses=statuses,
                                       after=request.query.get("after") or None, limit=limit)
    return json_response(page)


async def get_ticket(request: web.Request) -> web.Response:
    """GET /v1/recovery-tickets/{id}: the ticket, its photo's state and the matched account."""
    principal = require_role(request, "helpdesk")
    return json_response(await handlers.get_ticket(request.app[RUNTIME].pool, _ticket_id(request), principal))


async def get_photo(request: web.Request) -> web.Response:
    """GET /v1/recovery-tickets/{id}/photo: the image, never cached."""
    principal = require_role(request, "helpdesk")
    ticket_id = _ticket_id(request)
    data, content_type = await handlers.get_photo(request.app[RUNTIME].pool, ticket_id, principal)
    return web.Response(body=data, content_type=content_type, headers={
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f'inline; filename="ticket-{ticket_id}.{PHOTO_EXTENSIONS.get(content_type, "bin")}"',
    })


async def claim_ticket(request: web.Request) -> web.Response:
    """POST /v1/recovery-tickets/{id}/claim {agent, force?}."""
    principal = require_role(request, "helpdesk")
    body = await read_json(request, _validate_claim)
    view = await handlers.claim(request.app[RUNTIME].pool, _ticket_id(request), principal, agent=body["agent"],
                                force=body.get("force", False))
    return json_response(view)


async def _decide(request: web.Request, action: str) -> web.Response:
    principal = require_role(request, "helpdesk")
    body = await read_json(request, _validate_approve if action == "approve" else _validate_reject)
    text = body.get("note", "") if action == "approve" else body["reason"]
    view = await handlers.decide(request.app[RUNTIME].pool, _ticket_id(request), principal, action=action,
                                 agent=body["agent"], text=text, actor=Actor("api_key", principal.key_id),
                                 correlation_id=current_correlation_id())
    return json_response(view)


async def approve_ticket(request: web.Request) -> web.Response:
    """POST /v1/recovery-tickets/{id}/approve {agent, note}: auth resets the account's MFA."""
    return await _decide(request, "approve")


async def reject_ticket(request: web.Request) -> web.Response:
    """POST /v1/recovery-tickets/{id}/reject {agent, reason}: the requester is told why."""
    return await _decide(request, "reject")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/recovery-requests", create_request)
    app.router.add_post("/v1/helpdesk-sessions", create_helpdesk_session)
    app.router.add_get("/v1/recovery-tickets", list_tickets)
    app.router.add_get("/v1/recovery-tickets/{ticket_id}", get_ticket)
    app.router.add_get("/v1/recovery-tickets/{ticket_id}/photo", get_photo)
    app.router.add_post("/v1/recovery-tickets/{ticket_id}/claim", claim_ticket)
    app.router.add_post("/v1/recovery-tickets/{ticket_id}/approve", approve_ticket)
    app.router.add_post("/v1/recovery-tickets/{ticket_id}/reject", reject_ticket)
