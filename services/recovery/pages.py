"""The recovery service's hosted pages: the public recovery form and the helpdesk console.

- `/recover`: the seed's helpdesk request as a page, for someone nobody can let in. It goes
  through the same intake as the API (`api.submit_form`): the same checks, rate limits and ticket,
  and the same answer whether or not an account matched.
- `/mfa/helpdesk/...`: the console an agent signs in to with a single-use link
  (`POST /v1/helpdesk-sessions`, `mfa helpdesk-link`). The agent's name comes from the session,
  never from a form; claims and decisions are the API's use cases (`handlers.claim`, `handlers.decide`).

`services.common.pages` gives both their templates, language, security headers and CSRF checks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..common.errors import Conflict, MfaError
from ..common.events import parse_time
from ..common.i18n import format_moment
from ..common.pages import (
    PAGES,
    PageError,
    Pages,
    add_static,
    new_token,
    origin_of,
    redirect,
    refuse_cross_site,
)
from ..common.web import RUNTIME, current_correlation_id
from . import handlers
from .api import TOKEN_KEY, read_form, submit_form
from .domain import UNDECIDED
from .store import HelpdeskSession

RECOVER_PATH = "/recover"
RECOVER_COOKIE = "mfa_recover"
RECOVER_COOKIE_AGE = 2 * 3600
CONSOLE = "/mfa/helpdesk"
CONSOLE_COOKIE = "mfa_helpdesk"
# The form's own fields; `ip` is not one of them: a person may not choose which IP is counted.
RECOVER_FIELDS = ("email", "first_name", "last_name", "company_name", "csrf")
# Intake refusals the form explains in the person's language (others get `recover.error.unreadable`).
FORM_ERRORS = {
    "missing_field", "invalid_email", "invalid_name", "invalid_company_name", "photo_too_large",
    "unsupported_photo_type", "photo_not_an_image", "rate_limited", "intake_busy",
}
FIELD_OF_ERROR = {"invalid_email": "email", "invalid_company_name": "company_name", "photo_too_large": "photo",
                  "unsupported_photo_type": "photo", "photo_not_an_image": "photo"}
NOTICES = {"claimed", "approved", "rejected"}
QUEUE_PAGE = 50


def _pages(request: web.Request) -> Pages:
    return request.app[PAGES]


def _text(request: web.Request, key: str, **values: Any) -> str:
    pages = _pages(request)
    return pages.catalogue.text(pages.locale(request), key, **values)


# ---- the public recovery form ------------------------------------------------------------------

def _recover_cookie(request: web.Request) -> tuple[str, bool]:
    """The form's CSRF cookie (a random value of its own: there is no sign-in here), and whether it is new."""
    cookie = request.cookies.get(RECOVER_COOKIE, "")
    if 20 <= len(cookie) <= 100:
        return cookie, False
    return new_token(), True


def _recover_page(request: web.Request, *, values: dict[str, str] | None = None, error: str | None = None,
                  field: str | None = None, status: int = 200) -> web.Response:
    cookie, fresh = _recover_cookie(request)
    response = _pages(request).render(
        request, "recover.html", status=status, session=cookie, values=values or {}, error=error,
        invalid=field, notice=None, helpdesk_email=request.app[RUNTIME].settings.helpdesk_email,
    )
    if fresh:
        _pages(request).set_cookie(response, RECOVER_COOKIE, cookie, max_age=RECOVER_COOKIE_AGE, path=RECOVER_PATH)
    return response


async def recover_page(request: web.Request) -> web.StreamResponse:
    """GET /recover: the form, or (after a POST) the one answer every request gets."""
    if request.query.get("sent") == "1":
        return _pages(request).render(request, "recover_sent.html")
    return _recover_page(request)


