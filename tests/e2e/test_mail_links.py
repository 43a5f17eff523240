"""The emailed links work against the auth API: confirmation of a backup email and a backup-email login."""

from __future__ import annotations

from services.auth.tokens import verify_assertion

from ..auth.conftest import oathtool
from .conftest import link_token, mail_to, text_of


async def test_backup_email_confirmation_and_login_link_arrive_by_mail_and_work(auth_api, mailbox, stack):
    runtime, _ = stack
    company = await auth_api.company(name="Mail Link Co")
    account = await auth_api.account(company)
    backup = f"{account}@backup.example"
    await auth_api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": backup}, expect=202)

    confirm_mail = await mail_to(mailbox, backup, "confirm")
    token = link_token(text_of(confirm_mail), f"{runtime.settings.public_url}/mfa/backup-email/confirm")
    await auth_api.call("POST", "/v1/backup-email/confirm", {"token": token}, expect=200)
    notice = await mail_to(mailbox, f"{account}@example.com", "backup")
    assert backup in text_of(notice)

    secret, _, _ = await auth_api.enroll(account)
    enrolled_notice = await mail_to(mailbox, f"{account}@example.com", "")
    assert enrolled_notice is not None
    _, login = await auth_api.call("POST", "/v1/logins", {"account_id": account}, expect=201)
    assert "backup_email" in login["methods"]
    await auth_api.call("POST", f"/v1/logins/{login['login_id']}/backup-email", expect=202)
    link_mail = await mail_to(mailbox, backup, "login link")
    login_token = link_token(text_of(link_mail), f"{runtime.settings.public_url}/mfa/login-link")
    _, ok = await auth_api.call("POST", "/v1/login-links/redeem", {"token": login_token}, expect=200)
    _, jwks = await auth_api.call("GET", "/.well-known/jwks.json")
    claims = verify_assertion(ok["assertion"], jwks)
    assert claims["sub"] == account and claims["login_id"] == login["login_id"] and "email" in claims["amr"]
    # The person's phone still works afterwards.
    assert oathtool(secret)
