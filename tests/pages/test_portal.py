"""'My login' in Chromium: status, set up, backup email, new backup codes, turning MFA off."""

from __future__ import annotations

from ..auth.conftest import oathtool, zbarimg
from ..conftest import wait_for
from .conftest import admin_of, check_axe, link_to, open_admin, person


async def _open(site, upstream, page, account: str) -> None:
    _, portal = await site.api.call("POST", f"/v1/accounts/{account}/portal-sessions",
                                    {"return_to": f"{upstream.base}/back"}, expect=201)
    await page.goto(portal["url"])
    assert "token" not in page.url and page.url.endswith("/mfa/my-login")


async def test_my_login_set_up_new_codes_backup_email_and_turn_off(site, upstream, mailbox, page, context):
    _, account = await person(site, company="Portal GmbH")
    await _open(site, upstream, page, account)
    assert await page.locator("h1").inner_text() == "My login"
    assert await page.locator("#mfa-status").inner_text() == "Off"
    assert await page.locator("header .company").inner_text() == "Portal GmbH"
    await check_axe(page)

    await page.get_by_role("link", name="Set up multifactor authentication").click()
    await page.wait_for_url("**/mfa/my-login/setup")
    uri = zbarimg(await page.get_by_role("img", name="QR code to scan with your authenticator app").screenshot())
    secret = (await page.locator("#secret").inner_text()).replace(" ", "")
    assert f"secret={secret}" in uri
    await check_axe(page)
    await page.get_by_label("Current code from the app").fill(oathtool(secret))
    await page.get_by_role("button", name="Confirm and save").click()
    await page.wait_for_load_state()
    first_codes = await page.locator("#backup-codes li").all_inner_texts()
    assert len(first_codes) == 10
    await page.get_by_label("I have saved my backup codes").check()
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_url("**/mfa/my-login?notice=codes_saved")
    assert (await page.locator("#mfa-status").inner_text()).startswith("On since")

    await page.get_by_role("button", name="Make new backup codes").click()
    await page.wait_for_load_state()
    new_codes = await page.locator("#backup-codes li").all_inner_texts()
    assert len(new_codes) == 10 and not set(new_codes) & set(first_codes)
    await page.get_by_label("I have saved my backup codes").check()
    await page.get_by_role("button", name="Continue").click()
    await page.wait_for_load_state()

    await page.get_by_label("Backup email address").fill(f"{account}@example.com")  # the login email itself
    await page.get_by_role("button", name="Save and send confirmation").click()
    await page.wait_for_load_state()
    assert "different address than your login email" in await page.get_by_role("alert").inner_text()
    backup = f"{account}@home.example"
    await page.get_by_label("Backup email address").fill(backup)
    await page.get_by_role("button", name="Save and send confirmation").click()
    await page.wait_for_url("**/mfa/my-login?notice=email_sent")
    assert "waiting for confirmation" in await page.locator("#backup-email-status").inner_text()
    confirm = await link_to(mailbox, backup, "/mfa/backup-email/confirm")
    mail_page = await context.new_page()
    await mail_page.goto(confirm)
    await mail_page.get_by_role("button", name="Confirm").click()
    await mail_page.wait_for_load_state()
    await page.reload()
    assert "(confirmed)" in await page.locator("#backup-email-status").inner_text()

    await page.get_by_label("Backup code", exact=True).fill(first_codes[0])  # replaced: no longer valid
    await page.get_by_role("button", name="Turn off").click()
    await page.wait_for_load_state()
    assert "not valid" in await page.get_by_role("alert").inner_text()
    await page.get_by_label("Backup code", exact=True).fill(new_codes[0])
    await page.get_by_role("button", name="Turn off").click()
    await page.wait_for_url("**/mfa/my-login?notice=mfa_off")
    assert await page.locator("#mfa-status").inner_text() == "Off"
    _, status = await site.api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status["enabled"] is False
    await page.get_by_role("link", name="Back to Portal GmbH").click()
    await page.wait_for_url(f"{upstream.base}/back")


async def test_turning_mfa_off_is_refused_with_the_seeds_explanation_while_forced(site, upstream, page):
    _, account = await person(site, required=True)
    _, codes, _ = await site.api.enroll(account)
    await _open(site, upstream, page, account)
    refusal = await page.locator("#off-refused").inner_text()
    assert "This can only be done when multifactor authentication is not forced by the administrator." in refusal
    assert await page.get_by_role("button", name="Turn off").count() == 0
    await check_axe(page)
    # A hand-made POST is refused the same way and changes nothing.
    csrf = await page.locator('input[name="csrf"]').first.get_attribute("value")
    response = await page.request.post(f"{site.base}/mfa/my-login/disable",
                                       form={"csrf": csrf, "backup_code": codes[0]},
                                       headers={"Origin": site.base})
    assert response.status == 409
    _, status = await site.api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status["enabled"] is True and status["backup_codes_left"] == 10


