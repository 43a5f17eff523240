"""Secrets stay secret: key rotation, nothing in clear in logs or events, upstream and helpdesk events."""

from __future__ import annotations

import base64
import io
import os
import uuid

from services.auth import store
from services.auth.handlers import logins, rotation
from services.auth.handlers.context import Auth, Caller
from services.common.apikeys import create_key
from services.common.crypto import Keyring
from services.common.events import new_event
from services.common.logs import configure_logging

from .conftest import Api, oathtool, publish_upstream


async def test_rotation_keeps_old_rows_readable_and_reseals_under_the_newest_key(api, runtime):
    account = await api.account(await api.company())
    secret, _, _ = await api.enroll(account)
    old_keys = runtime.settings.secret_keys
    new_key = ("k-" + uuid.uuid4().hex[:6], os.urandom(32))
    rotated = Keyring((*old_keys, new_key))
    sealed_before = await runtime.pool.fetchval("SELECT totp_secret FROM auth.accounts WHERE account_id = $1", account)
    assert sealed_before.split(".")[1] == old_keys[-1][0]
    # With the new key added, the old row still decrypts ...
    assert rotated.open(sealed_before, aad=f"totp:{account}".encode()).decode() == secret
    changed = await rotation.rotate_secrets(runtime.pool, rotated)
    assert changed >= 1
    sealed_after = await runtime.pool.fetchval("SELECT totp_secret FROM auth.accounts WHERE account_id = $1", account)
    assert sealed_after.split(".")[1] == new_key[0]
    # ... and after rotation the newest key alone opens it.
    assert Keyring((new_key,)).open(sealed_after, aad=f"totp:{account}".encode()).decode() == secret
    # Logins keep working through a service configured with both keys (the first one keys the hashes).
    from services.auth.tokens import Signer

    auth = Auth(runtime.pool, rotated, await Signer("mfa").load(runtime.pool, rotated))
    login = await logins.start_login(auth, Caller(None), {"account_id": account})
    result = await logins.verify_login(auth, Caller(None), login["login_id"], "totp", oathtool(secret, 30))
    assert result["result"] == "success"
    # Put the rows back under the configured keys so other tests' services still read them.
    assert await rotation.rotate_secrets(runtime.pool, Keyring((new_key, *old_keys))) >= 1


async def test_no_secret_in_logs_or_in_events(api, tap, runtime, key):
    buffer = io.StringIO()
    configure_logging("DEBUG", "json", stream=buffer)
    try:
        account = await api.account(await api.company())
        await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": f"{account}@backup.example"}, expect=202)
        changed = (await tap.wait(account, "BackupEmailChanged"))[0]["data"]
        keyring = Keyring(runtime.settings.secret_keys)
        confirm = keyring.open(changed["confirm_token"], aad=f"BackupEmailChanged:{account}".encode()).decode()
        await api.call("POST", "/v1/backup-email/confirm", {"token": confirm}, expect=200)
        secret, codes, _ = await api.enroll(account)
        _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
        await api.call("POST", f"/v1/logins/{login['login_id']}/backup-email", expect=202)
        requested = (await tap.wait(account, "BackupEmailRequested"))[0]["data"]
        link = keyring.open(requested["link_token"], aad=f"BackupEmailRequested:{account}".encode()).decode()
        await api.call("POST", "/v1/login-links/redeem", {"token": link}, expect=200)
        _, login2 = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
        await api.call("POST", f"/v1/logins/{login2['login_id']}/verify", {"method": "backup_code", "code": codes[1]}, expect=200)
        await tap.wait(account, "MfaDisabled")
    finally:
        configure_logging("WARNING", "console")
    logs = buffer.getvalue()
    assert "http_request" in logs  # the capture worked
    raw_events = b"\n".join(tap.raw).decode()
    assert account in raw_events
    secrets_in_clear = [secret, confirm, link, key, *codes, *(c.replace("-", "") for c in codes)]
    secrets_in_clear.append(base64.b32decode(secret + "=" * (-len(secret) % 8)).hex())
    for value in secrets_in_clear:
        assert value not in logs, "secret in a log line"
        assert value not in raw_events, "secret in an event"


async def test_upstream_directory_and_login_events_are_applied(runtime, client, tap):
    company = f"co-{uuid.uuid4().hex[:8]}"
    account = f"acct-{uuid.uuid4().hex[:8]}"
    login_id = f"lg-{uuid.uuid4().hex[:8]}"
    upstream = dict(source="/upstream/hr", correlation_id="corr-" + login_id)
    events = [
        new_event("AccountUpserted", {"account_id": account, "company_id": company, "email": f"{account}@example.com",
                                      "first_name": "Grace", "last_name": "Hopper", "role": "employee",
                                      "mfa_required": False}, subject=account, company_id=company, **upstream),
        new_event("CompanyUpserted", {"company_id": company, "name": "Upstream Co", "mfa_required": True},
                  subject=account, company_id=company, **upstream),
        new_event("LoginAttempted", {"login_id": login_id, "account_id": account}, subject=account,
                  company_id=company, **upstream),
    ]
    await publish_upstream(runtime, events)
    issued = await tap.wait(account, "LoginChallengeIssued", timeout=15)
    assert issued[0]["data"]["decision"] == "enroll"  # the company requires MFA
    assert issued[0]["correlationid"] == "corr-" + login_id
    policy = await tap.wait(company, "MfaPolicyChanged")
    assert policy[0]["data"]["mfa_required"] is True


