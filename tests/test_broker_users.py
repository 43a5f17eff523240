"""Each event type is accepted only from the party allowed to produce it: the broker refuses, the consumer parks.

The users are created on the shared broker by `mfa broker setup`'s code with names unique to
this run, and deleted afterwards.
"""

from __future__ import annotations

import json
import secrets
import uuid

import aio_pika
import aiormq
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.auth.app import create_app
from services.common import brokeradmin
from services.common.config import PARTIES, Settings
from services.common.events import CONTENT_TYPE, encode, known_types, new_event
from services.common.producers import PRODUCERS, Publishers, types_of
from services.common.runtime import Runtime

from .conftest import RUN_ID, isolated, parked_messages, private_database, tap, wait_for


def test_every_event_type_has_its_producers():
    assert set(PRODUCERS) == known_types()
    assert types_of("upstream") == sorted(["CompanyUpserted", "AccountUpserted", "AccountRemoved", "LoginAttempted"])
    assert all(parties <= set(PARTIES) for parties in PRODUCERS.values())


def test_the_check_of_user_ids():
    apart = Publishers({p: f"mfa-{p}" for p in PARTIES})
    assert apart.refusal("RecoveryTicketApproved", "mfa-recovery") is None
    assert "only from recovery" in apart.refusal("RecoveryTicketApproved", "mfa-upstream")
    assert apart.refusal("RecoveryTicketApproved", None) is not None  # RabbitMQ vouches for nobody
    assert apart.refusal("AccountUpserted", "mfa-auth") is None and apart.refusal("AccountUpserted", "mfa-upstream") is None
    assert apart.refusal("NoSuchType", "mfa-auth") is not None
    shared = Publishers(dict.fromkeys(PARTIES, "guest"))
    assert shared.refusal("RecoveryTicketApproved", None) is None  # development: one user for all
    assert shared.refusal("RecoveryTicketApproved", "someone-else") is not None


def test_setup_needs_the_prefix_and_every_password():
    from services.common.config import ConfigError

    with pytest.raises(ConfigError, match="MFA_AMQP_USER_PREFIX"):
        brokeradmin.grants(Settings())
    with pytest.raises(ConfigError, match="MFA_AMQP_PASSWORD_UPSTREAM"):
        brokeradmin.grants(Settings(amqp_user_prefix="x-", amqp_passwords={"auth": "a"}))
    with pytest.raises(ConfigError, match="MFA_AMQP_PASSWORD_AUTH is not set"):
        Settings(amqp_user_prefix="x-").amqp_url_for("auth")
    url = Settings(amqp_user_prefix="mfa-", amqp_passwords={"auth": "p@ss"}).amqp_url_for("auth")
    assert url == "amqp://mfa-auth:p%40ss@127.0.0.1:5672/"


async def test_rabbitmqctl_takes_passwords_that_look_like_options():
    # token_urlsafe starts one password in 64 with "-": as an argument rabbitmqctl read it as an option.
    admin, name = brokeradmin.Rabbitmqctl(), f"mfa-test-{RUN_ID}-{uuid.uuid4().hex[:6]}-dash"
    try:
        for password in ("-first" + secrets.token_urlsafe(8), "--second=" + secrets.token_urlsafe(8)):
            await admin.put_user(name, password)  # creates the user, then changes its password
            assert "Success" in await admin._run("authenticate_user", name, "--", password)
            with pytest.raises(brokeradmin.AdminError):
                await admin._run("authenticate_user", name, "--", password + "x")
    finally:
        await admin.delete_user(name)
    assert name not in await admin.users()


@pytest.fixture(scope="module")
async def separate(settings):
    """Settings with a broker user per party (unique to this run), set up like `mfa broker setup`."""
    u = uuid.uuid4().hex[:6]
    # Its own database (the suite's auth relay would publish its outbox elsewhere) and exchange (events of the
    # suite's other apps stay out).
    async with private_database(f"mfa_users_{u}") as url:
        mine = isolated(settings, url, f"users.{u}", amqp_user_prefix=f"mfa-test-{RUN_ID}-{u}-",
                        amqp_passwords={party: secrets.token_urlsafe(16) for party in PARTIES})
        try:
            await brokeradmin.setup(mine)
            yield mine
        finally:
            await brokeradmin.teardown(mine, exchange=True)
            admin = brokeradmin.admin_for(mine)
            for party in PARTIES:
                await admin.delete_user(mine.amqp_user(party))
    assert not {mine.amqp_user(p) for p in PARTIES} & await brokeradmin.Rabbitmqctl().users()


