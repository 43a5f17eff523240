"""Helpers of the audit tests: one valid event of every type, publishing, the running app."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.audit.app import create_app
from services.common.events import new_event

from ..conftest import publish as publish  # the audit tests import it from here
from ..conftest import seal, wait_for

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def sample_data(settings, company: str, account: str, tokens: dict[str, str]) -> dict[str, dict]:
    """Valid `data` for every event type in schemas/events; sealed tokens come from `tokens`."""
    person = {"account_id": account, "company_id": company, "email": f"{account}@example.com", "first_name": "Zoë"}
    later = (NOW + timedelta(minutes=15)).isoformat().replace("+00:00", "Z")
    login = f"login-{account}"
    ticket = {"ticket_id": f"ticket-{account}", "requester_email": f"{account}@example.com", "account_id": account,
              "company_id": company, "first_name": "Zoë", "last_name": "Ng", "company_name": "Acme"}
    return {
        "CompanyUpserted": {"company_id": company, "name": "Acme", "mfa_required": True},
        "AccountUpserted": {**person, "last_name": "Ng", "role": "employee", "mfa_required": False},
        "AccountRemoved": {"account_id": account, "company_id": company},
        "LoginAttempted": {"login_id": login, "account_id": account, "ip": "192.0.2.1", "user_agent": "tests"},
        "LoginChallengeIssued": {"login_id": login, "account_id": account, "company_id": company,
                                 "decision": "verify", "methods": ["totp", "backup_code"], "expires_at": later},
        "LoginFailed": {"login_id": login, "account_id": account, "company_id": company, "method": "totp",
                        "reason": "wrong_code", "attempts_left": 4, "consecutive_failures": 1},
        "LoginSucceeded": {"login_id": login, "account_id": account, "company_id": company, "method": "totp"},
        "MfaEnrolled": {**person, "method": "totp", "enrolled_at": later, "login_id": login},
        "MfaDisabled": {**person, "reason": "admin", "actor_account_id": "admin-1", "forced": False,
                        "disabled_at": later},
        "MfaLocked": {**person, "locked_until": later, "consecutive_failures": 5},
        "MfaPolicyChanged": {"scope": "account", "company_id": company, "account_id": account,
                             "mfa_required": True, "previous": False},
        "BackupCodesRegenerated": {**person, "count": 10},
        "BackupEmailRequested": {"login_id": login, "account_id": account, "company_id": company,
                                 "backup_email": f"{account}@backup.example", "first_name": "Zoë",
                                 "link_token": seal(settings, "BackupEmailRequested", account,
                                                      tokens["BackupEmailRequested"]),
                                 "expires_at": later},
        "BackupEmailChanged": {**person, "backup_email": f"{account}@backup.example",
                               "confirm_token": seal(settings, "BackupEmailChanged", account,
                                                       tokens["BackupEmailChanged"]),
                               "expires_at": later},
        "BackupEmailConfirmed": {"account_id": account, "company_id": company,
                                 "backup_email": f"{account}@backup.example"},
        "RecoveryTicketOpened": {**ticket, "status": "open", "channel": "email", "missing": [],
                                 "photo_ref": "photo-1"},
        "RecoveryTicketApproved": {**ticket, "agent": "agent smith", "note": "ID matches"},
        "RecoveryTicketRejected": {**ticket, "agent": "agent smith", "reason": "photo unreadable"},
        "RecoveryPhotoDeleted": {"ticket_id": ticket["ticket_id"], "account_id": account, "company_id": company,
                                 "reason": "decided", "content_type": "image/jpeg", "size": 30_000,
                                 "sha256": "ab" * 32, "received_at": NOW.isoformat().replace("+00:00", "Z"),
                                 "deleted_at": later},
        "TestPing": {"n": 1, "account_id": account},
    }


SOURCES = {"Recovery": "/mfa/recovery", "Company": "/upstream", "Account": "/upstream", "LoginAttempted": "/upstream"}


def event_of(event_type: str, data: dict, *, company: str | None, subject: str, when: datetime = NOW) -> dict:
    source = next((s for prefix, s in SOURCES.items() if event_type.startswith(prefix)), "/mfa/auth")
    return new_event(event_type, data, source=source, subject=subject, company_id=company,
                     correlation_id=str(uuid.uuid4()), time=when)


async def rows_for(pool, event_ids: list[str]) -> list:
    return await pool.fetch(
        "SELECT seq, event_id, event_type, company_id, subject, envelope FROM audit.events"
        " WHERE event_id = ANY($1::text[]) ORDER BY seq",
        event_ids,
    )


async def wait_landed(pool, event_ids: list[str], within: float = 15) -> list:
    async def all_there():
        rows = await rows_for(pool, event_ids)
        return rows if len({r["event_id"] for r in rows}) >= len(set(event_ids)) else None

    return await wait_for(all_there, timeout=within, message=f"{len(event_ids)} events in the audit log")


@pytest.fixture(scope="module")
async def audit_client(runtime):
    """The audit app (HTTP API and its consumer) on a test server."""
    client = TestClient(TestServer(create_app(runtime)))
    await client.start_server()
    yield client
    await client.close()
