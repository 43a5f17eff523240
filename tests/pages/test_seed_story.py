"""The seed's story in one go, in Chromium, with the administrator, the person and the helpdesk agent each
in a browser of their own: MFA is forced, the phone is broken and there is no backup; the administrator
finds the employee but cannot turn MFA off; the person asks the helpdesk with the recovery form; the agent
approves; the reset travels over RabbitMQ to auth, and the next login goes straight to setting MFA up."""

from __future__ import annotations

import pytest

from ..auth.conftest import oathtool
from ..conftest import wait_for
from .conftest import (
    SEED_WARNING,
    admin_of,
    arrival_of,
    assertion_of,
    check_axe,
    csrf_of,
    mail_to,
    open_admin,
    row_of,
    scan_qr,
    start_login,
)
from .recovery_site import fill_form, forced_employee

AGENT = "Ben de Helpdesk"
NOTE = "Face and ID card match the account."
FORCED = {"company": ("Yes, by the company", "every employee of the company"),
          "personal": ("Yes, for this employee", "for this employee personally")}


@pytest.mark.parametrize("by", ["company", "personal"])
async def test_the_seeds_story_broken_phone_no_backup_admin_cannot_helpdesk_resets_next_login_enrols(
        site, desk, upstream, browser, mailbox, by):
    who = await forced_employee(site, by=by)
    account_id, full_name = who["account_id"], f"{who['first_name']} {who['last_name']}"
    admin_id = await admin_of(site, who["company_id"])
    await desk.matched(account_id, enabled=True)  # recovery's copy of the directory, from auth's events
    person_ctx, admin_ctx, agent_ctx = [await browser.new_context(locale="en-GB") for _ in range(3)]
    try:
        # The phone is broken: the login asks for a code she cannot read, and there is no backup email to
        # mail a login link to (the backup codes were never kept).
        me = await person_ctx.new_page()
        stuck = await start_login(site, upstream, account_id, state="st-stuck")
        assert stuck["decision"] == "verify"
        await me.goto(stuck["prompt_url"])
        assert await me.locator("h1").inner_text() == "Enter your verification code"
        assert await me.get_by_role("button", name="Email me a login link").count() == 0

        # The administrator: the Employees tab, the employee, her Summary; the red Disable MFA is disabled
        # and says why in the seed's words, and the server refuses it whatever the page sends.
        admin = await admin_ctx.new_page()
        await open_admin(site, upstream, admin, who["company_id"], admin_id)
        await admin.get_by_label("Search by name or email").fill(who["last_name"])
        await admin.get_by_role("button", name="Search").click()
        await admin.wait_for_url(f"**q={who['last_name']}")
        cells = await (await row_of(admin, account_id)).locator("td").all_inner_texts()
        assert cells == [who["email"], "Set up", FORCED[by][0]]
        await admin.get_by_role("link", name=full_name).click()
        await admin.wait_for_url(f"**/mfa/admin/employees/{account_id}")
        assert await admin.locator("h1").inner_text() == f"Summary: {full_name}"
        assert await admin.get_by_role("heading", name="Personal information").count() == 1
        assert await admin.locator("#employee-email").inner_text() == who["email"]
        button = admin.get_by_role("button", name="Disable MFA")
        assert await button.is_disabled()
        assert await button.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(180, 35, 24)"  # red
        refused = await admin.locator("#disable-refused").inner_text()
        assert SEED_WARNING in refused and FORCED[by][1] in refused
        await check_axe(admin)
        forged = await admin.request.post(f"{site.base}/mfa/admin/employees/{account_id}/disable",
                                          form={"csrf": await csrf_of(admin)}, headers={"Origin": site.base})
        assert forged.status == 409 and SEED_WARNING in await forged.text()
        _, state = await site.api.call("GET", f"/v1/accounts/{account_id}/mfa", expect=200)
        assert state["enabled"] is True and state["forced"] is True

        # Nobody can let her in: the public recovery form, with the photo of her and her ID card.
        form = await person_ctx.new_page()
        await form.goto(f"{desk.base}/recover")
        photo_input = form.locator("#photo")  # the phone's camera where the browser offers it
        assert await photo_input.get_attribute("accept") == "image/*"
        assert await photo_input.get_attribute("capture") == "user"
        await fill_form(form, who)
        await form.get_by_role("button", name="Send to the helpdesk").click()
        await form.wait_for_url(f"{desk.base}/recover?sent=1&lang=en")
        assert "Your request was sent" in await form.locator("h1").inner_text()
        ticket_id = await desk.ticket_of(who["email"], who["company"])

        # The agent signs in with a single-use link, finds the ticket in the queue, checks and approves it.
        agent = await desk.sign_in(agent_ctx, AGENT)
        row = agent.locator(f'tr[data-ticket="{ticket_id}"]')
        assert "Account found" in await row.inner_text()
        assert "min" in await row.locator(".age").inner_text()
        await row.get_by_role("link").click()
        await agent.wait_for_url(f"**/mfa/helpdesk/tickets/{ticket_id}")
        given = await agent.locator("#given").inner_text()
        assert who["email"] in given and who["company"] in given and who["last_name"] in given
        match = await agent.locator("#match").inner_text()
        assert account_id in match and "names match" in match and "forced by the administrator" in match
        photo = agent.locator("img#photo")
        await wait_for(lambda: photo.evaluate("i => i.complete && i.naturalWidth"), message="the photo to load")
        assert await photo.evaluate("i => i.naturalWidth") == 640
        shot = await agent.request.get(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}/photo")
        assert shot.status == 200 and shot.headers["content-type"] == "image/jpeg"
        assert "no-store" in shot.headers["cache-control"]
        await agent.get_by_role("button", name="Claim this ticket").click()
        await agent.wait_for_url("**?notice=claimed")
        await agent.get_by_label("Note (optional)").fill(NOTE)
        await agent.get_by_role("button", name="Approve: reset MFA").click()
        await agent.wait_for_url("**?notice=approved")
        assert (await agent.locator("#decision").inner_text()).startswith(f"Approved by {AGENT} on ")
        assert (await agent.locator("#photo-deleted").inner_text()).startswith("The picture was deleted on ")
        assert await agent.locator("img#photo").count() == 0
        assert (await agent.request.get(f"{desk.base}/mfa/helpdesk/tickets/{ticket_id}/photo")).status == 410
        assert await desk.runtime.pool.fetchval("SELECT count(*) FROM recovery.photos WHERE ticket_id = $1",
                                                ticket_id) == 0
        await agent.goto(f"{desk.base}/mfa/helpdesk")
        assert await agent.locator(f'tr[data-ticket="{ticket_id}"]').count() == 0  # off the open queue

        # The reset travels over RabbitMQ to auth: MFA is off, and she is told by mail.
        async def mfa_off():
            _, state = await site.api.call("GET", f"/v1/accounts/{account_id}/mfa", expect=200)
            return state["enabled"] is False

        await wait_for(mfa_off, timeout=20, message="auth to reset MFA")
        await mail_to(mailbox, who["email"], "turned off multi-factor authentication")
        await admin.reload()
        assert await admin.locator("#employee-status").inner_text() == "Off"
        assert await admin.get_by_role("button", name="Disable MFA").count() == 0

        # Her next login goes straight to the set-up screen; she scans the QR, confirms, and is back upstream.
        login = await start_login(site, upstream, account_id, state="st-story")
        assert login["decision"] == "enroll"
        await me.goto(login["prompt_url"])
        assert await me.locator("h1").inner_text() == "Set up multifactor authentication"
        typed = (await me.locator("#secret").inner_text()).replace(" ", "")
        assert f"secret={typed}" in await scan_qr(me)
        await me.get_by_label("Current code from the app").fill(oathtool(typed))
        await me.get_by_role("button", name="Confirm and save").click()
        await me.wait_for_selector("#backup-codes")
        assert await me.locator("#backup-codes li").count() == 10
        await me.get_by_label("I have saved my backup codes").check()
        await me.get_by_role("button", name="Continue").click()
        await me.wait_for_url(f"{upstream.base}/back**")
        assert arrival_of(me.url) == {"login_id": [login["login_id"]], "state": ["st-story"]}
        assert (await assertion_of(site, login["login_id"]))["sub"] == account_id
        _, state = await site.api.call("GET", f"/v1/accounts/{account_id}/mfa", expect=200)
        assert state["enabled"] is True and state["forced"] is True
        await admin.reload()
        assert (await admin.locator("#employee-status").inner_text()).startswith("Set up since")
    finally:
        for ctx in (person_ctx, admin_ctx, agent_ctx):
            await ctx.close()

    # The audit log tells the story in order, with the agent's name on the decision and on the reset.
    trail = await desk.audit_trail(account_id, "MfaDisabled", "LoginSucceeded")
    story = [e for e in trail if e["type"] in ("MfaEnrolled", "RecoveryTicketOpened", "RecoveryTicketApproved",
                                               "MfaDisabled", "LoginSucceeded")]
    assert [e["type"] for e in story] == ["MfaEnrolled", "RecoveryTicketOpened", "RecoveryTicketApproved",
                                          "MfaDisabled", "MfaEnrolled", "LoginSucceeded"]
    approved, disabled = story[2], story[3]
    assert approved["data"]["agent"] == AGENT and approved["data"]["note"] == NOTE
    assert approved["data"]["ticket_id"] == ticket_id and approved["authtype"] == "api_key"
    assert disabled["data"]["reason"] == "helpdesk_recovery" and disabled["data"]["agent"] == AGENT
    assert disabled["data"]["ticket_id"] == ticket_id and disabled["data"]["forced"] is True
