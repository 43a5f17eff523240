"""E-mail addresses, one rule for every service: syntax by `email-validator`, one comparison key.

International addresses (`jörg@müller.de`, a punycode domain) are valid; control characters,
display names, quoted local parts, IP literals and domains without a dot are not. Whether a
domain takes mail is never checked here (no DNS, and reserved names such as a directory's
`corp.local` or `acme.test` are accepted as they always were): that is the mail server's job.
"""

from __future__ import annotations

import email_validator
from email_validator import EmailNotValidError, validate_email

# The library's documented switch for reserved names: it refuses them as undeliverable, which
# is not a syntax question (an account's login e-mail may well be `ada@corp.local`).
email_validator.SPECIAL_USE_DOMAIN_NAMES.clear()

MAX_LENGTH = 254  # RFC 5321 path limit minus the angle brackets


def _validated(address: str):
    if not isinstance(address, str) or len(address) > MAX_LENGTH:
        return None
    try:
        return validate_email(address, check_deliverability=False, strict=True)
    except EmailNotValidError:
        return None


def valid(address: str) -> bool:
    """True for one plain address exactly as given (no trimming, no display name, no header tricks)."""
    return _validated(address) is not None


def key(address: str) -> str:
    """The comparison and lookup key: case-folded local part, normalised (Unicode, lower-case) domain.

    `casefold`, not `lower`, is Unicode's caseless matching; `a@xn--mller-kva.de` and `A@Müller.de`
    share a key. Input that is not a valid address is trimmed and case-folded, so a lookup by it
    simply finds nothing.
    """
    trimmed = address.strip()
    found = _validated(trimmed)
    if found is None:
        return trimmed.casefold()
    return f"{found.local_part.casefold()}@{found.domain}"


def wire_form(address: str) -> str | None:
    """The address as SMTP carries it: the domain in ASCII (IDNA), the local part as given; None if not valid.

    A local part that is not ASCII stays UTF-8: only a server with SMTPUTF8 (RFC 6531) takes it.
    """
    found = _validated(address)
    if found is None:
        return None
    return found.ascii_email or f"{found.local_part}@{found.ascii_domain}"


def same(a: str, b: str) -> bool:
    """True when two addresses name the same mailbox, as far as this service can tell."""
    return key(a) == key(b)
