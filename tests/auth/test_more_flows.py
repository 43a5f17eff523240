"""Flows at the edge of the happy path: upstream removal, forced backup-code disable, policy and lock events."""

from __future__ import annotations

from datetime import UTC, datetime

from services.common.events import new_event

from ..conftest import wait_for
from .conftest import oathtool, publish_upstream


async def test_account_removed_upstream_removes_the_account_and_its_logins(api, runtime, client):
    company = await api.company()
    account = await api.account(company)
    await api.enroll(account)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    await publish_upstream(runtime, [new_event(
        "AccountRemoved", {"account_id": account, "company_id": company},
        source="/upstream/hr", subject=account, company_id=company,
    )])
    await wait_for(lambda: runtime.pool.fetchval("SELECT count(*) = 0 FROM auth.accounts WHERE account_id = $1", account),
                   timeout=15, message="account removed")
    assert await runtime.pool.fetchval("SELECT count(*) FROM auth.logins WHERE login_id = $1", login["login_id"]) == 0
    _, gone = await api.call("GET", f"/v1/accounts/{account}/mfa", expect=404)
    assert gone["code"] == "account_not_found"


async def test_a_backup_code_outside_a_login_on_a_forced_account_sends_the_person_to_enrol(api, tap):
    account = await api.account(await api.company(required=True))
    _, codes, _ = await api.enroll(account)
    _, result = await api.call("POST", f"/v1/accounts/{account}/mfa/disable", {"backup_code": codes[3]}, expect=200)
    assert result == {"enabled": False, "forced": True, "next": "enroll"}
    disabled = await tap.wait(account, "MfaDisabled")
    assert disabled[0]["data"]["reason"] == "backup_code"
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert login["decision"] == "enroll"
    await tap.wait(account, "LoginChallengeIssued")
    assert len(tap.of(account, "MfaDisabled")) == 1


async def test_an_account_policy_change_emits_one_event_and_a_repeat_none(api, tap):
    company = await api.company()
    account = await api.account(company)
    body = {"company_id": company, "email": f"{account}@example.com", "first_name": "Ada", "last_name": "Lovelace",
            "role": "employee", "mfa_required": True}
    await api.call("PUT", f"/v1/accounts/{account}", body, expect=200)
    await api.call("PUT", f"/v1/accounts/{account}", body, expect=200)  # the same again: no change
    changed = await tap.wait(account, "MfaPolicyChanged")
    assert changed[0]["data"] == {"scope": "account", "company_id": company, "account_id": account,
                                  "mfa_required": True, "previous": False}
    # A later event of the same account (same partition, so published after any second one).
    await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    await tap.wait(account, "LoginChallengeIssued")
    assert len(tap.of(account, "MfaPolicyChanged")) == 1


async def test_each_lock_lasts_longer_and_is_announced_once(api, tap, runtime):
    account = await api.account(await api.company())
    secret, _, _ = await api.enroll(account)
    wrong = str((int(oathtool(secret)) + 500_000) % 10**6).zfill(6)

    async def fail(times: int) -> dict:
        body: dict = {}
        for _ in range(times):
            _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
            assert login["decision"] == "verify"
            _, body = await api.call("POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": wrong})
        return body

    for _ in range(10):  # one wrong code per login, so no login runs out of attempts first
        first = await fail(1)
    first_lock = datetime.fromisoformat(first["locked_until"]) - datetime.now(UTC)
    await tap.wait(account, "MfaLocked")
    # The lock runs out (as if a minute had passed); the next wrong code locks again, for longer.
    await runtime.pool.execute(
        "UPDATE auth.accounts SET locked_until = now() - interval '1 second' WHERE account_id = $1", account
    )
    second = await fail(1)
    second_lock = datetime.fromisoformat(second["locked_until"]) - datetime.now(UTC)
    assert 50 < first_lock.total_seconds() <= 60
    assert 110 < second_lock.total_seconds() <= 120
    locks = await tap.wait(account, "MfaLocked", 2)
    assert [e["data"]["consecutive_failures"] for e in locks] == [10, 11]
    _, denied = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert denied["decision"] == "deny"
    await tap.wait(account, "LoginChallengeIssued", 12)
    assert len(tap.of(account, "MfaLocked")) == 2
