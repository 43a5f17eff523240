"""Fixtures for the hosted pages: the real auth and notifier apps on a real port, a real SMTP server,
an upstream the browser is sent back to, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import async_playwright

from services.auth.tokens import verify_assertion
from services.common.apikeys import create_key
from services.common.runtime import Runtime

from ..auth.conftest import Api, zbarimg
from ..conftest import free_port, wait_for
from ..notifier.smtp_server import TestSmtpServer

CHROMIUM = "/usr/bin/chromium"
# The seed's words, on the admin pages: why Disable MFA is refused, and what a forced employee sees next.
SEED_WARNING = "This can only be done when the Multifactor authentication is not forced by the administrator."
SEED_NEXT_LOGIN = "directly sees the configuration screen for the multifactor authentication"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
async def browser():
    """Debian's Chromium (Playwright's own browser download is not used)."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def context(browser):
    """A fresh browser profile (cookies, history) per test."""
    ctx = await browser.new_context(locale="en-GB")
    yield ctx
    await ctx.close()


@pytest.fixture
async def page(context):
    return await context.new_page()


class Upstream:
    """The product that sent the person to the prompt: records where the browser came back with."""

    def __init__(self) -> None:
        self.arrivals: list[dict[str, list[str]]] = []
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    async def back(self, request: web.Request) -> web.Response:
        self.arrivals.append({k: request.query.getall(k) for k in request.query})
        return web.Response(text="<!DOCTYPE html><html lang=en><title>Upstream</title><main><h1>Welcome back</h1></main></html>",
                            content_type="text/html")

    async def frame(self, request: web.Request) -> web.Response:
        """A page of another site that puts the given page in a frame (clickjacking attempt)."""
        target = request.query["src"]
        return web.Response(text=f'<!DOCTYPE html><html lang=en><title>Evil</title><iframe id="f" src="{target}" title="f"></iframe></html>',
                            content_type="text/html")

    async def forge(self, request: web.Request) -> web.Response:
        """A page of another site that posts a form to the given action on load (cross-site request forgery)."""
        action, field, value = request.query["action"], request.query["field"], request.query["value"]
        return web.Response(text=f'<!DOCTYPE html><html lang=en><title>Evil</title><form id="x" method="post" action="{action}">'
                                 f'<input name="{field}" value="{value}"><input name="csrf" value="guess">'
                                 '<button id="go">go</button></form></html>', content_type="text/html")


@pytest.fixture(scope="module")
async def upstream():
    up = Upstream()
    app = web.Application()
    app.router.add_get("/back", up.back)
    app.router.add_get("/frame", up.frame)
    app.router.add_get("/forge", up.forge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", up.port)
    await site.start()
    yield up
    await runner.cleanup()


@pytest.fixture(scope="module")
async def mailbox():
    server = await TestSmtpServer().start()
    yield server
    await server.stop()


@dataclasses.dataclass
class Site:
    """The running auth service as a browser sees it, and the JSON API behind it."""

    base: str
    api: Api
    runtime: Runtime


@pytest.fixture(scope="module")
async def site(settings, mailbox):
    """auth and notifier on their own runtime; auth listens on a real port that is also its public URL."""
    from services.auth.app import create_app as auth_app
    from services.notifier.app import create_app as notifier_app

    port = free_port()
    page_settings = dataclasses.replace(settings, smtp_host="127.0.0.1", smtp_port=mailbox.port,
                                        public_url=f"http://127.0.0.1:{port}", product_name="Acme MFA")
    runtime = await Runtime.open(page_settings, pool_size=20)
    auth = TestClient(TestServer(auth_app(runtime), host="127.0.0.1", port=port))
    notifier = TestClient(TestServer(notifier_app(runtime)))
    await auth.start_server()
    await notifier.start_server()
    api = Api(auth, await create_key(runtime.pool, "service", label="pages"))
    yield Site(page_settings.public_url, api, runtime)
    await notifier.close()
    await auth.close()
    await runtime.close()


async def account_in(site: Site, company_id: str, *, role: str = "employee", required: bool = False,
                     first: str = "Ada", last: str = "Lovelace", email: str | None = None, locale: str | None = None,
                     prefix: str = "acct") -> str:
    """A new account of `company_id`, as the upstream directory would create it: its account id."""
    account_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
    body = {"company_id": company_id, "email": email or f"{account_id}@example.com", "first_name": first,
            "last_name": last, "role": role, "mfa_required": required}
    if locale:
        body["locale"] = locale
    await site.api.call("PUT", f"/v1/accounts/{account_id}", body, expect=201)
    return account_id


async def person(site: Site, *, required: bool = False, company_required: bool = False, locale: str | None = None,
                 company: str | None = None) -> tuple[str, str]:
    """A company and one employee in it: (company_id, account_id)."""
    company_id = await site.api.company(required=company_required, name=company or f"Acme {uuid.uuid4().hex[:4]}")
    return company_id, await account_in(site, company_id, required=required, locale=locale)


async def admin_of(site: Site, company_id: str, *, locale: str | None = None) -> str:
    """An administrator of `company_id` (Grace Hopper): the account id."""
    return await account_in(site, company_id, role="admin", first="Grace", last="Hopper", locale=locale, prefix="admin")


async def company_with_admin(site: Site, *, required: bool = False, name: str | None = None,
                             locale: str | None = None) -> tuple[str, str]:
    """A company and its administrator: (company_id, admin account id)."""
    company_id = await site.api.company(required=required, name=name or f"Admin Co {uuid.uuid4().hex[:4]}")
    return company_id, await admin_of(site, company_id, locale=locale)


async def admin_link(site: Site, upstream: Upstream, company_id: str, admin_id: str) -> str:
    """The single-use link that opens the admin pages, as upstream gets it from `admin-sessions`."""
    _, session = await site.api.call("POST", f"/v1/companies/{company_id}/admin-sessions",
                                     {"actor_account_id": admin_id, "return_to": f"{upstream.base}/back"}, expect=201)
    return session["url"]


async def open_admin(site: Site, upstream: Upstream, page, company_id: str, admin_id: str) -> None:
    """Open the admin pages in `page`: the Employees tab, the link's token exchanged for a cookie."""
    await page.goto(await admin_link(site, upstream, company_id, admin_id))
    assert "token" not in page.url and page.url.endswith("/mfa/admin/employees")


async def row_of(page, account_id: str):
    """The Employees tab's row of `account_id`."""
    return page.locator("table.employees tbody tr").filter(has=page.locator(f'a[href$="/{account_id}"]'))


async def csrf_of(page) -> str:
    """The form token of the page shown (what a forged POST with the person's own session would carry)."""
    return await page.locator('input[name="csrf"]').first.get_attribute("value")


async def start_login(site: Site, upstream: Upstream, account_id: str, state: str = "st-1") -> dict:
    _, login = await site.api.call("POST", "/v1/logins", {"account_id": account_id, "return_to": f"{upstream.base}/back",
                                                         "state": state}, expect=201)
    return login


def arrival_of(page_url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page_url).query)


