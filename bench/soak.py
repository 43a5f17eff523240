"""Chaos soak: a mixed load at a fixed rate while workers are killed, the broker, PostgreSQL and SMTP fail.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 20] [--short] [--json FILE] [--logs DIR]

Everything runs on loopback against nodes of its own (bench/nodes.py: a private PostgreSQL
cluster, RabbitMQ node and aiosmtpd server on free ports, removed at the end), never the shared
PostgreSQL or RabbitMQ. The workers are real processes: two replicas of auth, notifier and
audit, one of recovery, two outbox relays (`mfa relay all`), four queue partitions.

The load, `--rate` operations a second, open loop (one task per operation): logins verified with
TOTP codes, enrolments, backup emails set and confirmed from the mailed link, login links mailed
to the backup email and redeemed, recovery requests by mail (the recovery SMTP intake) and by
the public /recover form, audit reads. The faults, one after the other, spread over the run:

- SIGKILL of a worker replica, restarted 10 s later (`--short`: 5 s);
- the broker stopped for 30 s (`rabbitmqctl stop_app` / `start_app`; `--short`: 10 s);
- PostgreSQL stopped and started again, 5 s down (`--short`: 3 s);
- the SMTP server down for 60 s, then slow (2 s per mail) for 60 s (`--short`: 15 s and 10 s).

It injects a few poison messages itself. Afterwards it waits for the backlog to drain and
proves: every accepted state change has exactly one event in the audit log; the audit chain
verifies; every mail went out once (each Message-ID once, the journal and the SMTP server
agree per event; the one exception, counted and printed: a mail the SMTP server took within 2 s
before its notifier replica was SIGKILLed may arrive twice, under the same Message-ID, since SMTP
cannot be made part of the journal's transaction); nothing is parked but the poison; no HTTP 500 (503 problem+json allowed
while the database is away); and it prints how long each fault took to recover from: until
HTTP answered again, until events of every partition reached the audit log, until their mails
arrived. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email
import hashlib
import hmac
import io
import itertools
import json
import os
import re
import shutil
import signal
import struct
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email import policy
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aio_pika  # noqa: E402
import aiohttp  # noqa: E402
import aiosmtplib  # noqa: E402
import asyncpg  # noqa: E402

from bench.common import free_port, machine, percentile  # noqa: E402
from bench.nodes import Nodes, append_log, private_nodes  # noqa: E402
from services.common.outbox import partition_of  # noqa: E402
from services.notifier.domain import HANDLED_TYPES as MAIL_TYPES  # noqa: E402

os.environ.setdefault("MFA_ENV", "development")
MFA = str(Path(sys.executable).with_name("mfa"))
PARTITIONS = 4
HELPDESK = "helpdesk@mfa.localhost"
COMPANY = "soak-co"
COMPANY_NAME = "Soak Company"
# The event types the load causes; for these the audit log must hold exactly what was accepted.
TRACKED = ("CompanyUpserted", "AccountUpserted", "LoginChallengeIssued", "LoginSucceeded", "LoginFailed",
           "MfaEnrolled", "BackupEmailChanged", "BackupEmailConfirmed", "BackupEmailRequested",
           "RecoveryTicketOpened")
KILL_WINDOW = 2.0  # seconds before a notifier's SIGKILL in which a mail it sent may be unrecorded
OPS = {  # weight of each operation in the mix
    "login_verify": 8, "enrol": 2, "backup_email": 1, "login_link": 1, "recovery_mail": 1, "recovery_form": 1,
    "audit_read": 2,
}


def totp(secret: str, at: float | None = None, step: int = 30) -> tuple[str, int]:
    """RFC 6238 code of a base32 secret and its time step."""
    counter = int((time.time() if at is None else at) // step)
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000
    return f"{code:06d}", counter


def small_jpeg() -> bytes:
    from PIL import Image

    img = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=80)
    return out.getvalue()


def phone_mail(sender: str, photo: bytes) -> bytes:
    body = (f"Hello,\r\nI lost my phone.\r\nAccount email: {sender}\r\nFirst name: Jane\r\nLast name: Doe\r\n")
    return (
        f"From: Jane Doe <{sender}>\r\nTo: {HELPDESK}\r\nSubject: Resetting MFA authenticator ({COMPANY_NAME})\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@phone.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body}\r\n--b1\r\nContent-Type: image/jpeg; name=IMG_0001.jpeg\r\n"
        "Content-Disposition: attachment; filename=IMG_0001.jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + base64.encodebytes(photo).replace(b"\n", b"\r\n") + b"--b1--\r\n"


def mail_link(raw: bytes) -> tuple[str, str] | None:
    """(path, token) of the link in a mail's text part."""
    message = email.message_from_bytes(raw, policy=policy.default)
    part = message.get_body(preferencelist=("plain",))
    text = part.get_content() if part is not None else ""
    match = re.search(r"https?://\S+?\?token=[^\s\"'<>]+", text)
    if not match:
        return None
    url = urlparse(match.group(0))
    return url.path, unquote(parse_qs(url.query)["token"][0])


# ---- the worker processes -----------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    port: int
    log: Path
    process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        out = append_log(self.log)
        self.process = await asyncio.create_subprocess_exec(MFA, *self.args, env=self.env, stdout=out, stderr=out)
        out.close()