async def _connect_as(settings: Settings, party: str) -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(settings.amqp_url_for(party), timeout=10)


def _message(event: dict, **properties) -> aio_pika.Message:
    return aio_pika.Message(encode(event), content_type=CONTENT_TYPE, message_id=event["id"],
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties)


def _approval(account: str, company: str) -> dict:
    return new_event("RecoveryTicketApproved", {
        "ticket_id": f"tk-{uuid.uuid4().hex[:8]}", "requester_email": "attacker@example.com", "account_id": account,
        "company_id": company, "agent": "nobody"}, source="/recovery", subject=account, company_id=company)


async def test_a_forged_approval_changes_nothing_and_is_parked(separate, runtime):
    company, account = f"co-{uuid.uuid4().hex[:8]}", f"acct-{uuid.uuid4().hex[:8]}"
    rt = await Runtime.open(separate, parties=["auth"], pool_size=6)
    tap_channel, disabled = await tap(runtime, separate.exchange, "MfaDisabled")  # what auth publishes
    client = TestClient(TestServer(create_app(rt)))  # auth consumes and publishes as its own user
    await client.start_server()
    upstream = await _connect_as(separate, "upstream")
    notifier = await _connect_as(separate, "notifier")
    recovery = await _connect_as(separate, "recovery")
    try:
        up_channel = await upstream.channel()
        up_exchange = await up_channel.get_exchange(separate.exchange)
        user = {"user_id": separate.amqp_user("upstream")}
        # Upstream's own types are accepted and acted on.
        await up_exchange.publish(_message(new_event("CompanyUpserted", {
            "company_id": company, "name": "Users Co", "mfa_required": False}, source="/hr"), **user),
            routing_key="CompanyUpserted")
        await up_exchange.publish(_message(new_event("AccountUpserted", {
            "account_id": account, "company_id": company, "email": f"{account}@example.com", "first_name": "A",
            "last_name": "B", "role": "employee", "mfa_required": True}, source="/hr", subject=account), **user),
            routing_key="AccountUpserted")
        await wait_for(lambda: rt.pool.fetchval("SELECT count(*) FROM auth.accounts WHERE account_id = $1", account),
                       timeout=15, message="the account from upstream")
        before = dict(await rt.pool.fetchrow("SELECT * FROM auth.accounts WHERE account_id = $1", account))

        # 1. The broker refuses a type upstream may not publish (topic permissions).
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await up_exchange.publish(_message(_approval(account, company), **user), routing_key="RecoveryTicketApproved")
        # 2. Upstream's own type without the user_id RabbitMQ vouches for: the consumer parks it.
        up_channel = await upstream.channel()
        up_exchange = await up_channel.get_exchange(separate.exchange)
        await up_exchange.publish(_message(new_event("LoginAttempted", {"login_id": f"lg-{uuid.uuid4().hex[:8]}",
                                                                        "account_id": account}, source="/hr",
                                                     subject=account)), routing_key="LoginAttempted")
        # 3. Another service's user (which may write to queues directly) forges an approval straight into
        # auth's queue, claiming in the header auth trusts on its own retry copies that recovery sent it.
        forged = _approval(account, company)
        no_channel = await notifier.channel()
        await no_channel.default_exchange.publish(
            _message(forged, user_id=separate.amqp_user("notifier"),
                     headers={"x-publisher": separate.amqp_user("recovery")}),
            routing_key=separate.queue("auth.p0"))
        parked = await parked_messages(runtime, separate.queue("auth.parked"), 2, timeout=20)
        assert {m.headers["x-parked-reason"] for m in parked} == {"forbidden"}
        assert {m.type or json.loads(m.body)["type"] for m in parked} >= {"RecoveryTicketApproved"}
        assert any(m.message_id == forged["id"] for m in parked)
        assert dict(await rt.pool.fetchrow("SELECT * FROM auth.accounts WHERE account_id = $1", account)) == before
        assert await rt.pool.fetchval("SELECT count(*) FROM auth.logins WHERE account_id = $1", account) == 0

        # The same approval from recovery's user is acted on: what the forgeries would have done.
        re_channel = await recovery.channel()
        re_exchange = await re_channel.get_exchange(separate.exchange)
        await re_exchange.publish(_message(_approval(account, company), user_id=separate.amqp_user("recovery")),
                                  routing_key="RecoveryTicketApproved")
        await wait_for(lambda: any(e["subject"] == account for e in disabled), timeout=15,
                       message="MfaDisabled after recovery's approval")
        assert [e["data"]["reason"] for e in disabled if e["subject"] == account] == ["helpdesk_recovery"]
        assert not any(e["data"].get("ticket_id") == forged["data"]["ticket_id"] for e in disabled)
    finally:
        for connection in (upstream, notifier, recovery):
            await connection.close()
        await client.close()
        await tap_channel.close()
        await rt.close()


