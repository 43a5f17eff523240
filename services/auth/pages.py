"""The auth service's hosted pages (HTML): the prompt, the emailed links and "My login".

They sit beside `api.py` over the same use cases; `services.common.pages` gives them their
templates, language, security headers and CSRF checks. Paths live under `/mfa/`.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import segno
from aiohttp import web

from ..common.errors import BadRequest, Conflict, Gone, MfaError, TooManyRequests, Unauthorized
from ..common.events import iso, parse_time
from ..common.pages import PAGES, PageError, Pages, add_static, origin_of, redirect
from . import domain
from .api import AUTH
from .handlers import backup_email, disable, enrolment, logins, prompt, replacement
from .handlers.context import Auth, now
from .handlers.prompt import PORTAL, PROMPT
from .store import PageSession, PageView

LINK_COOKIE = "mfa_link"
CONFIRM_COOKIE = "mfa_confirm"
TOKEN_COOKIE_AGE = 15 * 60
# Notices a redirect may ask a page to show (`?notice=`): only these keys, never free text.
NOTICES = {"reenroll", "email_sent", "mfa_off", "enrolled", "codes_saved", "replaced"}


def auth_of(request: web.Request) -> Auth:
    """The auth use cases' context of the app serving `request`."""
    return request.app[AUTH]


def pages_of(request: web.Request) -> Pages:
    """The page plumbing (templates, catalogue, cookies, CSRF) of the app serving `request`."""
    return request.app[PAGES]


def render_page(request: web.Request, template: str, account: Any, *, session: str | None = None,
                return_to: str | None = None, status: int = 200, **context: Any) -> web.Response:
    """A page for `account`: its language and company name; forms may lead on to `return_to`'s site."""
    pages = pages_of(request)
    notice = request.query.get("notice")
    context.setdefault("error", None)
    context.setdefault("notice", pages.catalogue.text(pages.locale(request, account.locale), f"notice.{notice}")
                       if notice in NOTICES else None)
    return pages.render(
        request, template, status=status, locale=pages.locale(request, account.locale),
        company_name=account.company_name, session=session, time_zone=account.time_zone,
        form_targets=[origin_of(return_to)] if return_to else (), **context,
    )


def text_of(request: web.Request, account: Any, key: str, **values: Any) -> str:
    """The catalogue text of `key` in the language the page for `account` is shown in."""
    pages = pages_of(request)
    return pages.catalogue.text(pages.locale(request, account.locale), key, **values)


def _moment(request: web.Request, account: Any, value: Any) -> str:
    from ..common.i18n import format_moment

    moment = parse_time(value) if isinstance(value, str) else value
    return format_moment(moment, pages_of(request).locale(request, account.locale), account.time_zone)


