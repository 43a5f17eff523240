"""The counters operators watch, read from GET /metrics of a running `mfa run all`: each moves by
exactly what was done through the API."""

from __future__ import annotations

import io
import subprocess
import time

import aiohttp
import pytest
import segno
from prometheus_client.parser import text_string_to_metric_families

from services.common.config import Settings
from services.common.crypto import Keyring

from ..conftest import tap, wait_for
from .conftest import unique


def totp(secret: str, offset: int = 0) -> str:
    return subprocess.run(["oathtool", "--totp", "-b", "-N", f"@{int(time.time()) + offset}", secret],
                          check=True, capture_output=True, text=True).stdout.strip()


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


class Client:
    def __init__(self, http: aiohttp.ClientSession, base: str, key: str) -> None:
        self.http, self.base, self.headers = http, base, {"Authorization": f"Bearer {key}"}

    async def __call__(self, method: str, path: str, body=None, expect: int | None = None, **kw):
        async with self.http.request(method, self.base + path, json=body, headers=self.headers, **kw) as resp:
            data = await resp.json(content_type=None)
            if expect is not None:
                assert resp.status == expect, (resp.status, data)
            return resp.status, data


@pytest.fixture
async def events(stack, runtime):
    """Events on the bus, to read the sealed tokens the notifier would mail (whichever notifier sends)."""
    settings = Settings.from_env(stack.env)
    channel, seen = await tap(runtime, settings.exchange, "BackupEmailChanged", "BackupEmailRequested")
    keyring = Keyring(settings.secret_keys)

    async def token(event_type: str, account: str, field: str) -> str:
        event = await wait_for(lambda: next((e for e in seen if e["type"] == event_type and e["subject"] == account), None),
                               timeout=15, message=f"{event_type} of {account}")
        return keyring.open(event["data"][field], aad=f"{event_type}:{account}".encode()).decode()

    yield token
    await channel.close()


async def test_each_counter_counts_what_happened(stack, events):
    service = await stack.api_key("--role", "service")
    helpdesk = await stack.api_key("--role", "helpdesk")
    company = unique("co")
    before = await scrape(stack.url())
    async with aiohttp.ClientSession() as http:
        api = Client(http, stack.url(), service)
        await api("PUT", f"/v1/companies/{company}", {"name": f"Metrics {company}", "mfa_required": False}, expect=201)

        async def account() -> str:
            account_id = unique("acct")
            await api("PUT", f"/v1/accounts/{account_id}", {
                "company_id": company, "email": f"{account_id}@example.com", "first_name": "Ada",
                "last_name": "Lovelace", "role": "employee", "mfa_required": False}, expect=201)
            return account_id

        async def enroll(account_id: str) -> tuple[str, list[str]]:
            _, started = await api("POST", f"/v1/accounts/{account_id}/mfa/enrollment", expect=201)
            _, done = await api("POST", f"/v1/accounts/{account_id}/mfa/enrollment/confirm",
                                {"code": totp(started["secret"])}, expect=201)
            return started["secret"], done["backup_codes"]

        async def login(account_id: str, decision: str) -> str:
            _, started = await api("POST", "/v1/logins", {"account_id": account_id}, expect=201)
            assert started["decision"] == decision
            return started["login_id"]

        # allow: MFA off
        await login(await account(), "allow")
        # verify, then success with a backup code
        lucky = await account()
        _, codes = await enroll(lucky)
        await api("POST", f"/v1/logins/{await login(lucky, 'verify')}/verify",
                  {"method": "backup_code", "code": codes[0]}, expect=200)
        # ten wrong codes over two logins lock the account; the next login is denied
        unlucky = await account()
        secret, _ = await enroll(unlucky)
        wrong = f"{(int(totp(secret)) + 1) % 1_000_000:06d}"
        for _ in range(2):
            login_id = await login(unlucky, "verify")
            for _ in range(5):
                status, _ = await api("POST", f"/v1/logins/{login_id}/verify", {"method": "totp", "code": wrong})
                assert status == 401
        await login(unlucky, "deny")
        # a login link sent to the confirmed backup email, and redeemed
        linked = await account()
        await api("PUT", f"/v1/accounts/{linked}/backup-email", {"email": f"{linked}@backup.example"}, expect=202)
        confirm = await events("BackupEmailChanged", linked, "confirm_token")
        await api("POST", "/v1/backup-email/confirm", {"token": confirm}, expect=200)
        await enroll(linked)
        login_id = await login(linked, "verify")
        await api("POST", f"/v1/logins/{login_id}/backup-email", expect=202)
        link = await events("BackupEmailRequested", linked, "link_token")
        await api("POST", "/v1/login-links/redeem", {"token": link}, expect=200)

        # a recovery ticket opened from the form and approved by the helpdesk
        recovery = Client(http, stack.url("RECOVERY"), service)
        photo = io.BytesIO()
        segno.make("a photo of the person with the ID card").save(photo, kind="png", scale=8)
        form = aiohttp.FormData()
        for name, value in (("email", f"{lucky}@example.com"), ("first_name", "Ada"), ("last_name", "Lovelace"),
                            ("company_name", f"Metrics {company}")):
            form.add_field(name, value)
        form.add_field("photo", photo.getvalue(), filename="me.png", content_type="image/png")
        _, opened = await recovery("POST", "/v1/recovery-requests", data=form, expect=202)
        desk = Client(http, stack.url("RECOVERY"), helpdesk)
        ticket = f"/v1/recovery-tickets/{opened['ticket_id']}"

        async def matched():
            _, view = await desk("GET", ticket, expect=200)
            return view.get("match") and view["match"].get("account_id") == lucky

        await wait_for(matched, timeout=15, message="the ticket matched to the account")
        await desk("POST", f"{ticket}/approve", {"agent": "ann", "note": "matches"}, expect=200)

    after = await scrape(stack.url())
    assert delta(before, after, "mfa_logins_total", decision="allow") == 1
    assert delta(before, after, "mfa_logins_total", decision="verify") == 4
    assert delta(before, after, "mfa_logins_total", decision="deny") == 1
    assert delta(before, after, "mfa_verifications_total", method="backup_code", result="success") == 1
    assert delta(before, after, "mfa_verifications_total", method="totp", result="wrong_code") == 8
    assert delta(before, after, "mfa_verifications_total", method="totp", result="too_many_attempts") == 2
    assert delta(before, after, "mfa_verifications_total", method="backup_email", result="success") == 1
    assert delta(before, after, "mfa_lockouts_total") == 1
    assert delta(before, after, "mfa_login_links_total", outcome="sent") == 1
    assert delta(before, after, "mfa_login_links_total", outcome="redeemed") == 1
    assert delta(before, after, "mfa_recovery_tickets_opened_total", channel="form", status="open") == 1
    assert delta(before, after, "mfa_recovery_tickets_decided_total", decision="approved") == 1
    # Every service of the process exports them (one registry per process).
    assert delta(before, await scrape(stack.url("RECOVERY")), "mfa_lockouts_total") == 1
