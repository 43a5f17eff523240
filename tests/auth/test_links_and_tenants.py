"""What a login stands for holds until it completes: links re-check it, tenants keep their own login ids,
secrets are not cached, and a code sent twice is not a guess (issue 11.4 and 11.7)."""

from __future__ import annotations

import asyncio
import uuid

from services.auth.tokens import verify_assertion
from services.common.apikeys import create_key

from .conftest import Api, backup_email_token, login_link, oathtool


async def _put_account(api: Api, account: str, company: str, **extra) -> None:
    await api.call("PUT", f"/v1/accounts/{account}", {
        "company_id": company, "email": f"{account}@example.com", "first_name": "Ada", "last_name": "Lovelace",
        "role": "employee", "mfa_required": False, **extra}, expect=200)


async def _status(runtime, login_id: str) -> str:
    return await runtime.pool.fetchval("SELECT status FROM auth.logins WHERE login_id = $1", login_id)


# ---- 11.4: a login link re-checks what verify checks ----------------------------------------------

async def test_a_login_link_keeps_its_login_open_as_long_as_the_link_is_valid(api, tap, runtime):
    account = await api.account(await api.company())
    login, _ = await login_link(api, tap, runtime, account, f"{account}@backup.example")
    row = await runtime.pool.fetchrow(
        "SELECT l.expires_at AS login_expires, k.expires_at AS link_expires FROM auth.logins l"
        " JOIN auth.login_links k USING (login_id) WHERE l.login_id = $1", login["login_id"])
    assert row["login_expires"] >= row["link_expires"]  # mail may be slow: the login waits for its link


async def test_a_login_link_does_not_complete_a_login_that_expired(api, tap, runtime):
    account = await api.account(await api.company())
    login, token = await login_link(api, tap, runtime, account, f"{account}@backup.example")
    await runtime.pool.execute(
        "UPDATE auth.logins SET expires_at = now() - interval '1 second' WHERE login_id = $1", login["login_id"])
    _, gone = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=410)
    assert gone["code"] == "login_expired"
    assert await _status(runtime, login["login_id"]) == "pending"


async def test_a_login_link_does_not_complete_a_login_that_moved_on_to_enrolment(api, tap, runtime):
    account = await api.account(await api.company(required=True))
    login, token = await login_link(api, tap, runtime, account, f"{account}@backup.example")
    _, codes = await api.call("POST", f"/v1/accounts/{account}/mfa/backup-codes", expect=201)
    _, moved_on = await api.call("POST", f"/v1/logins/{login['login_id']}/verify",
                                 {"method": "backup_code", "code": codes["backup_codes"][0]}, expect=200)
    assert moved_on["result"] == "enroll"
    _, refused = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=409)
    assert refused["code"] == "wrong_login_state" and "assertion" not in refused


async def test_a_login_link_does_not_outlive_an_mfa_reset_or_a_new_enrolment(api, tap, runtime):
    company = await api.company()
    admin = await api.account(company, role="admin")
    account = await api.account(company)
    login, token = await login_link(api, tap, runtime, account, f"{account}@backup.example")
    await api.call("DELETE", f"/v1/accounts/{account}/mfa", {"actor_account_id": admin}, expect=200)
    _, reset = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=409)
    assert reset["code"] == "mfa_not_enabled"
    await api.enroll(account)  # set up again: the link stood for the enrolment that was reset
    _, again = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=409)
    assert again["code"] == "login_state_changed"
    assert await _status(runtime, login["login_id"]) == "pending"


async def test_a_login_link_does_not_outlive_its_backup_email(api, tap, runtime):
    account = await api.account(await api.company())
    login, token = await login_link(api, tap, runtime, account, f"{account}@backup.example")
    # Replaced by another address, confirmed: the link went to the old one.
    confirm = await backup_email_token(api, tap, runtime, account, f"{account}@other.example", nth=2)
    await api.call("POST", "/v1/backup-email/confirm", {"token": confirm}, expect=200)
    _, refused = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=409)
    assert refused["code"] == "login_state_changed"
    assert await _status(runtime, login["login_id"]) == "pending"


