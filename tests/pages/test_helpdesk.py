"""The helpdesk console in Chromium: two agents, rejection, sign-in and sign-out, cross-site posts, keyboard
only, no JavaScript, every page checked with axe (and shot by `make screenshots`); the seed's story end to
end, through the console, is test_seed_story.py."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from .conftest import show, tab_to
from .recovery_site import forced_employee

ROOT = Path(__file__).resolve().parents[2]


async def test_two_agents_on_one_ticket_cannot_both_decide(site, desk, browser):
    who = await forced_employee(site)
    await desk.matched(who["account_id"])
    ticket_id = await desk.open_ticket(who["email"], who["company"])
    ctx_a, ctx_b = await browser.new_context(), await browser.new_context()
    try:
        anna, bram = await desk.sign_in(ctx_a, "Anna"), await desk.sign_in(ctx_b, "Bram")
        for page in (anna, bram):
            await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
        await anna.get_by_role("button", name="Claim this ticket").click()
        await anna.wait_for_url("**?notice=claimed")
        # Bram's page still offers the claim: the server refuses it and says who has the ticket.
        await bram.get_by_role("button", name="Claim this ticket").click()
        await bram.wait_for_load_state()
        assert "Anna claimed this ticket first." in await bram.get_by_role("alert").inner_text()
        # Bram forges an approval with his own valid form token: refused, nothing decided.
        csrf = await bram.locator('input[name="csrf"]').first.get_attribute("value")
        refused = await bram.request.post(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}/approve",
                                          form={"csrf": csrf, "note": "me too", "agent": "Anna"},
                                          headers={"Origin": desk.base})
        assert refused.status == 409 and "Anna is handling this ticket" in await refused.text()
        await anna.get_by_role("button", name="Approve: reset MFA").click()
        await anna.wait_for_url("**?notice=approved")
        again = await bram.request.post(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}/reject",
                                        form={"csrf": csrf, "reason": "late"}, headers={"Origin": desk.base})
        assert again.status == 409 and "already been decided" in await again.text()
        await bram.reload()
        assert (await bram.locator("#decision").inner_text()).startswith("Approved by Anna")
        row = await desk.runtime.pool.fetchrow("SELECT status, decided_by FROM recovery.tickets WHERE ticket_id = $1",
                                               ticket_id)
        assert (row["status"], row["decided_by"]) == ("approved", "Anna")
    finally:
        await ctx_a.close()
        await ctx_b.close()


async def test_a_rejected_ticket_says_why_and_deletes_the_photo(site, desk, page):
    who = await forced_employee(site)
    await desk.matched(who["account_id"])
    ticket_id = await desk.open_ticket(who["email"], who["company"], first="Ada", last="Byron")
    await page.goto(await desk.sign_in_link("Chris"))
    await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
    assert "names differ" in await page.locator("#match").inner_text()
    await page.get_by_role("button", name="Claim this ticket").click()
    await page.wait_for_url("**?notice=claimed")
    # An empty reason is refused in the browser (required) and by the server.
    csrf = await page.locator('input[name="csrf"]').first.get_attribute("value")
    empty = await page.request.post(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}/reject",
                                    form={"csrf": csrf, "reason": "  "}, headers={"Origin": desk.base})
    assert empty.status == 422 and "Give a reason" in await empty.text()
    await page.get_by_label("Reason for rejecting").fill("The name on the ID card is not the account's.")
    # The agent is the session's: a name slipped into the form changes nothing.
    await page.evaluate("""() => { const i = document.createElement('input'); i.type = 'hidden'; i.name = 'agent';
        i.value = 'Mallory'; document.querySelector('form[action$="/reject"]').appendChild(i); }""")
    await page.get_by_role("button", name="Reject").click()
    await page.wait_for_url("**?notice=rejected")
    assert (await page.locator("#decision").inner_text()).startswith("Rejected by Chris on ")
    assert (await page.locator("#photo-deleted").inner_text()).startswith("The picture was deleted on ")
    audited = await desk.audited("RecoveryTicketRejected", ticket_id)
    assert audited["data"]["agent"] == "Chris"
    assert audited["data"]["reason"] == "The name on the ID card is not the account's."
    _, state = await site.api.call("GET", f"/v1/accounts/{who['account_id']}/mfa", expect=200)
    assert state["enabled"] is True


async def test_a_ticket_without_match_says_so_and_the_directory_can_be_searched(site, desk, page):
    who = await forced_employee(site)
    await desk.matched(who["account_id"])
    typo = who["email"].replace("@example.com", "@exampel.com")
    ticket_id = await desk.open_ticket(typo, who["company"])
    await page.goto(await desk.sign_in_link("Dana"))
    await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
    assert "No match" in await page.locator("#no-match").inner_text()
    await page.get_by_label("Search accounts by email").fill(who["account_id"])
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url("**/mfa/helpdesk/search?**")
    hits = await page.locator("#hits").inner_text()
    assert who["email"] in hits and who["company"] in hits
    await page.get_by_role("link", name="Back to the ticket").click()
    await page.wait_for_url(f"**/tickets/{ticket_id}")
    await page.get_by_role("button", name="Claim this ticket").click()
    await page.wait_for_url("**?notice=claimed")
    await page.get_by_role("button", name="Approve: reset MFA").click()
    await page.wait_for_load_state()
    assert "No account matches this ticket" in await page.get_by_role("alert").inner_text()


async def test_the_sign_in_link_is_single_use_and_a_signed_out_session_is_refused(desk, browser):
    link = await desk.sign_in_link("Eve")
    first, second = await browser.new_context(), await browser.new_context()
    try:
        page = await first.new_page()
        await page.goto(link)
        assert await page.locator("h1").inner_text() == "Open recovery tickets"
        cookie = next(c for c in await first.cookies() if c["name"] == "mfa_helpdesk")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/mfa/helpdesk"
        assert 7.9 * 3600 < cookie["expires"] - time.time() <= 8 * 3600  # a working day
        other = await second.new_page()
        answer = await other.goto(link)
        assert answer.status == 410 and await other.locator("h1").inner_text() == "This sign-in link was already used"
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_load_state()
        assert await page.locator("h1").inner_text() == "You are signed out"
        # The old cookie, sent again by hand, opens nothing any more.
        await first.add_cookies([{**cookie}])
        answer = await page.goto(f"{desk.base}/mfa/helpdesk")
        assert answer.status == 410 and await page.locator("h1").inner_text() == "You are not signed in"
        answer = await other.goto(f"{desk.base}/mfa/helpdesk")
        assert answer.status == 410
    finally:
        await first.close()
        await second.close()


async def test_a_revoked_helpdesk_key_ends_its_sessions_and_only_helpdesk_keys_get_links(desk, page):
    from services.common.apikeys import create_key, revoke_key

    key = await create_key(desk.runtime.pool, "helpdesk", label="leaver")
    await page.goto(await desk.sign_in_link("Frank", key))
    assert await page.locator("h1").inner_text() == "Open recovery tickets"
    await revoke_key(desk.runtime.pool, key)
    answer = await page.goto(f"{desk.base}/mfa/helpdesk")
    assert answer.status == 410
    resp = await desk.client.post("/v1/helpdesk-sessions", json={"agent": "Mallory"},
                                  headers={"Authorization": f"Bearer {desk.service_key}"})
    assert resp.status == 403
    resp = await desk.client.post("/v1/helpdesk-sessions", json={"agent": " "},
                                  headers={"Authorization": f"Bearer {desk.helpdesk_key}"})
    assert resp.status == 400


async def test_a_cross_site_post_to_the_console_is_refused(site, desk, upstream, page):
    who = await forced_employee(site)
    ticket_id = await desk.open_ticket(who["email"], who["company"])
    await page.goto(await desk.sign_in_link("Gina"))
    action = f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}/claim"
    await page.goto(f"{upstream.base}/forge?action={quote(action)}&field=agent&value=Gina")
    async with page.expect_response(action) as answer:
        await page.click("#go")
    assert (await answer.value).status == 403
    status = await desk.runtime.pool.fetchval("SELECT status FROM recovery.tickets WHERE ticket_id = $1", ticket_id)
    assert status == "open"


async def test_claim_and_approve_by_keyboard_alone(site, desk, page):
    who = await forced_employee(site)
    await desk.matched(who["account_id"])
    ticket_id = await desk.open_ticket(who["email"], who["company"])
    await page.goto(await desk.sign_in_link("Hank"))
    await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
    await tab_to(page, "#claim", limit=40)
    await page.keyboard.press("Enter")
    await page.wait_for_url("**?notice=claimed")
    await tab_to(page, "#note", limit=40)
    await page.keyboard.type("Checked by keyboard.")
    await tab_to(page, "#approve")
    await page.keyboard.press("Enter")
    await page.wait_for_url("**?notice=approved")
    assert (await page.locator("#decision").inner_text()).startswith("Approved by Hank")


async def test_the_console_works_without_javascript(site, desk, browser):
    who = await forced_employee(site)
    await desk.matched(who["account_id"])
    ticket_id = await desk.open_ticket(who["email"], who["company"])
    ctx = await browser.new_context(java_script_enabled=False)
    try:
        page = await ctx.new_page()
        await page.goto(await desk.sign_in_link("Ivo"))
        assert await page.locator("script").count() == 0
        await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
        await page.get_by_role("button", name="Claim this ticket").click()
        await page.wait_for_url("**?notice=claimed")
        await page.get_by_label("Reason for rejecting").fill("Please send a sharper picture.")
        await page.get_by_role("button", name="Reject").click()
        await page.wait_for_url("**?notice=rejected")
        assert (await page.locator("#decision").inner_text()).startswith("Rejected by Ivo")
    finally:
        await ctx.close()


async def _mfa(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run the `mfa` command as an operator would; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", *args, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_mfa_helpdesk_link_prints_a_link_that_signs_the_agent_in(desk, page):
    env = {**os.environ, "MFA_DATABASE_URL": desk.runtime.settings.database_url,
           "MFA_RECOVERY_PUBLIC_URL": desk.base, "MFA_LOG_LEVEL": "WARNING"}
    code, out, err = await _mfa(env, "helpdesk-link", "--agent", "Jo at the desk")
    assert code == 0, err
    url = out.strip().splitlines()[-1]
    assert url.startswith(f"{desk.base}/mfa/helpdesk?token=")
    await page.goto(url)
    assert "Signed in as Jo at the desk" in await page.locator(".agent-bar").inner_text()
    code, _, err = await _mfa(env, "helpdesk-link", "--agent", "  ")
    assert code == 2 and "--agent" in err


@pytest.mark.parametrize("lang", ["en", "nl"])
async def test_every_console_page(site, desk, browser, lang):
    """Every console page in both languages: no serious axe violation, no raw key; shot with MFA_SCREENSHOTS."""
    seen: list[str] = []
    tag = uuid.uuid4().hex[:4]
    who = await forced_employee(site, company=f"Acme Tools {tag}")
    await desk.matched(who["account_id"])
    ticket_id = await desk.open_ticket(who["email"], who["company"])
    await desk.open_ticket(who["email"], who["company"])  # a second request: related tickets
    lost = await desk.open_ticket(f"nobody.{tag}@example.com", "Unknown BV", first="Piet", last="Jansen")
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900},
                                    locale="nl-NL" if lang == "nl" else "en-GB")
    try:
        page = await ctx.new_page()
        await page.goto(await desk.sign_in_link("Ben de Helpdesk"))
        await show(page, "helpdesk-queue", lang, seen)
        await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
        await page.locator("img#photo").evaluate("i => i.decode()")
        assert await page.locator("#related li").count() == 1  # the person's other request
        await show(page, "helpdesk-ticket", lang, seen)
        await page.locator("#claim").click()
        await page.wait_for_url("**?notice=claimed")
        await show(page, "helpdesk-ticket-claimed", lang, seen)
        await page.locator("#approve").click()
        await page.wait_for_url("**?notice=approved")
        await show(page, "helpdesk-ticket-approved", lang, seen)
        await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{lost}")
        await show(page, "helpdesk-ticket-no-match", lang, seen)
        await page.goto(f"{desk.base}/mfa/helpdesk/search?email={quote(who['account_id'])}&ticket={lost}")
        await show(page, "helpdesk-search", lang, seen)
        await page.locator(".agent-bar button").click()
        await page.wait_for_load_state()
        await show(page, "helpdesk-signed-out", lang, seen)
        await page.goto(f"{desk.base}/mfa/helpdesk")
        await show(page, "helpdesk-error-signed-out", lang, seen)
    finally:
        await ctx.close()
    assert len(seen) == 8


async def test_a_company_bound_key_signs_in_to_that_companys_tickets_only(site, desk, page):
    from services.common.apikeys import create_key

    ours, theirs = await forced_employee(site), await forced_employee(site)
    for who in (ours, theirs):
        await desk.matched(who["account_id"])
    our_ticket = await desk.open_ticket(ours["email"], ours["company"])
    their_ticket = await desk.open_ticket(theirs["email"], theirs["company"])
    key = await create_key(desk.runtime.pool, "helpdesk", ours["company_id"], label="one customer's desk")
    await page.goto(await desk.sign_in_link("Kim", key))
    assert await page.locator(f'tr[data-ticket="{our_ticket}"]').count() == 1
    assert await page.locator(f'tr[data-ticket="{their_ticket}"]').count() == 0
    answer = await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{their_ticket}")
    assert answer.status == 404 and await page.locator("h1").inner_text() == "Ticket not found"
    photo = await page.request.get(f"{desk.base}/mfa/helpdesk/tickets/{their_ticket}/photo")
    assert photo.status == 404
    await page.goto(f"{desk.base}/mfa/helpdesk/search?email={quote(theirs['account_id'])}")
    assert await page.locator("#no-hits").count() == 1


async def test_an_expired_sign_in_link_is_a_clear_page(desk, page):
    link = await desk.sign_in_link("Lena")
    await desk.runtime.pool.execute(
        "UPDATE recovery.helpdesk_links SET expires_at = now() - interval '1 second'"
        " WHERE agent = 'Lena' AND used_at IS NULL")
    answer = await page.goto(link)
    assert answer.status == 410 and await page.locator("h1").inner_text() == "This sign-in link has expired"
    answer = await page.goto(f"{desk.base}/mfa/helpdesk?token=not-a-token")
    assert answer.status == 410 and await page.locator("h1").inner_text() == "This sign-in link does not work"
