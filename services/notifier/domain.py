"""What mail each event asks for, and how one mail is put together safely (pure rules, no I/O).

An event yields a list of :class:`MailPlan` (one per recipient, numbered by `seq`). A plan that
can never be sent as asked (bad address, missing data, a token that does not open) carries a
:class:`BadMail` instead of being dropped, so the caller records it as failed with the reason.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime, formataddr
from typing import Any
from urllib.parse import quote

from babel.dates import format_timedelta

from ..common import emails, events, i18n, sealing

HANDLED_TYPES = (
    "BackupEmailRequested",
    "BackupEmailChanged",
    "MfaEnrolled",
    "MfaDisabled",
    "BackupCodesRegenerated",
    "MfaLocked",
    "RecoveryTicketOpened",
    "RecoveryTicketApproved",
    "RecoveryTicketRejected",
)

# Every template kind the planners below use: each needs `<kind>.en.txt` and `<kind>.en.html`.
TEMPLATE_KINDS = frozenset({
    "backup_login_link", "backup_email_confirm", "backup_email_changed", "mfa_enrolled", "mfa_disabled",
    "backup_codes_regenerated", "mfa_locked", "recovery_received", "recovery_helpdesk",
    "recovery_approved", "recovery_rejected",
})

# Reason codes of mails that fail because of the event itself (the event is parked for a human);
# `smtp_rejected` is the other permanent failure: the receiving server refused the recipient.
BAD_INPUT_CODES = frozenset({"invalid_address", "missing_data", "unsafe_header", "bad_token"})

DEFAULT_LOCALE = "en"


class BadMail(Exception):
    """A mail that can never be sent as asked: `code` is stable, `detail` says why in a sentence."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class MailPlan:
    """One mail an event asks for: template, recipient and the values the template may use."""

    seq: int
    kind: str
    recipient: str
    recipient_name: str = ""
    values: Mapping[str, str] = field(default_factory=dict)
    locale: str | None = None
    reply_to: str | None = None
    problem: BadMail | None = None


Unseal = Callable[[str, str], str]
"""Opens a sealed token: (sealed value, aad) -> token; raises BadMail when it cannot."""


# --- addresses and headers -------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_address(address: str, what: str = "recipient") -> str:
    """`address` as it goes on the wire, when it is one valid mailbox; BadMail('invalid_address') otherwise.

    The rule is the one every service keeps (`common.emails`), so an address an account was given
    is one the notifier can write to. An international domain goes out in its ASCII (IDNA) form,
    which every server takes; a local part that is not ASCII stays UTF-8 and needs a server that
    offers SMTPUTF8 (RFC 6531; see `needs_smtputf8`).
    """
    if not isinstance(address, str) or not address:
        raise BadMail("invalid_address", f"the event names no {what} address")
    if _CONTROL.search(address):
        raise BadMail("unsafe_header", f"the {what} address contains line breaks or control characters")
    wire = emails.wire_form(address)
    if wire is None:
        raise BadMail("invalid_address", f"the {what} address {address[:80]!r} is not a valid email address")
    return wire


def needs_smtputf8(*addresses: str) -> bool:
    """True when an address (in its wire form) can only travel with the SMTPUTF8 extension."""
    return not all(a.isascii() for a in addresses)


def check_header(value: str, what: str) -> str:
    """`value` when it can go into a header as is; CR, LF and other control characters are refused."""
    if _CONTROL.search(value):
        raise BadMail("unsafe_header", f"the {what} contains line breaks or control characters")
    return value


def clean_text(value: Any) -> str:
    """A name or free text for a mail body: control characters become spaces, runs of spaces collapse."""
    if value is None:
        return ""
    return " ".join(_CONTROL.sub(" ", str(value)).split())


def _s(value: Any) -> str:
    """An event value as template text, unchanged (headers check it, bodies clean it)."""
    return "" if value is None else str(value).strip()


def message_id(event_id: str, seq: int, domain: str) -> str:
    """The Message-ID of mail `seq` of an event: the same event always gives the same id."""
    local = event_id if re.fullmatch(r"[A-Za-z0-9_-]{1,100}", event_id) else hashlib.sha256(event_id.encode()).hexdigest()[:40]
    return f"<{local}.{seq}@{domain}>"


