"""Logins stay safe at the edges: replayed login ids, concurrent requests on one login, locks, key rotation."""

from __future__ import annotations

import asyncio
import base64
import os
import uuid

from services.auth import store
from services.auth.handlers import rotation
from services.common.crypto import Keyring

from .conftest import login_link, oathtool


async def test_a_replayed_login_id_gets_an_assertion_only_while_its_decision_still_holds(api, runtime):
    account = await api.account(await api.company())
    login_id = f"lg-{uuid.uuid4().hex}"
    _, first = await api.call("POST", "/v1/logins", {"account_id": account, "login_id": login_id}, expect=201)
    assert first["decision"] == "allow" and first["assertion"]
    _, retry = await api.call("POST", "/v1/logins", {"account_id": account, "login_id": login_id}, expect=201)
    assert retry["decision"] == "allow" and retry["assertion"]  # a plain retry gets the same answer

    await api.enroll(account)
    _, changed = await api.call("POST", "/v1/logins", {"account_id": account, "login_id": login_id}, expect=409)
    assert changed["code"] == "login_state_changed" and "assertion" not in changed

    other = await api.account(await api.company())
    old_id = f"lg-{uuid.uuid4().hex}"
    await api.call("POST", "/v1/logins", {"account_id": other, "login_id": old_id}, expect=201)
    await runtime.pool.execute("UPDATE auth.logins SET expires_at = now() - interval '1 second' WHERE login_id = $1", old_id)
    _, expired = await api.call("POST", "/v1/logins", {"account_id": other, "login_id": old_id}, expect=410)
    assert expired["code"] == "login_expired" and "assertion" not in expired


async def test_right_and_wrong_codes_sent_together_on_one_login_never_deadlock(api):
    """The fast path locks account then login; the failure path used to lock login then account."""
    results = []
    for _ in range(8):
        account = await api.account(await api.company())
        secret, _, _ = await api.enroll(account)
        right = oathtool(secret, 30)
        wrong = str((int(right) + 500_000) % 10**6).zfill(6)
        _, login = await api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
        path = f"/v1/logins/{login['login_id']}/verify"
        results.append(await asyncio.gather(*(
            api.call("POST", path, {"method": "totp", "code": code}) for code in (wrong, right, wrong, right)
        )))
    for round_ in results:
        statuses = [status for status, _ in round_]
        assert 500 not in statuses, round_
        assert statuses.count(200) == 1, round_  # the right code completes the login once
        codes = {body.get("code") for status, body in round_ if status != 200}
        assert codes <= {"wrong_code", "replayed_code", "login_completed"}, round_


async def test_a_login_link_does_not_complete_a_login_while_the_account_is_locked(api, tap, runtime):
    account = await api.account(await api.company())
    login, token = await login_link(api, tap, runtime, account, f"{account}@backup.example")
    # Locked meanwhile (as ten wrong codes from another login would do).
    await runtime.pool.execute(
        "UPDATE auth.accounts SET locked_until = now() + interval '5 minutes' WHERE account_id = $1", account
    )
    _, refused = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=429)
    assert refused["code"] == "mfa_locked"
    assert await runtime.pool.fetchval("SELECT status FROM auth.logins WHERE login_id = $1", login["login_id"]) == "pending"
    await runtime.pool.execute("UPDATE auth.accounts SET locked_until = NULL WHERE account_id = $1", account)
    _, ok = await api.call("POST", "/v1/login-links/redeem", {"token": token}, expect=200)
    assert ok["result"] == "success"


async def test_rotation_leaves_alone_a_secret_that_changed_after_it_was_read(api, runtime, client):
    admin = await api.account(company := await api.company(), role="admin")
    account = await api.account(company)
    await api.enroll(account)
    stale = await runtime.pool.fetchval("SELECT totp_secret FROM auth.accounts WHERE account_id = $1", account)
    # MFA is turned off between the rotation's read and its write ...
    await api.call("DELETE", f"/v1/accounts/{account}/mfa", {"actor_account_id": admin}, expect=200)
    resealed = Keyring(runtime.settings.secret_keys).seal(b"JBSWY3DPEHPK3PXP", aad=f"totp:{account}".encode())
    async with runtime.pool.acquire() as conn:
        assert await store.reseal(conn, "account", account, stale, resealed) is False
    # ... and stays off: the old secret is not written back.
    assert await runtime.pool.fetchval("SELECT totp_secret FROM auth.accounts WHERE account_id = $1", account) is None


async def test_the_rotate_command_reseals_under_the_newest_key(api, runtime):
    from ..processes import MFA, env_for, run_to_end

    account = await api.account(await api.company())
    secret, _, _ = await api.enroll(account)
    old_keys = runtime.settings.secret_keys
    new_key = ("k-" + uuid.uuid4().hex[:6], os.urandom(32))
    listed = ",".join(f"{kid}:{base64.urlsafe_b64encode(key).decode()}" for kid, key in (*old_keys, new_key))
    code, out, err = await run_to_end(MFA, "secrets", "rotate", env=env_for(runtime.settings, MFA_SECRET_KEYS=listed))
    try:
        assert code == 0, err
        assert f"under key {new_key[0]!r}" in out
        sealed = await runtime.pool.fetchval("SELECT totp_secret FROM auth.accounts WHERE account_id = $1", account)
        assert sealed.split(".")[1] == new_key[0]
        assert Keyring((new_key,)).open(sealed, aad=f"totp:{account}".encode()).decode() == secret
    finally:
        # Back under the configured keys, so the other tests' services still read every row.
        await rotation.rotate_secrets(runtime.pool, Keyring((new_key, *old_keys)))


async def test_auth_processes_starting_together_on_an_empty_database_share_one_signing_key(settings):

    from services.auth.app import SERVICE
    from services.auth.tokens import Signer
    from services.common.db import create_pool

    from ..conftest import private_database

    async with private_database(f"mfa_keys_{uuid.uuid4().hex[:8]}", [SERVICE.migration_set]) as url:
        keyring = Keyring(settings.secret_keys)
        pools = [await create_pool(url, min_size=1, max_size=1) for _ in range(4)]
        try:
            signers = await asyncio.gather(*(Signer("mfa").load(pool, keyring) for pool in pools))
            assert len({signer.current for signer in signers}) == 1
            assert all(signer.jwks == signers[0].jwks for signer in signers)
            assert await pools[0].fetchval("SELECT count(*) FROM auth.signing_keys") == 1
        finally:
            for pool in pools:
                await pool.close()
