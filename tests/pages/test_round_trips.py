"""The prompt's hot path, counted in database statements per request (BEGIN and COMMIT count too).

A prompt login is four requests: open the link, load the page, post the code, fetch the
assertion. Each statement is a round trip to PostgreSQL, and the round trips are what a prompt
login costs beside a JSON verify (two statements), so their number is pinned here: a change that
adds a read to the path fails this test, not only a benchmark nobody runs.

The link's exchange reads the new session's view in its one statement; the page it redirects to
and the code posted from that page use it (`handlers.context.Opened`). The tests here also show
that a reload reads the database again, and that facts which changed after the exchange (a new
authenticator) make the claim fail and the database decide.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.auth import store
from services.auth.api import AUTH
from services.auth.app import create_app
from services.auth.handlers.prompt import PORTAL, PROMPT
from services.common.apikeys import create_key
from services.common.db import FairPool
from services.common.runtime import Runtime

from ..auth.conftest import Api, oathtool
from ..conftest import free_port

_STATEMENTS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("statements", default=None)


def _log_statement(record) -> None:
    # asyncpg calls loggers with call_soon, in a copy of the querying task's context: the request's.
    statements = _STATEMENTS.get()
    if statements is not None:
        statements.append(record.query)


@dataclasses.dataclass
class Counted:
    api: Api
    client: TestClient
    requests: list[tuple[str, str, list[str]]]  # method, path, the statements it ran


@pytest.fixture
async def counted(settings, monkeypatch) -> AsyncIterator[Counted]:
    """The auth app on a port of its own, each request's statements recorded by a query logger."""
    lend = FairPool._lend

    async def lend_logged(self, timeout):
        conn = await lend(self, timeout)
        conn.add_query_logger(_log_statement)  # a set: once per connection however often it is lent
        return conn

    monkeypatch.setattr(FairPool, "_lend", lend_logged)
    requests: list[tuple[str, str, list[str]]] = []

    @web.middleware
    async def record(request: web.Request, handler):
        statements: list[str] = []
        _STATEMENTS.set(statements)
        requests.append((request.method, request.path, statements))
        return await handler(request)

    port = free_port()
    runtime = await Runtime.open(dataclasses.replace(settings, public_url=f"http://127.0.0.1:{port}"), pool_size=4)
    app = create_app(runtime)
    app.middlewares.insert(0, record)
    client = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield Counted(Api(client, await create_key(runtime.pool, "service", label="round-trips")), client, requests)
    finally:
        await client.close()
        await runtime.close()


async def _open(counted: Counted, link: str, home: str) -> str:
    """A browser opening an emailed or redirected link: the token for a cookie (303 to `home`), then `home`'s HTML."""
    http = counted.client
    async with http.get(link.removeprefix(str(http.make_url(""))), allow_redirects=False) as opened:
        assert opened.status == 303 and opened.headers["Location"] == home
    async with http.get(home) as page:
        html = await page.text()
        assert page.status == 200, html
    return html


async def _check_view_is_its_rows(counted: Counted, cookie_name: str, kind: str) -> None:
    """The one read of a page (its columns taken by position) gives what the separate reads of its rows give."""
    auth = counted.client.app[AUTH]
    cookie = next(c.value for c in counted.client.session.cookie_jar if c.key == cookie_name)
    session_hash, at = auth.token_hash(cookie), datetime.now(UTC)
    async with auth.pool.acquire() as conn:
        view = await store.get_page_view(conn, session_hash, kind, at)
        assert view is not None
        assert view.session == await store.get_page_session(conn, session_hash, kind, at)
        assert view.account == await store.get_account(conn, view.session.account_id)
        login = (await store.get_login(conn, view.session.company_id, view.session.login_id)
                 if view.session.login_id else None)
    assert view.login == login and (login is not None) == (kind == PROMPT)


