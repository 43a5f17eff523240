"""Use cases behind the hosted pages: prompt and "My login" links, their browser sessions, a login's outcome.

A link (`prompt_url`, a portal `url`) carries a single-use token; the first GET exchanges it for a
session cookie bound to one login (prompt) or one account (portal), so no secret stays in the
address bar or the history, and one login's page can never act on another login. The pages then
call the other families' use cases (`logins`, `enrolment`, ...) as the person (`Actor("user", id)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ...common.apikeys import Principal
from ...common.errors import BadRequest, Gone, NotFound
from ...common.events import Actor, iso, parse_time
from ...common.pages import new_token, return_url_allowed, with_query
from .. import domain, store
from .context import Auth, Caller, load_account, now

PROMPT = "prompt"
PORTAL = "portal"
PORTAL_LINK_TTL = timedelta(minutes=5)
# A pending enrolment shown again only while there is time left to scan it and type a code.
SHOW_PENDING_MARGIN = timedelta(minutes=2)


@dataclass(frozen=True)
class PageConfig:
    """Where links point and where the browser may be sent back to."""

    public_url: str
    return_urls: tuple[str, ...]
    allow_loopback: bool


def check_return_to(config: PageConfig, return_to: str) -> str:
    """`return_to` when registered (MFA_RETURN_URLS), else 400 `return_to_not_allowed`."""
    if not return_url_allowed(return_to, config.return_urls, allow_loopback=config.allow_loopback):
        raise BadRequest("return_to is not one of the registered return URLs (MFA_RETURN_URLS).",
                         code="return_to_not_allowed")
    return return_to


async def issue_prompt(auth: Auth, config: PageConfig, login: dict[str, Any], return_to: str, state: str | None) -> str:
    """The `prompt_url` of a `verify` or `enroll` login: single use, valid while the login is."""
    token = new_token()
    async with auth.pool.acquire() as conn, conn.transaction():
        row = await store.find_account_login(conn, login["account_id"], login["login_id"])
        assert row is not None  # just started or found by start_login
        await store.insert_page_link(
            conn, auth.token_hash(token), PROMPT, row.account_id, row.company_id, row.login_id, return_to, state,
            parse_time(login["expires_at"]),
        )
    return f"{config.public_url}/mfa/prompt?token={token}"


async def issue_portal(auth: Auth, caller: Caller, config: PageConfig, account_id: str, return_to: str) -> dict[str, Any]:
    """A single-use link to "My login" for a person already signed in upstream."""
    check_return_to(config, return_to)
    token = new_token()
    expires = now() + PORTAL_LINK_TTL
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await load_account(conn, caller, account_id)
        await store.insert_page_link(conn, auth.token_hash(token), PORTAL, account_id, account.company_id, None,
                                     return_to, None, expires)
    return {"url": f"{config.public_url}/mfa/my-login?token={token}", "expires_at": iso(expires)}


async def open_link(auth: Auth, kind: str, token: str) -> tuple[str, datetime]:
    """Exchange a link's token (once) for a new session token and its expiry.

    The new session's view goes to `auth.opened`, for the page the exchange redirects to (`view_of`)
    and the code posted from it (`verify_of`).
    """
    at = now()
    session = new_token()
    token_hash, session_hash = auth.token_hash(token[:200]), auth.token_hash(session)
    async with auth.pool.acquire() as conn:
        view = await store.open_page_link(conn, token_hash, kind, at, session_hash,
                                          None if kind == PROMPT else domain.PAGE_SESSION_TTL)
        if view is not None:
            auth.opened.put(session_hash, view)
            return session, view.session.expires_at
        link = await store.find_page_link(conn, token_hash, kind)
        if link is None:
            raise Gone("This link is unknown.", code="page_link_unknown")
        # The page says so in the person's language, with their company's name and the way back.
        outcome = "used" if link.used_at is not None else "expired"
        account = await store.get_account(conn, link.account_id)
    raise Gone(f"This link is {outcome}.", code=f"page_link_{outcome}", back_url=link.return_to,
               company_name=account.company_name if account else "", locale=account.locale if account else None)


def _check_cookie(cookie: str | None) -> str:
    if not cookie or len(cookie) > 100:
        raise Gone("There is no page session.", code="session_missing")
    return cookie


async def session_of(auth: Auth, kind: str, cookie: str | None) -> store.PageSession:
    """The live session of a cookie, or 410 `session_missing`."""
    async with auth.pool.acquire() as conn:
        session = await store.get_page_session(conn, auth.token_hash(_check_cookie(cookie)), kind, now())
    if session is None:
        raise Gone("There is no page session.", code="session_missing")
    return session


async def view_of(auth: Auth, kind: str, cookie: str | None, *, page: bool = True) -> store.PageView:
    """The live session of a cookie with its account and login, or 410 `session_missing`.

    One read; none for the page a link's exchange redirected to (`page`: a GET). A form's request
    reads, and forgets the exchange's read: it is about to change what that read saw.
    """
    session_hash, at = auth.token_hash(_check_cookie(cookie)), now()
    if not page:
        auth.opened.forget(session_hash)
    view = auth.opened.first_page(session_hash) if page else None
    if view is None or view.session.kind != kind or view.session.expires_at <= at:
        async with auth.pool.acquire() as conn:
            view = await store.get_page_view(conn, session_hash, kind, at)
    if view is None or (view.session.login_id is not None and view.login is None):
        raise Gone("There is no page session.", code="session_missing")
    return view


def person_of(account_id: str, company_id: str) -> Caller:
    """A person acting on their own account in company `company_id`, as the caller of the use cases."""
    return Caller(Principal(f"page:{account_id}", "service", company_id), None, Actor("user", account_id))


def person(session: store.PageSession) -> Caller:
    """The person of a page session, as the caller of the use cases: bound to the session's company,
    so the login ids it names are that company's."""
    return person_of(session.account_id, session.company_id)


