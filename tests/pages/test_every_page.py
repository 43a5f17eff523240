"""Every page in both languages: axe-core finds no serious or critical violation, no key shows raw.

With MFA_SCREENSHOTS=<folder> (what `make screenshots` sets) each page is also saved as
`<folder>/<page>.<lang>.png`, the pictures in README and docs/screenshots/.
"""

from __future__ import annotations

import pytest

from ..auth.conftest import oathtool
from .conftest import click_to, link_to, person, show, start_login, visit

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
        await visit(page, login["prompt_url"], "enroll", lang, seen)
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
        await click_to(page.locator("form button[type=submit]"), f"{upstream.base}/back**")

        # The backup email, confirmed from its mail.
        backup = f"{account}@home.example"
        await site.api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": backup}, expect=202)
        await visit(page, await link_to(mailbox, backup, "/mfa/backup-email/confirm"), "confirm-backup-email", lang, seen)
        await page.locator("form button[type=submit]").click()
        await page.wait_for_load_state()
        await show(page, "backup-email-confirmed", lang, seen)

        # The verify prompt, a wrong code, the backup-code page, the mailed link and its page.
        login = await start_login(site, upstream, account)
        await visit(page, login["prompt_url"], "verify", lang, seen)
        await page.locator("#code").fill(_wrong(secret))
        await page.locator('form[action="/mfa/prompt/code"] button').click()
        await page.wait_for_load_state()
        await show(page, "verify-wrong-code", lang, seen)
        await visit(page, f"{site.base}/mfa/prompt/backup-code", "backup-code", lang, seen)
        await page.goto(f"{site.base}/mfa/prompt")
        await click_to(page.locator('form[action="/mfa/prompt/email-link"] button'), "**/check-mail")
        await show(page, "check-mail", lang, seen)
        link = await link_to(mailbox, backup, "/mfa/login-link")
        phone = await ctx.new_page()
        await visit(phone, link, "login-link", lang, seen)
        await phone.close()
        await page.close()  # the waiting page reloads itself every few seconds: leave it
        page = await ctx.new_page()

        # My login, with MFA on and forced (turning it off is refused), and off for another account
        # whose backup email was never confirmed.
        _, portal = await site.api.call("POST", f"/v1/accounts/{account}/portal-sessions",
                                        {"return_to": f"{upstream.base}/back"}, expect=201)
        await visit(page, portal["url"], "my-login-forced", lang, seen)
        _, free = await person(site, locale=lang, company="Acme Tools")
        # Its backup email's confirmation link expired unopened: the page says so.
        await site.api.call("PUT", f"/v1/accounts/{free}/backup-email", {"email": f"{free}@home.example"}, expect=202)
        await site.runtime.pool.execute(
            "UPDATE auth.backup_emails SET confirm_expires_at = now() - interval '1 hour' WHERE account_id = $1", free)
        _, portal = await site.api.call("POST", f"/v1/accounts/{free}/portal-sessions",
                                        {"return_to": f"{upstream.base}/back"}, expect=201)
        await visit(page, portal["url"], "my-login-off", lang, seen)
        await visit(page, portal["url"], "error-link-used", lang, seen)

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
            await visit(stranger, f"{site.base}/mfa/prompt", "error-session-missing", lang, seen)
        finally:
            await fresh.close()
    finally:
        await ctx.close()
    assert len(seen) == 15
