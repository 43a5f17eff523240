"""The notifier app as `mfa run notifier` starts it: embedded sink, consumer, health and metrics."""

from __future__ import annotations

import re
import uuid
from email import policy
from email.parser import BytesParser
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.common.config import ConfigError
from services.common.runtime import Runtime
from services.notifier.app import SINK, create_app

from ..conftest import wait_for
from .conftest import FAST_RETRIES, event, ids, publish, seal, with_settings


def app_runtime(runtime, **changes) -> Runtime:
    """The shared pool and broker with other settings (no SMTP host: the embedded sink)."""
    return Runtime(settings=with_settings(runtime.settings, **changes), pool=runtime.pool, broker=runtime.broker,
                   keys=runtime.keys)


async def test_without_an_smtp_host_mail_lands_as_eml_files_with_a_working_link(runtime, tmp_path):
    mail_dir = tmp_path / "mail"
    rt = app_runtime(runtime, smtp_host="", mail_dir=str(mail_dir))
    app = create_app(rt, queue=runtime.queue(f"notifier-app-{uuid.uuid4().hex[:8]}"), retry_delays=FAST_RETRIES)
    async with TestClient(TestServer(app)) as client:
        assert app[SINK].port > 0
        acct, co = ids()
        token = f"tok-{uuid.uuid4().hex}"
        ev = event("BackupEmailRequested", {"login_id": "l1", "account_id": acct, "company_id": co,
                                            "backup_email": f"{acct}@backup.example", "first_name": "Ann",
                                            "expires_at": "2030-01-02T03:19:05Z",
                                            "link_token": seal(rt.settings, "BackupEmailRequested", acct, token)})
        await publish(runtime, ev)
        files = await wait_for(lambda: list(mail_dir.glob("*.eml")), message=".eml file in the mail folder")
        message = BytesParser(policy=policy.default).parsebytes(files[0].read_bytes())
        assert message["To"].addresses[0].addr_spec == f"{acct}@backup.example"
        assert message["Message-ID"] == f"<{ev['id']}.1@mfa.localhost>"
        (url,) = re.findall(r"https?://\S+", message.get_body(("plain",)).get_content())
        assert url.startswith(f"{rt.settings.public_url}/mfa/login-link?")
        assert parse_qs(urlsplit(url).query)["token"] == [token]

        async def metric_line():
            text = await (await client.get("/metrics")).text()
            return re.search(r'mfa_mails_total\{kind="backup_login_link",outcome="sent"\} ([0-9.]+)', text)

        line = await wait_for(metric_line, message="mfa_mails_total on /metrics")
        assert float(line[1]) >= 1
        assert (await client.get("/healthz")).status == 200
        ready = await client.get("/readyz")
        assert ready.status == 200 and (await ready.json())["status"] == "ready"
        assert not list(mail_dir.glob("*.part"))


async def test_an_unusable_mail_setting_stops_the_start(runtime, tmp_path):
    rt = app_runtime(runtime, smtp_host="", mail_dir=str(tmp_path), mail_from="MFA <nobody>")
    app = create_app(rt, queue=runtime.queue(f"notifier-bad-{uuid.uuid4().hex[:8]}"))
    with pytest.raises(ConfigError, match="MFA_MAIL_FROM"):
        async with TestClient(TestServer(app)):
            pass