async def test_a_prompt_login_costs_three_statements_in_four_requests(counted):
    company = await counted.api.company()
    account = await counted.api.account(company)
    secret, _, _ = await counted.api.enroll(account)
    back = "http://127.0.0.1:9/back"
    _, login = await counted.api.call("POST", "/v1/logins", {"account_id": account, "return_to": back, "state": "s"},
                                      expect=201)
    counted.requests.clear()
    http = counted.client

    html = await _open(counted, login["prompt_url"], "/mfa/prompt")
    csrf = re.search(r'name="csrf" value="([^"]+)"', html)
    assert csrf is not None
    await _check_view_is_its_rows(counted, "mfa_prompt", PROMPT)
    origin = str(http.make_url("")).rstrip("/")
    async with http.post("/mfa/prompt/code", data={"csrf": csrf.group(1), "code": oathtool(secret, offset=30)},
                         headers={"Origin": origin}, allow_redirects=False) as posted:
        assert posted.status == 303, await posted.text()
        assert posted.headers["Location"] == f"{back}?login_id={login['login_id']}&state=s"
    _, outcome = await counted.api.call("GET", f"/v1/logins/{login['login_id']}", expect=200)
    assert outcome["status"] == "succeeded" and outcome["assertion"]

    # The link and the page are both GET /mfa/prompt: with the token, then with the cookie.
    counts = [(method, path, len(statements)) for method, path, statements in counted.requests]
    assert counts == [("GET", "/mfa/prompt", 1), ("GET", "/mfa/prompt", 0), ("POST", "/mfa/prompt/code", 1),
                      ("GET", f"/v1/logins/{login['login_id']}", 1)], counted.requests


async def test_my_login_opens_in_one_statement_and_shows_from_it(counted):
    company = await counted.api.company()
    account = await counted.api.account(company)
    _, portal = await counted.api.call("POST", f"/v1/accounts/{account}/portal-sessions",
                                       {"return_to": "http://127.0.0.1:9/back"}, expect=201)
    counted.requests.clear()

    html = await _open(counted, portal["url"], "/mfa/my-login")
    assert f"{account}@example.com" in html, html
    await _check_view_is_its_rows(counted, "mfa_portal", PORTAL)

    counts = [(method, path, len(statements)) for method, path, statements in counted.requests]
    assert counts == [("GET", "/mfa/my-login", 1), ("GET", "/mfa/my-login", 0)], counted.requests



async def test_a_reload_reads_the_page_again(counted):
    company = await counted.api.company()
    account = await counted.api.account(company)
    await counted.api.enroll(account)
    _, login = await counted.api.call("POST", "/v1/logins", {"account_id": account, "return_to": "http://127.0.0.1:9/b"},
                                      expect=201)
    await _open(counted, login["prompt_url"], "/mfa/prompt")
    counted.requests.clear()
    async with counted.client.get("/mfa/prompt") as again:
        assert again.status == 200
    assert [len(statements) for _, _, statements in counted.requests] == [1]


async def test_a_code_of_the_authenticator_replaced_after_the_exchange_is_refused(counted):
    """The code is checked against the secret the exchange read; the claim sees the new one and refuses."""
    company = await counted.api.company()
    account = await counted.api.account(company)
    old_secret, _, _ = await counted.api.enroll(account)
    back = "http://127.0.0.1:9/back"
    _, login = await counted.api.call("POST", "/v1/logins", {"account_id": account, "return_to": back}, expect=201)
    html = await _open(counted, login["prompt_url"], "/mfa/prompt")
    csrf = re.search(r'name="csrf" value="([^"]+)"', html)
    assert csrf is not None

    # Meanwhile the account gets another authenticator (as "My login" would set it up).
    new_secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    auth = counted.client.app[AUTH]
    async with auth.pool.acquire() as conn:
        await conn.execute("UPDATE auth.accounts SET totp_secret = $2 WHERE account_id = $1", account,
                           auth.seal_secret(account, new_secret))

    http = counted.client
    origin = str(http.make_url("")).rstrip("/")
    async with http.post("/mfa/prompt/code", data={"csrf": csrf.group(1), "code": oathtool(old_secret, offset=30)},
                         headers={"Origin": origin}, allow_redirects=False) as refused:
        assert refused.status == 422, await refused.text()
    _, outcome = await counted.api.call("GET", f"/v1/logins/{login['login_id']}", expect=200)
    assert outcome["status"] == "pending" and "assertion" not in outcome

    async with http.post("/mfa/prompt/code", data={"csrf": csrf.group(1), "code": oathtool(new_secret, offset=30)},
                         headers={"Origin": origin}, allow_redirects=False) as passed:
        assert passed.status == 303, await passed.text()
        assert passed.headers["Location"].startswith(f"{back}?login_id={login['login_id']}")
