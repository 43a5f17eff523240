"""A ticket cannot be taken over: later requests never change it, and its decision goes to the account's addresses."""

from __future__ import annotations

from services.common.apikeys import create_key
from services.notifier.domain import Context, plan_mails

from .mails import jpeg, plain_with_attachment
from .test_helpdesk import call
from .test_intake import form, send_mail

CTX = Context(helpdesk_email="helpdesk@mfa.localhost", public_url="https://mfa.example.com/",
              unseal=lambda sealed, aad: sealed)


async def _ticket(recovery, ticket_id: str) -> dict:
    row = await recovery.runtime.pool.fetchrow(
        "SELECT t.first_name, t.last_name, t.reply_to, t.status, t.claimed_by, t.request_count, p.sha256"
        " FROM recovery.tickets t LEFT JOIN recovery.photos p USING (ticket_id) WHERE ticket_id = $1", ticket_id)
    return dict(row)


async def test_later_requests_from_another_key_or_a_spoofed_mail_leave_a_claimed_ticket_as_it_was(recovery):
    person = await recovery.company_with_account(enrolled=True, backup=True)
    backup = person["email"].replace("@acme.example", "@private.example")
    resp = await recovery.client.post("/v1/recovery-requests", data=form(person["email"], person["company_name"]),
                                      headers=recovery.auth("service"))
    assert resp.status == 202
    ticket_id = (await resp.json())["ticket_id"]
    status, _ = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/claim", json={"agent": "ann"})
    assert status == 200
    before = await _ticket(recovery, ticket_id)

    # Another company's key sends a request for the same email and company name, with other names and photo.
    other_key = await create_key(recovery.runtime.pool, "service", company_id="co-someone-else", label="takeover")
    resp = await recovery.client.post(
        "/v1/recovery-requests", headers={"Authorization": f"Bearer {other_key}"},
        data=form(person["email"], person["company_name"], first="Mallory", last="Attacker", photo=jpeg(9000)))
    assert resp.status == 202
    from_key = (await resp.json())["ticket_id"]
    # And an anonymous mail, spoofing the account email, asks for the answer at the attacker's address.
    raw = plain_with_attachment(
        sender=person["email"], subject=f"Resetting MFA authenticator ({person['company_name']})",
        body=f"Account email: {person['email']}\nFirst name: Jane\nLast name: Doe", data=jpeg(7000),
        maintype="image", subtype="jpeg", filename="me.jpg", extra_headers={"Reply-To": "mallory@attacker.example"})
    assert (await send_mail(recovery, raw, "mallory@attacker.example")).code == 250
    spoofed = await recovery.runtime.pool.fetchval(
        "SELECT ticket_id FROM recovery.tickets WHERE reply_to = 'mallory@attacker.example' ORDER BY created_at DESC")

    assert await _ticket(recovery, ticket_id) == before  # names, photo, reply address, claim: all as they were
    assert before["status"] == "claimed" and before["request_count"] == 1
    assert len({ticket_id, from_key, spoofed}) == 3
    [spoof_event] = await recovery.tap.wait("RecoveryTicketOpened", spoofed)
    assert ticket_id in spoof_event["data"]["related_ticket_ids"]
    status, view = await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}")
    assert {from_key, spoofed} <= set(view["related_ticket_ids"])

    # The agent approves what they checked; the outcome names the account's own addresses.
    status, view = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/approve",
                              json={"agent": "ann", "note": "photo matches"})
    assert status == 200, view
    [approved] = await recovery.tap.wait("RecoveryTicketApproved", ticket_id)
    assert approved["data"]["account_email"] == person["email"]
    assert approved["data"]["backup_email"] == backup
    recipients = [p.recipient for p in plan_mails(approved, CTX)]
    assert recipients == [person["email"], backup]

    # A rejection of the spoofed request goes to the account too, never to the address it gave.
    status, _ = await call(recovery, "POST", f"/v1/recovery-tickets/{spoofed}/reject",
                           json={"agent": "ann", "reason": "not the person"})
    assert status == 200
    [rejected] = await recovery.tap.wait("RecoveryTicketRejected", spoofed)
    assert rejected["data"]["reply_to"] == "mallory@attacker.example"
    assert "mallory@attacker.example" not in [p.recipient for p in plan_mails(rejected, CTX)]


def test_outcomes_follow_the_account_and_only_an_unmatched_ticket_is_answered_at_the_request():
    base = {"ticket_id": "T-9", "requester_email": "ann@example.com", "reply_to": "evil@attacker.example",
            "first_name": "Ann", "company_name": "Acme", "account_id": "a1", "company_id": "c1", "agent": "Bob"}
    matched = plan_mails({"id": "e1", "type": "RecoveryTicketApproved", "time": "2026-01-01T00:00:00Z",
                          "data": {**base, "account_email": "ann@example.com", "backup_email": "ann@home.example"}},
                         CTX)
    assert [p.recipient for p in matched] == ["ann@example.com", "ann@home.example"]
    unmatched = plan_mails({"id": "e2", "type": "RecoveryTicketRejected", "time": "2026-01-01T00:00:00Z",
                            "data": {**base, "account_id": None, "account_email": None, "backup_email": None,
                                     "reason": "no such account"}}, CTX)
    assert [p.recipient for p in unmatched] == ["evil@attacker.example"]