@dataclass(frozen=True)
class LinkPages:
    """Pages opened by a single-use link (the prompt, "My login", the admin pages): one kind of page
    session, the cookie that carries it, and `home`, the page the link lands on once its token is a cookie."""

    kind: str
    cookie: str
    home: str

    async def session(self, request: web.Request) -> tuple[PageSession, str]:
        """The live session of this kind from the request's cookie (410 without one), and the cookie."""
        cookie = request.cookies.get(self.cookie, "")
        return await prompt.session_of(auth_of(request), self.kind, cookie), cookie

    async def exchange(self, request: web.Request) -> web.Response:
        """The first GET of a link: its token becomes the session cookie, then `home` without it."""
        session, expires = await prompt.open_link(auth_of(request), self.kind, request.query["token"])
        lang = request.query.get("lang")
        response = redirect(self.home + (f"?lang={lang}" if lang in ("en", "nl") else ""))
        max_age = max(60, int((expires - now()).total_seconds()))
        pages_of(request).set_cookie(response, self.cookie, session, max_age=max_age)
        return response

    async def view(self, request: web.Request) -> tuple[PageView, str]:
        """The live session of this kind with its account and login (410 without one), and the cookie.

        One read, or none for the GET a link's exchange redirected to (`prompt.view_of`).
        """
        cookie = request.cookies.get(self.cookie, "")
        return await prompt.view_of(auth_of(request), self.kind, cookie, page=request.method == "GET"), cookie

    async def entry(self, request: web.Request, show: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        """`home` itself: the link's exchange while the token is in the URL, else `show`(request)."""
        if "token" in request.query:
            return await self.exchange(request)
        return await show(request)


async def _enrollment(auth: Auth, session: PageSession) -> str:
    """The key to show grouped for typing: the pending one on a reload, else a new enrolment's."""
    secret = await prompt.pending_secret(auth, session.account_id)
    if secret is None:
        secret = (await enrolment.start_enrollment(auth, prompt.person(session), session.account_id))["secret"]
    return domain.group_secret(secret)


def page_error(account: Any, exc: MfaError) -> PageError:
    """A use case's refusal as the page of its code, with the account's company and language."""
    return PageError(exc.status, exc.code, company_name=account.company_name, locale=account.locale, **exc.extra)


def _qr(uri: str) -> web.Response:
    buf = io.BytesIO()
    segno.make(uri, error="m").save(buf, kind="svg", scale=5, border=4)
    return web.Response(body=buf.getvalue(), content_type="image/svg+xml")


# ---- the prompt ------------------------------------------------------------------------------

PROMPT_PAGES = LinkPages(PROMPT, "mfa_prompt", "/mfa/prompt")


async def prompt_page(request: web.Request) -> web.StreamResponse:
    return await PROMPT_PAGES.entry(request, _prompt_home)


async def _prompt_home(request: web.Request) -> web.StreamResponse:
    return await _show_prompt(request, *await PROMPT_PAGES.view(request))


async def _show_prompt(request: web.Request, view: PageView, cookie: str, *, error: str | None = None,
                       status: int = 200) -> web.StreamResponse:
    """Whatever the login needs now: a code, an enrolment, or the way back once it is done."""
    session, login, account = view.session, view.login, view.account
    assert login is not None  # a prompt session's login (`view_of`)
    back = {"back_url": session.return_to}
    locked_until = domain.lock_in_force(account.locked_until, now())
    if login.status == "succeeded":
        return redirect(prompt.success_url(session.return_to, session.state, login.login_id))
    if login.status == "failed" and locked_until:
        raise PageError(429, "mfa_locked", company_name=account.company_name, locale=account.locale,
                        locked_until=iso(locked_until), time_zone=account.time_zone, **back)
    if login.status == "failed":
        raise PageError(403, "login_failed", company_name=account.company_name, locale=account.locale, **back)
    if login.expires_at <= now():
        raise PageError(410, "login_expired", company_name=account.company_name, locale=account.locale, **back)
    if login.decision == "enroll":
        shown = await _enrollment(auth_of(request), session)
        return render_page(request, "enroll.html", account, session=cookie, return_to=session.return_to, status=status,
                           error=error, mandatory=True, qr_url="/mfa/prompt/qr.svg", action="/mfa/prompt/enroll",
                           secret_grouped=shown, back_url=None)
    if login.decision != "verify":
        raise PageError(403, "login_failed", company_name=account.company_name, locale=account.locale, **back)
    backup_email = domain.mask_email(account.backup_address) if account.backup_verified_at else None
    return render_page(request, "verify.html", account, session=cookie, return_to=session.return_to, status=status,
                       error=error, locked_until=locked_until, backup_email=backup_email)


async def _show_prompt_again(request: web.Request, *, error: str | None = None,
                             status: int = 200) -> web.StreamResponse:
    """The prompt as it is after a form changed the login: read again."""
    return await _show_prompt(request, *await PROMPT_PAGES.view(request), error=error, status=status)


def _code_error(request: web.Request, account: Any, exc: MfaError) -> str:
    """The sentence for a refused code: how many tries are left, or until when it is locked."""
    if exc.code == "mfa_locked" or "locked_until" in exc.extra and exc.extra.get("locked_until"):
        return text_of(request, account, "verify.locked", until=_moment(request, account, exc.extra["locked_until"]))
    if exc.code == "invalid_code_format":
        return text_of(request, account, "error.invalid_code_format.body")
    if exc.code == "invalid_code":
        return text_of(request, account, "enroll.wrong_code")
    left = exc.extra.get("attempts_left")
    key = "verify.replayed" if exc.code == "replayed_code" else "verify.wrong_code"
    return text_of(request, account, key, left=left if left is not None else "")


async def prompt_code(request: web.Request) -> web.StreamResponse:
    cookie = request.cookies.get(PROMPT_PAGES.cookie, "")
    # A right code needs only the lean read and the claim; a page shown after a refusal reads its view.
    auth = auth_of(request)
    session_hash, session, known = await prompt.verify_of(auth, cookie)
    form = await pages_of(request).form(request, cookie)
    code = "".join(form.get("code", "").split())
    try:
        try:
            await logins.verify_login(auth, prompt.person(session), session.login_id, "totp", code,
                                      known=known, assertion=False)
        finally:
            auth.opened.forget(session_hash)  # whatever the outcome, the exchange's read is old now
    except (Unauthorized, BadRequest, TooManyRequests) as exc:
        if exc.code == "login_failed":
            return await _show_prompt_again(request)
        view, cookie = await PROMPT_PAGES.view(request)
        return await _show_prompt(request, view, cookie, error=_code_error(request, view.account, exc), status=422)
    except Conflict:
        return await _show_prompt_again(request)  # finished or changed meanwhile: the prompt shows what is true now
    return redirect(prompt.success_url(session.return_to, session.state, session.login_id))


async def prompt_backup_page(request: web.Request) -> web.StreamResponse:
    return await _backup_page(request, *await PROMPT_PAGES.view(request))


async def _backup_page(request: web.Request, view: PageView, cookie: str, *, error: str | None = None,
                       status: int = 200) -> web.StreamResponse:
    login, account = view.login, view.account
    assert login is not None
    if login.status != "pending" or login.decision != "verify":
        return await _show_prompt(request, view, cookie)
    return render_page(request, "backup_code.html", account, session=cookie, return_to=view.session.return_to,
                       status=status, error=error, forced=account.forced, action="/mfa/prompt/backup-code",
                       submit_key="backup.submit", back_url="/mfa/prompt", back_key="backup.back_to_code")


async def prompt_backup(request: web.Request) -> web.StreamResponse:
    view, cookie = await PROMPT_PAGES.view(request)
    form = await pages_of(request).form(request, cookie)
    try:
        result = await logins.verify_login(auth_of(request), prompt.person(view.session), view.session.login_id,
                                             "backup_code", form.get("backup_code", ""), assertion=False)
    except (Unauthorized, BadRequest, TooManyRequests) as exc:
        if exc.code == "login_failed":
            return await _show_prompt_again(request)
        if exc.code in ("wrong_code", "replayed_code"):
            message = text_of(request, view.account, "backup.wrong", left=exc.extra.get("attempts_left", ""))
        elif exc.code == "invalid_code_format":
            message = text_of(request, view.account, "backup.format")
        else:
            message = _code_error(request, view.account, exc)
        return await _backup_page(request, *await PROMPT_PAGES.view(request), error=message, status=422)
    except Conflict:
        return await _show_prompt_again(request)
    if result.get("result") == "enroll":
        return redirect("/mfa/prompt?notice=reenroll")
    return await _show_prompt_again(request)


async def prompt_email_link(request: web.Request) -> web.StreamResponse:
    view, cookie = await PROMPT_PAGES.view(request)
    await pages_of(request).form(request, cookie)
    try:
        await logins.send_login_link(auth_of(request), prompt.person(view.session), view.session.login_id)
    except (Conflict, TooManyRequests) as exc:
        if exc.code in ("too_many_links", "no_backup_email", "mfa_locked"):
            account = view.account
            return await _show_prompt_again(request, status=422,
                                            error=text_of(request, account, f"error.{exc.code}.body",
                                                          until=_moment(request, account, exc.extra["locked_until"])
                                                          if exc.extra.get("locked_until") else ""))
        return await _show_prompt_again(request)
    return redirect("/mfa/prompt/check-mail")


async def prompt_check_mail(request: web.Request) -> web.StreamResponse:
    """Waits for the emailed link (opened here or on the phone); reloads itself without JavaScript."""
    view, cookie = await PROMPT_PAGES.view(request)
    assert view.login is not None
    if view.login.status != "pending" or view.login.expires_at <= now():
        return await _show_prompt(request, view, cookie)
    return render_page(request, "check_mail.html", view.account, session=cookie, return_to=view.session.return_to,
                       sent_to=domain.mask_email(view.account.backup_address or ""), refresh=3)


async def prompt_qr(request: web.Request) -> web.StreamResponse:
    session, _ = await PROMPT_PAGES.session(request)
    return _qr(await enrolment.pending_uri(auth_of(request), prompt.person(session), session.account_id))


async def prompt_enroll(request: web.Request) -> web.StreamResponse:
    view, cookie = await PROMPT_PAGES.view(request)
    session = view.session
    form = await pages_of(request).form(request, cookie)
    code = "".join(form.get("code", "").split())
    auth = auth_of(request)
    try:
        result = await enrolment.confirm_enrollment(auth, prompt.person(session), session.account_id, code,
                                                   session.login_id)
    except (Unauthorized, BadRequest) as exc:
        return await _show_prompt_again(request, error=_code_error(request, view.account, exc), status=422)
    except (Conflict, Gone) as exc:
        if exc.code in ("no_pending_enrollment", "enrollment_expired"):
            return await _show_prompt_again(request, status=422, error=text_of(request, view.account, "enroll.expired"))
        return await _show_prompt_again(request)
    return render_page(request, "backup_codes.html", view.account, session=cookie, return_to=session.return_to,
                       codes=result["backup_codes"], action="/mfa/prompt/finish", languages=[])


async def prompt_finish(request: web.Request) -> web.StreamResponse:
    view, cookie = await PROMPT_PAGES.view(request)
    form = await pages_of(request).form(request, cookie)
    assert view.login is not None
    if form.get("saved") != "yes" and view.login.status == "succeeded":
        return render_page(request, "backup_codes.html", view.account, session=cookie,
                           return_to=view.session.return_to, codes=[], action="/mfa/prompt/finish", status=422,
                           error=text_of(request, view.account, "codes.tick_box"))
    return await _show_prompt(request, view, cookie)


# ---- emailed links ---------------------------------------------------------------------------

def _token_cookie(request: web.Request, name: str, here: str) -> web.StreamResponse | str:
    """`?token=` moves into a short cookie for this page only (then the page without it), else the cookie's token."""
    token = request.query.get("token")
    if token:
        response = redirect(here)
        pages_of(request).set_cookie(response, name, token[:200], max_age=TOKEN_COOKIE_AGE, path=here)
        return response
    cookie = request.cookies.get(name)
    if not cookie:
        raise PageError(410, "invalid_token")
    return cookie


def _check_unused(account: Any, used_at: Any, expires_at: Any) -> None:
    """410 for an emailed link already used or expired, as a page with the account's company and language."""
    if used_at is not None:
        raise PageError(410, "token_used", company_name=account.company_name, locale=account.locale)
    if expires_at is None or expires_at <= now():
        raise PageError(410, "token_expired", company_name=account.company_name, locale=account.locale)


async def login_link_page(request: web.Request) -> web.StreamResponse:
    token = _token_cookie(request, LINK_COOKIE, "/mfa/login-link")
    if not isinstance(token, str):
        return token
    link, account = await prompt.login_link_info(auth_of(request), token)
    if link is None or account is None:
        raise PageError(410, "invalid_token")
    _check_unused(account, link.used_at, link.expires_at)
    back = await prompt.return_of_login(auth_of(request), link.company_id, link.login_id)
    return render_page(request, "link.html", account, session=token, return_to=back[0] if back else None,
                       prefix="link", action="/mfa/login-link", address="")


async def login_link_redeem(request: web.Request) -> web.StreamResponse:
    token = request.cookies.get(LINK_COOKIE)
    await pages_of(request).form(request, token)
    auth = auth_of(request)
    link, account = await prompt.login_link_info(auth, token or "")
    if link is None or account is None:
        raise PageError(410, "invalid_token")
    try:
        await logins.redeem_login_link(auth, prompt.person_of(account.account_id, link.company_id), token or "")
    except MfaError as exc:
        raise page_error(account, exc) from exc
    back = await prompt.return_of_login(auth, link.company_id, link.login_id)
    if back:
        response = redirect(prompt.success_url(back[0], back[1], link.login_id))
    else:
        response = render_page(request, "done.html", account, prefix="link_done", address="", back_url=None)
    pages_of(request).clear_cookie(response, LINK_COOKIE, path="/mfa/login-link")
    return response


async def confirm_page(request: web.Request) -> web.StreamResponse:
    token = _token_cookie(request, CONFIRM_COOKIE, "/mfa/backup-email/confirm")
    if not isinstance(token, str):
        return token
    row, account = await prompt.confirm_info(auth_of(request), token)
    if row is None or account is None:
        raise PageError(410, "invalid_token")
    _check_unused(account, row.verified_at, row.confirm_expires_at)
    return render_page(request, "link.html", account, session=token, prefix="confirm", action="/mfa/backup-email/confirm",
                       address=row.address)


async def confirm_post(request: web.Request) -> web.StreamResponse:
    token = request.cookies.get(CONFIRM_COOKIE)
    await pages_of(request).form(request, token)
    row, account = await prompt.confirm_info(auth_of(request), token or "")
    if row is None or account is None:
        raise PageError(410, "invalid_token")
    try:
        result = await backup_email.confirm_backup_email(
            auth_of(request), prompt.person_of(row.account_id, row.company_id), token or "")
    except MfaError as exc:
        raise page_error(account, exc) from exc
    response = render_page(request, "done.html", account, prefix="confirm_done", address=result["address"], back_url=None)
    pages_of(request).clear_cookie(response, CONFIRM_COOKIE, path="/mfa/backup-email/confirm")
    return response


# ---- "My login" ------------------------------------------------------------------------------

PORTAL_PAGES = LinkPages(PORTAL, "mfa_portal", "/mfa/my-login")


async def portal_page(request: web.Request) -> web.StreamResponse:
    return await PORTAL_PAGES.entry(request, _portal_home)


async def _portal_home(request: web.Request) -> web.StreamResponse:
    return await _show_portal(request, *await PORTAL_PAGES.view(request))


async def _show_portal(request: web.Request, view: PageView, cookie: str, *, error: str | None = None,
                       status: int = 200) -> web.Response:
    account = view.account
    return render_page(request, "my_login.html", account, session=cookie, status=status, error=error,
                       enabled=account.totp_secret is not None, enrolled_at=account.enrolled_at,
                       forced=account.forced, codes_left=account.backup_codes_left,
                       backup_address=account.backup_address,
                       backup_state=domain.backup_email_state(account.backup_address, account.backup_verified_at,
                                                              account.backup_confirm_expires_at, now()),
                       login_email=account.email, back_url=view.session.return_to)


async def _show_portal_again(request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
    """"My login" as it is after a form changed the account: read again."""
    return await _show_portal(request, *await PORTAL_PAGES.view(request), error=error, status=status)


async def portal_setup_page(request: web.Request) -> web.StreamResponse:
    return await _portal_setup(request, *await PORTAL_PAGES.view(request))


async def _portal_setup(request: web.Request, view: PageView, cookie: str, *, error: str | None = None,
                        status: int = 200) -> web.Response:
    if view.account.totp_secret is not None:
        return await _show_portal(request, view, cookie)
    shown = await _enrollment(auth_of(request), view.session)
    return render_page(request, "enroll.html", view.account, session=cookie, status=status, error=error,
                       mandatory=False, qr_url="/mfa/my-login/qr.svg", action="/mfa/my-login/setup",
                       secret_grouped=shown, back_url="/mfa/my-login")


async def portal_setup(request: web.Request) -> web.StreamResponse:
    view, cookie = await PORTAL_PAGES.view(request)
    session, account = view.session, view.account
    form = await pages_of(request).form(request, cookie)
    auth = auth_of(request)
    try:
        result = await enrolment.confirm_enrollment(auth, prompt.person(session), session.account_id,
                                                   "".join(form.get("code", "").split()), None)
    except (Unauthorized, BadRequest) as exc:
        return await _portal_setup(request, *await PORTAL_PAGES.view(request), error=_code_error(request, account, exc),
                                   status=422)
    except (Conflict, Gone) as exc:
        if exc.code in ("no_pending_enrollment", "enrollment_expired"):
            return await _portal_setup(request, *await PORTAL_PAGES.view(request),
                                       error=text_of(request, account, "enroll.expired"), status=422)
        return await _show_portal_again(request)
    return render_page(request, "backup_codes.html", account, session=cookie, codes=result["backup_codes"],
                       action="/mfa/my-login/saved", languages=[])


async def portal_qr(request: web.Request) -> web.StreamResponse:
    session, _ = await PORTAL_PAGES.session(request)
    return _qr(await enrolment.pending_uri(auth_of(request), prompt.person(session), session.account_id))


async def portal_saved(request: web.Request) -> web.StreamResponse:
    _, cookie = await PORTAL_PAGES.session(request)
    await pages_of(request).form(request, cookie)
    return redirect("/mfa/my-login?notice=codes_saved")


async def portal_codes(request: web.Request) -> web.StreamResponse:
    view, cookie = await PORTAL_PAGES.view(request)
    await pages_of(request).form(request, cookie)
    try:
        result = await enrolment.regenerate_backup_codes(auth_of(request), prompt.person(view.session),
                                                         view.session.account_id)
    except Conflict:
        return await _show_portal_again(request)
    return render_page(request, "backup_codes.html", view.account, session=cookie, codes=result["backup_codes"],
                       action="/mfa/my-login/saved", languages=[])


async def portal_backup_email(request: web.Request) -> web.StreamResponse:
    view, cookie = await PORTAL_PAGES.view(request)
    form = await pages_of(request).form(request, cookie)
    try:
        await backup_email.set_backup_email(auth_of(request), prompt.person(view.session), view.session.account_id,
                                            form.get("email", ""))
    except BadRequest as exc:
        key = "portal.email_same" if exc.code == "same_as_login_email" else "portal.email_invalid"
        return await _show_portal_again(request, error=text_of(request, view.account, key), status=422)
    return redirect("/mfa/my-login?notice=email_sent")


async def portal_disable(request: web.Request) -> web.StreamResponse:
    view, cookie = await PORTAL_PAGES.view(request)
    form = await pages_of(request).form(request, cookie)
    account = view.account
    if account.forced:
        # Seed: turning MFA off is not possible while it is required; the page says why.
        return await _show_portal(request, view, cookie, error=text_of(request, account, "portal.off_forced"),
                                  status=409)
    try:
        await disable.disable_with_backup_code(auth_of(request), prompt.person(view.session), view.session.account_id,
                                                form.get("backup_code", ""))
    except (Unauthorized, BadRequest, TooManyRequests) as exc:
        message = (_code_error(request, account, exc) if exc.code == "mfa_locked"
                   else text_of(request, account, "backup.format") if exc.code == "invalid_code_format"
                   else text_of(request, account, "portal.off_wrong"))
        return await _show_portal_again(request, error=message, status=422)
    except Conflict:
        return await _show_portal_again(request)
    return redirect("/mfa/my-login?notice=mfa_off")


async def portal_replace(request: web.Request) -> web.StreamResponse:
    """Replacing the app, first step: the present app's code proves it is the person."""
    view, cookie = await PORTAL_PAGES.view(request)
    form = await pages_of(request).form(request, cookie)
    try:
        await replacement.start_replacement(auth_of(request), prompt.person(view.session), view.session.account_id,
                                            "".join(form.get("code", "").split()))
    except (Unauthorized, BadRequest, TooManyRequests) as exc:
        message = _code_error(request, view.account, exc) if exc.code != "invalid_code" else text_of(
            request, view.account, "portal.replace_wrong")
        return await _show_portal_again(request, error=message, status=422)
    except Conflict:
        return await _show_portal_again(request)
    return redirect("/mfa/my-login/replace")


async def portal_replace_page(request: web.Request) -> web.StreamResponse:
    return await _replace_page(request, *await PORTAL_PAGES.view(request))


async def _replace_page(request: web.Request, view: PageView, cookie: str, *, error: str | None = None,
                        status: int = 200) -> web.Response:
    account = view.account
    if account.totp_secret is None:
        return await _show_portal(request, view, cookie)
    secret = await prompt.pending_secret(auth_of(request), account.account_id)
    if secret is None:  # the replacement ran out: start again from My login
        return await _show_portal(request, view, cookie, error=text_of(request, account, "portal.replace_expired"))
    return render_page(request, "enroll.html", account, session=cookie, status=status, error=error, mandatory=False,
                       replacing=True, qr_url="/mfa/my-login/qr.svg", action="/mfa/my-login/replace",
                       secret_grouped=domain.group_secret(secret), back_url="/mfa/my-login")


async def portal_replace_confirm(request: web.Request) -> web.StreamResponse:
    view, cookie = await PORTAL_PAGES.view(request)
    form = await pages_of(request).form(request, cookie)
    try:
        await replacement.confirm_replacement(auth_of(request), prompt.person(view.session), view.session.account_id,
                                              "".join(form.get("code", "").split()))
    except (Unauthorized, BadRequest) as exc:
        return await _replace_page(request, *await PORTAL_PAGES.view(request),
                                   error=_code_error(request, view.account, exc), status=422)
    except (Conflict, Gone):
        return await _show_portal_again(request)
    return redirect("/mfa/my-login?notice=replaced")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/mfa/prompt", prompt_page)
    r.add_post("/mfa/prompt/code", prompt_code)
    r.add_get("/mfa/prompt/backup-code", prompt_backup_page)
    r.add_post("/mfa/prompt/backup-code", prompt_backup)
    r.add_post("/mfa/prompt/email-link", prompt_email_link)
    r.add_get("/mfa/prompt/check-mail", prompt_check_mail)
    r.add_get("/mfa/prompt/qr.svg", prompt_qr)
    r.add_post("/mfa/prompt/enroll", prompt_enroll)
    r.add_post("/mfa/prompt/finish", prompt_finish)
    r.add_get("/mfa/login-link", login_link_page)
    r.add_post("/mfa/login-link", login_link_redeem)
    r.add_get("/mfa/backup-email/confirm", confirm_page)
    r.add_post("/mfa/backup-email/confirm", confirm_post)
    r.add_get("/mfa/my-login", portal_page)
    r.add_get("/mfa/my-login/setup", portal_setup_page)
    r.add_post("/mfa/my-login/setup", portal_setup)
    r.add_get("/mfa/my-login/qr.svg", portal_qr)
    r.add_post("/mfa/my-login/saved", portal_saved)
    r.add_post("/mfa/my-login/backup-codes", portal_codes)
    r.add_post("/mfa/my-login/backup-email", portal_backup_email)
    r.add_post("/mfa/my-login/disable", portal_disable)
    r.add_post("/mfa/my-login/replace/start", portal_replace)
    r.add_get("/mfa/my-login/replace", portal_replace_page)
    r.add_post("/mfa/my-login/replace", portal_replace_confirm)
    add_static(app)
