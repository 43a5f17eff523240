"""Pure rules of recovery: mail parsing, photo sniffing, field checks, joining and decisions (no I/O)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from services.common.errors import Conflict
from services.recovery import domain
from services.recovery.domain import IntakeRequest, Photo
from services.recovery.mailparse import company_from_subject, html_to_text, parse_mail, split_full_name

from .mails import (
    HELPDESK,
    android_html_only,
    forwarded,
    heic,
    iphone_mail,
    jpeg,
    pdf,
    plain_with_attachment,
    png,
    raw_mail_with_photo,
)

BODY = "Hello helpdesk,\n\nI lost my phone.\nAccount email: jane.doe@acme.example\nFirst name: Jane\nLast name: Doe\n"


def parse(raw: bytes, sender: str = "jane@private.example") -> IntakeRequest:
    return parse_mail(raw, mailbox=(HELPDESK,), envelope_sender=sender, ip="192.0.2.1")


@pytest.mark.parametrize(
    ("subject", "company"),
    [
        ("Resetting MFA authenticator (Acme)", "Acme"),
        ("RE: resetting mfa authenticator (Acme)", "Acme"),
        ("Fwd: Re: RESETTING MFA AUTHENTICATOR (Acme (NL) B.V.)", "Acme (NL) B.V."),
        ("AW: Resetting MFA authenticator - Müller GmbH", "Müller GmbH"),
        ("Resetting  MFA\tauthenticator   (  Big   Co  )", "Big Co"),
        ("Reset MFA for Acme", "Acme"),
        ("Resetting MFA authenticator", None),
        ("Hello", None),
        ("Resetting MFA authenticator (<script>)", None),
    ],
)
def test_company_from_subject(subject, company):
    assert company_from_subject(subject) == company


def test_iphone_mail_gives_every_field():
    raw = iphone_mail(sender="Jane Doe <jane@private.example>", subject="RE: resetting mfa authenticator (Acme)",
                      body=BODY, photo=jpeg(50_000))
    req = parse(raw)
    assert (req.email, req.first_name, req.last_name, req.company_name) == ("jane.doe@acme.example", "Jane", "Doe", "Acme")
    assert req.photo is not None and req.photo.content_type == "image/jpeg" and len(req.photo.data) == 50_000
    assert req.missing() == [] and req.problems == ()
    assert req.reply_to == "jane@private.example" and req.sender == "jane@private.example" and req.ip == "192.0.2.1"


def test_html_only_with_inline_image_and_free_text():
    html = ("<html><body><p>Hi,</p><p>My name is Ana van der Berg and I cannot log in.</p>"
            "<p>My login is <a href='mailto:ana@acme.example'>ana@acme.example</a></p>"
            "<img src='cid:{cid}'></body></html>")
    raw = android_html_only(sender="ana.vdb@private.example", subject="Resetting MFA authenticator (Acme)",
                            html=html, photo=jpeg(4000))
    req = parse(raw)
    assert (req.email, req.first_name, req.last_name) == ("ana@acme.example", "Ana", "van der Berg")
    assert req.photo is not None and req.missing() == []


def test_heic_png_and_largest_image_wins():
    raw = plain_with_attachment(sender="x@private.example", subject="Resetting MFA authenticator (Acme)", body=BODY,
                                data=heic(9000), maintype="image", subtype="heic", filename="IMG_1.HEIC")
    assert parse(raw).photo.content_type == "image/heic"
    # A small signature logo (PNG) and the real photo (JPEG): the photo is taken.
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["Subject"] = "x@private.example", "Resetting MFA authenticator (Acme)"
    msg.set_content(BODY)
    msg.add_attachment(png(500), maintype="image", subtype="png", filename="logo.png")
    msg.add_attachment(jpeg(20_000), maintype="application", subtype="octet-stream", filename="photo.bin")
    photo = parse(msg.as_bytes()).photo
    assert photo.content_type == "image/jpeg" and len(photo.data) == 20_000


def test_photo_recognised_by_bytes_not_name():
    raw = plain_with_attachment(sender="x@private.example", subject="Resetting MFA authenticator (Acme)", body=BODY,
                                data=pdf(), maintype="image", subtype="jpeg", filename="me.jpg")
    req = parse(raw)
    assert req.photo is None
    assert req.missing() == ["photo"] and req.problems == ("photo_unsupported_type",)


def test_photo_over_10_mb_is_refused():
    raw = raw_mail_with_photo(sender="x@private.example", subject="Resetting MFA authenticator (Acme)", body=BODY,
                              photo=jpeg(domain.MAX_PHOTO_BYTES + 1))
    assert len(raw) < domain.MAX_MAIL_BYTES  # the mailbox takes it: the photo is refused, the ticket opens
    req = parse(raw)
    assert req.photo is None and req.problems == ("photo_too_large",)
    assert req.email == "jane.doe@acme.example"


def test_structures_that_would_make_parsing_slow_are_refused_before_parsing():
    nested = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + (
        b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 3000)
    many_parts = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\n\r\nx\r\n" * 100_000
    many_lines = b"Subject: x\r\n" + b"X-A: b\r\n" * 300_000 + b"\r\n"
    for raw in (nested, many_parts, many_lines):
        started = time.perf_counter()
        req = parse(raw)
        assert req.problems == ("unreadable_mail",)
        assert time.perf_counter() - started < 0.5


def test_forward_with_original_attached_reads_the_original():
    original = iphone_mail(sender="jane@private.example", subject="Resetting MFA authenticator (Acme)", body=BODY,
                           photo=jpeg(3000))
    req = parse(forwarded(sender="jane@private.example", original=original))
    assert (req.email, req.first_name, req.last_name, req.company_name) == ("jane.doe@acme.example", "Jane", "Doe", "Acme")
    assert req.photo is not None


def test_reply_reads_fresh_text_before_quoted_text():
    body = ("Here is the photo.\nName: Jane Doe\n\nOn Mon, 3 Jun 2024 at 10:00, Helpdesk <helpdesk@mfa.localhost> wrote:\n"
            "> Please send your account email: <your account email>\n> First name: <your first name>\n")
    raw = plain_with_attachment(sender="jane@acme.example", subject="Re: Resetting MFA authenticator (Acme)",
                                body=body, data=jpeg(), maintype="image", subtype="jpeg", filename="a.jpg")
    req = parse(raw, sender="jane@acme.example")
    assert (req.first_name, req.last_name) == ("Jane", "Doe")
    # The quoted template's placeholder is no address: the sender's own address is the account email.
    assert req.email == "jane@acme.example"


def test_header_injection_in_names_is_refused():
    body = "Account email: jane@acme.example\nFirst name: Jane<script>\nLast name: Doe: Bcc evil@x.example\n"
    raw = plain_with_attachment(sender="x@private.example", subject="Resetting MFA authenticator (Acme)", body=body,
                                data=jpeg(), maintype="image", subtype="jpeg", filename="a.jpg")
    req = parse(raw)
    assert req.first_name == "" and req.last_name == ""
    assert set(req.missing()) == {"first_name", "last_name"}
    assert "invalid_first_name" in req.problems and "invalid_last_name" in req.problems
    # An encoded CR/LF in the display name never survives as a line break.
    raw = (b"From: =?utf-8?q?Jane=0D=0ABcc=3A_evil=40x=2Eexample?= <j@private.example>\r\n"
           b"Subject: Resetting MFA authenticator (Acme)\r\nContent-Type: text/plain\r\n\r\nno names here\r\n")
    req = parse(raw)
    assert "\n" not in req.first_name + req.last_name and "\r" not in req.first_name + req.last_name
    assert req.last_name == ""  # "Bcc: evil@x.example" is no name


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff" * 500,
        b"Subject: Resetting MFA authenticator (Acme)\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n"
        b"--zz\r\nContent-Type: image/jpeg\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64===\r\n",
        b"Subject: =?unknown-8?b?QWNtZQ==?=\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\n\xff\xfe\xfd",
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n" + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" * 40,
    ],
)
def test_malformed_mime_never_raises_and_reports_what_is_missing(raw):
    req = parse(raw)
    assert isinstance(req, IntakeRequest)
    assert req.missing()  # an incomplete ticket, never a crash
    assert req.reply_to == "jane@private.example"


def test_html_to_text_marks_blockquotes_as_quoted():
    text = html_to_text("<div>Mine</div><blockquote><div>Theirs</div></blockquote><script>x()</script><p>A&amp;B</p>")
    assert text.splitlines() == ["Mine", "> Theirs", "A&B"]


def test_split_full_name():
    assert split_full_name("Jane Doe") == ("Jane", "Doe")
    assert split_full_name("Doe, Jane") == ("Jane", "Doe")
    assert split_full_name("Madonna") == ("Madonna", None)


@pytest.mark.parametrize(
    ("data", "kind"),
    [(jpeg(), "image/jpeg"), (png(), "image/png"), (heic(), "image/heic"), (pdf(), None), (b"GIF89a" + b"0" * 20, None),
     (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", None), (b"", None)],
)
def test_sniff_image(data, kind):
    assert domain.sniff_image(data) == kind


def test_clean_name_and_company():
    assert domain.clean_name("  José  María ") == "José María"
    assert domain.clean_name("O'Brien-Smith") == "O'Brien-Smith"
    for bad in ("", "Jane\x00", "<b>Jane</b>", "Jane: x", "j@x", "123", "x" * 201):
        assert domain.clean_name(bad) is None, bad
    assert domain.clean_company(" Acme  (NL) ") == "Acme (NL)"
    assert domain.clean_company("Acme\x07") is None and domain.clean_company("<Acme>") is None
    assert domain.company_key("  ACME   Corp ") == domain.company_key("acme corp")


def _req(**kw) -> IntakeRequest:
    base = dict(channel="email", email="j@acme.example", first_name="Jane", last_name="Doe", company_name="Acme",
                photo=Photo(jpeg(), "image/jpeg"))
    return IntakeRequest(**{**base, **kw})


def test_a_new_ticket_is_incomplete_with_the_problems_that_explain_it():
    first = domain.new_ticket_fields(_req(photo=None, last_name="", problems=("photo_too_large", "invalid_email")))
    assert first.status == "incomplete" and first.missing == ["last_name", "photo"]
    assert first.problems == ["photo_too_large"]  # the email is there: its problem no longer explains anything
    assert domain.new_ticket_fields(_req()).status == "open"


def test_decisions():
    domain.check_decision("approve", "open", None, "ann", [], "acc-1")
    domain.check_decision("reject", "incomplete", None, "ann", ["photo"], None)
    cases = [
        (("approve", "approved", None, "ann", [], "acc-1"), "already_decided"),
        (("reject", "rejected", None, "ann", [], None), "already_decided"),
        (("approve", "claimed", "bob", "ann", [], "acc-1"), "claimed_by_other_agent"),
        (("approve", "incomplete", None, "ann", ["photo"], "acc-1"), "ticket_incomplete"),
        (("approve", "open", None, "ann", [], None), "no_matched_account"),
    ]
    for args, code in cases:
        with pytest.raises(Conflict) as err:
            domain.check_decision(*args)
        assert err.value.code == code
    with pytest.raises(Conflict) as err:
        domain.check_claim("claimed", "bob", "ann", force=False)
    assert err.value.code == "already_claimed"
    domain.check_claim("claimed", "bob", "ann", force=True)


def test_names_match_ignores_case_and_accents():
    assert domain.names_match("jose", "GARCIA", "José", "García")
    assert not domain.names_match("Jane", "Doe", "Jane", "Smith")
    assert not domain.names_match("", "", None, None)


def test_rate_limit_windows():
    limits = domain.RateLimits()
    now = datetime(2024, 6, 3, 10, 59, 30, tzinfo=UTC)
    assert limits.window_start(now) == datetime(2024, 6, 3, 10, 0, tzinfo=UTC)
    assert limits.retry_after(now) == 30


def test_bounces_and_auto_replies_are_recognised():
    from services.recovery.inbound import is_automatic

    normal = b"From: a@x.example\r\nSubject: Resetting MFA authenticator (Acme)\r\n\r\nhi"
    assert not is_automatic(normal, "a@x.example")
    assert is_automatic(normal, "")  # null reverse-path: a bounce
    assert is_automatic(b"Auto-Submitted: auto-replied\r\n" + normal, "a@x.example")
    assert is_automatic(b"Precedence: bulk\r\n" + normal, "a@x.example")
    assert is_automatic(b"From: a@x.example\r\nSubject: Automatic reply: Resetting MFA\r\n\r\nhi", "a@x.example")


@pytest.mark.parametrize("address", ["ada\x00@example.com", "ada\x07x@example.com", "a\x85b@example.com",
                                     "ada@example.com\n", "ada lovelace@example.com", "ada@example"])
def test_an_address_with_control_characters_or_no_domain_is_not_valid(address):
    assert not domain.valid_email(address)


def test_a_plain_address_is_valid():
    assert domain.valid_email("ada.lovelace+mfa@example.co.uk")
