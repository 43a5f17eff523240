"""One catalogue, two complete languages; the language follows the account, the browser, then ?lang=."""

from __future__ import annotations

import re
from pathlib import Path

from services.common import i18n

from ..auth.conftest import oathtool
from .conftest import person, start_login

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIRS = [ROOT / "services" / "common" / "templates", ROOT / "services" / "auth" / "templates",
                 ROOT / "services" / "recovery" / "templates"]
CODE = [ROOT / "services" / "auth" / "pages.py", ROOT / "services" / "common" / "pages.py",
        ROOT / "services" / "recovery" / "pages.py"]
# `_("key")` in templates; `_text(request, account, "key"` and `"key"` arguments in the page code.
_TEMPLATE_KEY = re.compile(r"""_\(\s*["']([a-z_]+\.[a-z_.]+)["']""")
_CODE_KEY = re.compile(r"""["']((?:verify|backup|enroll|codes|portal|mail|link|confirm|notice|error|common|layout|helpdesk|recover)\.[a-z_.]+)["']""")
_PLACEHOLDER = re.compile(r"\{(\w+)\}|\$(\w+)")
MAIL_TEMPLATES = ROOT / "services" / "notifier" / "templates"
_MAIL_KEY = re.compile(r"\[\[([a-z_.]+)\]\]")


def _used_keys() -> set[str]:
    keys: set[str] = set()
    for folder in TEMPLATE_DIRS:
        for path in folder.glob("*.html"):
            # A key built in the template (`"recover.field." ~ name`) shows only its stem here: not a key.
            keys |= {k for k in _TEMPLATE_KEY.findall(path.read_text(encoding="utf-8")) if not k.endswith((".", "_"))}
    for path in MAIL_TEMPLATES.iterdir():
        keys |= set(_MAIL_KEY.findall(path.read_text(encoding="utf-8"))) - {"greeting"}
    for path in CODE:
        keys |= {k for k in _CODE_KEY.findall(path.read_text(encoding="utf-8")) if not k.endswith((".", ".html"))}
    return keys


def test_both_languages_have_every_key_and_the_same_placeholders():
    catalogue = i18n.Catalogue.load()
    english, dutch = catalogue.keys("en"), catalogue.keys("nl")
    assert len(english) > 100
    assert english - dutch == set(), f"missing in Dutch: {sorted(english - dutch)}"
    assert dutch - english == set(), f"missing in English: {sorted(dutch - english)}"
    for key in english:
        en = set(_PLACEHOLDER.findall(catalogue.text("en", key)))
        nl = set(_PLACEHOLDER.findall(catalogue.text("nl", key)))
        assert catalogue.text("en", key).count("{{") == catalogue.text("nl", key).count("{{"), key
        assert en == nl, f"{key}: placeholders {en} in English, {nl} in Dutch"
        assert catalogue.text("en", key) != key


def test_every_key_the_pages_and_the_mails_use_is_in_the_catalogue():
    used = _used_keys()
    assert len(used) > 60, "the key regexes no longer find the keys; update this test"
    missing = sorted(used - i18n.Catalogue.load().keys("en"))
    assert not missing, f"keys used by the pages but absent from the catalogue: {missing}"


def test_every_error_page_has_a_title_and_a_body():
    keys = i18n.Catalogue.load().keys("en")
    titles = {k.removesuffix(".title") for k in keys if k.startswith("error.") and k.endswith(".title")}
    bodies = {k.removesuffix(".body") for k in keys if k.startswith("error.") and k.endswith(".body")}
    assert titles == bodies


def test_a_missing_key_fails_the_completeness_check(tmp_path):
    for lang, text in (("en", 'msgid "a.b"\nmsgstr "A"\n\nmsgid "a.c"\nmsgstr "C"\n'), ("nl", 'msgid "a.b"\nmsgstr "B"\n')):
        folder = tmp_path / lang / "LC_MESSAGES"
        folder.mkdir(parents=True)
        (folder / "messages.po").write_text(text, encoding="utf-8")
    catalogue = i18n.Catalogue.load(tmp_path)
    assert catalogue.keys("en") - catalogue.keys("nl") == {"a.c"}
    assert catalogue.text("nl", "a.c") == "C"  # a person still reads English rather than a key


