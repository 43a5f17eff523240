"""Every page in both languages: axe-core finds no serious or critical violation, no key shows raw.

With MFA_SCREENSHOTS=<folder> (what `make screenshots` sets) each page is also saved as
`<folder>/<page>.<lang>.png`, the pictures in README and docs/screenshots/.
"""

from __future__ import annotations

import pytest

from ..auth.conftest import oathtool
from .conftest import link_to, person, show, start_login

WRONG = "000000"


def _wrong(secret: str) -> str:
    return WRONG if WRONG not in (oathtool(secret), oathtool(secret, 30), oathtool(secret, -30)) else "111111"


@pytest.mark.parametrize("lang", ["en", "nl"])
async def test_every_page(site, upstream, mailbox, browser, lang):
    ctx = await browser.new_context(viewport={"width": 900, "height": 900}, locale="en-GB")
    seen: list[str] = []
    try:
        page = await ctx.new_page()
        # Enrolment as the forced employee of a company sees it, then the backup codes.
        _, account = await person(site, company_required=True, locale=lang, company="Acme Tools")
        login = await start_login(site, upstream, account)
        await page.goto(login["prompt_url"])
        await show(page, "enroll", lang, seen)
        secret = (await page.locator("#secret").inner_text()).replace(" ", "")
        await page.locator("#code").fill(_wrong(secret))
        await page.locator("form button[type=submit]").click()
        await page.wait_for_load_state()
        await show(page, "enroll-wrong-code", lang, seen)
        await page.locator("#code").fill(oathtool(secret))
        await page.locator("form button[type=submit]").click()
        await page.wait_for_selector("#backup-codes")
        await show(page, "backup-codes", lang, seen)
        await page.locator("#saved").check()
        await page.locator("form button[type=submit]").click()
        await page.wait_for_url(f"{upstream.base}/back**")

        # The backup email, confirmed from its mail.
        backup = f"{account}@home.example"
        await site.api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": backup}, expect=202)
        await page.goto(await link_to(mailbox, backup, "/mfa/backup-email/confirm"))
        await show(page, "confirm-backup-email", lang, seen)
        await page.locator("form button[type=submit]").click()
        await page.wait_for_load_state()
        await show(page, "backup-email-confirmed", lang, seen)

        # The verify prompt, a wrong code, the backup-code page, the mailed link and its page.
        login = await start_login(site, upstream, account)
        await page.goto(login["prompt_url"])
        await show(page, "verify", lang, seen)
        await page.locator("#code").fill(_wrong(secret))
        await page.locator('form[action="/mfa/prompt/code"] button').click()
        await page.wait_for_load_state()
        await show(page, "verify-wrong-code", lang, seen)
        await page.goto(f"{site.base}/mfa/prompt/backup-code")
        await show(page, "backup-code", lang, seen)
        await page.goto(f"{site.base}/mfa/prompt")
        await page.locator('form[action="/mfa/prompt/email-link"] button').click()
        await page.wait_for_url("**/check-mail")
        await show(page, "check-mail", lang, seen)
        link = await link_to(mailbox, backup, "/mfa/login-link")
        phone = await ctx.new_page()
        await phone.goto(link)
        await show(phone, "login-link", lang, seen)
        await phone.close()
        await page.close()  # the waiting page reloads itself every few seconds: leave it
        page = await ctx.new_page()

        # My login, with MFA on and forced (turning it off is refused), and off for another account.
        _, portal = await site.api.call("POST", f"/v1/accounts/{account}/portal-sessions",
                                        {"return_to": f"{upstream.base}/back"}, expect=201)
        await page.goto(portal["url"])
        await show(page, "my-login-forced", lang, seen)
        _, free = await person(site, locale=lang, company="Acme Tools")
        _, portal = await site.api.call("POST", f"/v1/accounts/{free}/portal-sessions",
                                        {"return_to": f"{upstream.base}/back"}, expect=201)
        await page.goto(portal["url"])
        await show(page, "my-login-off", lang, seen)
        await page.goto(portal["url"])
        await show(page, "error-link-used", lang, seen)

        # A lock, with its end in the person's language.
        _, locked = await person(site, locale=lang, company="Acme Tools")
        locked_secret, _, _ = await site.api.enroll(locked)
        for _ in range(2):
            login = await start_login(site, upstream, locked)
            await page.goto(login["prompt_url"])
            for _ in range(5):
                await page.locator("#code").fill(_wrong(locked_secret))
                await page.locator('form[action="/mfa/prompt/code"] button').click()
                await page.wait_for_load_state()
        await show(page, "locked", lang, seen)
        fresh = await browser.new_context(locale="nl-NL" if lang == "nl" else "en-GB")
        try:
            stranger = await fresh.new_page()
            await stranger.goto(f"{site.base}/mfa/prompt")
            await show(stranger, "error-session-missing", lang, seen)
        finally:
            await fresh.close()
    finally:
        await ctx.close()
    assert len(seen) == 15
