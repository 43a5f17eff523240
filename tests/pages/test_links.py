"""The emailed links, from the real notifier's mail: a page with one button, the POST redeems."""

from __future__ import annotations

from .conftest import arrival_of, check_axe, link_to, person, start_login


async def confirmed_backup_email(site, mailbox, context, account: str) -> str:
    """Set a backup email through the API and confirm it on the page of the mailed link."""
    backup = f"{account}@backup.example"
    await site.api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": backup}, expect=202)
    link = await link_to(mailbox, backup, "/mfa/backup-email/confirm")
    page = await context.new_page()
    await page.goto(link)
    assert "token" not in page.url
    assert await page.locator("h1").inner_text() == "Confirm your backup email"
    _, status = await site.api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status["backup_email"] == {"address": backup, "verified": False}  # opening the link is not enough
    await check_axe(page)
    await page.get_by_role("button", name="Confirm").click()
    await page.wait_for_load_state()
    assert await page.locator("h1").inner_text() == "Backup email confirmed"
    _, status = await site.api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status["backup_email"] == {"address": backup, "verified": True}
    await check_axe(page)
    await page.goto(link)  # a second use says so
    assert await page.locator("h1").inner_text() == "This link was already used"
    await page.close()
    return backup


async def test_email_me_a_login_link_then_the_prompt_moves_on_once_the_phone_used_it(site, upstream, mailbox, context, browser):
    _, account = await person(site, company="Mail Link BV")
    backup = await confirmed_backup_email(site, mailbox, context, account)
    await site.api.enroll(account)
    login = await start_login(site, upstream, account, state="via-mail")
    desk = await context.new_page()
    await desk.goto(login["prompt_url"])
    async with desk.expect_response("**/mfa/prompt/check-mail") as waiting:
        await desk.get_by_role("button", name="Email me a login link").click()
    assert (await waiting.value).headers["refresh"] == "3"  # it reloads itself, without JavaScript
    assert await desk.locator("h1").inner_text() == "Check your mail"
    await check_axe(desk)

    link = await link_to(mailbox, backup, "/mfa/login-link")
    phone_context = await browser.new_context()  # the mail is opened on another device
    try:
        phone = await phone_context.new_page()
        await phone.goto(link)
        assert await phone.locator("h1").inner_text() == "Log in with your backup email"
        assert await phone.locator("header .company").inner_text() == "Mail Link BV"
        await check_axe(phone)
        _, still = await site.api.call("GET", f"/v1/logins/{login['login_id']}", expect=200)
        assert still["status"] == "pending"  # a mail scanner following the link uses nothing up
        await phone.get_by_role("button", name="Log in").click()
        await phone.wait_for_url(f"{upstream.base}/back**")
        assert arrival_of(phone.url) == {"login_id": [login["login_id"]], "state": ["via-mail"]}
    finally:
        await phone_context.close()
    await desk.wait_for_url(f"{upstream.base}/back**", timeout=15000)  # the first tab followed by itself
    assert arrival_of(desk.url) == {"login_id": [login["login_id"]], "state": ["via-mail"]}
    _, done = await site.api.call("GET", f"/v1/logins/{login['login_id']}", expect=200)
    assert done["status"] == "succeeded" and done["method"] == "backup_email" and done["assertion"]


async def test_a_login_link_opened_twice_or_made_up_is_a_clear_page(site, upstream, mailbox, context):
    _, account = await person(site)
    backup = await confirmed_backup_email(site, mailbox, context, account)
    await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    await site.api.call("POST", f"/v1/logins/{login['login_id']}/backup-email", expect=202)
    link = await link_to(mailbox, backup, "/mfa/login-link")
    page = await context.new_page()
    await page.goto(link)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{upstream.base}/back**")
    await page.goto(link)
    assert await page.locator("h1").inner_text() == "This link was already used"
    await check_axe(page)
    response = await page.goto(link.split("token=")[0] + "token=made-up-token-made-up-token-made-up")
    assert response.status == 410 and await page.locator("h1").inner_text() == "This link does not work"