async def test_recovery_approval_resets_forced_mfa(api, tap, runtime):
    company = await api.company(required=True)
    account = await api.account(company)
    await api.enroll(account)
    ticket = f"tk-{uuid.uuid4().hex[:8]}"
    approved = new_event(
        "RecoveryTicketApproved",
        {"ticket_id": ticket, "requester_email": f"{account}@example.com", "account_id": account,
         "company_id": company, "agent": "helpdesk-anna", "note": "ID matches"},
        source="/mfa/recovery", subject=ticket, company_id=company,
    )
    await publish_upstream(runtime, [approved])  # as recovery's relay would
    disabled = (await tap.wait(account, "MfaDisabled", timeout=15))[0]["data"]
    assert disabled["reason"] == "helpdesk_recovery" and disabled["ticket_id"] == ticket
    _, status = await api.call("GET", f"/v1/accounts/{account}/mfa")
    assert status["enabled"] is False and status["forced"] is True
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert login["decision"] == "enroll"


async def test_bad_input_gets_problem_json_with_stable_codes_and_no_partial_state(api, runtime):
    account = await api.account(await api.company())
    cases = [
        ("POST", "/v1/logins", None, b"{not json", 400, "invalid_json"),
        ("POST", "/v1/logins", None, b"[1,2]", 400, "invalid_json"),
        ("POST", "/v1/logins", {"account_id": account, "extra": 1}, None, 400, "unknown_field"),
        ("POST", "/v1/logins", {"account_id": 42}, None, 400, "wrong_type"),
        ("POST", "/v1/logins", {}, None, 400, "missing_field"),
        ("POST", "/v1/logins", {"account_id": "nobody-" + uuid.uuid4().hex}, None, 404, "account_not_found"),
        ("POST", "/v1/logins", None, b'{"account_id":"' + b"a" * 70000 + b'"}', 413, "payload_too_large"),
        ("POST", f"/v1/accounts/{account}/mfa/enrollment/confirm", {"code": "123456"}, None, 409, "no_pending_enrollment"),
        ("POST", f"/v1/accounts/{account}/mfa/enrollment/confirm", {"code": "12ab56"}, None, 400, "invalid_code_format"),
        ("POST", f"/v1/accounts/{account}/mfa/enrollment/confirm", {"code": "1234567"}, None, 400, "invalid_code_format"),
        ("POST", f"/v1/accounts/{account}/mfa/disable", {"backup_code": "short"}, None, 400, "invalid_code_format"),
        ("POST", f"/v1/accounts/{account}/mfa/backup-codes", None, None, 409, "mfa_not_enabled"),
        ("PUT", f"/v1/accounts/{account}/backup-email", {"email": "nope"}, None, 400, "invalid_email"),
        ("POST", "/v1/backup-email/confirm", {"token": "x" * 43}, None, 410, "invalid_token"),
        ("POST", "/v1/login-links/redeem", {"token": "y" * 43}, None, 410, "invalid_token"),
        ("POST", "/v1/logins/unknown-login/verify", {"method": "totp", "code": "123456"}, None, 404, "login_not_found"),
        ("POST", "/v1/logins/x/verify", {"method": "sms", "code": "123456"}, None, 400, "validation_failed"),
        ("PUT", "/v1/accounts/a-" + uuid.uuid4().hex, {"company_id": "no-such-co", "email": "a@b.co", "first_name": "A",
                                                       "last_name": "B", "role": "employee", "mfa_required": False},
         None, 404, "company_not_found"),
        ("GET", "/v1/nothing-here", None, None, 404, "route_not_found"),
        ("PATCH", f"/v1/accounts/{account}/mfa", None, None, 405, "method_not_allowed"),
        ("GET", "/v1/accounts/bad%20id/mfa", None, None, 404, "account_not_found"),
    ]
    for method, path, body, raw, status, code in cases:
        got_status, problem = await api.call(method, path, body, raw=raw)
        assert (got_status, problem["code"]) == (status, code), (method, path, problem)
        assert problem["status"] == status and problem["type"].endswith(code) and problem["detail"]
    # allow login on an allow account: verifying it is a wrong-state call
    _, allow = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    _, wrong = await api.call("POST", f"/v1/logins/{allow['login_id']}/verify", {"method": "totp", "code": "123456"}, expect=409)
    assert wrong["code"] == "wrong_login_state"
    # Nothing of the failed calls was saved.
    assert await runtime.pool.fetchval("SELECT count(*) FROM auth.backup_emails WHERE account_id = $1", account) == 0
    assert await runtime.pool.fetchval("SELECT count(*) FROM auth.logins WHERE account_id = $1", account) == 1


async def test_company_bound_key_cannot_touch_another_company(api, client, runtime):
    mine = await api.company()
    theirs = await api.company()
    their_account = await api.account(theirs)
    bound = Api(client, await create_key(runtime.pool, "service", mine))
    _, err = await bound.call("PUT", f"/v1/companies/{theirs}", {"name": "Hijack", "mfa_required": False}, expect=404)
    assert err["code"] == "company_not_found"
    for method, path, body in [
        ("GET", f"/v1/accounts/{their_account}/mfa", None),
        ("POST", f"/v1/accounts/{their_account}/mfa/enrollment", None),
        ("POST", "/v1/logins", {"account_id": their_account}),
        ("PUT", f"/v1/accounts/{their_account}/backup-email", {"email": "x@y.example"}),
    ]:
        _, problem = await bound.call(method, path, body, expect=404)
        assert problem["code"] == "account_not_found"
    _, moved = await bound.call("PUT", f"/v1/accounts/{their_account}", {
        "company_id": mine, "email": "x@y.example", "first_name": "X", "last_name": "Y", "role": "admin",
        "mfa_required": False}, expect=404)
    assert moved["code"] == "account_not_found"
    async with runtime.pool.acquire() as conn:
        row = await store.get_account(conn, their_account)
    assert row.company_id == theirs
