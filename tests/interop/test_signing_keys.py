"""Signing key rotation: the new key signs, the old one stays in the JWKS until what it signed expired,
and every process picks the change up on its own; on a database of its own (rotation is global)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from datetime import timedelta

import pytest
from joserfc.jws import extract_compact

from services.auth.tokens import Signer, rotate, verify_assertion
from services.common.crypto import Keyring
from services.common.db import create_pool

from ..conftest import private_database, wait_for
from .conftest import run_command, stack_env


@pytest.fixture
async def keys_db(settings):
    async with private_database(f"mfa_keys_{uuid.uuid4().hex[:8]}") as url:
        pool = await create_pool(url, min_size=1, max_size=4)
        yield dataclasses.replace(settings, database_url=url), pool
        await pool.close()


def kid_of(token: str) -> str:
    return extract_compact(token.encode()).protected["kid"]


def kids(signer: Signer) -> set[str]:
    return {key["kid"] for key in signer.jwks["keys"]}


def sign(signer: Signer) -> str:
    return signer.sign(account_id="acct-1", company_id="co-1", login_id=uuid.uuid4().hex, amr=["pwd"])


async def test_rotation_signs_with_the_new_key_and_publishes_the_old_one_until_its_last_assertion_expired(keys_db):
    settings, pool = keys_db
    keyring = Keyring(settings.secret_keys)
    # Assertions live 4 s: `iat` is whole seconds, so one signed late in a second lives 3 s and more,
    # beyond the 1 s until the new key signs (a 2 s lifetime could end before the check below).
    one = await Signer("https://mfa.example", ttl=4).load(pool, keyring)
    other = await Signer("https://mfa.example", ttl=4).load(pool, keyring)  # a second process
    first_kid = one.current
    assert other.current == first_kid

    rotation = await rotate(pool, keyring, propagation=timedelta(seconds=1), keep=timedelta(seconds=5))
    await asyncio.gather(one.reload(pool, keyring), other.reload(pool, keyring))
    # Published at once, signing only from its activation: both processes switch at the same time.
    assert kids(one) == kids(other) == {first_kid, rotation.kid}
    assert [kid for kid, _ in rotation.retiring] == [first_kid]
    last_old = sign(one)
    assert kid_of(last_old) == first_kid

    await wait_for(lambda: one.current == rotation.kid and other.current == rotation.kid, timeout=5,
                   message="the new key signing")
    new = sign(other)
    assert kid_of(new) == rotation.kid
    for token in (last_old, new):  # either process's JWKS verifies both
        assert verify_assertion(token, one.jwks, issuer="https://mfa.example")["sub"] == "acct-1"
        assert verify_assertion(token, other.jwks)["sub"] == "acct-1"

    last_old_exp = verify_assertion(last_old, other.jwks)["exp"]

    async def old_key_gone():
        await one.reload(pool, keyring)
        return first_kid not in kids(one)

    await wait_for(old_key_gone, timeout=15, interval=0.2, message="the old key leaving the JWKS")
    # Dropped only once the last assertion it signed had expired, never before.
    assert time.time() > last_old_exp
    assert kids(one) == {rotation.kid} and one.current == rotation.kid


async def test_running_processes_pick_up_a_rotation_on_their_schedule(keys_db):
    settings, pool = keys_db
    keyring = Keyring(settings.secret_keys)
    signer = await Signer("https://mfa.example").load(pool, keyring)
    task = asyncio.create_task(signer.run(pool, keyring, interval=0.1))
    try:
        rotation = await rotate(pool, keyring, propagation=timedelta(0))
        await wait_for(lambda: signer.current == rotation.kid, timeout=5, message="the reload picking up the new key")
        assert kid_of(sign(signer)) == rotation.kid
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_mfa_signing_keys_rotate_and_list(keys_db, stack):
    settings, pool = keys_db
    env = stack_env(settings, stack.ports, str(stack.mail_dir))
    first = await Signer("x").load(pool, Keyring(settings.secret_keys))
    out = await run_command(stack.mfa, "signing-keys", "rotate", env=env)
    new_kid = out.split("new signing key ")[1].split()[0]
    assert f"key {first.current} stops signing then and stays in the JWKS until" in out
    listed = await run_command(stack.mfa, "signing-keys", "list", env=env)
    assert {line.split()[0] for line in listed.splitlines()} == {first.current, new_kid}
    await first.reload(pool, Keyring(settings.secret_keys))
    # The default waits for verifiers' JWKS caches (max-age 300 s) before the new key signs.
    assert first.current != new_kid and new_kid in kids(first)
    row = await pool.fetchrow("SELECT activates_at - now() AS wait FROM auth.signing_keys WHERE kid = $1", new_kid)
    assert timedelta(seconds=300) < row["wait"] <= timedelta(seconds=360)
    out = await run_command(stack.mfa, "signing-keys", "rotate", "--now", env=env)
    assert "running services switch within 30 s" in out
    await first.reload(pool, Keyring(settings.secret_keys))
    assert first.current == out.split("new signing key ")[1].split()[0]


async def test_a_key_stored_under_the_old_alg_name_is_published_as_eddsa(keys_db):
    settings, pool = keys_db
    keyring = Keyring(settings.secret_keys)
    signer = await Signer("https://mfa.example").load(pool, keyring)
    await pool.execute("""UPDATE auth.signing_keys SET public_jwk = jsonb_set(public_jwk, '{alg}', '"Ed25519"')""")
    await signer.reload(pool, keyring)
    assert [key["alg"] for key in signer.jwks["keys"]] == ["EdDSA"]
    assert verify_assertion(sign(signer), signer.jwks)["sub"] == "acct-1"
