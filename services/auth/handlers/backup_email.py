"""Backup e-mail use cases: set an address (confirmed by an e-mailed link) and confirm it."""

from __future__ import annotations

import secrets
from typing import Any

from ...common import emails, sealing
from ...common.errors import BadRequest, Gone
from ...common.events import iso
from ...common.outbox import add_events
from .. import domain, store
from . import events
from .context import SCHEMA, Auth, Caller, load_account, now


async def set_backup_email(auth: Auth, caller: Caller, account_id: str, address: str) -> dict[str, Any]:
    """Set (or replace) the backup e-mail; it counts only once its confirmation link is used."""
    address = domain.check_email(address)
    token = secrets.token_urlsafe(32)
    expires = now() + domain.CONFIRM_TTL
    async with auth.pool.acquire() as conn, conn.transaction():
        account = await load_account(conn, caller, account_id, lock=True)
        if emails.same(address, account.email):
            raise BadRequest("The backup e-mail must differ from the login e-mail.", code="same_as_login_email")
        await store.set_backup_email(conn, account_id, address, auth.token_hash(token), expires)
        sealed = auth.keyring.seal(token.encode(), aad=sealing.backup_email_confirm_token(account_id))
        await add_events(conn, SCHEMA, [events.backup_email_changed(caller, account, address, sealed, expires)])
    return {"address": address, "verified": False, "confirmation_expires_at": iso(expires)}


async def confirm_backup_email(auth: Auth, caller: Caller, token: str) -> dict[str, Any]:
    """Use a confirmation token: the backup e-mail it was sent to becomes the confirmed one."""
    async with auth.pool.acquire() as conn, conn.transaction():
        row = await store.find_backup_email_by_token(conn, auth.token_hash(token))
        if row is None or not caller.sees(row.company_id):
            raise Gone("This confirmation link is unknown.", code="invalid_token")
        if row.verified_at is not None:
            raise Gone("This confirmation link was already used.", code="token_used")
        if row.confirm_expires_at is None or row.confirm_expires_at <= now():
            raise Gone("This confirmation link expired; set the backup e-mail again.", code="token_expired")
        await store.confirm_backup_email(conn, row.account_id)
        await add_events(conn, SCHEMA, [events.backup_email_confirmed(caller, row)])
    return {"account_id": row.account_id, "address": row.address, "verified": True}