def parse_sender(mail_from: str) -> Address:
    """The sender address of MFA_MAIL_FROM (`Name <addr>` or `addr`); ValueError when unusable."""
    raw = mail_from.strip()
    match = re.fullmatch(r"(?:(?P<name>[^<>]*?)\s*<(?P<addr>[^<>]+)>|(?P<bare>[^<>\s]+))", raw)
    if not match or _CONTROL.search(raw):
        raise ValueError(f"MFA_MAIL_FROM {mail_from!r} is not 'Name <address>' or 'address'")
    addr = match["addr"] or match["bare"]
    name = (match["name"] or "").strip().strip('"')
    try:
        check_address(addr, "sender")
    except BadMail as exc:
        raise ValueError(f"MFA_MAIL_FROM: {exc.detail}") from exc
    local, _, domain = addr.partition("@")
    return Address(display_name=name, username=local, domain=domain)


def build_message(
    *,
    sender: Address,
    recipient: str,
    recipient_name: str,
    subject: str,
    text: str,
    html: str,
    msg_id: str,
    date: datetime,
    reply_to: str | None = None,
) -> bytes:
    """The raw multipart/alternative mail (text, then HTML); every header value is checked for CR/LF first.

    Written out directly rather than through email.generator, which costs milliseconds of CPU
    per mail re-folding each header: headers here are few, checked and short. Non-ASCII names
    and subjects are RFC 2047-encoded; bodies are 7bit when plain ASCII, quoted-printable
    otherwise, so any SMTP server takes them. The boundary derives from the Message-ID: the
    same mail is the same bytes on every attempt.
    """
    recipient = check_address(recipient)
    check_header(recipient_name, "recipient name")
    check_header(subject, "subject")
    check_header(msg_id, "Message-ID")
    boundary = "=_mfa_" + hashlib.sha256(msg_id.encode()).hexdigest()[:24]  # "=_" never occurs in QP text
    headers = [
        f"From: {formataddr((sender.display_name, sender.addr_spec), charset='utf-8')}",
        f"To: {_mailbox(recipient_name, recipient)}",
    ]
    if reply_to:
        headers.append(f"Reply-To: {check_address(reply_to, 'reply-to')}")
    headers += [
        f"Subject: {_header_text(subject)}",
        f"Date: {format_datetime(date.astimezone(UTC))}",
        f"Message-ID: {msg_id}",
        "MIME-Version: 1.0",
        # RFC 3834: tells auto-responders not to answer a notification.
        "Auto-Submitted: auto-generated",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
    ]
    lines = [*headers, ""]
    for subtype, body in (("plain", text), ("html", html)):
        lines += [f"--{boundary}", *_body_part(subtype, body, boundary)]
    lines += [f"--{boundary}--", ""]
    # ASCII but for an address that needs SMTPUTF8, which then travels as UTF-8 (RFC 6532).
    return "\r\n".join(lines).encode("utf-8")


def _mailbox(name: str, address: str) -> str:
    """`Name <address>` for a header, the name RFC 2047-encoded as needed; a UTF-8 address as is (RFC 6532)."""
    if address.isascii():
        return formataddr((name, address), charset="utf-8")
    if not name:
        return address
    # formataddr refuses an address that is not ASCII: take the name part it writes, then the address.
    shown = formataddr((name, "x@x"), charset="utf-8")
    return f"{shown[:-len('x@x>')]}{address}>"


def _header_text(value: str) -> str:
    # Short ASCII goes as is; anything else as RFC 2047 encoded words, folded under 78 columns.
    if value.isascii() and len(value) <= 900:
        return value
    return Header(value, "utf-8", header_name="Subject").encode(linesep="\r\n")


def _body_part(subtype: str, body: str, boundary: str) -> list[str]:
    lines = body.splitlines()
    if body.isascii() and boundary not in body and all(len(line) <= 998 for line in lines):
        # 7bit: readable as is in the raw mail (a developer can click the link in an .eml file).
        return [f'Content-Type: text/{subtype}; charset="us-ascii"', "Content-Transfer-Encoding: 7bit", "", *lines]
    encoded = binascii.b2a_qp("\n".join(lines).encode("utf-8"), istext=True).decode("ascii")
    return [f'Content-Type: text/{subtype}; charset="utf-8"', "Content-Transfer-Encoding: quoted-printable", "",
            *encoded.split("\n")]


# --- times and locales -----------------------------------------------------------------------


def parse_time(value: Any, what: str) -> datetime:
    """An ISO 8601 timestamp as an aware datetime; BadMail('missing_data') when it is not one."""
    if not isinstance(value, str) or not value:
        raise BadMail("missing_data", f"the event has no {what}")
    try:
        return events.parse_time(value)
    except ValueError as exc:
        raise BadMail("missing_data", f"{what} {value[:40]!r} is not a timestamp") from exc