async def test_a_login_link_does_not_complete_a_login_after_its_account_moved(api, tap, runtime):
    account = await api.account(company := await api.company())
    login, token = await login_link(api, tap, runtime, account, f"{account}@backup.example")
    await _put_account(api, account, await api.company())
    _, refused = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=409)
    assert refused["code"] == "login_state_changed"
    await _put_account(api, account, company)  # back home: the link works again
    _, ok = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=200)
    assert ok["result"] == "success"


# ---- 11.7: a pending login keeps its company; login ids are per company -------------------------------

async def test_a_pending_login_is_refused_once_its_account_moved_to_another_company(api, tap, runtime):
    account = await api.account(await api.company())
    secret, _, _ = await api.enroll(account)
    login_id = f"lg-{uuid.uuid4().hex}"
    await api.call("POST", "/v1/logins", {"account_id": account, "login_id": login_id}, expect=201)
    await _put_account(api, account, await api.company())
    verify = f"/v1/logins/{login_id}/verify"
    _, moved = await api.call("POST", verify, {"method": "totp", "code": oathtool(secret, 30)}, expect=409)
    assert moved["code"] == "login_state_changed" and "assertion" not in moved
    _, retried = await api.call("POST", "/v1/logins", {"account_id": account, "login_id": login_id}, expect=409)
    assert retried["code"] == "login_state_changed"
    assert await _status(runtime, login_id) == "pending"
    assert not tap.of(account, "LoginSucceeded")


async def test_login_ids_belong_to_their_company_so_a_tenant_can_neither_block_nor_probe_another(api, client, runtime):
    companies = [await api.company(), await api.company()]
    keys = [Api(client, await create_key(runtime.pool, "service", company, label="tests")) for company in companies]
    accounts = [await api.account(company) for company in companies]
    secrets = [(await api.enroll(account))[0] for account in accounts]
    login_id = f"lg-{uuid.uuid4().hex}"
    for key, account in zip(keys, accounts, strict=True):
        _, login = await key.call("POST", "/v1/logins", {"account_id": account, "login_id": login_id}, expect=201)
        assert login["account_id"] == account and login["decision"] == "verify"
    # Each key completes its own company's login of that id, with its own account's code.
    _, jwks = await api.call("GET", "/.well-known/jwks.json", expect=200)
    for key, company, account, secret in zip(keys, companies, accounts, secrets, strict=True):
        _, ok = await key.call("POST", f"/v1/logins/{login_id}/verify",
                               {"method": "totp", "code": oathtool(secret, 30)}, expect=200)
        claims = verify_assertion(ok["assertion"], jwks)
        assert (claims["login_id"], claims["sub"], claims["aud"]) == (login_id, account, company)
    rows = await runtime.pool.fetch("SELECT company_id, account_id, status FROM auth.logins WHERE login_id = $1", login_id)
    assert sorted((r["company_id"], r["account_id"], r["status"]) for r in rows) == sorted(
        (c, a, "succeeded") for c, a in zip(companies, accounts, strict=True))
    # An id only the other company used is unknown, as any unknown id is.
    other_id = f"lg-{uuid.uuid4().hex}"
    await keys[0].call("POST", "/v1/logins", {"account_id": accounts[0], "login_id": other_id}, expect=201)
    _, unknown = await keys[1].call("POST", f"/v1/logins/{other_id}/verify", {"method": "totp", "code": "123456"},
                                    expect=404)
    assert unknown["code"] == "login_not_found"


# ---- 11.7: secrets and assertions are never cached ------------------------------------------------

async def _no_store(api: Api, method: str, path: str, body=None, expect: int = 200) -> dict:
    async with api.client.request(method, path, headers=api.headers, json=body) as resp:
        assert resp.status == expect, (resp.status, await resp.text())
        assert resp.headers.get("Cache-Control") == "no-store", (path, dict(resp.headers))
        return await resp.json()