def _form_error(request: web.Request, exc: MfaError) -> tuple[str, str | None]:
    """The sentence for an intake refusal, and the field it concerns."""
    code = exc.code if exc.code in FORM_ERRORS else "unreadable"
    if code == "rate_limited":
        minutes = max(1, -(-int(exc.extra.get("retry_after") or 60) // 60))
        return _text(request, "recover.error.rate_limited", minutes=minutes), None
    if code == "missing_field":
        missing = exc.extra.get("missing") or []
        names = ", ".join(_text(request, f"recover.field.{m}") for m in missing if m in _FIELD_KEYS)
        return _text(request, "recover.error.missing_field", fields=names), (missing[0] if missing else None)
    field = FIELD_OF_ERROR.get(code) or exc.extra.get("field")
    return _text(request, f"recover.error.{code}"), field


_FIELD_KEYS = {"email", "first_name", "last_name", "company_name", "photo"}


async def recover_post(request: web.Request) -> web.StreamResponse:
    """POST /recover (multipart): the same intake as the API; 303 to the one answer, or the form with why."""
    pages = _pages(request)
    # A cross-site post is refused before a byte of the body is read.
    refuse_cross_site(request, origin_of(pages.public_url))
    fields: dict[str, str] = {}
    try:
        fields, photo = await read_form(request, RECOVER_FIELDS)
        pages.check_csrf(request, request.cookies.get(RECOVER_COOKIE), fields.pop("csrf", None))
        await submit_form(request, fields, photo, actor=handlers.FORM_ACTOR)
    except MfaError as exc:
        if exc.status >= 500 and exc.code != "intake_busy":
            raise
        message, field = _form_error(request, exc)
        shown = {k: v for k, v in fields.items() if k in _FIELD_KEYS}
        status = 429 if exc.code == "rate_limited" else exc.status if exc.status in (413, 415, 503) else 422
        response = _recover_page(request, values=shown, error=message, field=field, status=status)
        if exc.code in ("rate_limited", "intake_busy") and exc.extra.get("retry_after"):
            response.headers["Retry-After"] = str(exc.extra["retry_after"])
        return response
    lang = request.query.get("lang")
    return redirect(f"{RECOVER_PATH}?sent=1" + (f"&lang={lang}" if lang in ("en", "nl") else ""))


# ---- the helpdesk console ----------------------------------------------------------------------

async def _session(request: web.Request) -> tuple[HelpdeskSession, str]:
    cookie = request.cookies.get(CONSOLE_COOKIE, "")
    session = await handlers.helpdesk_session(request.app[RUNTIME].pool, request.app[TOKEN_KEY], cookie)
    return session, cookie


def _console(request: web.Request, template: str, session: HelpdeskSession, cookie: str, *, status: int = 200,
             **context: Any) -> web.Response:
    pages = _pages(request)
    notice = request.query.get("notice")
    context.setdefault("error", None)
    context.setdefault("notice", _text(request, f"helpdesk.notice.{notice}") if notice in NOTICES else None)
    lang = pages.locale(request)
    return pages.render(request, template, status=status, session=cookie, agent=session.agent,
                        session_ends=format_moment(session.expires_at, lang),
                        age=lambda value: age_text(pages, lang, value), moment=lambda value: _moment(value, lang),
                        **context)


def _moment(value: Any, lang: str) -> str:
    return format_moment(parse_time(value) if isinstance(value, str) else value, lang) if value else ""


def age_text(pages: Pages, lang: str, value: Any, now: datetime | None = None) -> str:
    """How long ago `value` was, as an agent reads a queue: minutes, hours and minutes, or days and hours."""
    moment = parse_time(value) if isinstance(value, str) else value
    minutes = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds() // 60))
    if minutes < 60:
        return pages.catalogue.text(lang, "helpdesk.age_minutes", minutes=minutes)
    if minutes < 48 * 60:
        return pages.catalogue.text(lang, "helpdesk.age_hours", hours=minutes // 60, minutes=minutes % 60)
    return pages.catalogue.text(lang, "helpdesk.age_days", days=minutes // 1440, hours=minutes // 60 % 24)


async def console_page(request: web.Request) -> web.StreamResponse:
    """GET /mfa/helpdesk: exchange a sign-in link's token for the cookie, else the open queue, oldest first."""
    pages = _pages(request)
    if "token" in request.query:
        session, expires = await handlers.open_helpdesk_link(request.app[RUNTIME].pool, request.app[TOKEN_KEY],
                                                             request.query["token"])
        lang = request.query.get("lang")
        response = redirect(CONSOLE + (f"?lang={lang}" if lang in ("en", "nl") else ""))
        max_age = int((expires - datetime.now(UTC)).total_seconds())
        pages.set_cookie(response, CONSOLE_COOKIE, session, max_age=max_age, path=CONSOLE)
        return response
    session, cookie = await _session(request)
    principal, _ = handlers.agent_of(session)
    after = request.query.get("after") or None
    queue = await handlers.list_tickets(request.app[RUNTIME].pool, principal, statuses=list(UNDECIDED),
                                        after=after, limit=QUEUE_PAGE)
    return _console(request, "helpdesk_queue.html", session, cookie, tickets=queue["tickets"],
                    next_url=f"{CONSOLE}?after={queue['next']}" if queue["next"] else None,
                    first_url=CONSOLE if after else None)


def _ticket_id(request: web.Request) -> str:
    ticket_id = request.match_info["ticket_id"]
    if len(ticket_id) > 128:
        raise PageError(404, "ticket_not_found")
    return ticket_id


async def _show_ticket(request: web.Request, session: HelpdeskSession, cookie: str, ticket_id: str, *,
                       error: str | None = None, status: int = 200) -> web.Response:
    principal, _ = handlers.agent_of(session)
    view = await handlers.get_ticket(request.app[RUNTIME].pool, ticket_id, principal)
    return _console(request, "helpdesk_ticket.html", session, cookie, status=status, error=error, t=view,
                    mine=view["claimed_by"] == session.agent, decided=view["status"] not in UNDECIDED,
                    base=f"{CONSOLE}/tickets/{view['ticket_id']}")


async def ticket_page(request: web.Request) -> web.StreamResponse:
    session, cookie = await _session(request)
    return await _show_ticket(request, session, cookie, _ticket_id(request))


async def ticket_photo(request: web.Request) -> web.StreamResponse:
    """The photo, to the signed-in agent only; never cached (the middleware adds `no-store`)."""
    session, _ = await _session(request)
    principal, _ = handlers.agent_of(session)
    data, content_type = await handlers.get_photo(request.app[RUNTIME].pool, _ticket_id(request), principal)
    return web.Response(body=data, content_type=content_type, headers={"Content-Disposition": "inline"})


def _refusal(request: web.Request, exc: MfaError) -> str:
    key = f"helpdesk.refused.{exc.code}"
    if key not in _pages(request).catalogue.keys("en"):
        key = "helpdesk.refused.general"
    return _text(request, key, agent=exc.extra.get("claimed_by") or "")


async def ticket_claim(request: web.Request) -> web.StreamResponse:
    session, cookie = await _session(request)
    await _pages(request).form(request, cookie)
    principal, _ = handlers.agent_of(session)
    ticket_id = _ticket_id(request)
    try:
        await handlers.claim(request.app[RUNTIME].pool, ticket_id, principal, agent=session.agent)
    except Conflict as exc:
        return await _show_ticket(request, session, cookie, ticket_id, error=_refusal(request, exc), status=409)
    return redirect(f"{CONSOLE}/tickets/{ticket_id}?notice=claimed")


async def _decide(request: web.Request, action: str) -> web.StreamResponse:
    session, cookie = await _session(request)
    form = await _pages(request).form(request, cookie)
    principal, actor = handlers.agent_of(session)
    ticket_id = _ticket_id(request)
    field = "note" if action == "approve" else "reason"
    text = form.get(field, "").strip()
    if action == "reject" and not text:
        return await _show_ticket(request, session, cookie, ticket_id, status=422,
                                  error=_text(request, "helpdesk.reason_required"))
    if len(text) > 2000:
        return await _show_ticket(request, session, cookie, ticket_id, status=422,
                                  error=_text(request, "helpdesk.text_too_long"))
    try:
        await handlers.decide(request.app[RUNTIME].pool, ticket_id, principal, action=action, agent=session.agent,
                              text=text, actor=actor, correlation_id=current_correlation_id())
    except Conflict as exc:
        return await _show_ticket(request, session, cookie, ticket_id, error=_refusal(request, exc), status=409)
    return redirect(f"{CONSOLE}/tickets/{ticket_id}?notice={'approved' if action == 'approve' else 'rejected'}")


async def ticket_approve(request: web.Request) -> web.StreamResponse:
    return await _decide(request, "approve")


async def ticket_reject(request: web.Request) -> web.StreamResponse:
    return await _decide(request, "reject")


async def search_page(request: web.Request) -> web.StreamResponse:
    """GET /mfa/helpdesk/search?email=: the directory copy by email, for a ticket that matched no account."""
    session, cookie = await _session(request)
    principal, _ = handlers.agent_of(session)
    email = request.query.get("email", "")[:254]
    hits = await handlers.search_directory(request.app[RUNTIME].pool, principal, email) if email else []
    return _console(request, "helpdesk_search.html", session, cookie, email=email, hits=hits,
                    searched=bool(email), back=request.query.get("ticket", "")[:128])


async def sign_out(request: web.Request) -> web.StreamResponse:
    session, cookie = await _session(request)
    await _pages(request).form(request, cookie)
    await handlers.sign_out(request.app[RUNTIME].pool, request.app[TOKEN_KEY], cookie)
    response = _pages(request).render(request, "helpdesk_signed_out.html", languages=[])
    _pages(request).clear_cookie(response, CONSOLE_COOKIE, path=CONSOLE)
    return response


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(RECOVER_PATH, recover_page)
    r.add_post(RECOVER_PATH, recover_post)
    r.add_get(CONSOLE, console_page)
    r.add_get(f"{CONSOLE}/search", search_page)
    r.add_post(f"{CONSOLE}/sign-out", sign_out)
    r.add_get(f"{CONSOLE}/tickets/{{ticket_id}}", ticket_page)
    r.add_get(f"{CONSOLE}/tickets/{{ticket_id}}/photo", ticket_photo)
    r.add_post(f"{CONSOLE}/tickets/{{ticket_id}}/claim", ticket_claim)
    r.add_post(f"{CONSOLE}/tickets/{{ticket_id}}/approve", ticket_approve)
    r.add_post(f"{CONSOLE}/tickets/{{ticket_id}}/reject", ticket_reject)
    add_static(app)

