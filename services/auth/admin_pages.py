"""The administrator's hosted pages (HTML): the Employees tab and an employee's Summary.

They sit beside `pages.py` (the person's pages) over the same plumbing and link exchange, and call
the use cases: `handlers.admin` for what an administrator may see, `directory` for the policy
switches (so `MfaPolicyChanged` is emitted exactly as for the JSON API) and `disable.admin_disable`
for the red Disable MFA button (the one rule that refuses it while MFA is forced). The actor of
every change is the administrator (`Actor("user", admin account id)`). Paths live under `/mfa/admin`.
"""

from __future__ import annotations

from aiohttp import web

from ..common.errors import Conflict, MfaError
from ..common.pages import PageError, redirect, with_query
from ..common.web import current_correlation_id
from . import store
from .handlers import admin, directory, disable
from .handlers.admin import ADMIN
from .pages import LinkPages, auth_of, page_error, pages_of, render_page, text_of

EMPLOYEES = "/mfa/admin/employees"
ADMIN_PAGES = LinkPages(ADMIN, "mfa_admin", EMPLOYEES)
# Notices a redirect may ask a page to show (`?notice=`): only these keys, never free text.
NOTICES = {"company_on", "company_off", "personal_on", "personal_off", "mfa_off"}


async def _admin(request: web.Request) -> tuple[store.Account, str, store.PageSession]:
    """The administrator of the session cookie (410 without one, 403 once no longer an admin)."""
    view, cookie = await ADMIN_PAGES.view(request)
    return admin.admin_of(view), cookie, view.session


def _notice(request: web.Request, account: store.Account) -> str | None:
    notice = request.query.get("notice")
    return text_of(request, account, f"admin.notice.{notice}") if notice in NOTICES else None


def _employee_id(request: web.Request) -> str:
    account_id = request.match_info["account_id"]
    if len(account_id) > 128:
        raise PageError(404, "account_not_found")
    return account_id


async def _required(request: web.Request, cookie: str) -> bool:
    """The switch's POSTed position (`required` = yes or no), after the CSRF checks."""
    form = await pages_of(request).form(request, cookie)
    if form.get("required") not in ("yes", "no"):
        raise PageError(400, "general")
    return form["required"] == "yes"


# ---- the Employees tab -----------------------------------------------------------------------

async def entry(request: web.Request) -> web.StreamResponse:
    """The link from `admin-sessions`: its token becomes the session cookie, then the Employees tab."""
    if "token" in request.query:
        return await ADMIN_PAGES.exchange(request)
    return redirect(EMPLOYEES)


async def employees(request: web.Request) -> web.StreamResponse:
    account, cookie, session = await _admin(request)
    query = request.query.get("q", "")[: admin.MAX_QUERY]
    auth = auth_of(request)
    page = await admin.list_employees(auth, account, query, request.query.get("after"), request.query.get("before"))
    company = await admin.company_of(auth, account)
    base = with_query(EMPLOYEES, q=query) if query else EMPLOYEES
    return render_page(
        request, "admin_employees.html", account, session=cookie, notice=_notice(request, account),
        page=page, query=query, company_required=company.mfa_required,
        next_url=with_query(base, after=page.next_cursor) if page.next_cursor else None,
        previous_url=with_query(base, before=page.previous_cursor) if page.previous_cursor else None,
        back_url=session.return_to,
    )


async def company_switch(request: web.Request) -> web.StreamResponse:
    account, cookie, _ = await _admin(request)
    required = await _required(request, cookie)
    await directory.require_for_company(auth_of(request), admin.as_admin(account, current_correlation_id()),
                                        account.company_id, required)
    return redirect(with_query(EMPLOYEES, notice="company_on" if required else "company_off"))


# ---- one employee's Summary ------------------------------------------------------------------

async def _summary(request: web.Request, account: store.Account, account_id: str) -> admin.EmployeeSummary:
    try:
        return await admin.employee(auth_of(request), account, account_id)
    except MfaError as exc:
        raise page_error(account, exc) from exc


async def _show(request: web.Request, account: store.Account, cookie: str, summary: admin.EmployeeSummary, *,
                error: str | None = None, status: int = 200) -> web.Response:
    here = f"{EMPLOYEES}/{summary.account.account_id}"
    return render_page(request, "admin_employee.html", account, session=cookie, status=status, error=error,
                       notice=None if error else _notice(request, account), employee=summary, here_url=here)


async def employee_page(request: web.Request) -> web.StreamResponse:
    account, cookie, _ = await _admin(request)
    summary = await _summary(request, account, _employee_id(request))
    return await _show(request, account, cookie, summary)


async def employee_switch(request: web.Request) -> web.StreamResponse:
    account, cookie, _ = await _admin(request)
    required = await _required(request, cookie)
    summary = await _summary(request, account, _employee_id(request))
    caller = admin.as_admin(account, current_correlation_id())
    try:
        await directory.require_for_account(auth_of(request), caller, summary.account.account_id, required)
    except MfaError as exc:
        raise page_error(account, exc) from exc
    target = f"{EMPLOYEES}/{summary.account.account_id}"
    return redirect(with_query(target, notice="personal_on" if required else "personal_off"))


async def employee_disable(request: web.Request) -> web.StreamResponse:
    """The red Disable MFA button; whatever the form said, `admin_disable` refuses it while MFA is forced."""
    account, cookie, _ = await _admin(request)
    account_id = _employee_id(request)
    await pages_of(request).form(request, cookie)
    await _summary(request, account, account_id)  # another company's employee: 404, as on the page
    caller = admin.as_admin(account, current_correlation_id())
    try:
        await disable.admin_disable(auth_of(request), caller, account_id, account.account_id)
    except Conflict as exc:
        summary = await _summary(request, account, account_id)  # as it is now, for the page
        key = "admin.disable_forced" if exc.code == "mfa_forced" else "admin.disable_not_enabled"
        return await _show(request, account, cookie, summary, status=409, error=_reason(request, account, summary, key))
    except MfaError as exc:
        raise page_error(account, exc) from exc
    return redirect(with_query(f"{EMPLOYEES}/{account_id}", notice="mfa_off"))


def _reason(request: web.Request, account: store.Account, summary: admin.EmployeeSummary, key: str) -> str:
    text = text_of(request, account, key)
    if summary.forced_by:
        text += " " + text_of(request, account, f"admin.forced_reason.{summary.forced_by}")
    return text


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/mfa/admin", entry)
    r.add_get(EMPLOYEES, employees)
    r.add_post("/mfa/admin/require", company_switch)
    r.add_get(EMPLOYEES + "/{account_id}", employee_page)
    r.add_post(EMPLOYEES + "/{account_id}/require", employee_switch)
    r.add_post(EMPLOYEES + "/{account_id}/disable", employee_disable)
