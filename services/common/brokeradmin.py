"""`mfa broker setup` and `mfa broker teardown`: the broker users, their permissions, a prefix's queues.

Users and permissions are managed through RabbitMQ's management HTTP API when
MFA_AMQP_ADMIN_URL names it (`http://admin:password@rabbitmq:15672`, as in docker-compose),
else with `rabbitmqctl` on this machine (`make run`). Queues and exchanges are deleted over
AMQP with MFA_AMQP_URL's user, which must be allowed to (an administrator such as guest).

What each party may do (vhost of MFA_AMQP_URL, X the exchange MFA_EXCHANGE, Q a service's
queue name with MFA_QUEUE_PREFIX):

- a service: declare, bind, read and write X and its own `Q`, `Q.*` (partitions, retries,
  parked, its headers exchange), write `amq.default` (retries and parking go through it);
  on X it may publish only the event types PRODUCERS gives it (topic permissions);
- upstream: publish to X only, and on X only its four types.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiohttp

from .config import PARTIES, ConfigError, Settings
from .db import redact_url
from .producers import types_of

SERVICES = tuple(p for p in PARTIES if p != "upstream")


class AdminError(RuntimeError):
    """The broker refused or could not be reached for an administrative call."""


@dataclass(frozen=True)
class Grant:
    """One user's permissions in the vhost and its topic permissions on the exchange."""

    user: str
    password: str
    configure: str
    write: str
    read: str
    topic_write: str
    topic_read: str


