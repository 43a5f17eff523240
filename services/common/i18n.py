"""English and Dutch texts from one gettext catalogue, for the hosted pages and the emails.

The catalogue is `services/locale/<lang>/LC_MESSAGES/messages.po`, read with Babel at start-up (no
compile step). Message ids are stable keys (`prompt.verify.title`); English has its own `msgstr`
like every other language, so a key missing in any language is found by the tests, not by a person.
Texts hold `{name}` placeholders, filled with `str.format_map`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.dates import format_datetime as babel_datetime
from babel.messages.pofile import read_po

LOCALES = ("en", "nl")
DEFAULT_LOCALE = "en"
LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
# The language names as their speakers write them, for the language switch.
LANGUAGE_NAMES = {"en": "English", "nl": "Nederlands"}

_TAG = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8})*")


class Catalogue:
    """Every message of every supported language: `text(locale, key, **values)`."""

    def __init__(self, messages: dict[str, dict[str, str]]) -> None:
        self._messages = messages

    @classmethod
    def load(cls, folder: Path = LOCALE_DIR, locales: Iterable[str] = LOCALES) -> Catalogue:
        """Read `<folder>/<lang>/LC_MESSAGES/messages.po` for each language."""
        messages: dict[str, dict[str, str]] = {}
        for locale in locales:
            path = folder / locale / "LC_MESSAGES" / "messages.po"
            with path.open("rb") as handle:
                catalog = read_po(handle, locale=locale)
            messages[locale] = {
                str(m.id): str(m.string) for m in catalog if m.id and isinstance(m.id, str) and m.string
            }
        return cls(messages)

    def keys(self, locale: str) -> set[str]:
        """The keys that have a text in `locale`."""
        return set(self._messages.get(locale, {}))

    def text(self, locale: str, key: str, /, **values: object) -> str:
        """The text of `key` in `locale` (English when that language lacks it, the key when both do)."""
        template = self._messages.get(locale, {}).get(key) or self._messages[DEFAULT_LOCALE].get(key) or key
        return template.format_map(_Values(values)) if values else template

    def translator(self, locale: str) -> Callable[..., str]:
        """`_(key, **values)` bound to one language, for templates."""

        def gettext(key: str, /, **values: object) -> str:
            return self.text(locale, key, **values)

        return gettext


class _Values(dict):
    """Placeholder values; one a text names but the caller did not give shows as nothing, not a crash."""

    def __missing__(self, key: str) -> str:
        return ""


@cache
def catalogue() -> Catalogue:
    """The product's catalogue, read once per process."""
    return Catalogue.load()


def supported(tag: str | None) -> str | None:
    """The supported language of a tag (`nl-BE` -> `nl`), or None."""
    if not tag or not _TAG.fullmatch(tag.strip()):
        return None
    primary = tag.strip().replace("_", "-").split("-", 1)[0].lower()
    return primary if primary in LOCALES else None


def from_accept_language(header: str | None) -> str | None:
    """The best supported language of an `Accept-Language` header, by q-value, or None."""
    choices: list[tuple[float, int, str]] = []
    for index, part in enumerate((header or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        match = re.search(r"q=([0-9.]{1,5})", params)
        if match:
            try:
                quality = float(match.group(1))
            except ValueError:
                continue
        lang = supported(tag)
        if lang and quality > 0:
            choices.append((-quality, index, lang))
    return min(choices)[2] if choices else None


def pick_locale(*candidates: str | None, accept_language: str | None = None) -> str:
    """The first supported of `candidates` (switch, account locale...), else `Accept-Language`, else English."""
    for candidate in candidates:
        lang = supported(candidate)
        if lang:
            return lang
    return from_accept_language(accept_language) or DEFAULT_LOCALE


def zone(name: str | None) -> tzinfo | None:
    """The IANA time zone `name` (`Europe/Amsterdam`), or None when it is unknown."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def format_moment(moment: datetime, locale: str, time_zone: str | None = None) -> str:
    """A date and time for a person: in their time zone when known (named), else in UTC, said as such."""
    tz = zone(time_zone)
    shown = babel_datetime(moment, "d MMMM y, HH:mm", tzinfo=tz or UTC, locale=supported(locale) or DEFAULT_LOCALE)
    return f"{shown} ({time_zone})" if tz else f"{shown} UTC"
