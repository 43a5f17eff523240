"""The helpdesk's side through the real app: queue, ticket view, photo, claim, approve, reject, purge, scoping."""

from __future__ import annotations

import uuid

from services.common.apikeys import create_key
from services.recovery import handlers

from .mails import jpeg, png
from .test_intake import form, post_form


async def open_ticket(recovery, person: dict, *, photo: bytes | None = None, **kw) -> str:
    resp = await post_form(recovery, form(person["email"], person["company_name"], photo=photo, **kw))
    assert resp.status == 202, await resp.text()
    return (await resp.json())["ticket_id"]


async def call(recovery, method: str, path: str, *, role: str = "helpdesk", headers: dict | None = None, **kw):
    resp = await recovery.client.request(method, path, headers=headers or recovery.auth(role), **kw)
    body = await resp.json() if resp.content_type.endswith("json") else await resp.read()
    return resp.status, body


async def test_view_shows_the_match_and_the_mfa_state(recovery):
    person = await recovery.company_with_account(company_mfa=True, enrolled=True, backup=True)
    ticket_id = await open_ticket(recovery, person, photo=png(3000))
    status, view = await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}")
    assert status == 200
    assert view["status"] == "open" and view["channel"] == "form" and view["missing"] == []
    # The photo is kept as a PNG re-encoded from its pixels: its size is the copy's, not the upload's.
    stored = await recovery.runtime.pool.fetchval("SELECT size FROM recovery.photos WHERE ticket_id = $1", ticket_id)
    assert view["photo"]["available"] and view["photo"]["content_type"] == "image/png"
    assert view["photo"]["size"] == stored > 0
    match = view["match"]
    assert match["account_id"] == person["account_id"] and match["company_name"] == person["company_name"]
    assert (match["first_name"], match["last_name"], match["names_match"]) == ("Jane", "Doe", True)
    assert match["mfa_enabled"] is True and match["mfa_forced"] is True and match["company_mfa_required"] is True
    assert match["backup_email_confirmed"] is True
    status, page = await call(recovery, "GET", "/v1/recovery-tickets?status=open&limit=200")
    assert status == 200
    listed = [t for t in page["tickets"] if t["ticket_id"] == ticket_id]
    assert listed and listed[0]["matched"] and listed[0]["has_photo"]
    assert all(t["status"] == "open" for t in page["tickets"])


async def test_approve_publishes_the_event_deletes_the_photo_and_decides_once(recovery):
    person = await recovery.company_with_account(company_mfa=True, enrolled=True)
    ticket_id = await open_ticket(recovery, person)
    kept = await recovery.runtime.pool.fetchval("SELECT size FROM recovery.photos WHERE ticket_id = $1", ticket_id)
    status, claimed = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/claim", json={"agent": "ann"})
    assert status == 200 and claimed["status"] == "claimed" and claimed["claimed_by"] == "ann"
    status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/approve", json={"agent": "bob"})
    assert status == 409 and problem["code"] == "claimed_by_other_agent"

    status, view = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/approve",
                              json={"agent": "ann", "note": "ID card matches the directory"})
    assert status == 200, view
    assert view["status"] == "approved" and view["decided_by"] == "ann"
    assert view["photo"]["available"] is False and view["photo"]["deletion_reason"] == "decided"
    [event] = await recovery.tap.wait("RecoveryTicketApproved", ticket_id)
    assert event["source"] == "/mfa/recovery" and event["subject"] == person["account_id"]
    data = event["data"]
    assert (data["ticket_id"], data["account_id"], data["company_id"], data["agent"]) == (
        ticket_id, person["account_id"], person["company_id"], "ann")
    assert data["note"] == "ID card matches the directory"

    status, problem = await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}/photo")
    assert status == 410 and problem["code"] == "photo_deleted"
    deletions = await recovery.runtime.pool.fetch(
        "SELECT reason, size, sha256 FROM recovery.photo_deletions WHERE ticket_id = $1", ticket_id)
    assert [(r["reason"], r["size"]) for r in deletions] == [("decided", kept)]
    # The deletion is announced (to the audit log): what and why, never the photo.
    [gone] = await recovery.tap.wait("RecoveryPhotoDeleted", ticket_id)
    assert gone["data"]["reason"] == "decided" and gone["data"]["size"] == kept
    assert gone["data"]["sha256"] == bytes(deletions[0]["sha256"]).hex()
    assert (gone["data"]["account_id"], gone["data"]["company_id"]) == (person["account_id"], person["company_id"])
    assert await recovery.runtime.pool.fetchval("SELECT count(*) FROM recovery.photos WHERE ticket_id = $1",
                                                ticket_id) == 0

    for path, body in (("approve", {"agent": "ann"}), ("reject", {"agent": "ann", "reason": "changed my mind"}),
                       ("claim", {"agent": "ann"})):
        status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/{path}", json=body)
        assert status == 409 and problem["code"] == "already_decided", (path, problem)
    decided = [e["type"] for e in recovery.tap.seen if e["data"]["ticket_id"] == ticket_id
               and e["type"] != "RecoveryTicketOpened"]
    assert sorted(decided) == ["RecoveryPhotoDeleted", "RecoveryTicketApproved"]  # once each