async def test_a_service_user_cannot_publish_another_services_types(separate):
    notifier = await _connect_as(separate, "notifier")
    try:
        channel = await notifier.channel()
        exchange = await channel.get_exchange(separate.exchange)
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await exchange.publish(_message(_approval("a", "c"), user_id=separate.amqp_user("notifier")),
                                   routing_key="RecoveryTicketApproved")
        channel = await notifier.channel()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):  # nor declare queues outside its own
            await channel.declare_queue(separate.queue("auth.stolen"), durable=True)
    finally:
        await notifier.close()


async def test_mfa_run_all_runs_each_service_as_its_own_user_in_production(separate):
    """One process, four services, four broker users; production settings (own key, user prefix)."""
    import asyncio
    import signal

    import aiohttp
    import asyncpg

    from services.common.apikeys import create_key

    from .processes import APIS, free_ports, kill, run_all_env, start, url, wait_ready

    async with private_database(f"mfa_users_{uuid.uuid4().hex[:8]}") as db_url:
        ports = free_ports()
        env = run_all_env(separate, ports, MFA_DATABASE_URL=db_url, MFA_ENV="production",
                          MFA_SECRET_KEYS="k1:" + secrets.token_urlsafe(32)[:43], MFA_AMQP_USER_PREFIX=separate.amqp_user_prefix,
                          **{f"MFA_AMQP_PASSWORD_{p.upper()}": separate.amqp_passwords[p] for p in PARTIES if p != "upstream"})
        env.pop("MFA_AMQP_PASSWORD_UPSTREAM", None)  # services never need upstream's password
        proc = await start("run", "all", env=env)
        db = await asyncpg.connect(db_url)
        try:
            await wait_ready({k: url(ports[k]) for k in APIS}, timeout=30)
            async with aiohttp.ClientSession() as http:
                key = await create_key(db, "service", label="users")
                company, account = f"co-{uuid.uuid4().hex[:8]}", f"acct-{uuid.uuid4().hex[:8]}"
                base, headers = url(ports["AUTH"]), {"Authorization": f"Bearer {key}"}
                async with http.put(f"{base}/v1/companies/{company}", json={"name": "Run All Co", "mfa_required": False},
                                    headers=headers) as r:
                    assert r.status == 201
                async with http.put(f"{base}/v1/accounts/{account}", headers=headers, json={
                        "company_id": company, "email": f"{account}@example.com", "first_name": "A", "last_name": "B",
                        "role": "employee", "mfa_required": False}) as r:
                    assert r.status == 201
            # auth's relay published as auth; recovery and audit consumed as themselves and accepted it.
            await wait_for(lambda: db.fetchval("SELECT count(*) FROM recovery.accounts WHERE account_id = $1", account),
                           timeout=20, message="the account in recovery's directory")
            await wait_for(lambda: db.fetchval("SELECT count(*) = 2 FROM audit.events WHERE company_id = $1", company),
                           timeout=20, message="both events in the audit log")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 15) == 0
        finally:
            await kill(proc)
            await db.close()
