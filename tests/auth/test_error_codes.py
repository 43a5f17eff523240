"""Calls in the wrong state each get their own stable problem code, and change nothing."""

from __future__ import annotations

import uuid

from .conftest import backup_email_token


async def test_enrolling_an_enrolled_account_is_already_enrolled(api, runtime):
    account = await api.account(await api.company())
    await api.enroll(account)
    sealed = await runtime.pool.fetchval("SELECT totp_secret FROM auth.accounts WHERE account_id = $1", account)
    _, again = await api.call("POST", f"/v1/accounts/{account}/mfa/enrollment", expect=409)
    assert again["code"] == "already_enrolled"
    assert await runtime.pool.fetchval("SELECT totp_secret FROM auth.accounts WHERE account_id = $1", account) == sealed


async def test_verifying_an_expired_login_is_login_expired(api, runtime):
    account = await api.account(await api.company())
    await api.enroll(account)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    await runtime.pool.execute(
        "UPDATE auth.logins SET expires_at = now() - interval '1 second' WHERE login_id = $1", login["login_id"]
    )
    _, expired = await api.call("POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": "123456"},
                                expect=410)
    assert expired["code"] == "login_expired"
    assert await runtime.pool.fetchval("SELECT attempts FROM auth.logins WHERE login_id = $1", login["login_id"]) == 0


async def test_a_login_id_of_another_account_is_login_id_conflict(api, runtime):
    company = await api.company()
    first, second = await api.account(company), await api.account(company)
    login_id = f"lg-{uuid.uuid4().hex}"
    await api.call("POST", "/v1/logins", {"account_id": first, "login_id": login_id}, expect=201)
    _, conflict = await api.call("POST", "/v1/logins", {"account_id": second, "login_id": login_id}, expect=409)
    assert conflict["code"] == "login_id_conflict"
    assert await runtime.pool.fetchval("SELECT account_id FROM auth.logins WHERE login_id = $1", login_id) == first


async def test_a_link_without_a_confirmed_backup_email_is_no_backup_email(api, tap, runtime):
    account = await api.account(await api.company())
    await api.enroll(account)
    await backup_email_token(api, tap, runtime, account, f"{account}@backup.example")  # set, but not confirmed
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert "backup_email" not in login["methods"]
    _, refused = await api.call("POST", f"/v1/logins/{login['login_id']}/backup-email", expect=409)
    assert refused["code"] == "no_backup_email"
    assert await runtime.pool.fetchval("SELECT count(*) FROM auth.login_links WHERE login_id = $1", login["login_id"]) == 0


async def test_a_fourth_link_for_one_login_is_too_many_links(api, tap, runtime):
    account = await api.account(await api.company())
    await api.enroll(account)
    token = await backup_email_token(api, tap, runtime, account, f"{account}@backup.example")
    await api.call("POST", "/v1/backup-email/confirm", {"token": token}, expect=200)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    for _ in range(3):
        await api.call("POST", f"/v1/logins/{login['login_id']}/backup-email", expect=202)
    _, refused = await api.call("POST", f"/v1/logins/{login['login_id']}/backup-email", expect=429)
    assert refused["code"] == "too_many_links"
    assert await runtime.pool.fetchval("SELECT count(*) FROM auth.login_links WHERE login_id = $1", login["login_id"]) == 3


async def test_backup_email_confirmation_expired_and_used(api, tap, runtime):
    expired_account = await api.account(await api.company())
    expired = await backup_email_token(api, tap, runtime, expired_account, f"{expired_account}@backup.example")
    await runtime.pool.execute(
        "UPDATE auth.backup_emails SET confirm_expires_at = now() - interval '1 second' WHERE account_id = $1",
        expired_account,
    )
    _, late = await api.call("POST", "/v1/backup-email/confirm", {"token": expired}, expect=410)
    assert late["code"] == "token_expired"
    _, status = await api.call("GET", f"/v1/accounts/{expired_account}/mfa")
    assert status["backup_email"]["verified"] is False

    account = await api.account(await api.company())
    token = await backup_email_token(api, tap, runtime, account, f"{account}@backup.example")
    await api.call("POST", "/v1/backup-email/confirm", {"token": token}, expect=200)
    _, reused = await api.call("POST", "/v1/backup-email/confirm", {"token": token}, expect=410)
    assert reused["code"] == "token_used"
    # A new address makes the old token unknown, and leaves the new one unconfirmed.
    await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": f"{account}@other.example"}, expect=202)
    await tap.wait(account, "BackupEmailChanged", 2)
    _, unknown = await api.call("POST", "/v1/backup-email/confirm", {"token": token}, expect=410)
    assert unknown["code"] == "invalid_token"
    _, status = await api.call("GET", f"/v1/accounts/{account}/mfa")
    assert status["backup_email"] == {"address": f"{account}@other.example", "verified": False}