def format_time(moment: datetime, time_zone: Any = None) -> str:
    """A moment every reader reads the same way: `2025-11-27 21:14 CET (Europe/Amsterdam)` in the
    person's time zone when the event names a known one, else `2025-11-27 20:14 UTC`."""
    zone = i18n.zone(time_zone) if isinstance(time_zone, str) else None
    if zone is None:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    local = moment.astimezone(zone)
    return f"{local.strftime('%Y-%m-%d %H:%M')} {local.tzname()} ({time_zone})"


def format_duration(seconds: float, locale: str | None = None) -> str:
    """A short duration in the mail's language (`15 minutes`, `2 hours`; `15 minuten` in Dutch)."""
    lang = i18n.supported(locale)
    if lang and lang != DEFAULT_LOCALE:
        return format_timedelta(seconds, threshold=2, locale=lang)
    minutes = max(1, round(seconds / 60))
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = round(minutes / 60)
    if hours < 48:
        return f"{hours} hours"
    return f"{round(hours / 24)} days"


def locale_chain(locale: str | None) -> tuple[str, ...]:
    """Template locales to try, most specific first, English last: `pt_BR` -> pt-br, pt, en."""
    chain: list[str] = []
    if locale and re.fullmatch(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*", locale):
        tag = locale.lower().replace("_", "-")
        chain.append(tag)
        if "-" in tag:
            chain.append(tag.split("-", 1)[0])
    if DEFAULT_LOCALE not in chain:
        chain.append(DEFAULT_LOCALE)
    return tuple(chain)


# --- what each event asks for ----------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What planning needs besides the event: configuration and the token opener."""

    helpdesk_email: str
    public_url: str
    unseal: Unseal


def plan_mails(event: Mapping[str, Any], ctx: Context) -> list[MailPlan]:
    """Every mail `event` asks for, numbered from 1; an unhandled type asks for none."""
    planner = _PLANNERS.get(event.get("type", ""))
    if planner is None:
        return []
    data = event.get("data") or {}
    plans = planner(event, data, ctx)
    return _without_repeated_recipients(plans)


def _without_repeated_recipients(plans: list[MailPlan]) -> list[MailPlan]:
    # One person gets one copy even when two roles share an address (login and backup email).
    seen: set[str] = set()
    kept = []
    for plan in plans:
        key = plan.recipient.strip().lower() if isinstance(plan.recipient, str) else ""
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(plan)
    return kept


def _base(event: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, str]:
    """Values every template may use."""
    return {
        "first_name": _s(data.get("first_name")),
        "last_name": _s(data.get("last_name")),
        "event_time": format_time(parse_time(event.get("time"), "event time"), data.get("time_zone")),
        "company": _s(data.get("company_name")),
    }


def _name(data: Mapping[str, Any]) -> str:
    return " ".join(p for p in (str(data.get("first_name") or ""), str(data.get("last_name") or "")) if p).strip()


def _plan(seq: int, kind: str, recipient: Any, *, name: str = "", values: Mapping[str, str] | None = None,
          data: Mapping[str, Any], reply_to: str | None = None, problem: BadMail | None = None) -> MailPlan:
    # The address itself is checked when the mail is built; here only its absence is a problem.
    if problem is None and not (isinstance(recipient, str) and recipient):
        problem = BadMail("invalid_address", "the event names no recipient address")
    return MailPlan(
        seq=seq,
        kind=kind,
        recipient=recipient if isinstance(recipient, str) else "",
        recipient_name=name,
        values=dict(values or {}),
        locale=data.get("locale") if isinstance(data.get("locale"), str) else None,
        reply_to=reply_to,
        problem=problem,
    )


def _link(ctx: Context, path: str, sealed: Any, aad: str) -> str:
    if not isinstance(sealed, str) or not sealed:
        raise BadMail("missing_data", "the event carries no link token")
    token = ctx.unseal(sealed, aad)
    return f"{ctx.public_url.rstrip('/')}{path}?token={quote(token, safe='')}"


def _validity(event: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, str]:
    expires = parse_time(data.get("expires_at"), "expiry time")
    issued = parse_time(event.get("time"), "event time")
    locale = data.get("locale") if isinstance(data.get("locale"), str) else None
    return {"expires_at": format_time(expires, data.get("time_zone")),
            "valid_for": format_duration((expires - issued).total_seconds(), locale)}


def _safely(build: Callable[[], dict[str, str]]) -> tuple[dict[str, str], BadMail | None]:
    """Values for a template, or the reason they cannot be had (the mail is then recorded as failed)."""
    try:
        return build(), None
    except BadMail as exc:
        return {}, exc


def _backup_email_requested(event, data, ctx) -> list[MailPlan]:
    aad = sealing.login_link_token(str(data.get("account_id")))
    values, problem = _safely(lambda: {
        **_base(event, data),
        **_validity(event, data),
        "link": _link(ctx, "/mfa/login-link", data.get("link_token"), aad),
    })
    return [_plan(1, "backup_login_link", data.get("backup_email"), name=_name(data), values=values, data=data,
                  problem=problem)]


def _backup_email_changed(event, data, ctx) -> list[MailPlan]:
    aad = sealing.backup_email_confirm_token(str(data.get("account_id")))
    confirm, confirm_problem = _safely(lambda: {
        **_base(event, data),
        **_validity(event, data),
        "link": _link(ctx, "/mfa/backup-email/confirm", data.get("confirm_token"), aad),
    })
    notice, notice_problem = _safely(lambda: {
        **_base(event, data),
        **_validity(event, data),
        "backup_email": _s(data.get("backup_email")),
    })
    return [
        _plan(1, "backup_email_confirm", data.get("backup_email"), name=_name(data), values=confirm, data=data,
              problem=confirm_problem),
        _plan(2, "backup_email_changed", data.get("email"), name=_name(data), values=notice, data=data,
              problem=notice_problem),
    ]


def _mfa_enrolled(event, data, ctx) -> list[MailPlan]:
    values, problem = _safely(lambda: {
        **_base(event, data),
        "when": format_time(parse_time(data.get("enrolled_at"), "enrolment time"), data.get("time_zone")),
    })
    return [_plan(1, "mfa_enrolled", data.get("email"), name=_name(data), values=values, data=data, problem=problem)]


def _mfa_disabled(event, data, ctx) -> list[MailPlan]:
    reason = data.get("reason")

    def values_for(to_backup: bool) -> dict[str, str]:
        if reason not in ("admin", "backup_code", "helpdesk_recovery"):
            raise BadMail("missing_data", f"unknown reason {str(reason)[:40]!r} for turning MFA off")
        return {
            **_base(event, data),
            "when": format_time(parse_time(data.get("disabled_at"), "time MFA was turned off"), data.get("time_zone")),
            "by_admin": "yes" if reason == "admin" else "",
            "by_backup_code": "yes" if reason == "backup_code" else "",
            "by_helpdesk": "yes" if reason == "helpdesk_recovery" else "",
            "agent": _s(data.get("agent")),
            "ticket_id": _s(data.get("ticket_id")),
            "forced": "yes" if data.get("forced") else "",
            "to_backup": "yes" if to_backup else "",
            "login_email": _s(data.get("email")),
            "helpdesk_email": ctx.helpdesk_email,
        }

    main, problem = _safely(lambda: values_for(False))
    plans = [_plan(1, "mfa_disabled", data.get("email"), name=_name(data), values=main, data=data, problem=problem)]
    if data.get("backup_email"):
        backup, backup_problem = _safely(lambda: values_for(True))
        plans.append(_plan(2, "mfa_disabled", data.get("backup_email"), name=_name(data), values=backup, data=data,
                           problem=backup_problem))
    return plans


def _backup_codes_regenerated(event, data, ctx) -> list[MailPlan]:
    values, problem = _safely(lambda: {**_base(event, data), "count": str(int(data.get("count") or 0))})
    return [_plan(1, "backup_codes_regenerated", data.get("email"), name=_name(data), values=values, data=data,
                  problem=problem)]


def _mfa_locked(event, data, ctx) -> list[MailPlan]:
    values, problem = _safely(lambda: {
        **_base(event, data),
        "locked_until": format_time(parse_time(data.get("locked_until"), "end of the lock"), data.get("time_zone")),
        "failures": str(int(data.get("consecutive_failures") or 0)),
    })
    return [_plan(1, "mfa_locked", data.get("email"), name=_name(data), values=values, data=data, problem=problem)]


def _ticket_values(event, data, ctx) -> dict[str, str]:
    missing = [_s(str(m).replace("_", " ")) for m in data.get("missing") or []]
    problems = [_s(str(p).replace("_", " ")) for p in data.get("problems") or []]
    return {
        **_base(event, data),
        "ticket_id": _s(data.get("ticket_id")),
        "company_name": _s(data.get("company_name")),
        "requester_email": _s(data.get("requester_email")),
        "helpdesk_email": ctx.helpdesk_email,
        "missing": ", ".join(m for m in missing if m),
        "problems": ", ".join(p for p in problems if p),
        "incomplete": "yes" if data.get("status") == "incomplete" or missing else "",
    }


def _person_address(data: Mapping[str, Any]) -> Any:
    """Where to answer the person behind a ticket: where they wrote from, else the account email they gave.

    The first valid one wins; when neither is valid the first one given is returned, so the
    mail is recorded as failed with that address.
    """
    given = [a for a in (data.get("reply_to"), data.get("requester_email")) if isinstance(a, str) and a]
    return next((a for a in given if _is_address(a)), given[0] if given else None)


def _recovery_opened(event, data, ctx) -> list[MailPlan]:
    values, problem = _safely(lambda: _ticket_values(event, data, ctx))
    person = _person_address(data)
    staff, staff_problem = _safely(lambda: {
        **_ticket_values(event, data, ctx),
        "full_name": _name(data) or "(no name given)",
        "company_label": _s(data.get("company_name")) or "no company given",
        "channel": "email to the helpdesk" if data.get("channel") == "email" else "the recovery form",
        "answer_to": _s(person) if isinstance(person, str) and person != data.get("requester_email") else "",
        "account_known": "yes" if data.get("account_id") else "",
        "account_id": _s(data.get("account_id")),
        "company_id": _s(data.get("company_id")),
        "joined": "yes" if data.get("joined") else "",
    })
    plans = [
        _plan(1, "recovery_received", person, name=_name(data), values=values, data=data,
              reply_to=ctx.helpdesk_email, problem=problem),
        # The helpdesk reads English; its mail does not follow the requester's locale.
        MailPlan(seq=2, kind="recovery_helpdesk", recipient=ctx.helpdesk_email, values=staff, locale=None,
                 reply_to=person if _is_address(person) else None, problem=staff_problem),
    ]
    account_email = data.get("requester_email")
    if data.get("account_id") and _is_address(account_email):
        # The request matched an account: its owner hears of it at the account email too, so a
        # request made in their name by someone else does not go unnoticed.
        plans.append(_plan(3, "recovery_received", account_email, name=_name(data), values=values, data=data,
                           reply_to=ctx.helpdesk_email, problem=problem))
    return plans


def _outcome_addresses(data: Mapping[str, Any]) -> list[Any]:
    """Where a ticket's decision goes: the matched account's login and backup emails, else the requester.

    A request may give any address (a spoofed mail, another company's key); when an account matched,
    its decision goes only to the account's own addresses, so an approval never reaches a stranger.
    """
    own = [a for a in (data.get("account_email"), data.get("backup_email")) if _is_address(a)]
    if own:
        return list(dict.fromkeys(own))
    return [_person_address(data)]


def _recovery_approved(event, data, ctx) -> list[MailPlan]:
    values, problem = _safely(lambda: {**_ticket_values(event, data, ctx), "agent": _s(data.get("agent"))})
    return [_plan(seq, "recovery_approved", address, name=_name(data), values=values, data=data,
                  reply_to=ctx.helpdesk_email, problem=problem)
            for seq, address in enumerate(_outcome_addresses(data), start=1)]


def _recovery_rejected(event, data, ctx) -> list[MailPlan]:
    def build() -> dict[str, str]:
        reason = _s(data.get("reason"))
        if not reason:
            raise BadMail("missing_data", "a rejected ticket needs the reason to tell the requester")
        return {**_ticket_values(event, data, ctx), "agent": _s(data.get("agent")), "reason": reason}

    values, problem = _safely(build)
    return [_plan(seq, "recovery_rejected", address, name=_name(data), values=values, data=data,
                  reply_to=ctx.helpdesk_email, problem=problem)
            for seq, address in enumerate(_outcome_addresses(data), start=1)]


def _is_address(value: Any) -> bool:
    try:
        check_address(value)
    except BadMail:
        return False
    return True


_PLANNERS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any], Context], list[MailPlan]]] = {
    "BackupEmailRequested": _backup_email_requested,
    "BackupEmailChanged": _backup_email_changed,
    "MfaEnrolled": _mfa_enrolled,
    "MfaDisabled": _mfa_disabled,
    "BackupCodesRegenerated": _backup_codes_regenerated,
    "MfaLocked": _mfa_locked,
    "RecoveryTicketOpened": _recovery_opened,
    "RecoveryTicketApproved": _recovery_approved,
    "RecoveryTicketRejected": _recovery_rejected,
}
assert set(_PLANNERS) == set(HANDLED_TYPES)


# --- SMTP replies ----------------------------------------------------------------------------


def classify_reply(code: int | None) -> str:
    """`failed` for a permanent SMTP refusal (5xx), `deferred` for anything that may pass later."""
    return "failed" if code is not None and 500 <= code < 600 else "deferred"
