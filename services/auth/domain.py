"""Pure MFA rules: TOTP (RFC 6238), login decisions, lockout, backup codes, e-mail checks.

No I/O here: handlers load state, call these functions and write the outcome.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from ..common import emails
from ..common.errors import BadRequest

PERIOD = 30
DIGITS = 6
WINDOW = 1  # steps accepted either side of the current one (clock drift)
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommended length
ENROLLMENT_TTL = timedelta(minutes=15)
LOGIN_TTL = timedelta(minutes=10)
LINK_TTL = timedelta(minutes=15)
CONFIRM_TTL = timedelta(hours=24)
# A "My login" or admin page session, from its link's exchange; a prompt's lives as long as its login.
PAGE_SESSION_TTL = timedelta(minutes=30)
MAX_LOGIN_ATTEMPTS = 5
LOCK_THRESHOLD = 10
MAX_LOCK = timedelta(minutes=15)
MAX_ENROLL_ATTEMPTS = 5
MAX_LINKS_PER_LOGIN = 3
BACKUP_CODE_COUNT = 10
# No 0/O, 1/I/L: codes are read off paper and typed by hand.
BACKUP_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
BACKUP_CODE_LENGTH = 15  # 31^15 ~ 2^74 > the 64 bits required
_DIGESTS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}
# [0-9], not \d: \d also matches other scripts' digits (Arabic-Indic, Devanagari, ...), which no app shows.
_CODE_RE = re.compile(r"\A[0-9]{6}\Z")


# ---- TOTP -------------------------------------------------------------------------------

def new_secret() -> str:
    """A fresh 160-bit TOTP secret, base32 without padding (32 characters)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def group_secret(secret: str) -> str:
    """The secret in groups of four, for typing it into an app by hand."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def time_step(at: datetime | float, period: int = PERIOD) -> int:
    ts = at.timestamp() if isinstance(at, datetime) else at
    return int(ts // period)


def hotp(key: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 4226 HOTP value of `counter` (RFC 6238 feeds it the time step)."""
    mac = hmac.new(key, struct.pack(">Q", counter), _DIGESTS[digest]).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def decode_secret(secret: str) -> bytes:
    return base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))


def match_totp(
    key: bytes,
    code: str,
    at: datetime | float,
    *,
    window: int = WINDOW,
    digits: int = DIGITS,
    digest: str = "sha1",
    period: int = PERIOD,
) -> int | None:
    """The time step whose code equals `code` within ±window, else None.

    Every candidate is computed and compared in constant time, whichever matches.
    """
    current = time_step(at, period)
    matched = None
    for step in range(current - window, current + window + 1):
        if hmac.compare_digest(hotp(key, step, digits, digest).encode(), code.encode()) and matched is None:
            matched = step
    return matched


def check_code_format(code: str) -> str:
    code = code.strip().replace(" ", "")
    if not _CODE_RE.match(code):
        raise BadRequest("A code from the authenticator app is 6 digits.", code="invalid_code_format")
    return code


def otpauth_uri(secret: str, account_name: str, issuer: str) -> str:
    """The `otpauth://totp/` URI apps read from the QR code (RFC 6238 defaults)."""
    label = quote(f"{issuer}:{account_name}", safe="@:")
    return f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer, safe='')}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}"


# ---- Backup codes -----------------------------------------------------------------------

def new_backup_codes(count: int = BACKUP_CODE_COUNT) -> list[str]:
    """Fresh backup codes shown as XXXXX-XXXXX-XXXXX."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(BACKUP_ALPHABET) for _ in range(BACKUP_CODE_LENGTH))
        codes.append("-".join(raw[i : i + 5] for i in range(0, BACKUP_CODE_LENGTH, 5)))
    return codes


def normalize_backup_code(code: str) -> str:
    """Upper-case, without separators; 400 `invalid_code_format` when it cannot be a backup code."""
    cleaned = re.sub(r"[\s-]", "", code).upper()
    if len(cleaned) != BACKUP_CODE_LENGTH or any(c not in BACKUP_ALPHABET for c in cleaned):
        raise BadRequest(
            f"A backup code is {BACKUP_CODE_LENGTH} letters and digits, like ABCDE-FGHJK-MNPQR.",
            code="invalid_code_format",
        )
    return cleaned


# ---- E-mail -----------------------------------------------------------------------------

def check_email(address: str) -> str:
    """The address trimmed, when it is one valid address (see `common.emails`); else 400 `invalid_email`."""
    address = address.strip()
    if not emails.valid(address):
        raise BadRequest("That is not a valid e-mail address.", code="invalid_email")
    return address


def backup_email_state(address: str | None, verified_at: datetime | None, confirm_expires_at: datetime | None,
                       at: datetime) -> str | None:
    """Where a backup e-mail stands: `confirmed`, `pending` (its link still works), `expired` (it no longer
    does: the address must be given again for a new one), or None when there is none."""
    if address is None:
        return None
    if verified_at is not None:
        return "confirmed"
    return "pending" if confirm_expires_at is not None and confirm_expires_at > at else "expired"


def mask_email(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


# ---- Login decisions and lockout -------------------------------------------------------

@dataclass(frozen=True)
class MfaState:
    """What a login decision needs to know about an account."""

    enrolled: bool
    forced: bool
    locked_until: datetime | None
    backup_email_verified: bool


def lock_in_force(locked_until: datetime | None, at: datetime) -> datetime | None:
    """The end of a lock that still holds at `at`; None when there is none or it ran out."""
    return locked_until if locked_until is not None and locked_until > at else None


def decide(state: MfaState, now: datetime) -> tuple[str, list[str]]:
    """`allow`, `verify`, `enroll` or `deny`, with the methods the person may use."""
    if lock_in_force(state.locked_until, now):
        return "deny", []
    if state.enrolled:
        methods = ["totp", "backup_code"]
        if state.backup_email_verified:
            methods.append("backup_email")
        return "verify", methods
    if state.forced:
        return "enroll", ["totp"]
    return "allow", []


def lock_duration(lock_count: int) -> timedelta:
    """1, 2, 4, 8 ... minutes for the 1st, 2nd, 3rd ... lock, at most 15."""
    return min(timedelta(minutes=2 ** max(lock_count - 1, 0)), MAX_LOCK)


@dataclass(frozen=True)
class FailureOutcome:
    consecutive_failures: int
    lock_count: int
    locked_until: datetime | None
    newly_locked: bool


def register_failure(consecutive_failures: int, lock_count: int, now: datetime) -> FailureOutcome:
    """Count one more failed code; from the 10th consecutive one each failure locks, for longer each time."""
    failures = consecutive_failures + 1
    if failures >= LOCK_THRESHOLD:
        count = lock_count + 1
        return FailureOutcome(failures, count, now + lock_duration(count), True)
    return FailureOutcome(failures, lock_count, None, False)


def amr_for(method: str) -> list[str]:
    """RFC 8176 authentication method references for the assertion."""
    return {
        "totp": ["pwd", "otp", "mfa"],
        "enrollment": ["pwd", "otp", "mfa"],
        "backup_code": ["pwd", "recovery_code"],
        "backup_email": ["pwd", "email"],
        "none": ["pwd"],
    }[method]