def success_url(return_to: str, state: str | None, login_id: str) -> str:
    """Where a finished prompt sends the browser: `return_to` with `login_id` and `state` only."""
    return with_query(return_to, login_id=login_id, **({"state": state} if state is not None else {}))


async def verify_of(auth: Auth, cookie: str | None) -> tuple[bytes, store.PageSession, store.VerifyView]:
    """A prompt session's hash, the session and what checking a TOTP code needs, or 410 `session_missing`.

    As this process's exchange read them when it has them (`Opened.known`: the claim re-checks each
    fact), else in one lean read.
    """
    session_hash, at = auth.token_hash(_check_cookie(cookie)), now()
    opened = auth.opened.known(session_hash, at)
    if opened is not None and opened.session.kind == PROMPT and opened.login is not None:
        return session_hash, opened.session, verify_view(opened)
    async with auth.pool.acquire() as conn:
        found = await store.get_prompt_verify(conn, session_hash, at)
    if found is None:
        raise Gone("There is no page session.", code="session_missing")
    return session_hash, *found


def verify_view(view: store.PageView) -> store.VerifyView:
    """What checking a TOTP code needs, from a prompt session's view."""
    login, account = view.login, view.account
    assert login is not None
    return store.VerifyView(login.login_id, login.account_id, login.company_id, login.decision, login.status,
                            login.expires_at, account.company_id, account.totp_secret, account.last_step,
                            account.locked_until)


async def pending_secret(auth: Auth, account_id: str) -> str | None:
    """The secret of the pending enrolment while it can still be finished: a reload shows the same QR code."""
    async with auth.pool.acquire() as conn:
        pending = await store.get_pending(conn, account_id)
    if pending is None or pending.expires_at <= now() + SHOW_PENDING_MARGIN:
        return None
    return auth.open_secret(account_id, pending.totp_secret)


async def get_login(auth: Auth, caller: Caller, login_id: str) -> dict[str, Any]:
    """A login's state for its upstream, with the assertion once it succeeded (after the prompt's redirect)."""
    async with auth.pool.acquire() as conn:
        login = await store.find_login(conn, login_id, caller.scope)
    if login is None or not caller.sees(login.company_id):
        raise NotFound(f"No login {login_id!r}.", code="login_not_found")
    view: dict[str, Any] = {"login_id": login.login_id, "account_id": login.account_id, "decision": login.decision,
                            "status": login.status, "expires_at": iso(login.expires_at)}
    if login.status == "succeeded":
        view["method"] = login.method
        view["assertion"] = auth.assertion(caller, login.account_id, login.company_id, login_id, login.method or "none")
    return view


async def login_link_info(auth: Auth, token: str) -> tuple[store.Link | None, store.Account | None]:
    """The login link and its account, without using it: for the page that shows the button."""
    async with auth.pool.acquire() as conn:
        link = await store.find_link(conn, auth.token_hash(token))
        account = await store.get_account(conn, link.account_id) if link else None
    return link, account


async def confirm_info(auth: Auth, token: str) -> tuple[store.BackupEmailToken | None, store.Account | None]:
    """The backup e-mail a confirmation token is for and its account, without confirming it."""
    async with auth.pool.acquire() as conn:
        row = await store.find_backup_email(conn, auth.token_hash(token))
        account = await store.get_account(conn, row.account_id) if row else None
    return row, account


async def return_of_login(auth: Auth, company_id: str, login_id: str) -> tuple[str, str | None] | None:
    """Where the prompt of a login sends the browser back to, when it had one."""
    async with auth.pool.acquire() as conn:
        link = await store.prompt_of_login(conn, company_id, login_id)
    return (link.return_to, link.state) if link else None
