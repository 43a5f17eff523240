"""Pure rules of recovery tickets: field checks, photo sniffing, completeness, decisions.

No I/O here: the use cases in handlers.py load state, call these functions and store the result.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..common import emails
from ..common.errors import Conflict

# The photo of the person holding the ID card: what the helpdesk needs to check a reset.
MAX_PHOTO_BYTES = 10 * 1024 * 1024
# A mail carries the photo base64-encoded (4/3 larger) plus text: room for a 10 MB photo, no more.
MAX_MAIL_BYTES = 15 * 1024 * 1024
MAX_FIELD_CHARS = 200
PHOTO_RETENTION = timedelta(days=30)
# An agent's name as decisions carry it: 1-200 characters, no control characters, no outer spaces.
AGENT_PATTERN = r"^\S(?:[^\x00-\x1f\x7f]*\S)?$"

REQUIRED_FIELDS = ("email", "first_name", "last_name", "company_name", "photo")
UNDECIDED = ("open", "incomplete", "claimed")
DECIDED = ("approved", "rejected")
STATUSES = (*UNDECIDED, *DECIDED)

# Problems explain why a field is missing, so the requester can be told what to send again.
PROBLEM_FIELD = {
    "photo_too_large": "photo",
    "photo_unsupported_type": "photo",
    "photo_not_an_image": "photo",
    "photo_expired": "photo",
    "invalid_email": "email",
    "invalid_first_name": "first_name",
    "invalid_last_name": "last_name",
    "invalid_company_name": "company_name",
    "subject_not_recognised": "company_name",
    "unreadable_mail": None,  # explains whatever is missing
}

# Letters (any script), then letters, spaces, apostrophes, hyphens and dots: nothing a mail header
# or an HTML page could interpret.
_NAME = re.compile(r"^[^\W\d_](?:[^\W\d_]|[ '\u2019.\-])*$")
_COMPANY_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f<>]")

_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_HEIF_GENERIC = {b"mif1", b"msf1"}


# One rule for addresses in every service (`common.emails`): the lookup key and the syntax.
normalize_email = emails.key
valid_email = emails.valid


def company_key(name: str) -> str:
    """The lookup key of a company name: case-folded, inner whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()


def clean_name(value: str) -> str | None:
    """A person's name, normalised; None when it is empty or holds characters a name never has.

    Rejecting control characters, angle brackets, colons and at-signs keeps names that end up
    in mail headers and pages from injecting anything there.
    """
    text = " ".join(unicodedata.normalize("NFC", value).split())
    if not text or len(text) > MAX_FIELD_CHARS or not _NAME.match(text):
        return None
    return text


def clean_company(value: str) -> str | None:
    """A company name as typed, trimmed; None when empty, too long or holding control characters."""
    text = " ".join(unicodedata.normalize("NFC", value).split())
    if not text or len(text) > MAX_FIELD_CHARS or _COMPANY_FORBIDDEN.search(text):
        return None
    return text


def valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def sniff_image(data: bytes) -> str | None:
    """The media type of a JPEG, PNG or HEIC image recognised by its first bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    # ISO base media file: [size:4]["ftyp"][major brand:4][minor:4][compatible brands...]
    if len(data) >= 16 and data[4:8] == b"ftyp":
        size = int.from_bytes(data[:4], "big")
        major = data[8:12]
        compatible = {data[i:i + 4] for i in range(16, min(size, len(data), 64), 4)}
        if major in _HEIF_BRANDS or (major in _HEIF_GENERIC and compatible & _HEIF_BRANDS):
            return "image/heic"
    return None


PHOTO_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/heic": "heic"}


@dataclass(frozen=True)
class Photo:
    """A checked photo: bytes and the media type its bytes show."""

    data: bytes
    content_type: str


@dataclass(frozen=True)
class IntakeRequest:
    """One request to reset MFA, from the form or a mail, after parsing and cleaning.

    Empty strings mean "not given"; `problems` says why something is missing.
    """

    channel: str  # "form" | "email"
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    company_name: str = ""
    photo: Photo | None = None
    problems: tuple[str, ...] = ()
    reply_to: str | None = None
    sender: str = ""  # who the rate limit counts: the form's email or the mail's envelope sender
    ip: str = ""

    @property
    def email_key(self) -> str | None:
        return normalize_email(self.email) or None

    @property
    def company_key(self) -> str | None:
        return company_key(self.company_name) or None

    def missing(self) -> list[str]:
        """Required fields this request lacks, in a stable order."""
        present = {
            "email": bool(self.email),
            "first_name": bool(self.first_name),
            "last_name": bool(self.last_name),
            "company_name": bool(self.company_name),
            "photo": self.photo is not None,
        }
        return [f for f in REQUIRED_FIELDS if not present[f]]


@dataclass(frozen=True)
class TicketFields:
    """The fields a ticket row gets after an intake (new or joined)."""

    status: str
    requester_email: str
    first_name: str
    last_name: str
    company_name: str
    missing: list[str]
    problems: list[str]
    reply_to: str | None = None


def relevant_problems(problems: tuple[str, ...] | list[str], missing: list[str]) -> list[str]:
    """Keep the problems that still explain a missing field, once each, in order."""
    out: list[str] = []
    for problem in problems:
        related = PROBLEM_FIELD.get(problem, problem)
        if (related in missing or (related is None and missing)) and problem not in out:
            out.append(problem)
    return out


def new_ticket_fields(req: IntakeRequest) -> TicketFields:
    """The fields of a ticket opened by `req` alone."""
    missing = req.missing()
    return TicketFields(
        status=event_status(missing),
        requester_email=req.email,
        first_name=req.first_name,
        last_name=req.last_name,
        company_name=req.company_name,
        missing=missing,
        problems=relevant_problems(req.problems, missing),
        reply_to=req.reply_to,
    )


def event_status(missing: list[str]) -> str:
    """The status of a ticket with these fields missing (as stored and as RecoveryTicketOpened reports it)."""
    return "incomplete" if missing else "open"


def valid_agent(name: str) -> bool:
    """Whether `name` may stand as the agent of claims and decisions (the API's schema checks the same)."""
    return 1 <= len(name) <= MAX_FIELD_CHARS and re.match(AGENT_PATTERN, name) is not None


def check_claim(status: str, claimed_by: str | None, agent: str, force: bool) -> None:
    """Raise unless `agent` may claim a ticket in this state."""
    if status in DECIDED:
        raise Conflict("This ticket has already been decided.", code="already_decided")
    if status == "claimed" and claimed_by != agent and not force:
        raise Conflict(f"This ticket is claimed by {claimed_by}; send force=true to take it over.",
                       code="already_claimed", claimed_by=claimed_by)


def check_decision(
    action: str, status: str, claimed_by: str | None, agent: str, missing: list[str], account_id: str | None
) -> None:
    """Raise unless `agent` may approve or reject a ticket in this state.

    A ticket is decided once. Only the agent holding a claim may decide it. Approving needs a
    complete ticket (the photo above all) matched to a live account.
    """
    if status in DECIDED:
        raise Conflict("This ticket has already been decided.", code="already_decided")
    if status == "claimed" and claimed_by != agent:
        raise Conflict(f"This ticket is claimed by {claimed_by}.", code="claimed_by_other_agent",
                       claimed_by=claimed_by)
    if action == "approve":
        if missing:
            raise Conflict("The ticket is incomplete; it cannot be approved.", code="ticket_incomplete",
                           missing=missing)
        if account_id is None:
            raise Conflict("No account matches this ticket's email and company.", code="no_matched_account")


def names_match(given_first: str, given_last: str, first: str | None, last: str | None) -> bool:
    """True when the names on the ticket equal the directory's (ignoring case and accents)."""

    def fold(value: str | None) -> str:
        text = unicodedata.normalize("NFKD", value or "")
        return " ".join("".join(c for c in text if not unicodedata.combining(c)).casefold().split())

    return bool(given_first and given_last) and fold(given_first) == fold(first) and fold(given_last) == fold(last)


@dataclass(frozen=True)
class RateLimits:
    """Intake limits per fixed window: per sender address and per client IP."""

    per_sender: int = 5
    per_ip: int = 30
    window: timedelta = timedelta(hours=1)

    def window_start(self, now: datetime) -> datetime:
        seconds = int(self.window.total_seconds())
        epoch = int(now.timestamp())
        return datetime.fromtimestamp(epoch - epoch % seconds, UTC)

    def retry_after(self, now: datetime) -> int:
        return max(1, int((self.window_start(now) + self.window - now).total_seconds()))
