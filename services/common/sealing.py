"""The contexts (AES-GCM associated data) that bind each kind of sealed value to its owner.

A value sealed for one context does not open in another, so a token cannot be moved to another
account or purpose. Auth seals, the notifier opens the link tokens: both name contexts here.
`Keyring.seal` and `Keyring.open` take these names as their `aad`.
"""

from __future__ import annotations


def totp_secret(account_id: str) -> str:
    """An account's TOTP secret (stored, and pending while it enrols)."""
    return f"totp:{account_id}"


def signing_key(kid: str) -> str:
    """The private key of an assertion signing key."""
    return f"signing:{kid}"


def login_link_token(account_id: str) -> str:
    """The login-link token carried by `BackupEmailRequested` for the notifier to mail."""
    return f"BackupEmailRequested:{account_id}"


def backup_email_confirm_token(account_id: str) -> str:
    """The confirmation token carried by `BackupEmailChanged` for the notifier to mail."""
    return f"BackupEmailChanged:{account_id}"