def test_language_choice_rules():
    assert i18n.pick_locale(None, None, "nl-BE", accept_language="en") == "nl"
    assert i18n.pick_locale("en", None, "nl", accept_language="nl") == "en"
    assert i18n.pick_locale(None, None, None, accept_language="de-DE,nl;q=0.8,en;q=0.5") == "nl"
    assert i18n.pick_locale(None, None, "fr", accept_language="fr") == "en"
    assert i18n.from_accept_language("nl;q=0, en") == "en"


async def test_dutch_for_a_dutch_account_and_a_switch_to_english_that_sticks(site, upstream, page):
    _, account = await person(site, locale="nl-NL", company="Nederland BV")
    secret, _, _ = await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    await page.goto(login["prompt_url"])
    assert await page.locator("html").get_attribute("lang") == "nl"
    assert await page.locator("h1").inner_text() == "Vul je verificatiecode in"
    await page.get_by_role("link", name="English").click()
    assert await page.locator("h1").inner_text() == "Enter your verification code"
    await page.get_by_label("Verification code").fill("000000" if oathtool(secret, 30) != "000000" else "111111")
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_load_state()
    assert "You have 4 tries left" in await page.get_by_role("alert").inner_text()  # still English after a POST


async def test_the_browser_language_when_the_account_has_none(site, upstream, browser):
    _, account = await person(site)
    await site.api.enroll(account)
    login = await start_login(site, upstream, account)
    dutch = await browser.new_context(locale="nl-NL")
    try:
        page = await dutch.new_page()
        await page.goto(login["prompt_url"])
        assert await page.locator("h1").inner_text() == "Vul je verificatiecode in"
        await page.get_by_role("link", name="Gebruik een back-upcode").click()
        assert await page.locator("h1").inner_text() == "Gebruik een back-upcode"
    finally:
        await dutch.close()


async def test_a_dutch_account_gets_its_mail_in_dutch_naming_the_product_and_the_company(site, upstream, mailbox):
    from .conftest import mail_to

    _, account = await person(site, locale="nl", company="Bakkerij Jansen")
    backup = f"{account}@thuis.example"
    await site.api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": backup}, expect=202)
    confirm = await mail_to(mailbox, backup, "/mfa/backup-email/confirm")
    assert confirm.message["Subject"] == "Acme MFA: bevestig je back-up e-mailadres (Bakkerij Jansen)"
    text = confirm.message.get_body(preferencelist=("plain",)).get_content()
    assert text.startswith("Hallo Ada,") and "(over 24 uur)" in text
    assert "van Acme MFA over de beveiliging van je account bij Bakkerij Jansen." in text
    html = confirm.message.get_body(preferencelist=("html",)).get_content()
    assert 'lang="nl"' in html and "Dit adres bevestigen" in html


async def test_mail_times_are_in_the_persons_time_zone_when_known(site, mailbox):
    from .conftest import mail_to

    company = await site.api.company(name="Zone BV")
    account = f"acct-tz-{company[-6:]}"
    body = {"company_id": company, "email": f"{account}@example.com", "first_name": "Ada", "last_name": "L",
            "role": "employee", "mfa_required": False, "time_zone": "Mars/Olympus"}
    status, problem = await site.api.call("PUT", f"/v1/accounts/{account}", body)
    assert status == 400 and problem["code"] == "invalid_time_zone"
    await site.api.call("PUT", f"/v1/accounts/{account}", {**body, "time_zone": "America/New_York"}, expect=201)
    await site.api.call("PUT", f"/v1/accounts/{account}/backup-email", {"email": f"{account}@home.example"}, expect=202)
    mail = await mail_to(mailbox, f"{account}@home.example", "/mfa/backup-email/confirm")
    text = mail.message.get_body(preferencelist=("plain",)).get_content()
    assert "(America/New_York)" in text and " UTC " not in text
    # Without a time zone the mail says UTC.
    _, other = await person(site)
    await site.api.call("PUT", f"/v1/accounts/{other}/backup-email", {"email": f"{other}@home.example"}, expect=202)
    mail = await mail_to(mailbox, f"{other}@home.example", "/mfa/backup-email/confirm")
    assert " UTC (in 24 hours)" in mail.message.get_body(preferencelist=("plain",)).get_content()
