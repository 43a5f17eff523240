"""Mail templates: one plain-text and one HTML skeleton per kind, worded from the gettext catalogue.

Files live flat in `templates/` as `<kind>.txt` and `<kind>.html`: the layout of a mail, whose
words are `[[key]]` markers filled at start-up from the product's one message catalogue
(`services.common.i18n`, the same one the hosted pages use) for every language it has;
`[[greeting]]` is the "Hello $first_name," line. A file `<kind>.<locale>.txt`/`.html` instead gives
a whole mail for one language as is (the helpdesk's English-only notice). `$product` is the product's
name (MFA_PRODUCT_NAME). The text file starts with a `Subject: ...` line and a blank line. Values are `$name` (string.Template);
`{{#name}}...{{/name}}` keeps its content only when the value is non-empty, `{{^name}}...{{/name}}`
only when it is empty. HTML bodies are wrapped in `_layout.<locale>.html` (`$content`), text
bodies get `_footer.<locale>.txt` appended. A locale falls back to English kind by kind.
Values are HTML-escaped in HTML and stripped of control characters in text; a subject whose
values carry CR/LF is refused (BadMail `unsafe_header`), never repaired.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

from ..common import i18n
from .domain import DEFAULT_LOCALE, BadMail, check_header, clean_text

TEMPLATE_DIR = Path(__file__).parent / "templates"
_SKELETON = re.compile(r"^(?P<kind>_?[a-z0-9_]+)\.(?P<ext>txt|html)$")
_MARK = re.compile(r"\[\[([a-z_.]+)\]\]")

# Tags never consume the line breaks around them: what is between them is kept or dropped exactly.
_SECTION = re.compile(r"\{\{([#^])(\w+)\}\}(.*?)\{\{/\2\}\}", re.S)
_SECTION_NAME = re.compile(r"\{\{[#^](\w+)\}\}")
_FILE = re.compile(r"^(?P<kind>_?[a-z0-9_]+)\.(?P<locale>[a-z]{2,8}(?:-[a-z0-9]{1,8})*)\.(?P<ext>txt|html)$")


class TemplateError(ValueError):
    """The template folder is incomplete or a template does not parse."""


@dataclass(frozen=True)
class Rendered:
    """A filled-in mail: subject, plain text and HTML, and the locale that was used."""

    subject: str
    text: str
    html: str
    locale: str


@dataclass(frozen=True)
class _Source:
    subject: str
    text: str
    html: str
    sections: tuple[str, ...]  # names used in {{#...}} / {{^...}} tags, in a fixed order


@dataclass(frozen=True)
class _Resolved:
    """A source with its sections decided for one pattern of empty/non-empty values."""

    subject: Template
    text: Template
    html: Template


def _sections(source: str, values: Mapping[str, str]) -> str:
    def keep(match: re.Match) -> str:
        shown = bool(values.get(match[2]))
        return match[3] if shown == (match[1] == "#") else ""

    previous = None
    while previous != source:  # inner sections of other names are handled on the next pass
        previous, source = source, _SECTION.sub(keep, source)
    return source


def _fill(template: Template, values: Mapping[str, str], name: str) -> str:
    try:
        return template.substitute(values)
    except KeyError as exc:
        raise BadMail("missing_data", f"template {name} needs {exc.args[0]!r}, which the event does not carry") from exc
    except ValueError as exc:
        raise BadMail("missing_data", f"template {name} does not parse: {exc}") from exc


class Catalog:
    """Every template by (kind, locale); renders a kind for the first locale of a chain that has it."""

    def __init__(self, sources: dict[tuple[str, str], _Source], layouts: dict[str, str], footers: dict[str, str]):
        self._sources = sources
        self._layouts = layouts
        self._footers = footers
        # Sections depend only on which values are empty: resolved once per pattern, not per mail.
        self._resolved: dict[tuple[str, str, tuple[bool, ...]], _Resolved] = {}

    @classmethod
    def load(cls, folder: Path = TEMPLATE_DIR, required: Iterable[str] = (), *, product_name: str = "MFA",
             catalogue: i18n.Catalogue | None = None) -> Catalog:
        """Read a template folder; TemplateError when an English template of `required` is missing."""
        catalogue = catalogue or i18n.catalogue()
        texts: dict[tuple[str, str], str] = {}
        htmls: dict[tuple[str, str], str] = {}
        for path in sorted(folder.iterdir()):
            skeleton = _SKELETON.match(path.name)
            if skeleton:
                for locale in i18n.LOCALES:
                    key = (skeleton["kind"], locale)
                    html_part = skeleton["ext"] == "html"
                    words = _worded(path.read_text(encoding="utf-8"), locale, catalogue, html_part, path.name)
                    (htmls if html_part else texts).setdefault(key, words)
        for path in sorted(folder.iterdir()):
            match = _FILE.match(path.name)
            if not match:
                continue
            key = (match["kind"], match["locale"])
            (texts if match["ext"] == "txt" else htmls)[key] = path.read_text(encoding="utf-8")
        # The product's name is part of every mail; `$$` keeps a `$` in it from reading as a placeholder.
        product = product_name.replace("$", "$$")
        texts = {k: v.replace("$product", product) for k, v in texts.items()}
        htmls = {k: v.replace("$product", html.escape(product, quote=False)) for k, v in htmls.items()}
        layouts = {loc: body for (kind, loc), body in htmls.items() if kind == "_layout"}
        footers = {loc: body for (kind, loc), body in texts.items() if kind == "_footer"}
        sources: dict[tuple[str, str], _Source] = {}
        for key, text in texts.items():
            kind, locale = key
            if kind.startswith("_"):
                continue
            if key not in htmls:
                raise TemplateError(f"{kind}.{locale}.txt has no {kind}.{locale}.html")
            head, sep, body = text.partition("\n\n")
            if not sep or not head.startswith("Subject:") or "\n" in head:
                raise TemplateError(f"{kind}.{locale}.txt must start with one 'Subject: ...' line and a blank line")
            for part in (head, body, htmls[key]):
                if not Template(part).is_valid():
                    raise TemplateError(f"{kind}.{locale} has a malformed $placeholder")
            frame = (layouts.get(locale, layouts.get(DEFAULT_LOCALE, "")), footers.get(locale, footers.get(DEFAULT_LOCALE, "")))
            names = tuple(sorted({m[1] for part in (head, body, htmls[key], *frame) for m in _SECTION_NAME.finditer(part)}))
            sources[key] = _Source(head.removeprefix("Subject:").strip(), body, htmls[key], names)
        for kind in required:
            if (kind, DEFAULT_LOCALE) not in sources:
                raise TemplateError(f"no English template for {kind} in {folder}")
        if DEFAULT_LOCALE not in layouts or DEFAULT_LOCALE not in footers:
            raise TemplateError(f"_layout.{DEFAULT_LOCALE}.html and _footer.{DEFAULT_LOCALE}.txt are needed in {folder}")
        return cls(sources, layouts, footers)

    def kinds(self) -> set[str]:
        """The kinds that have a template in at least one language."""
        return {kind for kind, _ in self._sources}

    def render(self, kind: str, locales: Iterable[str], values: Mapping[str, str]) -> Rendered:
        """Fill in `kind` for the first locale that has it; BadMail('missing_data') when a value is missing."""
        for locale in locales:
            source = self._sources.get((kind, locale))
            if source is not None:
                break
        else:
            raise BadMail("missing_data", f"there is no template {kind!r}")
        name = f"{kind}.{locale}"
        resolved = self._resolve(kind, locale, source, values)
        # The subject is a header: it is filled with the values as given and refused if they carry
        # CR/LF (an injection attempt), never silently repaired. Bodies get cleaned values.
        subject = check_header(_fill(resolved.subject, values, name).strip(), "subject")
        plain = {k: clean_text(v) for k, v in values.items()}
        escaped = {k: html.escape(v, quote=True) for k, v in plain.items()}
        escaped["subject"] = html.escape(subject, quote=True)
        return Rendered(subject=subject, text=_fill(resolved.text, plain, name),
                        html=_fill(resolved.html, escaped, name), locale=locale)

    def _resolve(self, kind: str, locale: str, source: _Source, values: Mapping[str, str]) -> _Resolved:
        pattern = tuple(bool(values.get(n)) for n in source.sections)
        key = (kind, locale, pattern)
        resolved = self._resolved.get(key)
        if resolved is None:
            shown = {n: "yes" for n, on in zip(source.sections, pattern, strict=True) if on}
            footer = self._footers.get(locale, self._footers[DEFAULT_LOCALE])
            text = re.sub(r"\n{3,}", "\n\n", f"{_sections(source.text, shown).strip()}\n\n{_sections(footer, shown)}").rstrip() + "\n"
            layout = self._layouts.get(locale, self._layouts[DEFAULT_LOCALE])
            # The layout's own placeholders are filled now; $subject stays for the mail's subject.
            page = Template(_sections(layout, shown)).safe_substitute(content=_sections(source.html, shown),
                                                    lang=html.escape(locale, quote=True))
            resolved = _Resolved(Template(_sections(source.subject, shown)), Template(text), Template(page))
            self._resolved[key] = resolved
        return resolved


def _worded(skeleton: str, locale: str, catalogue: i18n.Catalogue, escape: bool, name: str) -> str:
    """A skeleton with its `[[key]]` markers replaced by the catalogue's words in `locale`."""

    def words(key: str) -> str:
        text = catalogue.text(locale, key)
        if text == key:
            raise TemplateError(f"{name}: the catalogue has no text {key!r}")
        return html.escape(text, quote=False) if escape else text

    def one(match: re.Match) -> str:
        if match[1] == "greeting":
            return (f"{{{{#first_name}}}}{words('mail.hello_named')}{{{{/first_name}}}}"
                    f"{{{{^first_name}}}}{words('mail.hello')}{{{{/first_name}}}}")
        return words(match[1])

    return _MARK.sub(one, skeleton)
