"""The prompt in Chromium: verify with the app, a backup code or an emailed link; enrol when it is mandatory."""

from __future__ import annotations

from ..auth.conftest import oathtool
from .conftest import arrival_of, assertion_of, check_axe, person, scan_qr, start_login


async def test_verify_with_the_app_code_returns_to_upstream_with_login_id_and_state_only(site, upstream, page):
    _, account = await person(site, company="Verify & Co")
    secret, _, _ = await site.api.enroll(account)
    login = await start_login(site, upstream, account, state="xyz-42")
    assert login["decision"] == "verify" and login["prompt_url"].startswith(site.base + "/mfa/prompt?token=")

    await page.goto(login["prompt_url"])
    assert "token" not in page.url  # exchanged for a cookie, the address bar holds no secret
    assert await page.locator("header .company").inner_text() == "Verify & Co"  # escaped, and named
    await check_axe(page)
    await page.get_by_label("Verification code").fill(oathtool(secret, offset=30))  # the enrolment used the current step
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{upstream.base}/back**")
    assert arrival_of(page.url) == {"login_id": [login["login_id"]], "state": ["xyz-42"]}
    claims = await assertion_of(site, login["login_id"])
    assert claims["sub"] == account and claims["login_id"] == login["login_id"]


async def test_wrong_codes_say_how_many_tries_are_left_then_the_lock_says_until_when(site, upstream, page):
    _, account = await person(site)
    secret, _, _ = await site.api.enroll(account)
    wrong = "000000" if oathtool(secret) != "000000" and oathtool(secret, 30) != "000000" else "111111"
    first = await start_login(site, upstream, account)
    await page.goto(first["prompt_url"])
    for left in (4, 3, 2, 1):
        await page.get_by_label("Verification code").fill(wrong)
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_load_state()
        assert f"You have {left} tries left." in await page.get_by_role("alert").inner_text()
    await check_axe(page)
    await page.get_by_label("Verification code").fill(wrong)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_load_state()
    assert await page.locator("h1").inner_text() == "This login was stopped"

    second = await start_login(site, upstream, account)
    await page.goto(second["prompt_url"])
    for _ in range(5):  # ten wrong codes in a row lock the account
        await page.get_by_label("Verification code").fill(wrong)
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_load_state()
    text = await page.locator("main").inner_text()
    assert await page.locator("h1").inner_text() == "Too many wrong codes"
    assert "You can try again after" in text and "UTC" in text
    _, status = await site.api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status["locked_until"] is not None
    await check_axe(page)


async def test_a_backup_code_logs_in_and_turns_mfa_off(site, upstream, page):
    _, account = await person(site)
    _, codes, _ = await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    await page.goto(login["prompt_url"])
    await page.get_by_role("link", name="Use a backup code").click()
    await check_axe(page)
    await page.get_by_label("Backup code").fill("WRONG-CODE-0000")
    await page.get_by_role("button", name="Log in with backup code").click()
    await page.wait_for_load_state()
    assert "15 letters and digits" in await page.get_by_role("alert").inner_text()
    await page.get_by_label("Backup code").fill("ABCDE-FGHJK-MNPQR")
    await page.get_by_role("button", name="Log in with backup code").click()
    await page.wait_for_load_state()
    assert "You have 4 tries left" in await page.get_by_role("alert").inner_text()
    await page.get_by_label("Backup code").fill(codes[3])
    await page.get_by_role("button", name="Log in with backup code").click()
    await page.wait_for_url(f"{upstream.base}/back**")
    claims = await assertion_of(site, login["login_id"])
    assert claims["login_id"] == login["login_id"]
    _, status = await site.api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status["enabled"] is False


