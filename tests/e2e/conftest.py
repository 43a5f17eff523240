"""End-to-end fixtures: the real services wired together on one exchange, a real SMTP server for mail."""

from __future__ import annotations

import dataclasses
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.apikeys import create_key
from services.common.runtime import Runtime

from ..auth.conftest import Api
from ..conftest import wait_for
from ..notifier.smtp_server import TestSmtpServer


@pytest.fixture(scope="module")
async def mailbox():
    """Where the notifier delivers: a real aiosmtpd server."""
    server = await TestSmtpServer().start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
async def stack(settings, mailbox):
    """auth, notifier (sending to `mailbox`) and recovery apps on their own runtime.

    They consume the run's service queues as competing consumers beside the other tests' apps,
    as a second process of each service would; module scope stops them before other modules run.
    """
    from services.auth.app import create_app as auth_app
    from services.notifier.app import create_app as notifier_app

    e2e_settings = dataclasses.replace(
        settings, smtp_host="127.0.0.1", smtp_port=mailbox.port
    )
    runtime = await Runtime.open(e2e_settings, pool_size=40)
    clients = {}
    factories = {"auth": auth_app, "notifier": notifier_app}
    try:
        from services.recovery.app import create_app as recovery_app

        factories["recovery"] = recovery_app
    except ImportError:  # pragma: no cover - recovery lands separately
        pass
    for name, factory in factories.items():
        client = TestClient(TestServer(factory(runtime)))
        await client.start_server()
        clients[name] = client
    yield runtime, clients
    for client in clients.values():
        await client.close()
    await runtime.close()


@pytest.fixture
async def auth_api(stack) -> Api:
    runtime, clients = stack
    return Api(clients["auth"], await create_key(runtime.pool, "service", label="e2e"))


async def mail_to(mailbox: TestSmtpServer, address: str, subject_part: str, timeout: float = 20):
    """The first mail to `address` whose subject contains `subject_part`."""
    def find():
        for mail in mailbox.recorder.to(address):
            if subject_part.lower() in str(mail.message["Subject"]).lower():
                return mail
        return None

    return await wait_for(find, timeout=timeout, message=f"mail '{subject_part}' to {address}")


def text_of(mail) -> str:
    return mail.message.get_body(preferencelist=("plain",)).get_content()


def link_token(text: str, path: str) -> str:
    match = re.search(re.escape(path) + r"\?token=([A-Za-z0-9_\-]+)", text)
    assert match, f"no {path} link in:\n{text}"
    return match.group(1)