class Stack:
    """The worker and relay processes of the soak, on the private nodes."""

    def __init__(self, nodes: Nodes, logs: Path, replicas: dict[str, int]) -> None:
        self.nodes = nodes
        self.logs = logs
        self.base = {
            **os.environ,
            "MFA_ENV": "development",
            "MFA_DATABASE_URL": nodes.pg.url("mfa"),
            "MFA_AMQP_URL": nodes.rabbit.url,
            "MFA_EXCHANGE": "mfa.events",
            "MFA_QUEUE_PREFIX": "",
            "MFA_QUEUE_PARTITIONS": str(PARTITIONS),
            "MFA_RELAY": "separate",
            "MFA_SMTP_HOST": "127.0.0.1",
            "MFA_SMTP_PORT": str(nodes.smtp.port),
            "MFA_SMTP_TLS": "none",
            "MFA_LOG_LEVEL": "WARNING",
            "MFA_LOG_FORMAT": "json",
            "MFA_RECOVERY_RATE_PER_SENDER": "100000",
            "MFA_RECOVERY_RATE_PER_IP": "100000000",
        }
        self.procs: dict[str, list[Proc]] = {}
        for worker, count in replicas.items():
            for i in range(count):
                port = free_port()
                env = {**self.base, f"MFA_{worker.upper()}_PORT": str(port)}
                if worker == "recovery":
                    env["MFA_INBOUND_SMTP_PORT"] = str(free_port())
                    env["MFA_RECOVERY_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
                if worker == "relay":
                    env["MFA_RELAY_PORT"] = str(port)
                args = ["relay", "all"] if worker == "relay" else ["run", worker]
                self.procs.setdefault(worker, []).append(Proc(f"{worker}{i}", args, env, port, logs / f"{worker}{i}.log"))

    def port(self, worker: str, i: int = 0) -> int:
        return self.procs[worker][i % len(self.procs[worker])].port

    def smtp_port(self) -> int:
        return int(self.procs["recovery"][0].env["MFA_INBOUND_SMTP_PORT"])

    async def migrate(self) -> None:
        proc = await asyncio.create_subprocess_exec(MFA, "migrate", env=self.base, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"mfa migrate failed: {out.decode()[-2000:]}")

    async def start(self) -> None:
        for procs in self.procs.values():
            for proc in procs:
                await proc.start()
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(self.wait_ready(http, p) for ps in self.procs.values() for p in ps))

    async def wait_ready(self, http: aiohttp.ClientSession, proc: Proc, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.process is not None and proc.process.returncode is not None:
                raise RuntimeError(f"{proc.name} exited {proc.process.returncode}; see {proc.log}")
            try:
                async with http.get(f"http://127.0.0.1:{proc.port}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{proc.name} not ready after {timeout}s; see {proc.log}")

    async def kill(self, worker: str, i: int) -> None:
        proc = self.procs[worker][i]
        assert proc.process is not None
        proc.process.send_signal(signal.SIGKILL)
        await proc.process.wait()

    async def restart(self, worker: str, i: int) -> None:
        proc = self.procs[worker][i]
        await proc.start()
        async with aiohttp.ClientSession() as http:
            await self.wait_ready(http, proc)

    async def stop(self) -> dict[str, int | None]:
        """SIGTERM to every process; their exit codes (None: killed after 20 s)."""
        codes: dict[str, int | None] = {}
        running = [p for ps in self.procs.values() for p in ps if p.process and p.process.returncode is None]
        for proc in running:
            proc.process.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                codes[proc.name] = await asyncio.wait_for(proc.process.wait(), 20)
            except TimeoutError:
                proc.process.kill()
                await proc.process.wait()
                codes[proc.name] = None
        return codes


# ---- the load ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the load saw: answers by step and status, and the events its accepted calls must have caused."""

    answers: Counter = field(default_factory=Counter)
    expected: Counter = field(default_factory=Counter)  # (event type, subject) -> accepted calls
    maybe: Counter = field(default_factory=Counter)  # calls whose answer was lost: may or may not have happened
    server_errors: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    not_problem_503: int = 0
    unavailable_codes: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)
    ops_done: Counter = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    skipped: int = 0


class Unavailable(Exception):
    """A 503 (or a refused connection): the operation stops there, nothing was accepted."""