async def test_mandatory_enrolment_scan_confirm_save_backup_codes_then_back_to_upstream(site, upstream, page):
    _, account = await person(site, company_required=True, company="Forced Ltd")
    login = await start_login(site, upstream, account, state="s-enrol")
    assert login["decision"] == "enroll"
    await page.goto(login["prompt_url"])
    assert await page.locator("h1").inner_text() == "Set up multifactor authentication"
    assert "Google Authenticator" in await page.locator("main").inner_text()
    await check_axe(page)
    uri = await scan_qr(page)
    typed = (await page.locator("#secret").inner_text()).replace(" ", "")
    assert f"secret={typed}" in uri and "issuer=Forced%20Ltd" in uri
    assert len((await page.locator("#secret").inner_text()).split(" ")) == 8  # groups of four for typing
    await page.reload()  # the same secret on a reload: a scanned app stays right
    assert (await page.locator("#secret").inner_text()).replace(" ", "") == typed

    await page.get_by_label("Current code from the app").fill("123456" if oathtool(typed) != "123456" else "654321")
    await page.get_by_role("button", name="Confirm and save").click()
    await page.wait_for_load_state()
    assert "not the current code" in await page.get_by_role("alert").inner_text()
    await page.get_by_label("Current code from the app").fill(oathtool(typed))
    await page.get_by_role("button", name="Confirm and save").click()
    await page.wait_for_load_state()
    codes = await page.locator("#backup-codes li").all_inner_texts()
    assert len(codes) == 10 and len(set(codes)) == 10
    assert "Warning!" in await page.locator("main").inner_text()
    await check_axe(page)
    await page.get_by_label("I have saved my backup codes").check()
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"{upstream.base}/back**")
    assert arrival_of(page.url) == {"login_id": [login["login_id"]], "state": ["s-enrol"]}
    claims = await assertion_of(site, login["login_id"])
    assert claims["sub"] == account
    # The codes shown work: one of them turns MFA off through the API.
    await site.api.call("POST", f"/v1/accounts/{account}/mfa/disable", {"backup_code": codes[0]}, expect=200)


async def test_a_backup_code_on_a_forced_account_leads_straight_to_setting_up_again(site, upstream, page):
    _, account = await person(site, required=True)
    _, codes, _ = await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    await page.goto(login["prompt_url"])
    await page.get_by_role("link", name="Use a backup code").click()
    assert "set it up again right after" in await page.locator("main").inner_text()
    await page.get_by_label("Backup code").fill(codes[0])
    await page.get_by_role("button", name="Log in with backup code").click()
    await page.wait_for_load_state()
    assert await page.locator("h1").inner_text() == "Set up multifactor authentication"
    assert "turned multifactor authentication off" in await page.get_by_role("status").inner_text()
    typed = (await page.locator("#secret").inner_text()).replace(" ", "")
    await page.get_by_label("Current code from the app").fill(oathtool(typed))
    await page.get_by_role("button", name="Confirm and save").click()
    await page.get_by_label("I have saved my backup codes").check()
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url(f"{upstream.base}/back**")
    assert (await assertion_of(site, login["login_id"]))["sub"] == account


async def test_used_expired_and_unknown_prompt_urls_are_clear_pages(site, upstream, page, context):
    _, account = await person(site, company="Clear Pages BV")
    await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    await page.goto(login["prompt_url"])
    other = await context.browser.new_context()
    try:
        stolen = await other.new_page()
        response = await stolen.goto(login["prompt_url"])  # a second use, e.g. from the history
        assert response.status == 410
        assert await stolen.locator("h1").inner_text() == "This link was already used"
        assert await stolen.locator("header .company").inner_text() == "Clear Pages BV"
        await check_axe(stolen)
        response = await stolen.goto(login["prompt_url"].split("=")[0] + "=not-a-real-token-at-all-1234567890")
        assert response.status == 410 and await stolen.locator("h1").inner_text() == "This link does not work"
        response = await stolen.goto(f"{site.base}/mfa/prompt")  # no session at all
        assert response.status == 410 and await stolen.locator("h1").inner_text() == "This page has expired"
    finally:
        await other.close()
    async with site.runtime.pool.acquire() as conn:  # the login runs out while the page is open
        await conn.execute("UPDATE auth.logins SET expires_at = now() - interval '1 second' WHERE login_id = $1",
                           login["login_id"])
    response = await page.reload()
    assert response.status == 410 and await page.locator("h1").inner_text() == "This login has expired"
    await check_axe(page)
