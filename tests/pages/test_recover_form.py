"""The public recovery form `/recover` in Chromium: the same answer whatever the account, the photo's
messages, the rate limit, CSRF, without JavaScript, by keyboard, in Dutch, every page checked with axe."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pytest

from services.common.crypto import Keyring, keyed_hash
from services.recovery.domain import MAX_PHOTO_BYTES

from .conftest import show, tab_to
from .recovery_site import PER_SENDER, fill_form, forced_employee, id_photo


def _stranger(tag: str | None = None) -> dict[str, str]:
    tag = tag or uuid.uuid4().hex[:8]
    return {"first_name": "Piet", "last_name": "Jansen", "email": f"piet.{tag}@example.com",
            "company": f"Nobody {tag} BV"}


async def _send(page, desk, who, photo: bytes | None = None, **kwargs) -> int:
    await page.goto(f"{desk.base}/recover")
    await fill_form(page, who, photo, **kwargs)
    async with page.expect_response(lambda r: r.request.method == "POST" and "/recover" in r.url) as answer:
        await page.get_by_role("button", name="Send to the helpdesk").click()
    await page.wait_for_load_state()
    return (await answer.value).status


async def test_the_answer_is_the_same_whether_or_not_the_account_exists(site, desk, browser):
    who = await forced_employee(site)
    await desk.matched(who["account_id"])
    stranger = _stranger()
    shown = []
    for person in (who, stranger):
        ctx = await browser.new_context()
        try:
            page = await ctx.new_page()
            status = await _send(page, desk, person)
            assert status == 303 and page.url == f"{desk.base}/recover?sent=1&lang=en"
            shown.append(await page.locator("main").inner_text())
        finally:
            await ctx.close()
    assert shown[0] == shown[1] and "Your request was sent" in shown[0]
    # Both opened a ticket, as a mail or the API does; only the first matched an account.
    known = await desk.runtime.pool.fetchrow(
        "SELECT channel, account_id, status FROM recovery.tickets WHERE ticket_id = $1",
        await desk.ticket_of(who["email"], who["company"]))
    assert (known["channel"], known["account_id"], known["status"]) == ("form", who["account_id"], "open")
    unknown = await desk.runtime.pool.fetchrow(
        "SELECT channel, account_id, status FROM recovery.tickets WHERE ticket_id = $1",
        await desk.ticket_of(stranger["email"], stranger["company"]))
    assert (unknown["channel"], unknown["account_id"], unknown["status"]) == ("form", None, "open")


async def test_a_photo_too_big_or_not_an_image_gets_a_clear_message_and_keeps_the_fields(desk, page):
    who = _stranger()
    status = await _send(page, desk, who, b"\xff\xd8\xff" + b"\0" * (MAX_PHOTO_BYTES + 10))
    assert status == 413
    assert "The picture is too big: it may be 10 MB at most." in await page.get_by_role("alert").inner_text()
    assert await page.locator("#photo").get_attribute("aria-invalid") == "true"

    status = await _send(page, desk, who, b"%PDF-1.4 not a photo at all", name="scan.pdf", mime="application/pdf")
    assert status == 415
    assert "That file is not a picture." in await page.get_by_role("alert").inner_text()
    assert await page.get_by_label("Account email address").input_value() == who["email"]  # nothing typed is lost

    status = await _send(page, desk, who, id_photo()[:200])  # a JPEG cut off after its first bytes
    assert status == 422
    assert "That file cannot be read as a picture." in await page.get_by_role("alert").inner_text()
    assert await page.get_by_label("Last name").input_value() == "Jansen"
    assert await desk.runtime.pool.fetchval("SELECT count(*) FROM recovery.tickets WHERE requester_email = $1",
                                            who["email"]) == 0


async def test_the_messages_are_in_the_persons_language(desk, browser):
    ctx = await browser.new_context(locale="en-GB")
    try:
        page = await ctx.new_page()
        await page.goto(f"{desk.base}/recover")
        await page.get_by_role("link", name="Nederlands").click()  # the switch, against the browser's English
        await page.wait_for_url("**/recover?lang=nl")
        assert await page.locator("html").get_attribute("lang") == "nl"
        await page.get_by_label("Voornaam").fill("Piet")
        await page.get_by_label("Achternaam").fill("Jansen")
        await page.get_by_label("E-mailadres van je account").fill(f"piet.{uuid.uuid4().hex[:6]}@example.com")
        await page.get_by_label("Bedrijfsnaam").fill("Nergens BV")
        await page.locator("#photo").set_input_files(files=[{"name": "x.txt", "mimeType": "text/plain",
                                                             "buffer": b"hello"}])
        await page.get_by_role("button", name="Naar de helpdesk sturen").click()
        await page.wait_for_load_state()
        assert "Dat bestand is geen foto." in await page.get_by_role("alert").inner_text()
        await page.locator("#photo").set_input_files(files=[{"name": "me.jpg", "mimeType": "image/jpeg",
                                                             "buffer": id_photo()}])
        await page.get_by_role("button", name="Naar de helpdesk sturen").click()
        await page.wait_for_url("**/recover?sent=1&lang=nl")
        assert await page.locator("h1").inner_text() == "Je verzoek is verstuurd"
    finally:
        await ctx.close()


async def test_the_rate_limit_is_the_mails_and_says_when_to_try_again(desk, page):
    who = _stranger()
    for _ in range(PER_SENDER):
        assert await _send(page, desk, who) == 303
    assert await _send(page, desk, who) == 429
    alert = await page.get_by_role("alert").inner_text()
    assert alert.startswith("Too many requests were sent. Try again in ") and "minutes" in alert
    assert await desk.runtime.pool.fetchval("SELECT count(*) FROM recovery.tickets WHERE requester_email = $1",
                                            who["email"]) == PER_SENDER


async def test_a_cross_site_post_or_one_without_the_token_is_refused(desk, upstream, page):
    who = _stranger()
    await page.goto(f"{desk.base}/recover")  # the person's own form cookie, which a forger would ride on
    await page.goto(f"{upstream.base}/forge?action={quote(desk.base + '/recover')}&field=email&value={who['email']}")
    async with page.expect_response(f"{desk.base}/recover") as answer:
        await page.click("#go")
    assert (await answer.value).status == 403
    await page.goto(f"{desk.base}/recover")
    response = await page.request.post(f"{desk.base}/recover", headers={"Origin": desk.base}, multipart={
        "email": who["email"], "first_name": "Piet", "last_name": "Jansen", "company_name": who["company"],
        "csrf": "guess", "photo": {"name": "me.jpg", "mimeType": "image/jpeg", "buffer": id_photo()}})
    assert response.status == 403
    assert await desk.runtime.pool.fetchval("SELECT count(*) FROM recovery.tickets WHERE requester_email = $1",
                                            who["email"]) == 0


async def test_the_person_cannot_choose_the_ip_the_limit_counts(desk, page):
    who = _stranger()
    rate_key = Keyring(desk.runtime.settings.secret_keys).derive("recovery-rate-limit")

    async def hits(ip: str) -> int:
        # Summed over the windows: the module's earlier forms count too, maybe in the hour before.
        return await desk.runtime.pool.fetchval(
            "SELECT coalesce(sum(hits), 0) FROM recovery.rate_limits WHERE key = $1", keyed_hash(rate_key, f"ip:{ip}"))

    before = await hits("127.0.0.1")
    await page.goto(f"{desk.base}/recover")
    await fill_form(page, who)
    await page.evaluate("""() => { const i = document.createElement('input'); i.type = 'hidden'; i.name = 'ip';
        i.value = '203.0.113.7'; document.querySelector('form').appendChild(i); }""")
    await page.get_by_role("button", name="Send to the helpdesk").click()
    await page.wait_for_url("**/recover?sent=1*")
    assert await desk.ticket_of(who["email"], who["company"])
    # The per-IP counter is the connection's address: the sent ip field was not read.
    assert await hits("203.0.113.7") == 0
    assert await hits("127.0.0.1") == before + 1


async def test_the_form_works_without_javascript_and_by_keyboard(site, desk, browser):
    who = await forced_employee(site)
    ctx = await browser.new_context(java_script_enabled=False)
    try:
        page = await ctx.new_page()
        await page.goto(f"{desk.base}/recover")
        assert await page.locator("script").count() == 0
        await tab_to(page, "#first_name")
        await page.keyboard.type(who["first_name"])
        await tab_to(page, "#last_name")
        await page.keyboard.type(who["last_name"])
        await tab_to(page, "#email")
        await page.keyboard.type(who["email"])
        await tab_to(page, "#company_name")
        await page.keyboard.type(who["company"])
        await tab_to(page, "#photo")
        # The file dialog is the browser's; Playwright answers it with the photo.
        await page.locator("#photo").set_input_files(files=[{"name": "me.jpg", "mimeType": "image/jpeg",
                                                             "buffer": id_photo()}])
        await tab_to(page, "button[type=submit]")
        await page.keyboard.press("Enter")
        await page.wait_for_url(f"{desk.base}/recover?sent=1&lang=en")
        assert await desk.ticket_of(who["email"], who["company"])
    finally:
        await ctx.close()


@pytest.mark.parametrize("lang", ["en", "nl"])
async def test_every_form_page(desk, browser, lang):
    seen: list[str] = []
    ctx = await browser.new_context(viewport={"width": 900, "height": 900}, locale="nl-NL" if lang == "nl" else "en-GB")
    try:
        page = await ctx.new_page()
        await page.goto(f"{desk.base}/recover")
        await show(page, "recover", lang, seen)
        await page.locator("#first_name").fill("Piet")
        await page.locator("#last_name").fill("Jansen")
        await page.locator("#email").fill(_stranger()["email"])
        await page.locator("#company_name").fill("Nergens BV")
        await page.locator("#photo").set_input_files(files=[{"name": "x.txt", "mimeType": "text/plain",
                                                             "buffer": b"hello"}])
        await page.locator("button[type=submit]").click()
        await page.wait_for_load_state()
        await show(page, "recover-not-an-image", lang, seen)
        await page.locator("#photo").set_input_files(files=[{"name": "me.jpg", "mimeType": "image/jpeg",
                                                             "buffer": id_photo()}])
        await page.locator("button[type=submit]").click()
        await page.wait_for_url("**/recover?sent=1*")
        await show(page, "recover-sent", lang, seen)
    finally:
        await ctx.close()
    assert len(seen) == 3
