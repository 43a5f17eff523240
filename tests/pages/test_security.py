"""The pages' security in a real browser: headers, framing, cross-site posts, one login's page vs another's,
open redirects, cookie flags and no secret left in the address bar."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from services.common.pages import return_url_allowed

from ..auth.conftest import oathtool
from ..conftest import wait_for
from .conftest import person, start_login


async def test_every_page_answer_carries_the_security_headers(site, upstream, page):
    _, account = await person(site)
    await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    answers = []
    page.on("response", lambda r: answers.append(r) if "/mfa/" in r.url else None)
    await page.goto(login["prompt_url"])
    await page.goto(f"{site.base}/mfa/no-such-page")
    assert len(answers) >= 4  # the token exchange, the prompt, its stylesheet, the 404 page
    for answer in answers:
        headers = await answer.all_headers()
        csp = headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp, csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        if "/mfa/static/" in answer.url:  # the same for everyone, under a URL with its version
            assert headers["cache-control"] == "public, max-age=31536000, immutable"
        else:
            assert "no-store" in headers["cache-control"]
    missing = next(a for a in answers if a.url.endswith("/mfa/no-such-page"))
    assert missing.status == 404 and await page.locator("h1").inner_text() == "Page not found"
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["mfa_prompt"]["httpOnly"] is True and cookies["mfa_prompt"]["sameSite"] == "Lax"
    assert cookies["mfa_prompt"]["secure"] is False  # plain http here; https public URLs set Secure
    assert login["prompt_url"].split("token=")[1] not in {c["value"] for c in cookies.values()}


async def test_chromium_refuses_to_show_a_page_in_another_sites_frame(site, upstream, page):
    _, account = await person(site)
    await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    await page.goto(login["prompt_url"])  # the person's own session, which the framing page would abuse
    await page.goto(f"{upstream.base}/frame?src={quote(site.base + '/mfa/prompt')}")
    child = page.main_frame.child_frames[0]
    await wait_for(lambda: child.url.startswith("chrome-error://"), message="the frame to be refused")
    assert await child.locator("#code").count() == 0
    # The same framing page shows a page that allows framing: the refusal above is the headers' doing.
    await page.goto(f"{upstream.base}/frame?src={quote(upstream.base + '/back')}")
    await page.frame_locator("#f").locator("h1").wait_for()
    assert await page.frame_locator("#f").locator("h1").inner_text() == "Welcome back"


async def test_a_cross_site_post_is_refused_and_counts_no_attempt(site, upstream, page):
    _, account = await person(site)
    secret, _, _ = await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    await page.goto(login["prompt_url"])
    forge = (f"{upstream.base}/forge?action={quote(site.base + '/mfa/prompt/code')}"
             f"&field=code&value={oathtool(secret, 30)}")
    await page.goto(forge)
    async with page.expect_response(f"{site.base}/mfa/prompt/code") as answer:
        await page.click("#go")
    assert (await answer.value).status in (403, 410)  # refused: cross-site, or the Lax cookie was not even sent
    _, state = await site.api.call("GET", f"/v1/logins/{login['login_id']}", expect=200)
    assert state["status"] == "pending"
    async with site.runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT attempts FROM auth.logins WHERE login_id = $1", login["login_id"]) == 0
    # With the person's cookie, from this site, but without the form's token: refused too.
    await page.goto(f"{site.base}/mfa/prompt")
    response = await page.request.post(f"{site.base}/mfa/prompt/code", form={"code": "123456"},
                                       headers={"Origin": site.base})
    assert response.status == 403
    response = await page.request.post(
        f"{site.base}/mfa/prompt/code", headers={"Origin": "https://evil.example"},
        form={"code": "123456", "csrf": await page.locator('input[name="csrf"]').first.get_attribute("value")})
    assert response.status == 403


async def test_the_prompt_of_one_login_cannot_act_on_another(site, upstream, browser):
    _, alice = await person(site)
    _, bob = await person(site)
    alice_secret, _, _ = await site.api.enroll(alice)
    await site.api.enroll(bob)
    alice_login = await start_login(site, upstream, alice)
    bob_login = await start_login(site, upstream, bob)
    alice_ctx, bob_ctx = await browser.new_context(), await browser.new_context()
    try:
        alice_page, bob_page = await alice_ctx.new_page(), await bob_ctx.new_page()
        await alice_page.goto(alice_login["prompt_url"])
        await bob_page.goto(bob_login["prompt_url"])
        alice_csrf = await alice_page.locator('input[name="csrf"]').first.get_attribute("value")
        # Alice's form token with Bob's cookie: refused (the token is bound to one session).
        response = await bob_page.request.post(f"{site.base}/mfa/prompt/code", headers={"Origin": site.base},
                                               form={"code": oathtool(alice_secret, 30), "csrf": alice_csrf})
        assert response.status == 403
        # Bob's page names no login: Alice's right code, with her login id, is just a wrong code for Bob.
        await bob_page.evaluate("""([id]) => { const f = document.querySelector('form[action="/mfa/prompt/code"]');
            const i = document.createElement('input'); i.type = 'hidden'; i.name = 'login_id'; i.value = id; f.appendChild(i); }""",
                                [alice_login["login_id"]])
        await bob_page.get_by_label("Verification code").fill(oathtool(alice_secret, 30))
        await bob_page.get_by_role("button", name="Log in").click()
        await bob_page.wait_for_load_state()
        assert "You have 4 tries left" in await bob_page.get_by_role("alert").inner_text()
        for login in (alice_login, bob_login):
            _, state = await site.api.call("GET", f"/v1/logins/{login['login_id']}", expect=200)
            assert state["status"] == "pending"
    finally:
        await alice_ctx.close()
        await bob_ctx.close()


@pytest.mark.parametrize("target", [
    "https://evil.example/back", "//evil.example/back", "javascript:alert(1)", "http://127.0.0.1.evil.example/back",
    "http://user@evil.example/", "data:text/html,hi", "http://[::1", "ftp://127.0.0.1/back", "http://evil.example\\@127.0.0.1/",
])
async def test_return_to_outside_the_registered_urls_is_refused_before_anything(site, target):
    _, account = await person(site)
    await site.api.enroll(account)
    status, problem = await site.api.call("POST", "/v1/logins", {"account_id": account, "return_to": target})
    assert status == 400 and problem["code"] == "return_to_not_allowed"
    async with site.runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM auth.logins WHERE account_id = $1", account) == 0


def test_return_url_prefixes_match_by_parts_not_by_text():
    prefixes = ["https://app.example.com/mfa", "https://other.example:8443/"]
    allowed = ["https://app.example.com/mfa", "https://app.example.com/mfa/back?x=1", "https://other.example:8443/a"]
    refused = ["https://app.example.com/mfa-evil", "https://app.example.com.evil.com/mfa", "http://app.example.com/mfa",
               "https://app.example.com:444/mfa", "https://other.example/a", "https://app.example.com/",
               "https://user:pw@app.example.com/mfa", "https://app.example.com/mfa/\r\nx", "http://127.0.0.1:9/back"]
    assert all(return_url_allowed(u, prefixes, allow_loopback=False) for u in allowed)
    assert not any(return_url_allowed(u, prefixes, allow_loopback=False) for u in refused)
    assert return_url_allowed("http://127.0.0.1:9/back", [], allow_loopback=True)
    assert return_url_allowed("http://localhost:3000/x", [], allow_loopback=True)
    assert not return_url_allowed("http://127.0.0.1.nip.io/x", [], allow_loopback=True)


async def test_state_without_return_to_is_refused(site):
    _, account = await person(site)
    status, problem = await site.api.call("POST", "/v1/logins", {"account_id": account, "state": "x"})
    assert status == 400 and problem["code"] == "missing_field" and problem["field"] == "return_to"


async def test_a_key_bound_to_another_company_cannot_read_a_login_or_open_my_login(site, upstream):
    from services.common.apikeys import create_key

    from ..auth.conftest import Api

    _, account = await person(site)
    await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    other = Api(site.api.client, await create_key(site.runtime.pool, "service", company_id=await site.api.company()))
    status, problem = await other.call("GET", f"/v1/logins/{login['login_id']}")
    assert status == 404 and problem["code"] == "login_not_found"
    status, problem = await other.call("POST", f"/v1/accounts/{account}/portal-sessions", {"return_to": f"{upstream.base}/b"})
    assert status == 404 and problem["code"] == "account_not_found"
    _, mine = await site.api.call("GET", f"/v1/logins/{login['login_id']}", expect=200)
    assert mine["status"] == "pending" and "assertion" not in mine


def test_cookies_are_secure_behind_https():
    from aiohttp import web

    from services.common.pages import Pages

    secure = Pages([], csrf_key=b"k" * 32, secure_cookies=True)
    response = web.Response()
    secure.set_cookie(response, "mfa_prompt", "v", max_age=60)
    header = response.cookies["mfa_prompt"].OutputString()
    assert "Secure" in header and "HttpOnly" in header and "SameSite=Lax" in header and "Path=/mfa/" in header


async def test_two_companies_logins_with_the_same_id_have_prompts_of_their_own(site, upstream, browser):
    from services.common.apikeys import create_key

    from ..auth.conftest import Api

    logins = {}
    for name in ("A", "B"):
        company, account = await person(site)
        secret, _, _ = await site.api.enroll(account)
        api = Api(site.api.client, await create_key(site.runtime.pool, "service", company_id=company))
        _, login = await api.call("POST", "/v1/logins", {"account_id": account, "login_id": "shared-id-1",
                                                         "return_to": f"{upstream.base}/back"}, expect=201)
        logins[name] = (api, secret, login)
    ctx = await browser.new_context()
    try:
        page = await ctx.new_page()
        api_a, secret_a, login_a = logins["A"]
        await page.goto(login_a["prompt_url"])
        await page.get_by_label("Verification code").fill(oathtool(secret_a, 30))
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url(f"{upstream.base}/back**")
    finally:
        await ctx.close()
    _, a = await api_a.call("GET", "/v1/logins/shared-id-1", expect=200)
    api_b, _, _ = logins["B"]
    _, b = await api_b.call("GET", "/v1/logins/shared-id-1", expect=200)
    assert a["status"] == "succeeded" and a["account_id"] == login_a["account_id"]
    assert b["status"] == "pending" and b["account_id"] == logins["B"][2]["account_id"]
