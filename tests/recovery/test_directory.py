"""Recovery's read model of the directory, fed by real events through RabbitMQ: order, duplicates, removal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.common.events import new_event
from services.recovery import store
from services.recovery.consumers import HANDLERS

from ..conftest import parked_messages
from .test_helpdesk import call, open_ticket


async def account_row(recovery, account_id: str):
    return await recovery.runtime.pool.fetchrow("SELECT * FROM recovery.accounts WHERE account_id = $1", account_id)


async def test_older_events_arriving_late_change_nothing(recovery):
    # The handlers are called directly, in the order given: through the exchange, a running auth
    # service would also consume these upstream events and publish fresh ones of its own.
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    account = {"account_id": f"acc-{tag}", "company_id": f"co-{tag}", "role": "employee", "mfa_required": False}
    mfa = {"account_id": account["account_id"], "company_id": account["company_id"],
           "email": f"new.{tag}@acme.example", "first_name": "New"}
    arrivals = [  # newest first, then the older ones arrive late
        ("AccountUpserted", {**account, "email": f"new.{tag}@acme.example", "first_name": "New",
                             "last_name": "Name"}, now),
        ("AccountUpserted", {**account, "email": f"old.{tag}@acme.example", "first_name": "Old", "last_name": "Name",
                             "mfa_required": True}, now - timedelta(minutes=5)),
        ("MfaEnrolled", {**mfa, "method": "totp", "enrolled_at": now.isoformat()}, now),
        ("MfaDisabled", {**mfa, "reason": "admin", "disabled_at": now.isoformat()}, now - timedelta(minutes=1)),
        # The company's policy before the company itself: kept, and joined once the company arrives.
        ("MfaPolicyChanged", {"scope": "company", "company_id": account["company_id"], "mfa_required": True}, now),
        ("CompanyUpserted", {"company_id": account["company_id"], "name": f"Acme {tag}", "mfa_required": False},
         now - timedelta(minutes=2)),
        ("AccountRemoved", {"account_id": account["account_id"]}, now - timedelta(minutes=3)),
    ]
    async with recovery.runtime.pool.acquire() as conn, conn.transaction():
        for event_type, data, at in arrivals:
            await HANDLERS[event_type](conn, new_event(event_type, data, source="/tests", time=at))
    row = await account_row(recovery, account["account_id"])
    assert (row["email"], row["first_name"], row["mfa_required"], row["mfa_enabled"]) == (
        f"new.{tag}@acme.example", "New", False, True)
    company = await recovery.runtime.pool.fetchrow("SELECT * FROM recovery.companies WHERE company_id = $1",
                                                   account["company_id"])
    assert company["name"] == f"Acme {tag}" and company["mfa_required"] is True
    # The removal is older than the profile: the account still matches.
    async with recovery.runtime.pool.acquire() as conn:
        assert len(await store.find_accounts(conn, f"new.{tag}@acme.example", f"acme {tag}", None)) == 1


async def test_a_duplicate_event_has_one_effect(recovery):
    person = await recovery.company_with_account()
    event = new_event("MfaEnrolled", {"account_id": person["account_id"], "company_id": person["company_id"],
                                      "email": person["email"], "first_name": "Jane", "method": "totp",
                                      "enrolled_at": datetime.now(UTC).isoformat()}, source="/mfa/auth",
                      subject=person["account_id"])
    await recovery.publish(event)
    await recovery.publish(event)
    await recovery.processed(event["id"])
    # A later event for the same account is processed after both copies: the duplicate had its chance.
    await recovery.directory_event("BackupEmailConfirmed", {
        "account_id": person["account_id"], "company_id": person["company_id"],
        "backup_email": f"b.{uuid.uuid4().hex[:6]}@private.example"})
    count = await recovery.runtime.pool.fetchval(
        "SELECT count(*) FROM recovery.processed_events WHERE event_id = $1", event["id"])
    assert count == 1
    row = await account_row(recovery, person["account_id"])
    assert row["mfa_enabled"] is True and row["backup_email_confirmed"] is True


async def test_removed_account_no_longer_matches(recovery):
    person = await recovery.company_with_account()
    await recovery.directory_event("AccountRemoved", {"account_id": person["account_id"],
                                                      "company_id": person["company_id"]})
    ticket_id = await open_ticket(recovery, person)
    status, view = await call(recovery, "GET", f"/v1/recovery-tickets/{ticket_id}")
    assert status == 200 and view["match"] is None
    status, problem = await call(recovery, "POST", f"/v1/recovery-tickets/{ticket_id}/approve", json={"agent": "a"})
    assert status == 409 and problem["code"] == "no_matched_account"


async def test_event_failing_its_schema_is_parked_not_applied(recovery):
    tag = uuid.uuid4().hex[:8]
    event = new_event("CompanyUpserted", {"company_id": f"co-{tag}", "name": "Bad", "mfa_required": False},
                      source="/tests")
    event["data"]["mfa_required"] = "yes"  # broken after building: what a buggy producer might send
    await recovery.publish(event)
    [message] = await parked_messages(recovery.runtime, recovery.runtime.queue("recovery.parked"), 1, timeout=10,
                                      message_id=event["id"])
    assert message.headers["x-parked-reason"] == "invalid"
    assert await recovery.runtime.pool.fetchval("SELECT count(*) FROM recovery.companies WHERE company_id = $1",
                                                f"co-{tag}") == 0
