"""The prompt in Chromium: verify with the app, a backup code or an emailed link; enrol when it is mandatory."""

from __future__ import annotations

from services.auth.tokens import verify_assertion

from ..auth.conftest import oathtool
from .conftest import arrival_of, check_axe, person, start_login


async def _assertion_of(site, login_id: str) -> dict:
    _, login = await site.api.call("GET", f"/v1/logins/{login_id}", expect=200)
    _, jwks = await site.api.call("GET", "/.well-known/jwks.json")
    assert login["status"] == "succeeded"
    return verify_assertion(login["assertion"], jwks)


async def test_verify_with_the_app_code_returns_to_upstream_with_login_id_and_state_only(site, upstream, page):
    _, account = await person(site, company="Verify & Co")
    secret, _, _ = await site.api.enroll(account)
    login = await start_login(site, upstream, account, state="xyz-42")
    assert login["decision"] == "verify" and login["prompt_url"].startswith(site.base + "/mfa/prompt?token=")

    await page.goto(login["prompt_url"])
    assert "token" not in page.url  # exchanged for a cookie, the address bar holds no secret
    assert await page.locator("header .company").inner_text() == "Verify & Co"  # escaped, and named
    await check_axe(page)
    await page.get_by_label("Verification code").fill(oathtool(secret, offset=30))  # the enrolment used the current step
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{upstream.base}/back**")
    assert arrival_of(page.url) == {"login_id": [login["login_id"]], "state": ["xyz-42"]}
    claims = await _assertion_of(site, login["login_id"])
    assert claims["sub"] == account and claims["login_id"] == login["login_id"]