async def test_answers_carrying_a_secret_backup_codes_or_an_assertion_are_not_stored_by_caches(api, tap, runtime):
    allowed = await api.account(await api.company())
    assert (await _no_store(api, "POST", "/v1/logins", {"account_id": allowed}, 201))["assertion"]

    account = await api.account(await api.company(required=True))
    login = await _no_store(api, "POST", "/v1/logins", {"account_id": account}, 201)
    started = await _no_store(api, "POST", f"/v1/accounts/{account}/mfa/enrollment", None, 201)
    confirmed = await _no_store(api, "POST", f"/v1/accounts/{account}/mfa/enrollment/confirm",
                                {"code": oathtool(started["secret"]), "login_id": login["login_id"]}, 201)
    assert confirmed["backup_codes"] and confirmed["assertion"]
    assert (await _no_store(api, "POST", f"/v1/accounts/{account}/mfa/backup-codes", None, 201))["backup_codes"]
    _, verify = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    done = await _no_store(api, "POST", f"/v1/logins/{verify['login_id']}/verify",
                           {"method": "totp", "code": oathtool(started["secret"], 30)})
    assert done["assertion"]

    linked = await api.account(await api.company())
    _, token = await login_link(api, tap, runtime, linked, f"{linked}@backup.example")
    assert (await _no_store(api, "POST", "/v1/login-links/redeem", {"token": token}))["assertion"]


# ---- 11.7: the code accepted last, sent again, is not a failure ---------------------------------------

async def test_the_code_accepted_last_sent_again_never_counts_toward_the_lock_nor_succeeds(api, tap, runtime):
    account = await api.account(await api.company())
    secret, _, _ = await api.enroll(account)
    code = oathtool(secret, 30)
    _, first = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    verify = f"/v1/logins/{first['login_id']}/verify"
    # A double click: the same request twice at once on the same login.
    results = await asyncio.gather(*(api.call("POST", verify, {"method": "totp", "code": code}) for _ in range(2)))
    assert sorted(status for status, _ in results) == [200, 409]
    # The same code again, on new logins, more often than the lock allows wrong codes.
    for _ in range(3):
        _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
        for _ in range(5):
            _, again = await api.call("POST", f"/v1/logins/{login['login_id']}/verify",
                                      {"method": "totp", "code": code}, expect=401)
            assert again["code"] == "replayed_code" and again["attempts_left"] == 5
        assert await _status(runtime, login["login_id"]) == "pending"
    counts = await runtime.pool.fetchrow(
        "SELECT consecutive_failures, locked_until FROM auth.accounts WHERE account_id = $1", account)
    assert counts["consecutive_failures"] == 0 and counts["locked_until"] is None
    _, next_login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert next_login["decision"] == "verify"
    # A wrong code still counts as before.
    wrong = str((int(code) + 500_000) % 10**6).zfill(6)
    _, failed = await api.call("POST", f"/v1/logins/{next_login['login_id']}/verify",
                               {"method": "totp", "code": wrong}, expect=401)
    assert failed["code"] == "wrong_code" and failed["attempts_left"] == 4
    # Every resubmission is on the record, none as a counted failure; events of one account arrive in order.
    failures = await tap.wait(account, "LoginFailed", 16)
    assert [e["data"]["reason"] for e in failures] == ["replayed_code"] * 15 + ["wrong_code"]
    assert {e["data"]["consecutive_failures"] for e in failures[:15]} == {0}
    assert not tap.of(account, "MfaLocked") and len(tap.of(account, "LoginSucceeded")) == 1


async def test_an_enrol_login_is_not_completed_once_its_account_moved(api):
    account = await api.account(await api.company(), required=True)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert login["decision"] == "enroll"
    await _put_account(api, account, await api.company(), mfa_required=True)
    _, started = await api.call("POST", f"/v1/accounts/{account}/mfa/enrollment", expect=201)
    _, refused = await api.call("POST", f"/v1/accounts/{account}/mfa/enrollment/confirm",
                                {"code": oathtool(started["secret"]), "login_id": login["login_id"]}, expect=409)
    assert refused["code"] == "login_state_changed" and "assertion" not in refused
    _, status = await api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status["enabled"] is False  # nothing of the refused confirmation was kept