class Load:
    """The soak's client: the mixed operations and the bookkeeping of what they changed."""

    def __init__(self, stack: Stack, nodes: Nodes, service_key: str, auditor_key: str, tally: Tally) -> None:
        self.stack = stack
        self.nodes = nodes
        self.tally = tally
        self.headers = {"Authorization": f"Bearer {service_key}"}
        self.auditor = {"Authorization": f"Bearer {auditor_key}"}
        self.http: aiohttp.ClientSession | None = None
        self.totp_accounts: list[dict[str, Any]] = []
        self.link_accounts: list[dict[str, Any]] = []
        self.busy: set[str] = set()
        self.counter = itertools.count()
        self.photo = small_jpeg()
        self.rr = itertools.count()
        self.tasks: set[asyncio.Task] = set()
        self.mail_seen = 0
        self.tokens: dict[tuple[str, str], list[str]] = {}
        self.notifier_kills: list[float] = []  # when a notifier replica was SIGKILLed

    # -- HTTP with bookkeeping

    async def call(self, step: str, method: str, path: str, body: Any = None, *, expect: dict[int, tuple[str, str] | None],
                   worker: str = "auth", headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One call; `expect` maps accepted statuses to the event they cause ((type, subject) or None)."""
        assert self.http is not None
        url = f"http://127.0.0.1:{self.stack.port(worker, next(self.rr))}{path}"
        started = time.perf_counter()
        lost = [event for event in expect.values() if event]
        try:
            async with self.http.request(method, url, json=body, headers=headers or self.headers,
                                         allow_redirects=False) as resp:
                text = await resp.text()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except aiohttp.ClientConnectorError:
            self.tally.answers[(step, "refused")] += 1
            raise Unavailable(step) from None
        except (aiohttp.ClientError, TimeoutError):
            self.tally.answers[(step, "lost")] += 1
            for event in lost[:1]:
                self.tally.maybe[event] += 1
            raise Unavailable(step) from None
        self.tally.latencies.setdefault(step, []).append(time.perf_counter() - started)
        self.tally.answers[(step, status)] += 1
        if status >= 500:
            if status == 503:
                try:
                    code = json.loads(text).get("code")
                except ValueError:
                    code = None
                self.tally.unavailable_codes[code] += 1
                if not ctype.startswith("application/problem+json"):
                    self.tally.not_problem_503 += 1
                raise Unavailable(step)
            self.tally.server_errors.append(f"{step} {status}: {text[:300]}")
            raise Unavailable(step)
        if status not in expect:
            self.tally.unexpected.append(f"{step} {status}: {text[:300]}")
            raise Unavailable(f"{step} {status}: {text[:300]}")
        event = expect[status]
        if event:
            self.tally.expected[event] += 1
        try:
            data = json.loads(text) if text and ctype.startswith(("application/json", "application/problem")) else text
        except ValueError:
            data = text
        return status, data

    # -- mails the load waits for (links)

    def _collect_mails(self) -> None:
        received = self.nodes.smtp.received
        with self.nodes.smtp.lock:
            fresh = received[self.mail_seen:]
            self.mail_seen = len(received)
        for mail in fresh:
            link = mail_link(mail.raw)
            if link:
                self.tokens.setdefault((mail.recipient, link[0]), []).append(link[1])

    async def wait_token(self, recipient: str, path: str, timeout: float = 400) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._collect_mails()
            waiting = self.tokens.get((recipient, path))
            if waiting:
                return waiting.pop(0)
            await asyncio.sleep(0.2)
        return None

    # -- set-up

    async def seed(self, totp_accounts: int, link_accounts: int) -> None:
        await self.call("company", "PUT", f"/v1/companies/{COMPANY}", {"name": COMPANY_NAME, "mfa_required": False},
                        expect={200: ("CompanyUpserted", COMPANY), 201: ("CompanyUpserted", COMPANY)})
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with sem:
                account = await self.enrol(f"soak-t{i}")
                if account:
                    self.totp_accounts.append(account)

        await asyncio.gather(*(one(i) for i in range(totp_accounts)))

        async def linked(i: int) -> None:
            async with sem:
                account_id = f"soak-l{i}"
                await self.enrol(account_id)  # MFA on, so a login asks for a second step
                address = await self.backup_email(account_id)
                if address:
                    self.link_accounts.append({"id": account_id, "backup": address})

        await asyncio.gather(*(linked(i) for i in range(link_accounts)))

    async def put_account(self, account_id: str, email_addr: str | None = None) -> None:
        ok = {200: ("AccountUpserted", account_id), 201: ("AccountUpserted", account_id)}
        await self.call("account_put", "PUT", f"/v1/accounts/{account_id}", {
            "company_id": COMPANY, "email": email_addr or f"{account_id}@soak.example", "first_name": "Jane",
            "last_name": "Doe", "role": "employee", "mfa_required": False}, expect=ok)

    # -- the operations

    async def enrol(self, account_id: str) -> dict[str, Any] | None:
        await self.put_account(account_id)
        _, started = await self.call("enrol_start", "POST", f"/v1/accounts/{account_id}/mfa/enrollment", {},
                                     expect={200: None, 201: None})
        secret = parse_qs(urlparse(started["otpauth_uri"]).query)["secret"][0]
        code, step = totp(secret)
        await self.call("enrol_confirm", "POST", f"/v1/accounts/{account_id}/mfa/enrollment/confirm", {"code": code},
                        expect={200: ("MfaEnrolled", account_id), 201: ("MfaEnrolled", account_id)})
        return {"id": account_id, "secret": secret, "step": step}

    async def start_login(self, account_id: str) -> dict[str, Any]:
        """POST /v1/logins: the second step of a login of an account with MFA on."""
        issued = ("LoginChallengeIssued", account_id)
        _, login = await self.call("login", "POST", "/v1/logins", {"account_id": account_id},
                                   expect={200: issued, 201: issued})
        return login

    @contextlib.contextmanager
    def take(self, accounts: list[dict[str, Any]], ready: Any = None):
        """An account of `accounts` that no other operation uses now and is `ready` (None: none is).

        It goes to the back of the line afterwards.
        """
        account = next((a for a in accounts if a["id"] not in self.busy and (ready is None or ready(a))), None)
        if account is None:
            self.tally.skipped += 1
            yield None
            return
        self.busy.add(account["id"])
        try:
            yield account
        finally:
            self.busy.discard(account["id"])
            accounts.remove(account)
            accounts.append(account)

    async def login_verify(self) -> None:
        now_step = int(time.time() // 30)
        with self.take(self.totp_accounts, lambda a: a["step"] < now_step) as account:
            if account is None:
                return
            login = await self.start_login(account["id"])
            code, step = totp(account["secret"])
            if step <= account["step"]:
                await asyncio.sleep(30 - time.time() % 30 + 0.05)
                code, step = totp(account["secret"])
            account["step"] = step  # used (or tried) once, whatever the answer
            await self.call("verify", "POST", f"/v1/logins/{login['login_id']}/verify",
                            {"method": "totp", "code": code},
                            expect={200: ("LoginSucceeded", account["id"]), 401: ("LoginFailed", account["id"])})

    async def backup_email(self, account_id: str) -> str | None:
        address = f"{account_id}-{next(self.counter)}@backup.example"
        await self.call("backup_email_put", "PUT", f"/v1/accounts/{account_id}/backup-email", {"email": address},
                        expect={202: ("BackupEmailChanged", account_id)})
        token = await self.wait_token(address, "/mfa/backup-email/confirm")
        if token is None:
            self.tally.unexpected.append(f"no confirmation mail to {address}")
            return None
        await self.call("backup_email_confirm", "POST", "/v1/backup-email/confirm", {"token": token},
                        expect={200: ("BackupEmailConfirmed", account_id)})
        return address

    async def login_link(self) -> None:
        with self.take(self.link_accounts) as account:
            if account is None:
                return
            login = await self.start_login(account["id"])
            await self.call("link_send", "POST", f"/v1/logins/{login['login_id']}/backup-email", {},
                            expect={202: ("BackupEmailRequested", account["id"])})
            token = await self.wait_token(account["backup"], "/mfa/login-link")
            if token is None:
                self.tally.unexpected.append(f"no login link mail to {account['backup']}")
                return
            await self.call("link_redeem", "POST", "/v1/login-links/redeem", {"token": token},
                            expect={200: ("LoginSucceeded", account["id"])})

    async def recovery_mail(self) -> None:
        sender = f"person{next(self.counter)}@soak.example"
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.stack.smtp_port(), timeout=30) as smtp:
                await smtp.mail(sender)
                await smtp.rcpt(HELPDESK)
                response = await smtp.data(phone_mail(sender, self.photo))
        except aiosmtplib.SMTPResponseException as exc:
            self.tally.answers[("recovery_mail", exc.code)] += 1
            if exc.code != 451:
                self.tally.unexpected.append(f"recovery_mail {exc.code}: {exc.message}")
            return
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.tally.answers[("recovery_mail", "lost")] += 1
            self.tally.maybe[("RecoveryTicketOpened", "*")] += 1
            self.tally.unexpected.append(f"recovery_mail: {type(exc).__name__}: {exc}")
            return
        self.tally.answers[("recovery_mail", response.code)] += 1
        if response.code == 250:
            self.tally.expected[("RecoveryTicketOpened", "*")] += 1

    async def recovery_form(self) -> None:
        port = self.stack.port("recovery")
        n = next(self.counter)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            try:
                async with browser.get(f"http://127.0.0.1:{port}/recover") as resp:
                    page = await resp.text()
                    self.tally.answers[("recover_page", resp.status)] += 1
                    if resp.status != 200:
                        if resp.status >= 500 and resp.status != 503:
                            self.tally.server_errors.append(f"recover_page {resp.status}")
                        return
                csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
                form = aiohttp.FormData()
                for name, value in (("email", f"form{n}@soak.example"), ("first_name", "Jane"), ("last_name", "Doe"),
                                    ("company_name", COMPANY_NAME), ("csrf", csrf)):
                    form.add_field(name, value)
                form.add_field("photo", self.photo, filename="me.jpg", content_type="image/jpeg")
                async with browser.post(f"http://127.0.0.1:{port}/recover", data=form, allow_redirects=False) as resp:
                    await resp.read()
                    status = resp.status
            except aiohttp.ClientConnectorError:
                self.tally.answers[("recover_post", "refused")] += 1
                return
            except (aiohttp.ClientError, TimeoutError):
                self.tally.answers[("recover_post", "lost")] += 1
                self.tally.maybe[("RecoveryTicketOpened", "*")] += 1
                return
        self.tally.answers[("recover_post", status)] += 1
        if status == 303:
            self.tally.expected[("RecoveryTicketOpened", "*")] += 1
        elif status >= 500 and status != 503:
            self.tally.server_errors.append(f"recover_post {status}")
        elif status != 503:
            self.tally.unexpected.append(f"recover_post {status}")

    async def audit_read(self) -> None:
        await self.call("audit_read", "GET", "/v1/audit/events?limit=20", worker="audit", headers=self.auditor,
                        expect={200: None})

    async def new_enrolment(self) -> None:
        await self.enrol(f"soak-e{next(self.counter)}")

    async def backup_email_op(self) -> None:
        with self.take(self.totp_accounts) as account:
            if account is not None:
                await self.backup_email(account["id"])

    async def run_op(self, name: str) -> None:
        self.tally.ops[name] += 1
        op = {"login_verify": self.login_verify, "enrol": self.new_enrolment, "backup_email": self.backup_email_op,
              "login_link": self.login_link, "recovery_mail": self.recovery_mail,
              "recovery_form": self.recovery_form, "audit_read": self.audit_read}[name]
        try:
            await op()
            self.tally.ops_done[name] += 1
        except Unavailable:
            pass
        except Exception as exc:
            self.tally.unexpected.append(f"{name}: {type(exc).__name__}: {exc}")

    async def run(self, rate: float, stop: asyncio.Event, max_in_flight: int = 400) -> None:
        """Start `rate` operations a second, in the weighted mix, until `stop` is set."""
        mix = [name for name, weight in OPS.items() for _ in range(weight)]
        started = time.monotonic()
        for n in itertools.count():
            if stop.is_set():
                break
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            if len(self.tasks) >= max_in_flight:
                self.tally.skipped += 1
                continue
            task = asyncio.create_task(self.run_op(mix[n % len(mix)]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def settle(self, timeout: float) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)


# ---- probes: how long a fault takes to recover from ----------------------------------------------


async def query(nodes: Nodes, sql: str, *args: Any) -> Any:
    """One value from the private database, or None while it is away."""
    try:
        conn = await asyncpg.connect(nodes.pg.url("mfa"), timeout=2)
    except Exception:
        return None
    try:
        return await conn.fetchval(sql, *args)
    except Exception:
        return None
    finally:
        await conn.close()


def probe_ids(tag: str) -> list[str]:
    """One account id per queue partition, so a probe crosses every partition."""
    found: dict[int, str] = {}
    for i in itertools.count():
        candidate = f"soak-probe-{tag}-{i}"
        found.setdefault(partition_of(candidate) % PARTITIONS, candidate)
        if len(found) == PARTITIONS:
            return list(found.values())
    raise AssertionError


async def probe(load: Load, tag: str, since: float, timeout: float = 240) -> dict[str, float | None]:
    """Seconds from `since` until HTTP accepts again, until the probes' events are audited, their mails out."""
    accounts = probe_ids(tag)
    out: dict[str, float | None] = {"http": None, "audit": None, "mail": None}
    deadline = time.monotonic() + timeout
    addresses: dict[str, str] = {}
    for account in accounts:
        while time.monotonic() < deadline:
            try:
                await load.put_account(account)
                address = f"{account}@backup.example"
                await load.call("probe_backup_email", "PUT", f"/v1/accounts/{account}/backup-email", {"email": address},
                                expect={202: ("BackupEmailChanged", account)})
                addresses[account] = address
                break
            except Unavailable:
                await asyncio.sleep(0.2)
        if out["http"] is None and account in addresses:
            out["http"] = time.time() - since
    while time.monotonic() < deadline and out["audit"] is None:
        n = await query(load.nodes, "SELECT count(DISTINCT subject) FROM audit.events WHERE event_type ="
                        " 'BackupEmailChanged' AND subject = ANY($1::text[])", accounts)
        if n == len(accounts):
            out["audit"] = time.time() - since
        else:
            await asyncio.sleep(0.2)
    while time.monotonic() < deadline and out["mail"] is None:
        with load.nodes.smtp.lock:
            got = {m.recipient for m in load.nodes.smtp.received}
        if all(a in got for a in addresses.values()) and len(addresses) == len(accounts):
            out["mail"] = time.time() - since
        else:
            await asyncio.sleep(0.2)
    return out


# ---- faults ----------------------------------------------------------------------------------------


@dataclass
class FaultRow:
    fault: str
    down_s: float
    http: float | None = None  # seconds from the fault's end until HTTP accepted changes again
    audit: float | None = None  # ... until the probes' events (one per partition) were in the audit log
    mail: float | None = None  # ... until their mails reached the SMTP server
    answers_503: int = 0


def profile(short: bool) -> dict[str, Any]:
    if short:
        return {"kills": [("notifier", 1)], "restart_after": 5, "broker_down": 10, "pg_down": 3,
                "smtp_down": 15, "smtp_slow": 10, "smtp_delay": 2.0}
    return {"kills": [("notifier", 1), ("audit", 0)], "restart_after": 10, "broker_down": 30, "pg_down": 5,
            "smtp_down": 60, "smtp_slow": 60, "smtp_delay": 2.0}


async def run_faults(load: Load, stack: Stack, nodes: Nodes, cfg: dict[str, Any], total: float,
                     rows: list[FaultRow]) -> None:
    """The fault schedule, spread over `total` seconds, each fault's recovery measured by a probe."""
    # The SMTP outage comes before the broker's, so that retries wait in the retry queues while it stops.
    steps: list[tuple[str, Any]] = [("kill", k) for k in cfg["kills"]] + [("smtp", None), ("broker", None),
                                                                          ("postgres", None)]
    start = time.monotonic()
    for n, (kind, arg) in enumerate(steps, start=1):
        at = start + n * total / (len(steps) + 1)
        if at > time.monotonic():
            await asyncio.sleep(at - time.monotonic())
        before = sum(v for (step, status), v in load.tally.answers.items() if status == 503)
        began = time.time()
        tag = f"{kind}{n}"
        if kind == "kill":
            worker, i = arg
            await stack.kill(worker, i)
            if worker == "notifier":
                load.notifier_kills.append(time.time())
            # From the kill: the other replica takes over the partitions while this one is gone.
            result = await probe(load, tag + "a", began)
            rows.append(FaultRow(f"SIGKILL {worker} replica {i}", 0.0, **result))
            await asyncio.sleep(max(0.0, began + cfg["restart_after"] - time.time()))
            await stack.restart(worker, i)
            ready = time.time()  # from its /readyz: the partitions move back to it now
            result = await probe(load, tag + "b", ready)
            rows.append(FaultRow(f"{worker} replica {i} restarted {cfg['restart_after']} s after, until ready",
                                 ready - began - cfg["restart_after"], **result))
            continue
        if kind == "broker":
            waiting = sum(n for q, n in (await queue_depths(nodes)).items() if ".retry." in q)
            await nodes.rabbit.stop_app()
            stopped = time.time()
            await asyncio.sleep(cfg["broker_down"])
            await nodes.rabbit.start_app()
            name = (f"broker stopped {cfg['broker_down']} s ({waiting} retries waiting; stop_app took"
                    f" {stopped - began:.0f} s, start_app {time.time() - stopped - cfg['broker_down']:.0f} s)")
        elif kind == "postgres":
            await nodes.pg.stop("fast")
            await asyncio.sleep(cfg["pg_down"])
            await nodes.pg.start()
            name = f"PostgreSQL stopped {cfg['pg_down']} s and started"
        else:
            nodes.smtp.stop()
            await asyncio.sleep(cfg["smtp_down"])
            nodes.smtp.delay = cfg["smtp_delay"]
            nodes.smtp.start()
            await asyncio.sleep(cfg["smtp_slow"])
            nodes.smtp.delay = 0.0
            name = f"SMTP down {cfg['smtp_down']} s, then {cfg['smtp_delay']:.0f} s a mail for {cfg['smtp_slow']} s"
        ended = time.time()
        result = await probe(load, tag, ended)
        after = sum(v for (step, status), v in load.tally.answers.items() if status == 503)
        rows.append(FaultRow(name, ended - began, answers_503=after - before, **result))


async def inject_poison(nodes: Nodes) -> list[str]:
    """Messages no consumer can use, published as upstream would: each must end parked, nothing else."""
    ids = []
    conn = await aio_pika.connect(nodes.rabbit.url)
    try:
        channel = await conn.channel()
        exchange = await channel.get_exchange("mfa.events")
        for i, (key, body) in enumerate([
            ("AccountUpserted", b"{not json"),
            ("MfaEnrolled", json.dumps({"specversion": "1.0", "type": "MfaEnrolled", "id": "x"}).encode()),
            ("LoginSucceeded", b"\xff\xfe binary"),
        ]):
            message_id = f"poison-{i}-{uuid.uuid4().hex[:6]}"
            ids.append(message_id)
            await exchange.publish(aio_pika.Message(body, message_id=message_id,
                                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=key)
    finally:
        await conn.close()
    return ids


# ---- the checks ------------------------------------------------------------------------------------


async def queue_depths(nodes: Nodes) -> dict[str, int]:
    out = await nodes.rabbit.ctl("list_queues", "-q", "--no-table-headers", "name", "messages")
    depths = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            depths[parts[0]] = int(parts[1])
    return depths


async def drain(nodes: Nodes, timeout: float) -> dict[str, Any]:
    """Wait until the outboxes and every queue but the parked ones are empty, and the audit log is still."""
    deadline = time.monotonic() + timeout
    last = None
    stable = 0
    while time.monotonic() < deadline:
        backlog = await query(nodes, "SELECT (SELECT count(*) FROM auth.outbox) + (SELECT count(*) FROM recovery.outbox)")
        audited = await query(nodes, "SELECT count(*) FROM audit.events")
        try:
            depths = await queue_depths(nodes)
        except RuntimeError:
            depths = {"?": 1}
        busy = {q: n for q, n in depths.items() if n and not q.endswith(".parked")}
        if backlog == 0 and not busy and audited == last:
            stable += 1
            if stable >= 3:
                return {"drained": True, "queues": depths}
        else:
            stable = 0
        last = audited
        await asyncio.sleep(1.0)
    return {"drained": False, "backlog": backlog, "busy": busy}


async def parked(nodes: Nodes) -> dict[str, list[tuple[str, str]]]:
    """(message id, reason) of every parked message, by queue."""
    out: dict[str, list[tuple[str, str]]] = {}
    conn = await aio_pika.connect(nodes.rabbit.url)
    try:
        channel = await conn.channel()
        for name, depth in (await queue_depths(nodes)).items():
            if not name.endswith(".parked") or not depth:
                continue
            queue = await channel.get_queue(name)
            while (message := await queue.get(fail=False)) is not None:
                out.setdefault(name, []).append((message.message_id or "", (message.headers or {}).get("x-parked-reason", "")))
                # Left unacked: the channel's close puts them back (the node is thrown away anyway).
    finally:
        await conn.close()
    return out


async def check(load: Load, nodes: Nodes, poison: list[str]) -> dict[str, Any]:
    tally = load.tally
    conn = await asyncpg.connect(nodes.pg.url("mfa"))
    try:
        rows = await conn.fetch("SELECT event_type, subject, count(*) AS n FROM audit.events"
                                " WHERE event_type = ANY($1::text[]) GROUP BY event_type, subject", list(TRACKED))
        repeated = await conn.fetchval("SELECT count(*) FROM (SELECT event_id FROM audit.events GROUP BY event_id"
                                       " HAVING count(*) > 1) d")
        audited_total = await conn.fetchval("SELECT count(*) FROM audit.events")
        by_type = dict(await conn.fetch("SELECT event_type, count(*) FROM audit.events GROUP BY event_type"))
        mails = await conn.fetch("SELECT event_id, seq, message_id, status, recipient FROM notifier.mails")
        unnotified = await conn.fetchval(
            "SELECT count(*) FROM audit.events a WHERE a.event_type = ANY($1::text[]) AND NOT EXISTS"
            " (SELECT 1 FROM notifier.processed_events p WHERE p.event_id = a.event_id)", list(MAIL_TYPES))
        tickets = await conn.fetchval("SELECT count(*) FROM recovery.tickets")
    finally:
        await conn.close()
    audited: Counter = Counter()
    for r in rows:
        subject = "*" if r["event_type"] == "RecoveryTicketOpened" else r["subject"]
        audited[(r["event_type"], subject)] += r["n"]
    missing, extra = [], []
    for key in set(audited) | set(tally.expected):
        want, got, maybe = tally.expected[key], audited[key], tally.maybe[key]
        if got < want:
            missing.append((key, want, got))
        elif got > want + maybe:
            extra.append((key, want, got))
    # The audit chain, through the API.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{load.stack.port('audit')}/v1/audit/verify", headers=load.auditor) as r:
            chain = await r.json()
    # Mails: each Message-ID once at the SMTP server, and exactly the journal's sent mails.
    with nodes.smtp.lock:
        received = Counter(m.message_id for m in nodes.smtp.received)
        first_at = {}
        for m in nodes.smtp.received:
            first_at.setdefault(m.message_id, m.at)
    duplicates = {mid: n for mid, n in received.items() if n > 1}
    # SMTP has no idempotency: a replica SIGKILLed after the server took a mail and before the
    # journal said so leaves it unrecorded, and the replica that takes the event over sends it
    # again, under the same Message-ID (mail clients show it once). Only such mails may repeat.
    at_kill = {mid for mid in duplicates
               if any(0 <= kill - first_at[mid] < KILL_WINDOW for kill in load.notifier_kills)}
    unexplained = {mid: n for mid, n in duplicates.items() if mid not in at_kill}
    journal_sent = Counter(m["message_id"] for m in mails if m["status"] == "sent")
    not_sent = [dict(m) for m in mails if m["status"] != "sent"]
    per_event_journal = Counter(m["event_id"] for m in mails if m["status"] == "sent")
    mid_event = {m["message_id"]: m["event_id"] for m in mails}
    per_event_smtp = Counter(mid_event.get(mid, "?") for mid in received.elements())
    repeated_at_kill = Counter({mid_event.get(mid, "?"): received[mid] - 1 for mid in at_kill})
    mail_mismatch = {e: (per_event_journal[e], per_event_smtp[e]) for e in set(per_event_journal) | set(per_event_smtp)
                     if per_event_journal[e] != per_event_smtp[e] - repeated_at_kill[e]}
    parked_now = await parked(nodes)
    parked_other = [(q, m) for q, ms in parked_now.items() for m in ms if m[0] not in poison]
    poison_parked = {p: sum(1 for ms in parked_now.values() for m in ms if m[0] == p) for p in poison}
    checks = {
        "no_500": not tally.server_errors,
        "503_are_problem_json": tally.not_problem_503 == 0,
        "no_unexpected_answers": not tally.unexpected,
        "one_audit_event_per_accepted_change": not missing and not extra,
        "event_ids_unique_in_audit": repeated == 0,
        "tickets_match_audit": tickets == audited[("RecoveryTicketOpened", "*")],
        "audit_chain_verifies": bool(chain.get("ok", chain.get("valid"))),
        "each_message_id_once_but_at_a_kill": not unexplained,
        "journal_matches_smtp": not mail_mismatch and set(journal_sent) == set(received),
        "every_mail_sent": not not_sent,
        "every_mail_event_handled_by_notifier": unnotified == 0,
        "only_poison_parked": not parked_other and all(n >= 1 for n in poison_parked.values()),
    }
    return {
        "checks": checks,
        "details": {
            "accepted_changes": sum(tally.expected.values()), "lost_answers": sum(tally.maybe.values()),
            "audited_total": audited_total, "audited_by_type": by_type, "missing": [str(m) for m in missing[:20]],
            "extra": [str(e) for e in extra[:20]], "chain": chain, "mails_received": sum(received.values()),
            "mail_duplicates": dict(list(unexplained.items())[:20]),
            "mails_repeated_at_a_kill": {mid: {"copies": received[mid], "first_before_kill_s": round(min(
                kill - first_at[mid] for kill in load.notifier_kills if kill >= first_at[mid]), 3)} for mid in at_kill}, "mail_mismatch": dict(list(mail_mismatch.items())[:20]),
            "journal_not_sent": not_sent[:20], "unnotified_events": unnotified, "tickets": tickets,
            "parked": {q: len(ms) for q, ms in parked_now.items()}, "parked_other": parked_other[:20],
            "poison_parked": poison_parked, "server_errors": tally.server_errors[:20],
            "unexpected": tally.unexpected[:20], "unavailable_codes": dict(tally.unavailable_codes),
        },
    }


def write_report(path: str, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=2, default=str))


def fmt(seconds: float | None) -> str:
    return "not seen" if seconds is None else f"{seconds:.1f} s"


def print_report(args: argparse.Namespace, tally: Tally, rows: list[FaultRow], result: dict[str, Any],
                 elapsed: float, codes: dict[str, int | None]) -> None:
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    print(f"load: {args.rate}/s for {elapsed:.0f} s, {sum(tally.ops.values())} operations"
          f" ({', '.join(f'{k} {v}' for k, v in sorted(tally.ops.items()))}); completed"
          f" {sum(tally.ops_done.values())}; skipped {tally.skipped}")
    statuses = Counter()
    for (_, status), n in tally.answers.items():
        statuses[status] += n
    print("answers: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=lambda kv: str(kv[0]))))
    for step, values in sorted(tally.latencies.items()):
        print(f"  {step:22} n={len(values):6}  p50 {percentile(values, 50) * 1000:7.1f} ms"
              f"  p99 {percentile(values, 99) * 1000:8.1f} ms  max {max(values) * 1000:8.1f} ms")
    print()
    print("| fault | down | HTTP accepted again | events of every partition audited | their mails delivered | 503 answers |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row.fault} | {row.down_s:.1f} s | {fmt(row.http)} | {fmt(row.audit)} | {fmt(row.mail)}"
              f" | {row.answers_503} |")
    print()
    details = result["details"]
    print(f"accepted state changes {details['accepted_changes']} (answers lost: {details['lost_answers']}),"
          f" events in the audit log {details['audited_total']}, mails received {details['mails_received']}"
          f" ({sum(v['copies'] - 1 for v in details['mails_repeated_at_a_kill'].values())} sent again after a"
          f" SIGKILL of the notifier that sent them: {details['mails_repeated_at_a_kill']}),"
          f" tickets {details['tickets']}, parked {details['parked']}")
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    for key in ("missing", "extra", "mail_duplicates", "mail_mismatch", "journal_not_sent", "parked_other",
                "server_errors", "unexpected"):
        if details[key]:
            print(f"  {key}: {details[key]}")
    print(f"exit codes at SIGTERM: {codes}")


async def main(args: argparse.Namespace) -> int:
    cfg = profile(args.short)
    logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="mfa-soak-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    tally = Tally()
    rows: list[FaultRow] = []
    ok = False
    try:
        async with private_nodes() as nodes:
            admin = await asyncpg.connect(nodes.pg.url())
            await admin.execute("CREATE DATABASE mfa")
            await admin.close()
            replicas = {"auth": 2, "notifier": 2, "recovery": 1, "audit": 2, "relay": 2}
            stack = Stack(nodes, logs, replicas)
            await stack.migrate()
            from services.common.apikeys import create_key

            db = await asyncpg.connect(nodes.pg.url("mfa"))
            service_key = await create_key(db, "service", label="soak")
            auditor_key = await create_key(db, "auditor", label="soak")
            await db.close()
            codes: dict[str, int | None] = {}
            load: Load | None = None
            try:
                await stack.start()
                load = Load(stack, nodes, service_key, auditor_key, tally)
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                    load.http = http
                    totp_accounts = int(args.rate * OPS["login_verify"] / sum(OPS.values()) * 30 * 1.6) + 10
                    await load.seed(totp_accounts, link_accounts=max(4, int(args.rate)))
                    print(f"seeded {len(load.totp_accounts)} TOTP accounts, {len(load.link_accounts)} with a backup email",
                          flush=True)
                    poison = await inject_poison(nodes)
                    stop = asyncio.Event()
                    started = time.monotonic()
                    runner = asyncio.create_task(load.run(args.rate, stop))
                    try:
                        await run_faults(load, stack, nodes, cfg, args.minutes * 60, rows)
                        rest = started + args.minutes * 60 - time.monotonic()
                        if rest > 0:
                            await asyncio.sleep(rest)
                    finally:
                        stop.set()
                        await runner
                    elapsed = time.monotonic() - started
                    await load.settle(timeout=300)
                    drained = await drain(nodes, timeout=300)
                    result = await check(load, nodes, poison)
                    result["checks"]["backlog_drained"] = drained["drained"]
                    result["details"]["drain"] = drained
            finally:
                if load is not None:
                    for task in list(load.tasks):  # only after a failure: operations still waiting
                        task.cancel()
                codes = await stack.stop()
            result["checks"]["clean_sigterm"] = all(c == 0 for c in codes.values())
            print_report(args, tally, rows, result, elapsed, codes)
            ok = all(result["checks"].values())
            if args.json:
                write_report(args.json, {
                    "ok": ok, "checks": result["checks"], "details": result["details"],
                    "faults": [row.__dict__ for row in rows], "ops": dict(tally.ops),
                    "answers": {f"{k[0]} {k[1]}": v for k, v in tally.answers.items()},
                })
    except BaseException as exc:
        if not args.logs:
            if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
                shutil.rmtree(logs, ignore_errors=True)
            else:
                print(f"process logs kept in {logs}")
        raise
    if not args.logs:
        if ok:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"process logs kept in {logs}")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (the faults spread over it)")
    parser.add_argument("--rate", type=float, default=20.0, help="operations started per second")
    parser.add_argument("--short", action="store_true", help="shorter faults, one kill (the test's version)")
    parser.add_argument("--json", help="write the report to this file too")
    parser.add_argument("--logs", help="keep the processes' logs in this folder")
    sys.exit(asyncio.run(main(parser.parse_args())))