def vhost_of(settings: Settings) -> str:
    path = urlsplit(settings.amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _either(*names: str) -> str:
    return "^(" + "|".join(names) + ")$"


def grants(settings: Settings) -> list[Grant]:
    """What `mfa broker setup` grants each party; ConfigError when a user or password is not configured."""
    if not settings.amqp_user_prefix:
        raise ConfigError("MFA_AMQP_USER_PREFIX is not set: there are no broker users of their own to set up")
    exchange = re.escape(settings.exchange)
    result = []
    for party in PARTIES:
        password = settings.amqp_passwords.get(party)
        if not password:
            raise ConfigError(f"MFA_AMQP_PASSWORD_{party.upper()} is not set: `mfa broker setup` creates"
                              f" the user {settings.amqp_user(party)!r} with it")
        types = types_of(party)
        topic_write = _either(*types) if types else "^$"
        if party == "upstream":
            result.append(Grant(settings.amqp_user(party), password, "^$", _either(exchange), "^$", topic_write, "^$"))
            continue
        own = re.escape(settings.queue(party)) + r"(\..+)?"
        result.append(Grant(settings.amqp_user(party), password, configure=_either(exchange, own),
                            write=_either(exchange, r"amq\.default", own), read=_either(exchange, own),
                            topic_write=topic_write, topic_read=".*"))
    return result


class Rabbitmqctl:
    """Administration with `rabbitmqctl` on the broker's own machine."""

    async def _run(self, *args: str, stdin: str | None = None) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                "rabbitmqctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            )
        except FileNotFoundError as exc:
            raise AdminError("rabbitmqctl is not installed here: set MFA_AMQP_ADMIN_URL to the management API") from exc
        out, err = await proc.communicate(None if stdin is None else stdin.encode())
        if proc.returncode != 0:
            raise AdminError(f"rabbitmqctl {args[0]} failed: {(err or out).decode().strip()[:300]}")
        return out.decode()

    async def users(self) -> set[str]:
        return {u["user"] for u in json.loads(await self._run("list_users", "--formatter", "json", "-q") or "[]")}

    async def put_user(self, name: str, password: str) -> None:
        # The password goes on stdin: as an argument, one starting with "-" reads as an option,
        # and any other process on the machine could read it from the command line.
        try:
            await self._run("add_user", name, stdin=password)
        except AdminError as exc:
            if "already exists" not in str(exc):
                raise
            await self._run("change_password", name, stdin=password)

    async def delete_user(self, name: str) -> None:
        try:
            await self._run("delete_user", name)
        except AdminError as exc:
            if "does not exist" not in str(exc) and "no_such_user" not in str(exc):
                raise

    async def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        await self._run("set_permissions", "-p", vhost, user, configure, write, read)

    async def set_topic_permissions(self, vhost: str, user: str, exchange: str, write: str, read: str) -> None:
        await self._run("set_topic_permissions", "-p", vhost, user, exchange, write, read)

    async def names(self, vhost: str, kind: str) -> list[str]:
        listed = await self._run(f"list_{kind}", "-p", vhost, "name", "--formatter", "json", "-q")
        return [item["name"] for item in json.loads(listed or "[]")]


class ManagementApi:
    """Administration through RabbitMQ's management HTTP API."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}{parts.path.rstrip('/')}/api"
        self.auth = aiohttp.BasicAuth(unquote(parts.username or "guest"), unquote(parts.password or "guest"))
        self.shown = redact_url(url)

    async def _call(self, method: str, path: str, body: dict | None = None, *, missing_ok: bool = False):
        try:
            async with aiohttp.ClientSession(auth=self.auth) as http, http.request(
                method, self.base + path, json=body, timeout=aiohttp.ClientTimeout(total=15)
            ) as resp:
                if resp.status == 404 and missing_ok:
                    return None
                if resp.status >= 400:
                    raise AdminError(f"{method} {path} on {self.shown}: {resp.status} {(await resp.text())[:300]}")
                return await resp.json() if resp.content_type == "application/json" else None
        except aiohttp.ClientError as exc:
            raise AdminError(f"cannot reach the RabbitMQ management API at {self.shown}: {exc}") from exc

    async def put_user(self, name: str, password: str) -> None:
        await self._call("PUT", f"/users/{quote(name, safe='')}", {"password": password, "tags": ""})

    async def delete_user(self, name: str) -> None:
        await self._call("DELETE", f"/users/{quote(name, safe='')}", missing_ok=True)

    async def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        await self._call("PUT", f"/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                         {"configure": configure, "write": write, "read": read})

    async def set_topic_permissions(self, vhost: str, user: str, exchange: str, write: str, read: str) -> None:
        await self._call("PUT", f"/topic-permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                         {"exchange": exchange, "write": write, "read": read})

    async def names(self, vhost: str, kind: str) -> list[str]:
        listed = await self._call("GET", f"/{kind}/{quote(vhost, safe='')}?columns=name")
        return [item["name"] for item in listed or []]


def admin_for(settings: Settings) -> Rabbitmqctl | ManagementApi:
    return ManagementApi(settings.amqp_admin_url) if settings.amqp_admin_url else Rabbitmqctl()


async def setup(settings: Settings) -> list[str]:
    """Create or update every party's user with its password and permissions; returns what was done."""
    admin = admin_for(settings)
    vhost = vhost_of(settings)
    done = []
    for grant in grants(settings):
        await admin.put_user(grant.user, grant.password)
        await admin.set_permissions(vhost, grant.user, grant.configure, grant.write, grant.read)
        await admin.set_topic_permissions(vhost, grant.user, settings.exchange, grant.topic_write, grant.topic_read)
        done.append(f"{grant.user}: publishes {grant.topic_write} on {settings.exchange}")
    return done


def owned(settings: Settings, name: str) -> bool:
    """Whether a queue or exchange name is one of the product's under MFA_QUEUE_PREFIX."""
    if settings.queue_prefix.strip("."):
        return name.startswith(settings.queue(""))
    return any(name == s or name.startswith(f"{s}.") for s in SERVICES)


async def teardown(settings: Settings, *, exchange: bool = False, users: bool = False) -> list[str]:
    """Delete the prefix's queues and consumer exchanges (and the bus exchange, the users, if asked)."""
    admin = admin_for(settings)
    vhost = vhost_of(settings)
    queues = [q for q in await admin.names(vhost, "queues") if owned(settings, q)]
    exchanges = [x for x in await admin.names(vhost, "exchanges") if owned(settings, x)]
    if exchange:
        exchanges.append(settings.exchange)
    removed: list[str] = []
    try:
        connection = await aio_pika.connect(settings.amqp_url, timeout=10)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
        raise AdminError(f"cannot reach RabbitMQ at {redact_url(settings.amqp_url)}: {exc}") from exc
    async with connection:
        channel = await connection.channel()
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in names:
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                    removed.append(f"{kind} {name}")
                except aio_pika.exceptions.AMQPError:  # gone meanwhile: the channel closed, take a new one
                    channel = await connection.channel()
    if users:
        for party in PARTIES:
            if settings.amqp_user_prefix:
                await admin.delete_user(settings.amqp_user(party))
                removed.append(f"user {settings.amqp_user(party)}")
    return removed