async def test_a_portal_link_works_once_and_needs_a_registered_return_url(site, upstream, page, context):
    _, account = await person(site)
    _, portal = await site.api.call("POST", f"/v1/accounts/{account}/portal-sessions",
                                    {"return_to": f"{upstream.base}/back"}, expect=201)
    await page.goto(portal["url"])
    second = await context.browser.new_context()
    try:
        other = await second.new_page()
        response = await other.goto(portal["url"])
        assert response.status == 410 and await other.locator("h1").inner_text() == "This link was already used"
    finally:
        await second.close()
    status, problem = await site.api.call("POST", f"/v1/accounts/{account}/portal-sessions",
                                          {"return_to": "https://evil.example/steal"})
    assert status == 400 and problem["code"] == "return_to_not_allowed"


async def test_replace_the_authenticator_app_with_the_present_apps_code(site, upstream, page):
    _, account = await person(site)
    old, _, _ = await site.api.enroll(account)
    await _open(site, upstream, page, account)
    await page.get_by_label("Current code from your present app").fill("000000" if oathtool(old, 30) != "000000" else "111111")
    await page.get_by_role("button", name="Replace the app").click()
    await page.wait_for_load_state()
    assert "not the current code of your present app" in await page.get_by_role("alert").inner_text()
    await page.get_by_label("Current code from your present app").fill(oathtool(old, 30))
    await page.get_by_role("button", name="Replace the app").click()
    await page.wait_for_url("**/mfa/my-login/replace")
    await check_axe(page)
    uri = zbarimg(await page.get_by_role("img", name="QR code to scan with your authenticator app").screenshot())
    new = (await page.locator("#secret").inner_text()).replace(" ", "")
    assert f"secret={new}" in uri and new != old
    await page.get_by_label("Current code from the app").fill(oathtool(new))
    await page.get_by_role("button", name="Confirm and save").click()
    await page.wait_for_url("**/mfa/my-login?notice=replaced")
    # The new app works for a login, the old one no longer does.
    _, login = await site.api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    status, _ = await site.api.call("POST", f"/v1/logins/{login['login_id']}/verify",
                                    {"method": "totp", "code": oathtool(old, 30)})  # would pass with the old secret
    assert status == 401
    await site.api.call("POST", f"/v1/logins/{login['login_id']}/verify",
                        {"method": "totp", "code": oathtool(new, 30)}, expect=200)


async def test_an_expired_backup_email_confirmation_says_so_and_the_address_again_sends_a_new_link(
        site, upstream, mailbox, page, context):
    company_id, account = await person(site, company="Late Mail BV")
    await _open(site, upstream, page, account)
    backup = f"{account}@home.example"
    await page.get_by_label("Backup email address").fill(backup)
    await page.get_by_role("button", name="Save and send confirmation").click()
    await page.wait_for_url("**/mfa/my-login?notice=email_sent")
    first = await link_to(mailbox, backup, "/mfa/backup-email/confirm")
    # The person did not open it in time (set up directly: the clock is not what is tested).
    await site.runtime.pool.execute(
        "UPDATE auth.backup_emails SET confirm_expires_at = now() - interval '1 minute' WHERE account_id = $1", account)

    await page.reload()
    status = await page.locator("#backup-email-status").inner_text()
    assert "expired before it was opened" in status and backup in status
    admin = await context.new_page()
    await open_admin(site, upstream, admin, company_id, await admin_of(site, company_id))
    await admin.goto(f"{site.base}/mfa/admin/employees/{account}")
    assert await admin.locator("#employee-backup-email").inner_text() == "The link expired before it was confirmed"
    await page.goto(f"{site.base}/mfa/my-login?lang=nl")
    assert "is verlopen voordat hij geopend werd" in await page.locator("#backup-email-status").inner_text()

    await page.get_by_label("Back-up e-mailadres").fill(backup)
    await page.get_by_role("button", name="Opslaan en bevestiging sturen").click()
    await page.wait_for_url("**/mfa/my-login?notice=email_sent")
    assert "wacht op bevestiging" in await page.locator("#backup-email-status").inner_text()

    async def newer_link() -> str | None:
        link = await link_to(mailbox, backup, "/mfa/backup-email/confirm")
        return link if link != first else None

    second = await wait_for(newer_link, timeout=20, message="a second confirmation mail")
    confirm = await context.new_page()
    await confirm.goto(second)
    await confirm.get_by_role("button").click()
    await confirm.wait_for_load_state()
    await page.reload()
    assert "(bevestigd)" in await page.locator("#backup-email-status").inner_text()