async def test_reject_publishes_the_reason_and_deletes_the_photo(recovery):
    person = await recovery.company_with_account()
    ticket_id = await open_ticket(recovery, person)
    status, view = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/reject",
                              json={"agent": "ann", "reason": "The face on the photo is not visible."})
    assert status == 200 and view["status"] == "rejected" and view["decision_note"].startswith("The face")
    [event] = await recovery.tap.wait("RecoveryTicketRejected", ticket_id)
    assert event["data"]["reason"] == "The face on the photo is not visible."
    assert event["data"]["requester_email"] == person["email"] and event["data"]["reply_to"] == person["email"]
    status, problem = await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}/photo")
    assert status == 410
    # A decided ticket no longer holds the person's request: a new one opens a new ticket.
    assert await open_ticket(recovery, person) != ticket_id


async def test_approve_needs_a_matched_account_and_a_complete_ticket(recovery):
    ghost = {"email": f"ghost.{uuid.uuid4().hex[:6]}@acme.example", "company_name": "Nowhere Inc"}
    ticket_id = await open_ticket(recovery, ghost)
    status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/approve", json={"agent": "ann"})
    assert status == 409 and problem["code"] == "no_matched_account"
    assert (await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}/photo"))[0] == 200  # nothing changed


async def test_ticket_matched_once_the_directory_learns_of_the_account(recovery):
    tag = uuid.uuid4().hex[:8]
    person = {"email": f"late.{tag}@acme.example", "company_name": f"Late {tag}"}
    ticket_id = await open_ticket(recovery, person)
    assert (await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}"))[1]["match"] is None
    # The account arrives before its company: the match is made when the company's name is known.
    await recovery.directory_event("AccountUpserted", {
        "account_id": f"acc-{tag}", "company_id": f"co-{tag}", "email": person["email"], "first_name": "Jane",
        "last_name": "Doe", "role": "admin", "mfa_required": True})
    await recovery.directory_event("CompanyUpserted", {"company_id": f"co-{tag}", "name": person["company_name"],
                                                       "mfa_required": False})
    # Matched by the directory consumer, not by somebody opening the ticket: a key bound to the
    # company finds it in its queue straight away.
    bound = {"Authorization": f"Bearer {await create_key(recovery.runtime.pool, 'helpdesk', f'co-{tag}')}"}
    status, queue = await call(recovery, "GET", "/v1/recovery-tickets", headers=bound)
    assert status == 200 and [t["ticket_id"] for t in queue["tickets"]] == [ticket_id]
    view = (await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}"))[1]
    assert view["match"]["account_id"] == f"acc-{tag}" and view["match"]["mfa_forced"] is True
    assert view["match"]["role"] == "admin" and view["company_id"] == f"co-{tag}"


async def test_a_ticket_that_two_accounts_answer_stays_unmatched(recovery):
    tag = uuid.uuid4().hex[:8]
    person = {"email": f"twice.{tag}@acme.example", "company_name": f"Twice {tag}"}

    async def account(n: int, first_name: str) -> None:
        await recovery.directory_event("AccountUpserted", {
            "account_id": f"acc{n}-{tag}", "company_id": f"co{n}-{tag}", "email": person["email"],
            "first_name": first_name, "last_name": "Doe", "role": "employee", "mfa_required": False})

    for n in (1, 2):  # two companies of the same name, each with an account of that email
        await recovery.directory_event("CompanyUpserted", {"company_id": f"co{n}-{tag}",
                                                           "name": person["company_name"], "mfa_required": False})
        await account(n, "Jane")
    ticket_id = await open_ticket(recovery, person)
    await account(1, "Janet")  # a later change of one of them does not make it the answer
    view = (await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}"))[1]
    assert view["match"] is None and view["account_id"] is None


async def test_claim_by_another_agent_needs_force(recovery):
    person = await recovery.company_with_account()
    ticket_id = await open_ticket(recovery, person)
    assert (await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/claim", json={"agent": "ann"}))[0] == 200
    status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/claim", json={"agent": "bob"})
    assert status == 409 and problem["code"] == "already_claimed" and problem["claimed_by"] == "ann"
    status, view = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/claim",
                              json={"agent": "bob", "force": True})
    assert status == 200 and view["claimed_by"] == "bob"


