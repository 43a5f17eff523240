"""The auth API over real HTTP, PostgreSQL and RabbitMQ; the phone is played by zbarimg and oathtool."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import parse_qs, urlsplit

from services.auth.tokens import verify_assertion
from services.common.crypto import Keyring

from .conftest import login_link, oathtool, zbarimg


async def test_enrol_like_a_person_with_the_qr_code(api, tap):
    company = await api.company(name="Acme Phone Co")
    account = await api.account(company)
    _, started = await api.call("POST", f"/v1/accounts/{account}/mfa/enrollment", expect=201)
    status, png = await api.call("GET", started["qr_png_url"], expect=200)
    uri = zbarimg(png)
    assert uri == started["otpauth_uri"]
    parts = urlsplit(uri)
    assert parts.scheme == "otpauth" and parts.netloc == "totp"
    assert parts.path == f"/Acme%20Phone%20Co:{account}@example.com"
    query = parse_qs(parts.query)
    assert query["issuer"] == ["Acme Phone Co"]
    secret = query["secret"][0]
    assert started["secret_grouped"].replace(" ", "") == secret
    _, svg = await api.call("GET", started["qr_svg_url"], expect=200)
    assert svg.startswith(b"<?xml") and b"<svg" in svg

    _, status_before = await api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status_before["enabled"] is False
    _, wrong = await api.call(
        "POST", f"/v1/accounts/{account}/mfa/enrollment/confirm", {"code": str((int(oathtool(secret)) + 1) % 10**6).zfill(6)},
        expect=401,
    )
    assert wrong["code"] == "invalid_code"
    _, still_off = await api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert still_off["enabled"] is False  # a wrong code leaves nothing saved

    _, confirmed = await api.call(
        "POST", f"/v1/accounts/{account}/mfa/enrollment/confirm", {"code": oathtool(secret)}, expect=201
    )
    assert len(confirmed["backup_codes"]) == 10
    _, after = await api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert after["enabled"] is True and after["backup_codes_left"] == 10 and after["enrolled_at"]
    enrolled = await tap.wait(account, "MfaEnrolled")
    assert enrolled[0]["data"]["email"] == f"{account}@example.com"
    # The QR code is gone with the pending enrolment.
    _, gone = await api.call("GET", started["qr_png_url"], expect=404)
    assert gone["code"] == "no_pending_enrollment"


async def test_new_enrolment_replaces_the_pending_one(api):
    account = await api.account(await api.company())
    _, first = await api.call("POST", f"/v1/accounts/{account}/mfa/enrollment", expect=201)
    _, second = await api.call("POST", f"/v1/accounts/{account}/mfa/enrollment", expect=201)
    assert first["secret"] != second["secret"]
    _, err = await api.call(
        "POST", f"/v1/accounts/{account}/mfa/enrollment/confirm", {"code": oathtool(first["secret"])}, expect=401
    )
    assert err["code"] == "invalid_code"
    await api.call("POST", f"/v1/accounts/{account}/mfa/enrollment/confirm", {"code": oathtool(second["secret"])}, expect=201)


async def test_login_verify_and_assertion_checked_against_jwks(api, tap):
    company = await api.company()
    account = await api.account(company)
    _, allow = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert allow["decision"] == "allow" and allow["methods"] == []
    secret, _, _ = await api.enroll(account)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account, "ip": "203.0.113.9"}, expect=201)
    assert login["decision"] == "verify" and login["methods"] == ["totp", "backup_code"]
    _, ok = await api.call(
        "POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": oathtool(secret, 30)}, expect=200
    )
    assert ok["result"] == "success"
    _, jwks = await api.call("GET", "/.well-known/jwks.json", expect=200)
    claims = verify_assertion(ok["assertion"], jwks)
    assert claims["sub"] == account and claims["login_id"] == login["login_id"] and "otp" in claims["amr"]
    issued = await tap.wait(account, "LoginChallengeIssued", 2)
    assert [e["data"]["decision"] for e in issued] == ["allow", "verify"]
    await tap.wait(account, "LoginSucceeded", 2)
    # A completed login takes no more codes.
    _, again = await api.call(
        "POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": oathtool(secret, 30)}, expect=409
    )
    assert again["code"] == "login_completed"


async def test_a_code_is_accepted_once_even_when_submitted_concurrently(api):
    account = await api.account(await api.company())
    secret, _, _ = await api.enroll(account)
    code = oathtool(secret, 30)
    logins = [(await api.call("POST", "/v1/logins", {"account_id": account}, expect=201))[1]["login_id"] for _ in range(4)]
    results = await asyncio.gather(*(
        api.call("POST", f"/v1/logins/{lid}/verify", {"method": "totp", "code": code}) for lid in logins
    ))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 401, 401, 401]
    assert {body["code"] for status, body in results if status == 401} == {"replayed_code"}
    # Replaying it later is refused too.
    _, fifth = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    _, replay = await api.call("POST", f"/v1/logins/{fifth['login_id']}/verify", {"method": "totp", "code": code}, expect=401)
    assert replay["code"] == "replayed_code"


async def test_five_wrong_codes_end_a_login_and_ten_lock_the_account(api, tap):
    account = await api.account(await api.company())
    secret, _, _ = await api.enroll(account)
    wrong = str((int(oathtool(secret)) + 500_000) % 10**6).zfill(6)
    failures = []
    for _ in range(2):
        _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
        for _ in range(5):
            failures.append(await api.call("POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": wrong}))
        _, ended = await api.call("POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": wrong}, expect=409)
        assert ended["code"] == "login_completed"
    assert [body["attempts_left"] for _, body in failures[:5]] == [4, 3, 2, 1, 0]
    assert failures[4][1]["code"] == "login_failed"
    assert failures[9][1]["locked_until"]
    locked = await tap.wait(account, "MfaLocked")
    assert locked[0]["data"]["consecutive_failures"] == 10
    _, denied = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert denied["decision"] == "deny" and denied["locked_until"]
    async with api.client.post(f"/v1/accounts/{account}/mfa/disable", json={"backup_code": "ABCDE-FGHJK-MNPQR"},
                               headers=api.headers) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
        assert (await resp.json())["code"] == "mfa_locked"
    _, status = await api.call("GET", f"/v1/accounts/{account}/mfa", expect=200)
    assert status["locked_until"]
    failed = await tap.wait(account, "LoginFailed", 10)
    assert failed[-1]["data"]["consecutive_failures"] == 10


async def test_forced_mfa_sends_the_employee_to_enrol_and_enrolling_completes_the_login(api, tap):
    company = await api.company(required=True)
    account = await api.account(company)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert login["decision"] == "enroll"
    _, refused = await api.call("POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": "123456"}, expect=409)
    assert refused["code"] == "wrong_login_state"
    _, _, confirmed = await api.enroll(account, login_id=login["login_id"])
    _, jwks = await api.call("GET", "/.well-known/jwks.json")
    assert verify_assertion(confirmed["assertion"], jwks)["login_id"] == login["login_id"]
    succeeded = await tap.wait(account, "LoginSucceeded")
    assert succeeded[0]["data"]["method"] == "enrollment"


async def test_backup_code_login_turns_mfa_off_and_forced_accounts_enrol_again(api, tap):
    company = await api.company(required=False)
    free = await api.account(company)
    forced = await api.account(company, required=True)
    for account in (free, forced):
        _, codes, _ = await api.enroll(account)
        _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
        _, result = await api.call(
            "POST", f"/v1/logins/{login['login_id']}/verify", {"method": "backup_code", "code": codes[3].lower()}, expect=200
        )
        disabled = await tap.wait(account, "MfaDisabled")
        assert disabled[0]["data"]["reason"] == "backup_code"
        _, status = await api.call("GET", f"/v1/accounts/{account}/mfa")
        assert status["enabled"] is False and status["backup_codes_left"] == 0
        if account == free:
            assert result["result"] == "success" and result["assertion"]
        else:
            assert result["result"] == "enroll"
            _, _, confirmed = await api.enroll(account, login_id=login["login_id"])
            assert confirmed["assertion"]


async def test_disable_with_backup_code_outside_login_and_code_is_single_use(api):
    account = await api.account(await api.company())
    _, codes, _ = await api.enroll(account)
    _, regenerated = await api.call("POST", f"/v1/accounts/{account}/mfa/backup-codes", expect=201)
    _, old = await api.call("POST", f"/v1/accounts/{account}/mfa/disable", {"backup_code": codes[0]}, expect=401)
    assert old["code"] == "invalid_backup_code"  # regenerating replaced them all
    new = regenerated["backup_codes"][0]
    await api.call("POST", f"/v1/accounts/{account}/mfa/disable", {"backup_code": new}, expect=200)
    _, status = await api.call("GET", f"/v1/accounts/{account}/mfa")
    assert status["enabled"] is False
    _, again = await api.call("POST", f"/v1/accounts/{account}/mfa/disable", {"backup_code": new}, expect=409)
    assert again["code"] == "mfa_not_enabled"


async def test_backup_email_confirmation_and_login_link(api, tap, runtime):
    keyring = Keyring(runtime.settings.secret_keys)
    account = await api.account(await api.company())
    _, same = await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": f" {account.upper()}@EXAMPLE.com "}, expect=400)
    assert same["code"] == "same_as_login_email"
    await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": "ada.private@example.org"}, expect=202)
    changed = (await tap.wait(account, "BackupEmailChanged"))[0]["data"]
    token = keyring.open(changed["confirm_token"], aad=f"BackupEmailChanged:{account}".encode()).decode()
    _, status = await api.call("GET", f"/v1/accounts/{account}/mfa")
    assert status["backup_email"] == {"address": "ada.private@example.org", "verified": False}
    await api.call("POST", "/v1/backup-email/confirm", {"token": token}, expect=200)
    _, reused = await api.call("POST", "/v1/backup-email/confirm", {"token": token}, expect=410)
    assert reused["code"] == "token_used"
    await tap.wait(account, "BackupEmailConfirmed")

    secret, _, _ = await api.enroll(account)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert "backup_email" in login["methods"]
    _, sent = await api.call("POST", f"/v1/logins/{login['login_id']}/backup-email", expect=202)
    assert sent["sent_to"] == "a***@example.org"
    requested = (await tap.wait(account, "BackupEmailRequested"))[0]["data"]
    link_token = keyring.open(requested["link_token"], aad=f"BackupEmailRequested:{account}".encode()).decode()
    assert len(link_token) >= 43  # 256 bits, base64url
    _, ok = await api.call("POST", "/v1/login-links/redeem", {"token": link_token}, expect=200)
    assert ok["result"] == "success"
    _, used = await api.call("POST", "/v1/login-links/redeem", {"token": link_token}, expect=410)
    assert used["code"] == "token_used"


async def test_admin_disable_rules(api, tap, runtime, client):
    from services.common.apikeys import create_key

    from .conftest import Api

    company = await api.company()
    other_company = await api.company()
    admin = await api.account(company, role="admin")
    employee = await api.account(company)
    forced_employee = await api.account(company, required=True)
    outsider_admin = await api.account(other_company, role="admin")
    for account in (employee, forced_employee):
        await api.enroll(account)
    _, not_admin = await api.call("DELETE", f"/v1/accounts/{employee}/mfa", {"actor_account_id": forced_employee}, expect=403)
    assert not_admin["code"] == "not_company_admin"
    _, outsider = await api.call("DELETE", f"/v1/accounts/{employee}/mfa", {"actor_account_id": outsider_admin}, expect=403)
    assert outsider["code"] == "not_company_admin"
    _, forced = await api.call("DELETE", f"/v1/accounts/{forced_employee}/mfa", {"actor_account_id": admin}, expect=409)
    assert forced["code"] == "mfa_forced"
    # A key bound to the other company cannot even see the account.
    other = Api(client, await create_key(runtime.pool, "service", other_company))
    _, hidden = await other.call("DELETE", f"/v1/accounts/{employee}/mfa", {"actor_account_id": outsider_admin}, expect=404)
    assert hidden["code"] == "account_not_found"
    await other.call("GET", f"/v1/accounts/{employee}/mfa", expect=404)
    await api.call("DELETE", f"/v1/accounts/{employee}/mfa", {"actor_account_id": admin}, expect=200)
    disabled = (await tap.wait(employee, "MfaDisabled"))[0]
    assert disabled["data"]["reason"] == "admin" and disabled["data"]["actor_account_id"] == admin
    assert disabled["authtype"] == "user" and disabled["authid"] == admin
    _, status = await api.call("GET", f"/v1/accounts/{forced_employee}/mfa")
    assert status["enabled"] is True


async def test_policy_changes_emit_events(api, tap):
    company = await api.company(required=False)
    await api.company(company_id=company, required=True)
    changed = (await tap.wait(company, "MfaPolicyChanged"))[0]["data"]
    assert changed == {"scope": "company", "company_id": company, "account_id": None, "mfa_required": True, "previous": False}
    upserted = await tap.wait(company, "CompanyUpserted", 2)
    assert upserted[-1]["data"]["mfa_required"] is True


async def test_wrong_role_missing_key_and_unknown_key(api, client, runtime):
    from services.common.apikeys import create_key

    async with client.get("/v1/accounts/x/mfa") as resp:
        assert resp.status == 401 and (await resp.json())["code"] == "missing_api_key"
    async with client.get("/v1/accounts/x/mfa", headers={"Authorization": "Bearer mfa_nope"}) as resp:
        assert resp.status == 401 and (await resp.json())["code"] == "invalid_api_key"
    auditor = await create_key(runtime.pool, "auditor")
    async with client.get("/v1/accounts/x/mfa", headers={"Authorization": f"Bearer {auditor}"}) as resp:
        assert resp.status == 403 and (await resp.json())["code"] == "wrong_role"


async def test_login_is_idempotent_by_login_id(api, tap):
    account = await api.account(await api.company())
    login_id = f"lg-{uuid.uuid4().hex}"
    _, first = await api.call("POST", "/v1/logins", {"account_id": account, "login_id": login_id}, expect=201)
    _, second = await api.call("POST", "/v1/logins", {"account_id": account, "login_id": login_id}, expect=201)
    assert first["login_id"] == second["login_id"] == login_id
    # A later login of the same account is published after any duplicate would have been (same partition).
    _, later = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    issued = await tap.wait(account, "LoginChallengeIssued", 2)
    assert [e["data"]["login_id"] for e in issued] == [login_id, later["login_id"]]


async def test_a_full_flow_emits_each_event_once(api, tap):
    company = await api.company()
    account = await api.account(company)
    secret, codes, _ = await api.enroll(account)
    _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    await api.call("POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": "000000"}, expect=401)
    await api.call("POST", f"/v1/logins/{login['login_id']}/verify", {"method": "totp", "code": oathtool(secret, 30)},
                   expect=200)
    await api.call("POST", f"/v1/accounts/{account}/mfa/backup-codes", expect=201)
    await api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": f"{account}@else.example"}, expect=202)
    admin = await api.account(company, role="admin")
    await api.call("DELETE", f"/v1/accounts/{account}/mfa", {"actor_account_id": admin}, expect=200)
    # The last event of the flow; the account's events leave in order, so all earlier ones are in by now.
    await tap.wait(account, "MfaDisabled")
    events = tap.of(account)
    assert len({e["id"] for e in events}) == len(events)
    assert [e["type"] for e in events] == [
        "AccountUpserted", "MfaEnrolled", "LoginChallengeIssued", "LoginFailed", "LoginSucceeded",
        "BackupCodesRegenerated", "BackupEmailChanged", "MfaDisabled",
    ]
    assert all(e["companyid"] == company and e["source"] == "/mfa/auth" for e in events)
    assert all(e["correlationid"] for e in events)


async def test_expired_enrolment_and_expired_login_link_are_refused(api, tap, runtime):

    account = await api.account(await api.company())
    _, started = await api.call("POST", f"/v1/accounts/{account}/mfa/enrollment", expect=201)
    await runtime.pool.execute(
        "UPDATE auth.pending_enrollments SET expires_at = now() - interval '1 second' WHERE account_id = $1", account
    )
    _, expired = await api.call(
        "POST", f"/v1/accounts/{account}/mfa/enrollment/confirm", {"code": oathtool(started["secret"])}, expect=410
    )
    assert expired["code"] == "enrollment_expired"
    _, status = await api.call("GET", f"/v1/accounts/{account}/mfa")
    assert status["enabled"] is False

    login, token = await login_link(api, tap, runtime, account, f"{account}@other.example")
    await runtime.pool.execute(
        "UPDATE auth.login_links SET expires_at = now() - interval '1 second' WHERE login_id = $1", login["login_id"]
    )
    _, too_late = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=410)
    assert too_late["code"] == "token_expired"