async def assertion_of(site: Site, login_id: str) -> dict:
    """The assertion of a succeeded login as upstream fetches it, verified against the JWKS: its claims."""
    _, login = await site.api.call("GET", f"/v1/logins/{login_id}", expect=200)
    _, jwks = await site.api.call("GET", "/.well-known/jwks.json")
    assert login["status"] == "succeeded"
    return verify_assertion(login["assertion"], jwks)


async def scan_qr(page) -> str:
    """The enrolment QR code as a phone camera sees it: the rendered image, decoded by zbarimg."""
    png = await page.get_by_role("img", name="QR code to scan with your authenticator app").screenshot()
    return zbarimg(png)


_RAW_KEY = re.compile(r"(?<![@.\w-])(?:verify|backup|enroll|codes|portal|mail|link|link_done|confirm|confirm_done|notice|error"
                      r"|common|layout|helpdesk|recover|admin)\.[a-z_]+\b")


async def check_axe(page) -> None:
    """No serious or critical axe-core violation on the page shown, and no catalogue key shown raw."""
    shown = await page.locator("body").inner_text()
    assert not _RAW_KEY.search(shown), f"{page.url} shows a key instead of its text: {_RAW_KEY.search(shown)[0]}"
    result = await Axe().run(page)
    bad = [(v["id"], v["impact"], v["help"]) for v in result.response["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad, f"{page.url}: {bad}"


async def tab_to(page, selector: str, limit: int = 25) -> None:
    """Press Tab until the element matching `selector` has the focus (as a keyboard user would)."""
    for _ in range(limit):
        if await page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
        await page.keyboard.press("Tab")
    raise AssertionError(f"{selector} cannot be reached with Tab on {page.url}")


async def show(page, name: str, lang: str, seen: list[str] | None = None) -> None:
    """Check a page with axe (and for raw keys); with MFA_SCREENSHOTS=<folder> (what `make screenshots`
    sets), also save it as `<folder>/<name>.<lang>.png`, the pictures in README and docs/screenshots/."""
    assert await page.locator("html").get_attribute("lang") == lang, f"{name} is not in {lang}"
    await check_axe(page)
    if seen is not None:
        seen.append(name)
    shots = os.environ.get("MFA_SCREENSHOTS")
    if shots:  # Playwright makes the folder
        await page.screenshot(path=str(Path(shots) / f"{name}.{lang}.png"), full_page=True)


def _text(mail) -> str:
    return mail.message.get_body(preferencelist=("plain",)).get_content()


async def mail_to(mailbox: TestSmtpServer, address: str, containing: str = "", timeout: float = 20):
    """The newest mail to `address` whose text contains `containing`, waiting for it."""
    def find():
        found = [m for m in mailbox.recorder.to(address) if containing in _text(m)]
        return found[-1] if found else None

    return await wait_for(find, timeout=timeout, message=f"mail to {address} with {containing!r}")


async def link_to(mailbox: TestSmtpServer, address: str, path: str) -> str:
    """The `path?token=` link of the newest such mail to `address`."""
    mail = await mail_to(mailbox, address, path + "?token=")
    match = re.search(r"https?://\S+" + re.escape(path) + r"\?token=[A-Za-z0-9_\-]+", _text(mail))
    assert match, f"no {path} link in:\n{_text(mail)}"
    return match.group(0)


# The recovery pages' fixture (the recovery and audit apps beside `site`), for the form and console tests.
from .recovery_site import desk  # noqa: E402,F401
