"""Everything works by keyboard alone, and every flow works without JavaScript."""

from __future__ import annotations

from ..auth.conftest import oathtool
from .conftest import arrival_of, person, start_login, tab_to


async def test_enrolment_then_a_backup_code_login_by_keyboard_alone(site, upstream, page):
    _, account = await person(site, company_required=True)
    login = await start_login(site, upstream, account)
    await page.goto(login["prompt_url"])
    secret = (await page.locator("#secret").inner_text()).replace(" ", "")
    await tab_to(page, "#code")
    await page.keyboard.type(oathtool(secret))
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#backup-codes")
    codes = await page.locator("#backup-codes li").all_inner_texts()
    await tab_to(page, "#saved")
    await page.keyboard.press("Space")
    await tab_to(page, "button[type=submit]")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{upstream.base}/back**")

    again = await start_login(site, upstream, account)
    await page.goto(again["prompt_url"])
    await tab_to(page, 'a[href="/mfa/prompt/backup-code"]')
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/mfa/prompt/backup-code")
    await tab_to(page, "#backup_code")
    await page.keyboard.type(codes[0])
    await page.keyboard.press("Enter")
    await page.wait_for_load_state()
    assert await page.locator("h1").inner_text() == "Set up multifactor authentication"  # forced: set up again


async def test_the_whole_enrolment_and_a_verify_login_without_javascript(site, upstream, browser):
    _, account = await person(site, company_required=True, company="No Script NV")
    ctx = await browser.new_context(java_script_enabled=False)
    try:
        page = await ctx.new_page()
        login = await start_login(site, upstream, account, state="nojs")
        await page.goto(login["prompt_url"])
        assert await page.locator("script").count() == 0  # the pages ship no script at all
        secret = (await page.locator("#secret").inner_text()).replace(" ", "")
        await page.get_by_label("Current code from the app").fill(oathtool(secret))
        await page.get_by_role("button", name="Confirm and save").click()
        await page.wait_for_selector("#backup-codes")
        await page.get_by_label("I have saved my backup codes").check()
        await page.get_by_role("button", name="Continue").click()
        await page.wait_for_url(f"{upstream.base}/back**")
        assert arrival_of(page.url) == {"login_id": [login["login_id"]], "state": ["nojs"]}

        verify = await start_login(site, upstream, account)
        await page.goto(verify["prompt_url"])
        await page.get_by_label("Verification code").fill(oathtool(secret, 30))
        await page.get_by_role("button", name="Log in").click()
        await page.wait_for_url(f"{upstream.base}/back**")
        _, done = await site.api.call("GET", f"/v1/logins/{verify['login_id']}", expect=200)
        assert done["status"] == "succeeded" and done["method"] == "totp"
    finally:
        await ctx.close()
