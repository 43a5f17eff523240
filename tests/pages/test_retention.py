"""Retention: expired links and page sessions are deleted a week after they expire, logins after MFA_LOGIN_RETENTION_DAYS."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import aiohttp

from services.auth.handlers.directory import remove_account
from services.auth.handlers.retention import purge_expired
from services.common.crypto import Keyring
from services.common.errors import Gone
from services.recovery import handlers as recovery

from .conftest import person, start_login

KEPT = timedelta(days=90)  # MFA_LOGIN_RETENTION_DAYS's default


async def _rows(site, login_id: str) -> tuple[int, int]:
    """How many page links and page sessions the login has."""
    row = await site.runtime.pool.fetchrow(
        "SELECT (SELECT count(*) FROM auth.page_links WHERE login_id = $1) AS links,"
        " (SELECT count(*) FROM auth.page_sessions WHERE login_id = $1) AS sessions", login_id)
    return row["links"], row["sessions"]


async def _expire(site, login_id: str, ago: timedelta) -> None:
    """Set up a login whose prompt link and session expired `ago` (the purge is what is tested)."""
    for table in ("page_links", "page_sessions"):
        await site.runtime.pool.execute(f"UPDATE auth.{table} SET expires_at = now() - $2::interval WHERE login_id = $1",
                                        login_id, ago)


async def test_prompt_links_and_sessions_go_a_week_after_they_expired_and_the_page_then_says_unknown(site, upstream):
    _, account = await person(site)
    await site.api.enroll(account)
    old, recent = await start_login(site, upstream, account), await start_login(site, upstream, account)
    async with aiohttp.ClientSession() as http:
        async with http.get(old["prompt_url"], allow_redirects=False) as opened:
            assert opened.status == 303  # the exchange: the link is used, a session opened
    assert await _rows(site, old["login_id"]) == (1, 1)
    await _expire(site, old["login_id"], timedelta(days=8))
    await _expire(site, recent["login_id"], timedelta(days=6))

    deleted = await purge_expired(site.runtime.pool, KEPT)

    assert deleted["page_links"] >= 1 and deleted["page_sessions"] >= 1
    assert await _rows(site, old["login_id"]) == (0, 0)
    assert await _rows(site, recent["login_id"]) == (1, 0)  # expired 6 days ago: kept, it has no session
    async with aiohttp.ClientSession() as http:
        async with http.get(recent["prompt_url"], allow_redirects=False) as page:
            assert page.status == 410 and "This link has expired" in await page.text()
        async with http.get(old["prompt_url"], allow_redirects=False) as page:
            assert page.status == 410 and "This link does not work" in await page.text()


async def _opened_prompt(site, upstream) -> tuple[str, dict, str]:
    """An enrolled account with a login whose prompt was opened: the account, the login and the session cookie."""
    _, account = await person(site)
    await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    async with aiohttp.ClientSession() as http:
        async with http.get(login["prompt_url"], allow_redirects=False) as opened:
            assert opened.status == 303
            cookie = opened.cookies["mfa_prompt"].value
    assert await _rows(site, login["login_id"]) == (1, 1)
    return account, login, cookie


async def test_a_removed_accounts_page_links_and_sessions_go_with_it(site, upstream):
    account, login, cookie = await _opened_prompt(site, upstream)

    async with site.runtime.pool.acquire() as conn, conn.transaction():
        await remove_account(conn, {"account_id": account})

    assert await _rows(site, login["login_id"]) == (0, 0)  # the session went with its link
    async with aiohttp.ClientSession(cookies={"mfa_prompt": cookie}) as http:
        # The first page may still be shown from the exchange's own read (`Opened.first_page`); a reload reads.
        for _ in range(2):
            async with http.get(f"{site.base}/mfa/prompt") as page:
                text = await page.text()
        assert page.status == 410 and "This page has expired" in text, text


async def test_a_link_whose_session_outlives_it_is_kept_until_the_session_may_go(site, upstream):
    _, login, _ = await _opened_prompt(site, upstream)
    # The link expired 7 days and 10 minutes ago, its session (as a portal's can) 20 minutes later.
    await site.runtime.pool.execute(
        "UPDATE auth.page_links SET expires_at = now() - interval '7 days 10 minutes' WHERE login_id = $1",
        login["login_id"])
    await site.runtime.pool.execute(
        "UPDATE auth.page_sessions SET expires_at = now() - interval '6 days 23 hours 50 minutes' WHERE login_id = $1",
        login["login_id"])

    await purge_expired(site.runtime.pool, KEPT)

    assert await _rows(site, login["login_id"]) == (1, 1)  # deleting the link would take the session early
    await site.runtime.pool.execute(
        "UPDATE auth.page_links SET expires_at = now() - interval '7 days 31 minutes' WHERE login_id = $1",
        login["login_id"])
    await purge_expired(site.runtime.pool, KEPT)
    assert await _rows(site, login["login_id"]) == (0, 0)


async def test_console_sign_in_links_go_a_week_after_they_expired(runtime, settings):
    key = Keyring(settings.secret_keys).derive("recovery-console-test")
    agent = f"agent-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    old = await recovery.issue_helpdesk_link(runtime.pool, key, "http://x", agent, None, now=now - timedelta(days=8))
    recent = await recovery.issue_helpdesk_link(runtime.pool, key, "http://x", agent, None, now=now - timedelta(days=6))

    assert await recovery.purge_expired_console_sign_ins(runtime.pool) >= 1

    left = await runtime.pool.fetchval("SELECT count(*) FROM recovery.helpdesk_links WHERE agent = $1", agent)
    assert left == 1
    for link, outcome in ((old, "unknown"), (recent, "expired")):
        token = link.url.partition("token=")[2]
        try:
            await recovery.open_helpdesk_link(runtime.pool, key, token)
        except Gone as gone:
            assert gone.code == f"helpdesk_link_{outcome}"
        else:
            raise AssertionError("an expired link opened the console")


async def test_logins_go_with_what_is_left_of_them_once_they_expired_longer_ago_than_the_setting(site, upstream):
    _, old, _ = await _opened_prompt(site, upstream)
    _, recent, _ = await _opened_prompt(site, upstream)
    for login, ago in ((old, timedelta(days=91)), (recent, timedelta(days=89))):
        await site.runtime.pool.execute("UPDATE auth.logins SET expires_at = now() - $2::interval WHERE login_id = $1",
                                        login["login_id"], ago)
        await _expire(site, login["login_id"], ago)

    deleted = await purge_expired(site.runtime.pool, KEPT)

    assert deleted["logins"] >= 1
    assert await _rows(site, old["login_id"]) == (0, 0)
    _, gone = await site.api.call("GET", f"/v1/logins/{old['login_id']}", expect=404)
    assert gone["code"] == "login_not_found"
    assert await _rows(site, recent["login_id"]) == (0, 0)  # its links went 7 days after they expired
    _, kept = await site.api.call("GET", f"/v1/logins/{recent['login_id']}", expect=200)
    assert kept["login_id"] == recent["login_id"]
