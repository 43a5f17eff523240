"""The helpdesk console in Chromium: two agents, rejection, sign-in and sign-out, cross-site posts, keyboard
only, no JavaScript, every page checked with axe (and shot by `make screenshots`); the seed's story end to
end, through the console, is test_seed_story.py."""

from __future__ import annotations

import os
import sys
import time
import uuid
from urllib.parse import quote

import pytest

from ..processes import ROOT, run_to_end
from .conftest import click_to, show, tab_to, visit
from .recovery_site import forced_employee


async def _matched_ticket(site, desk, *, company: str | None = None, **names: str) -> tuple[dict[str, str], str]:
    """A forced employee matched in recovery's directory, and a ticket of theirs (`names`: the ticket's first, last)."""
    who = await forced_employee(site, company=company)
    await desk.matched(who["account_id"])
    return who, await desk.open_ticket(who["email"], who["company"], **names)


async def _open_as(desk, page, agent: str, ticket_id: str) -> None:
    """Sign `agent` in to the console in `page` and open the ticket."""
    await page.goto(await desk.sign_in_link(agent))
    await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")


async def _claim(page) -> None:
    await click_to(page.get_by_role("button", name="Claim this ticket"), "**?notice=claimed")


async def test_two_agents_on_one_ticket_cannot_both_decide(site, desk, browser):
    _, ticket_id = await _matched_ticket(site, desk)
    ctx_a, ctx_b = await browser.new_context(), await browser.new_context()
    try:
        anna, bram = await desk.sign_in(ctx_a, "Anna"), await desk.sign_in(ctx_b, "Bram")
        for page in (anna, bram):
            await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
        await _claim(anna)
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
        await click_to(anna.get_by_role("button", name="Approve: reset MFA"), "**?notice=approved")
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
    who, ticket_id = await _matched_ticket(site, desk, first="Ada", last="Byron")
    await _open_as(desk, page, "Chris", ticket_id)
    assert "names differ" in await page.locator("#match").inner_text()
    await _claim(page)
    # An empty reason is refused in the browser (required) and by the server.
    csrf = await page.locator('input[name="csrf"]').first.get_attribute("value")
    empty = await page.request.post(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}/reject",
                                    form={"csrf": csrf, "reason": "  "}, headers={"Origin": desk.base})
    assert empty.status == 422 and "Give a reason" in await empty.text()
    await page.get_by_label("Reason for rejecting").fill("The name on the ID card is not the account's.")
    # The agent is the session's: a name slipped into the form changes nothing.
    await page.evaluate("""() => { const i = document.createElement('input'); i.type = 'hidden'; i.name = 'agent';
        i.value = 'Mallory'; document.querySelector('form[action$="/reject"]').appendChild(i); }""")
    await click_to(page.get_by_role("button", name="Reject"), "**?notice=rejected")
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
    await _open_as(desk, page, "Dana", ticket_id)
    assert "No match" in await page.locator("#no-match").inner_text()
    await page.get_by_label("Search accounts by email").fill(who["account_id"])
    await click_to(page.get_by_role("button", name="Search"), "**/mfa/helpdesk/search?**")
    hits = await page.locator("#hits").inner_text()
    assert who["email"] in hits and who["company"] in hits
    await click_to(page.get_by_role("link", name="Back to the ticket"), f"**/tickets/{ticket_id}")
    await _claim(page)
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
    _, ticket_id = await _matched_ticket(site, desk)
    await _open_as(desk, page, "Hank", ticket_id)
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
    _, ticket_id = await _matched_ticket(site, desk)
    ctx = await browser.new_context(java_script_enabled=False)
    try:
        page = await ctx.new_page()
        await page.goto(await desk.sign_in_link("Ivo"))
        assert await page.locator("script").count() == 0
        await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
        await _claim(page)
        await page.get_by_label("Reason for rejecting").fill("Please send a sharper picture.")
        await click_to(page.get_by_role("button", name="Reject"), "**?notice=rejected")
        assert (await page.locator("#decision").inner_text()).startswith("Rejected by Ivo")
    finally:
        await ctx.close()


async def _mfa(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run the `mfa` command as an operator would; (exit code, stdout, stderr)."""
    return await run_to_end(sys.executable, "-m", "services.cli", *args, env=env, cwd=ROOT)


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
    who, ticket_id = await _matched_ticket(site, desk, company=f"Acme Tools {tag}")
    await desk.open_ticket(who["email"], who["company"])  # a second request: related tickets
    lost = await desk.open_ticket(f"nobody.{tag}@example.com", "Unknown BV", first="Piet", last="Jansen")
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900},
                                    locale="nl-NL" if lang == "nl" else "en-GB")
    try:
        page = await ctx.new_page()
        await visit(page, await desk.sign_in_link("Ben de Helpdesk"), "helpdesk-queue", lang, seen)
        await page.goto(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}")
        await page.locator("img#photo").evaluate("i => i.decode()")
        assert await page.locator("#related li").count() == 1  # the person's other request
        await show(page, "helpdesk-ticket", lang, seen)
        await click_to(page.locator("#claim"), "**?notice=claimed")
        await show(page, "helpdesk-ticket-claimed", lang, seen)
        await click_to(page.locator("#approve"), "**?notice=approved")
        await show(page, "helpdesk-ticket-approved", lang, seen)
        await visit(page, f"{desk.base}/mfa/helpdesk/tickets/{lost}", "helpdesk-ticket-no-match", lang, seen)
        await visit(page, f"{desk.base}/mfa/helpdesk/search?email={quote(who['account_id'])}&ticket={lost}",
                    "helpdesk-search", lang, seen)
        await page.locator(".agent-bar button").click()
        await page.wait_for_load_state()
        await show(page, "helpdesk-signed-out", lang, seen)
        await visit(page, f"{desk.base}/mfa/helpdesk", "helpdesk-error-signed-out", lang, seen)
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
