"""Pure rules of the notifier: plans, addresses, headers, Message-IDs, templates and locales."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

import pytest

from services.notifier.domain import (
    TEMPLATE_KINDS,
    BadMail,
    Context,
    build_message,
    check_address,
    classify_reply,
    locale_chain,
    message_id,
    needs_smtputf8,
    parse_sender,
    plan_mails,
)
from services.notifier.templates import TEMPLATE_DIR, Catalog, TemplateError

from .conftest import EVENT_TIME, event

CTX = Context(helpdesk_email="helpdesk@mfa.localhost", public_url="https://mfa.example.com/",
              unseal=lambda sealed, aad: f"opened:{sealed}:{aad}")
PERSON = {"account_id": "a1", "company_id": "c1", "email": "ann@example.com", "first_name": "Ann"}
SENDER = parse_sender("MFA Security <no-reply@mfa.localhost>")


def test_message_id_is_derived_from_the_event_and_stable():
    assert message_id("3f1c-uuid_x", 2, "mfa.localhost") == "<3f1c-uuid_x.2@mfa.localhost>"
    assert message_id("3f1c-uuid_x", 2, "mfa.localhost") == message_id("3f1c-uuid_x", 2, "mfa.localhost")
    odd = message_id("id with <spaces>@and>", 1, "mfa.localhost")
    assert odd == message_id("id with <spaces>@and>", 1, "mfa.localhost")
    assert odd.count("<") == 1 and odd.count("@") == 1 and " " not in odd


@pytest.mark.parametrize("address", ["ann@example.com", "a.b+tag@sub.example.co", "helpdesk@mfa.localhost"])
def test_valid_addresses(address):
    assert check_address(address) == address


@pytest.mark.parametrize(("address", "wire", "utf8"), [
    ("ann@müller.de", "ann@xn--mller-kva.de", False),  # an international domain goes as IDNA, to any server
    ("jörg@müller.de", "jörg@xn--mller-kva.de", True),  # a UTF-8 local part needs SMTPUTF8
])
def test_international_addresses_in_their_wire_form(address, wire, utf8):
    assert check_address(address) == wire
    assert needs_smtputf8(wire) is utf8


@pytest.mark.parametrize(("address", "code"), [
    ("not an address", "invalid_address"),
    ("ann@", "invalid_address"),
    ("ann@@example.com", "invalid_address"),
    ("ann@exa mple.com", "invalid_address"),
    ("<ann@example.com>", "invalid_address"),
    ("ann@example.com\r\nBcc: victim@example.com", "unsafe_header"),
    ("", "invalid_address"),
    ("x@localhost", "invalid_address"),  # the rule of every service: a domain has a dot
])
def test_invalid_addresses(address, code):
    with pytest.raises(BadMail) as exc:
        check_address(address)
    assert exc.value.code == code


def test_header_injection_through_a_name_or_subject_is_refused():
    for name, subject in (("Eve\r\nBcc: victim@example.com", "Hi"), ("Eve", "Hi\nBcc: victim@example.com")):
        with pytest.raises(BadMail) as exc:
            build_message(sender=SENDER, recipient="ann@example.com", recipient_name=name, subject=subject,
                          text="t", html="<p>t</p>", msg_id="<x.1@mfa.localhost>", date=EVENT_TIME)
        assert exc.value.code == "unsafe_header"


def test_a_built_message_has_one_recipient_and_quoted_names():
    message = build_message(sender=SENDER, recipient="ann@example.com", recipient_name='Zoë "The Admin", Jr',
                            subject="Héllo, Zoë", text="Hello Zoë\n" + "x" * 1200, html="<p>t</p>",
                            msg_id="<x.1@mfa.localhost>", date=EVENT_TIME, reply_to="helpdesk@mfa.localhost")
    raw = message
    assert raw.isascii() and max(len(line) for line in raw.splitlines()) <= 998  # any SMTP server takes it
    parsed = BytesParser(policy=policy.default).parsebytes(raw)
    assert [(a.display_name, a.addr_spec) for a in parsed["To"].addresses] == [('Zoë "The Admin", Jr', "ann@example.com")]
    assert parsed["From"].addresses[0].addr_spec == "no-reply@mfa.localhost"
    assert parsed["Subject"] == "Héllo, Zoë"
    assert parsed["Reply-To"] == "helpdesk@mfa.localhost"
    assert parsed["Date"] == "Wed, 02 Jan 2030 03:04:05 +0000"
    assert parsed.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Hello Zoë\n" + "x" * 1200
    assert b"\nBcc:" not in raw and b"\nCc:" not in raw


def test_ascii_bodies_stay_readable_in_the_raw_mail():
    link = "http://127.0.0.1:8081/mfa/login-link?token=abc=="
    raw = (build_message(sender=SENDER, recipient="ann@example.com", recipient_name="Ann",
                                      subject="Your login link", text=f"Open {link}\n", html=f'<a href="{link}">x</a>',
                                      msg_id="<x.1@mfa.localhost>", date=EVENT_TIME))
    assert link.encode() in raw  # a developer can click it straight from the .eml file


def test_sender_setting_is_checked():
    assert SENDER.addr_spec == "no-reply@mfa.localhost" and SENDER.display_name == "MFA Security"
    assert parse_sender("no-reply@mfa.localhost").domain == "mfa.localhost"
    for bad in ("MFA <nobody>", "MFA <a@b.c>\r\nBcc: x@y.z", ""):
        with pytest.raises(ValueError):
            parse_sender(bad)


def test_smtp_replies_are_classified():
    assert classify_reply(550) == classify_reply(554) == "failed"
    assert classify_reply(451) == classify_reply(421) == classify_reply(None) == "deferred"


def test_locale_chain_falls_back_to_english():
    assert locale_chain("pt_BR") == ("pt-br", "pt", "en")
    assert locale_chain("nl") == ("nl", "en")
    assert locale_chain(None) == ("en",)
    assert locale_chain("../../etc") == ("en",)


def test_mfa_disabled_goes_to_the_backup_email_too_but_once_per_person():
    data = {**PERSON, "backup_email": "ann@home.example", "reason": "backup_code", "disabled_at": "2030-01-02T03:04:05Z"}
    plans = plan_mails(event("MfaDisabled", data), CTX)
    assert [(p.seq, p.recipient, p.values["to_backup"]) for p in plans] == [
        (1, "ann@example.com", ""), (2, "ann@home.example", "yes")]
    same = plan_mails(event("MfaDisabled", {**data, "backup_email": "ANN@example.com"}), CTX)
    assert [p.recipient for p in same] == ["ann@example.com"]
    none = plan_mails(event("MfaDisabled", {**data, "backup_email": None}), CTX)
    assert len(none) == 1


def test_links_are_built_on_the_public_url_with_the_opened_token():
    data = {"login_id": "l1", "account_id": "a1", "company_id": "c1", "backup_email": "ann@home.example",
            "first_name": "Ann", "link_token": "sealed-value", "expires_at": "2030-01-02T03:19:05Z"}
    (plan,) = plan_mails(event("BackupEmailRequested", data), CTX)
    assert plan.problem is None
    assert plan.values["link"] == (
        "https://mfa.example.com/mfa/login-link?token=opened%3Asealed-value%3ABackupEmailRequested%3Aa1")
    assert plan.values["valid_for"] == "15 minutes"


def test_a_token_that_does_not_open_makes_that_mail_fail_not_the_others():
    def refuse(sealed, aad):
        raise BadMail("bad_token", "does not open")

    data = {**PERSON, "backup_email": "ann@home.example", "confirm_token": "sealed-value",
            "expires_at": "2030-01-02T03:19:05Z"}
    confirm, notice = plan_mails(event("BackupEmailChanged", data), Context("h@mfa.localhost", "http://x", refuse))
    assert confirm.problem is not None and confirm.problem.code == "bad_token"
    assert notice.problem is None


def test_every_shipped_template_renders_for_its_event_with_escaping():
    catalog = Catalog.load(required=TEMPLATE_KINDS)
    assert catalog.kinds() == set(TEMPLATE_KINDS)
    data = {**PERSON, "first_name": "<b>Ann</b> & co", "method": "totp", "enrolled_at": "2030-01-02T03:04:05Z"}
    (plan,) = plan_mails(event("MfaEnrolled", data), CTX)
    rendered = catalog.render(plan.kind, locale_chain("fr"), plan.values)
    assert rendered.locale == "en"
    assert "Hello <b>Ann</b> & co," in rendered.text
    assert "Hello &lt;b&gt;Ann&lt;/b&gt; &amp; co," in rendered.html and "<b>Ann" not in rendered.html
    assert "$" not in rendered.text and "{{" not in rendered.text and "{{" not in rendered.html


def test_a_missing_first_name_still_reads_well():
    (plan,) = plan_mails(event("MfaEnrolled", {**PERSON, "first_name": "", "method": "totp",
                                               "enrolled_at": "2030-01-02T03:04:05Z"}), CTX)
    rendered = Catalog.load().render(plan.kind, ("en",), plan.values)
    assert rendered.text.startswith("Hello,\n")


def test_locales_pick_their_template_and_fall_back_kind_by_kind(tmp_path):
    for path in TEMPLATE_DIR.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "mfa_locked.de.txt").write_text("Subject: Anmeldungen pausiert\n\nHallo $first_name, bis $locked_until.\n")
    (tmp_path / "mfa_locked.de.html").write_text("<p>Hallo $first_name, bis $locked_until.</p>")
    catalog = Catalog.load(tmp_path, required=TEMPLATE_KINDS)
    values = {"first_name": "Jörg", "locked_until": "2030-01-02 03:19 UTC", "event_time": "x", "failures": "5"}
    german = catalog.render("mfa_locked", locale_chain("de_AT"), values)
    assert german.locale == "de" and german.subject == "Anmeldungen pausiert"
    assert german.text.startswith("Hallo Jörg, bis 2030-01-02 03:19 UTC.")
    assert 'lang="de"' in german.html  # the English layout, with the mail's language
    assert catalog.render("mfa_enrolled", locale_chain("de"), {**values, "when": "x"}).locale == "en"


def test_missing_template_data_is_a_clear_bad_mail(tmp_path):
    for path in TEMPLATE_DIR.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "mfa_locked.nl.txt").write_text("Subject: Geblokkeerd\n\nTot $locked_until, $nickname.\n")
    (tmp_path / "mfa_locked.nl.html").write_text("<p>Tot $locked_until.</p>")
    catalog = Catalog.load(tmp_path)
    with pytest.raises(BadMail) as exc:
        catalog.render("mfa_locked", ("nl", "en"), {"locked_until": "x"})
    assert exc.value.code == "missing_data" and "nickname" in exc.value.detail


def test_an_incomplete_template_folder_is_refused_at_start_up(tmp_path):
    for path in TEMPLATE_DIR.iterdir():
        if path.name != "mfa_locked.html":
            (tmp_path / path.name).write_text(path.read_text())
    with pytest.raises(TemplateError):
        Catalog.load(tmp_path, required=TEMPLATE_KINDS)


def _schema_has(event_type: str, prop: str) -> bool:
    from services.common.events import _schemas  # the loaded schemas, as the consumer checks them

    return prop in _schemas().get((event_type, 1), {}).get("properties", {})


needs_reply_to = pytest.mark.skipif(not _schema_has("RecoveryTicketOpened", "reply_to"),
                                    reason="recovery's reply_to is not in the RecoveryTicketOpened schema")


@needs_reply_to
def test_recovery_mails_answer_where_the_person_wrote_from_and_alert_the_account_email():
    data = {"ticket_id": "T-1", "requester_email": "ann@example.com", "reply_to": "ann.private@home.example",
            "first_name": "Ann", "company_name": "Acme", "account_id": "a1", "company_id": "c1",
            "status": "open", "channel": "email", "missing": []}
    person, desk, owner = plan_mails(event("RecoveryTicketOpened", data), CTX)
    assert (person.seq, person.recipient, person.reply_to) == (1, "ann.private@home.example", "helpdesk@mfa.localhost")
    assert (desk.seq, desk.recipient, desk.reply_to) == (2, "helpdesk@mfa.localhost", "ann.private@home.example")
    assert desk.values["answer_to"] == "ann.private@home.example"
    assert (owner.seq, owner.recipient) == (3, "ann@example.com")
    # No matched account: the typed address is not alerted, only the sender is answered.
    unknown = plan_mails(event("RecoveryTicketOpened", {**data, "account_id": None}), CTX)
    assert [p.recipient for p in unknown] == ["ann.private@home.example", "helpdesk@mfa.localhost"]
    # An invalid reply_to falls back to the account email given.
    approved = {k: v for k, v in data.items() if k not in ("status", "channel", "missing")}
    fallback = plan_mails(event("RecoveryTicketApproved", {**approved, "reply_to": "junk", "agent": "Bob"}), CTX)
    assert [p.recipient for p in fallback] == ["ann@example.com"]


@needs_reply_to
def test_an_incomplete_ticket_without_an_email_is_answered_at_the_sender_with_what_is_missing():
    data = {"ticket_id": "T-2", "requester_email": "", "reply_to": "someone@example.com", "company_name": "Acme",
            "status": "incomplete", "channel": "email", "missing": ["email", "photo"],
            "problems": ["photo_too_large"]}
    person, desk = plan_mails(event("RecoveryTicketOpened", data), CTX)
    assert person.recipient == "someone@example.com" and person.problem is None
    rendered = Catalog.load().render(person.kind, ("en",), person.values)
    assert "missing: email, photo." in rendered.text and "photo too large" in rendered.text
    staff = Catalog.load().render(desk.kind, ("en",), desk.values)
    assert "Problems:       photo too large" in staff.text and "Wrote from:     someone@example.com" in staff.text