async def test_a_company_bound_key_sees_only_its_company(recovery):
    mine = await recovery.company_with_account()
    theirs = await recovery.company_with_account()
    my_ticket = await open_ticket(recovery, mine)
    their_ticket = await open_ticket(recovery, theirs)
    bound = {"Authorization": f"Bearer {await create_key(recovery.runtime.pool, 'helpdesk', mine['company_id'])}"}
    assert (await call(recovery, "GET", f"/v1/recovery-tickets/{my_ticket}", headers=bound))[0] == 200
    for method, path, body in (
        ("GET", f"/v1/recovery-tickets/{their_ticket}", None),
        ("GET", f"/v1/recovery-tickets/{their_ticket}/photo", None),
        ("POST", f"/v1/recovery-tickets/{their_ticket}/claim", {"agent": "eve"}),
        ("POST", f"/v1/recovery-tickets/{their_ticket}/approve", {"agent": "eve"}),
        ("POST", f"/v1/recovery-tickets/{their_ticket}/reject", {"agent": "eve", "reason": "x"}),
    ):
        status, problem = await call(recovery, method, path, headers=bound, json=body)
        assert status == 404 and problem["code"] == "ticket_not_found", (path, problem)
    status, page = await call(recovery, "GET", "/v1/recovery-tickets?limit=200", headers=bound)
    assert {t["company_id"] for t in page["tickets"]} == {mine["company_id"]}
    assert (await call(recovery, "GET", f"/v1/recovery-tickets/{their_ticket}"))[1]["status"] == "open"


async def test_wrong_role_unknown_ids_and_bad_bodies(recovery):
    person = await recovery.company_with_account()
    ticket_id = await open_ticket(recovery, person)
    for role in ("service", "auditor"):
        for method, path in (("GET", "/v1/recovery-tickets"), ("GET", f"/v1/recovery-tickets/{ticket_id}"),
                             ("GET", f"/v1/recovery-tickets/{ticket_id}/photo")):
            status, problem = await call(recovery, method, path, role=role)
            assert status == 403 and problem["code"] == "wrong_role"
    status, problem = await call(recovery, "GET", f"/v1/recovery-tickets/{uuid.uuid4()}")
    assert status == 404 and problem["code"] == "ticket_not_found"
    status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{'x' * 300}/approve", json={"agent": "a"})
    assert status == 404
    for body, code in (({}, "missing_field"), ({"agent": ""}, "validation_failed"),
                       ({"agent": "ann\r\nX-Evil: 1"}, "validation_failed"),
                       ({"agent": "ann", "extra": 1}, "unknown_field"), ({"agent": 7}, "wrong_type")):
        status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/approve", json=body)
        assert status == 400 and problem["code"] == code, body
    status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/reject",
                                 json={"agent": "ann", "reason": "   "})
    assert status == 400
    status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/reject", data=b"{not json",
                                 headers={**recovery.auth("helpdesk"), "Content-Type": "application/json"})
    assert status == 400 and problem["code"] == "invalid_json"
    for query in ("status=bogus", "limit=0", "limit=x", "after=%%%"):
        status, problem = await call(recovery, "GET", f"/v1/recovery-tickets?{query}")
        assert status == 400, query
    # Nothing of the above touched the ticket.
    assert (await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}"))[1]["status"] == "open"


async def test_queue_pages_with_a_cursor(recovery):
    seen: list[str] = []
    after = ""
    for _ in range(50):
        status, page = await call(recovery, "GET", f"/v1/recovery-tickets?status=open,incomplete,claimed,approved,"
                                                   f"rejected&limit=2{after}")
        assert status == 200 and len(page["tickets"]) <= 2
        seen += [t["ticket_id"] for t in page["tickets"]]
        if not page["next"]:
            break
        after = f"&after={page['next']}"
    total = await recovery.runtime.pool.fetchval("SELECT count(*) FROM recovery.tickets")
    assert len(seen) == len(set(seen)) == total


async def test_photos_of_tickets_open_30_days_are_purged_and_the_deletion_recorded(recovery):
    person = await recovery.company_with_account()
    ticket_id = await open_ticket(recovery, person, photo=jpeg(1000))
    kept = await recovery.runtime.pool.fetchval("SELECT size FROM recovery.photos WHERE ticket_id = $1", ticket_id)
    await recovery.runtime.pool.execute(
        "UPDATE recovery.photos SET received_at = now() - interval '31 days' WHERE ticket_id = $1", ticket_id)
    assert await handlers.purge_expired_photos(recovery.runtime.pool) >= 1
    status, view = await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}")
    assert view["status"] == "incomplete" and view["missing"] == ["photo"] and view["problems"] == ["photo_expired"]
    assert view["photo"]["deletion_reason"] == "expired"
    assert (await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}/photo"))[0] == 410
    [gone] = await recovery.tap.wait("RecoveryPhotoDeleted", ticket_id)
    assert gone["data"]["reason"] == "expired" and gone["data"]["size"] == kept
    status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/approve", json={"agent": "ann"})
    assert status == 409 and problem["code"] == "ticket_incomplete"
    # A fresh request opens a ticket of its own, linked to this one, which stays as it is.
    fresh = await open_ticket(recovery, person)
    assert fresh != ticket_id
    status, view = await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}")
    assert view["status"] == "incomplete" and view["related_ticket_ids"] == [fresh]
    assert (await call(recovery, "GET", f"/v1/recovery-tickets/{fresh}"))[1]["status"] == "open"
