"""Reading a mail sent to the helpdesk mailbox into an :class:`IntakeRequest`. Pure: no I/O.

Mail comes from every kind of client: multipart/mixed or alternative, quoted-printable or base64,
HTML-only bodies, inline images, replies and forwards, odd charsets and broken MIME. Whatever
arrives, :func:`parse_mail` returns a request; what it could not find is left empty and a
problem code says why, so the ticket opens as `incomplete` and the requester is told what to send.
"""

from __future__ import annotations

import dataclasses
import re
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses
from html import unescape

from .domain import (
    MAX_PHOTO_BYTES,
    IntakeRequest,
    Photo,
    clean_company,
    clean_name,
    normalize_email,
    sniff_image,
    valid_email,
)
from .imaging import PhotoRejected, reencode_photo

MAX_PARTS = 200  # a mail with more parts than this is not a phone's recovery request
MAX_TEXT_CHARS = 100_000  # only the start of a body is read for the fields
# The stdlib parser slows down quadratically on deeply nested multiparts, very many parts, and
# (with the modern header policy) huge headers. Recovery mails are small trees, so anything
# beyond these bounds is refused before parsing, and headers are decoded here, length-capped.
MAX_MULTIPARTS = 50
MAX_BOUNDARY_LINES = 1000
# The parser's cost grows with lines; a 10 MB photo in base64 is ~185,000 lines of 76 characters.
MAX_LINES = 250_000
MAX_HEADER_CHARS = 2000
# Every pattern below runs over one line at a time, cut to this length: what a person types on one
# line of a recovery mail is far shorter, and the cost of each match stays bounded by it.
MAX_LINE_CHARS = 2000
# At most this many "@" are looked at per text, so a body of at-signs costs no more than a page of text.
MAX_AT_SIGNS = 1000
MAX_LOCAL_CHARS = 64
MAX_DOMAIN_CHARS = 253
# Spelled out case by case: an order of magnitude faster on 15 MB than IGNORECASE with MULTILINE.
_MULTIPART_HEADER = re.compile(
    rb"\n[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Tt][Yy][Pp][Ee]:[ \t]*(?:\r?\n[ \t]+)?[Mm][Uu][Ll][Tt][Ii][Pp][Aa][Rr][Tt]/")

_SUBJECT_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|aw|wg|sv|vs|tr|antw|doorst|rif|r)\s*(?:\[\d+\])?\s*[:\uff1a]\s*)+", re.I)
_SUBJECT_PHRASE = re.compile(r"\breset(?:ting)?\s+(?:the\s+|my\s+|of\s+)?mfa(?:\s+authenticator)?\b", re.I)
# Addresses are found from their "@" outwards (see find_addresses), never by a pattern that starts
# at every character: `[...]+@` over a long line without "@" backtracks quadratically.
_AT = re.compile("@")
_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+'-")
_DOMAIN = re.compile(r"[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})+")
# No two adjacent parts can match the same characters, so a line is matched in one pass.
_LABEL_LINE = re.compile(r"\s*(?:[*\-\u2022]\s*)?(?P<label>[^\W\d_][\w \-'.]{0,40}?)\s{0,40}[:\uff1a=]")
_MY_NAME = re.compile(r"\b(?:my name is|mijn naam is|ich heiße|je m'appelle)\s+(?P<rest>[^\n]{1,120})", re.I)
_QUOTE_MARKERS = re.compile(
    r"^\s*(?:on\s.{0,200}\swrote:|op\s.{0,200}\sschreef.*:|am\s.{0,200}\sschrieb.*:|"
    r"-{2,}\s*(?:original message|forwarded message|oorspronkelijk bericht|doorgestuurd bericht)\s*-{2,}|"
    r"begin forwarded message:|_{10,})\s*$",
    re.I,
)
_NAME_PARTICLES = {"de", "den", "der", "van", "von", "di", "da", "du", "le", "la", "del", "della", "ten", "ter", "zu", "y"}
_SUBJECT_LABELS = ("subject", "onderwerp", "betreff", "objet")
# Header-like labels of quoted or forwarded mail: never a field of the request.
_IGNORED_LABELS = {"from", "to", "cc", "bcc", "sent", "date", "subject", "reply to", "van", "aan", "verzonden",
                   "onderwerp", "datum", "von", "an", "betreff", "gesendet", "de", "objet", "envoyé", "http", "https"}


def parse_mail(raw: bytes, *, mailbox: tuple[str, ...] = (), envelope_sender: str = "", ip: str = "") -> IntakeRequest:
    """Read a raw RFC 5322 message; never raises, whatever the bytes.

    `mailbox` lists the helpdesk's own addresses, never taken for the account email.
    """
    sender = normalize_email(envelope_sender)
    fallback_reply = sender if valid_email(sender) else None
    unreadable = IntakeRequest(channel="email", problems=("unreadable_mail",), reply_to=fallback_reply,
                               sender=sender, ip=ip)
    if not within_bounds(raw):
        return unreadable
    try:
        # compat32 parses structure only; headers are decoded lazily below, with length caps.
        msg = BytesParser(policy=policy.compat32).parsebytes(raw)
        return _read(msg, {normalize_email(a) for a in mailbox}, sender, fallback_reply, ip)
    except Exception:  # the bytes come from anyone on the internet; a failure is a finding
        return unreadable


def read_mail(raw: bytes, mailbox: tuple[str, ...], envelope_sender: str, ip: str) -> IntakeRequest:
    """The whole reading of a mail, as the parse pool runs it: :func:`parse_mail`, then the photo re-encoded.

    A photo that does not decode is dropped with its problem code (`photo_not_an_image`), as a
    photo of the wrong type is: the ticket opens incomplete and the requester is asked again.
    """
    request = parse_mail(raw, mailbox=mailbox, envelope_sender=envelope_sender, ip=ip)
    if request.photo is None:
        return request
    try:
        photo = reencode_photo(request.photo.data)
    except PhotoRejected as exc:
        return dataclasses.replace(request, photo=None, problems=(*request.problems, exc.code))
    return dataclasses.replace(request, photo=photo)


def within_bounds(raw: bytes) -> bool:
    """False for mails whose structure alone would make parsing slow (see MAX_MULTIPARTS)."""
    if raw.count(b"\n") > MAX_LINES or raw.count(b"\n--") > MAX_BOUNDARY_LINES:
        return False
    return len(_MULTIPART_HEADER.findall(b"\n" + raw)) <= MAX_MULTIPARTS


def _read(msg: Message, mailbox: set[str], sender: str, fallback_reply: str | None, ip: str) -> IntakeRequest:
    problems: list[str] = []
    subject = _header(msg, "subject")
    from_name, from_addr = _address(msg, "from")
    _, reply_addr = _address(msg, "reply-to")
    reply_to = next((a for a in (reply_addr, from_addr) if a and valid_email(a)), fallback_reply)

    primary, others = _texts(msg)
    fresh, quoted = split_quoted(primary)
    # What the sender wrote now comes first, then what they quote or forward, then other text parts.
    chunks = [fresh, quoted, *others]
    fields: dict[str, str] = {}
    for chunk in chunks:
        for kind, value in labelled_fields(chunk).items():
            fields.setdefault(kind, value)

    company = _company(msg, subject, chunks, fields, problems)
    email = _account_email(chunks, fields, from_addr, mailbox, problems)
    first, last = _names(chunks, fields, from_name, problems)
    photo, photo_problems = find_photo(msg)
    problems.extend(photo_problems)
    return IntakeRequest(
        channel="email",
        email=email,
        first_name=first,
        last_name=last,
        company_name=company,
        photo=photo,
        problems=tuple(problems),
        reply_to=reply_to,
        sender=sender,
        ip=ip,
    )


def _company(msg: Message, subject: str, chunks: list[str], fields: dict[str, str], problems: list[str]) -> str:
    """The subject as the article asks, else a forwarded mail's subject, else a labelled line."""
    found = company_from_subject(subject)
    if found is None:
        found = next(filter(None, (company_from_subject(s) for s in _attached_subjects(msg))), None)
    if found is None:
        found = next(filter(None, (company_from_subject(line.partition(":")[2]) for chunk in chunks
                                   for line in chunk.splitlines()
                                   if line.partition(":")[0].strip().casefold() in _SUBJECT_LABELS)), None)
    if found is None and "company" in fields:
        found = clean_company(fields["company"])
        if found is None:
            problems.append("invalid_company_name")
    if found is None and not _SUBJECT_PHRASE.search(_strip_prefixes(subject)):
        problems.append("subject_not_recognised")
    return found or ""


def _account_email(chunks: list[str], fields: dict[str, str], from_addr: str, mailbox: set[str],
                   problems: list[str]) -> str:
    """A labelled address, else the first address written in the body, else the sender's."""
    if "email" in fields:
        found = next(find_addresses(fields["email"]), None)
        if found and valid_email(found):
            return found
        problems.append("invalid_email")
    for chunk in chunks:
        for address in find_addresses(chunk):
            if normalize_email(address) not in mailbox and valid_email(address):
                return address
    if from_addr and valid_email(from_addr) and normalize_email(from_addr) not in mailbox:
        return from_addr
    return ""


def find_addresses(text: str):
    """The email addresses written in `text`, in order; linear in its length, at most MAX_AT_SIGNS looked at.

    Each "@" is grown outwards: up to 64 address characters to its left (a longer run is no
    address) and a dotted domain to its right.
    """
    end_of_last = 0
    for count, at in enumerate(_AT.finditer(text)):
        if count >= MAX_AT_SIGNS:
            return
        pos = at.start()
        if pos < end_of_last:
            continue
        start = pos
        while start > max(end_of_last, pos - MAX_LOCAL_CHARS - 1) and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        if start == pos or pos - start > MAX_LOCAL_CHARS:
            continue
        domain = _DOMAIN.match(text, pos + 1, pos + 1 + MAX_DOMAIN_CHARS)
        if domain is None:
            continue
        end_of_last = domain.end()
        yield text[start:end_of_last]


def bounded_lines(text: str) -> str:
    """`text` with every line cut to MAX_LINE_CHARS: the bound on work of every per-line pattern."""
    if all(len(line) <= MAX_LINE_CHARS for line in text.splitlines()):
        return text
    return "\n".join(line[:MAX_LINE_CHARS] for line in text.splitlines())


def _names(chunks: list[str], fields: dict[str, str], from_name: str, problems: list[str]) -> tuple[str, str]:
    """Labelled names, else "my name is ...", else the sender's display name; refused when not a name."""
    given_first, given_last = fields.get("first_name"), fields.get("last_name")
    if given_first is None and given_last is None and "full_name" in fields:
        given_first, given_last = split_full_name(fields["full_name"])
    if given_first is None and given_last is None:
        said = next(filter(None, (_MY_NAME.search(chunk) for chunk in chunks)), None)
        if said:
            given_first, given_last = split_full_name(_name_words(said.group("rest")))
    if given_first is None and given_last is None and from_name:
        given_first, given_last = split_full_name(from_name)
    first = (clean_name(given_first) or "") if given_first else ""
    last = (clean_name(given_last) or "") if given_last else ""
    if given_first and not first:
        problems.append("invalid_first_name")
    if given_last and not last:
        problems.append("invalid_last_name")
    return first, last


def _raw_header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a malformed header is as good as an absent one
        return ""
    return str(value)[:MAX_HEADER_CHARS] if value is not None else ""


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded (unknown charsets left as they are), whitespace collapsed."""
    try:
        value = str(make_header(decode_header(value)))
    except Exception:  # unknown charset or broken encoded word: keep the raw text
        pass
    return " ".join(value.split())


def _header(msg: Message, name: str) -> str:
    return decode_words(_raw_header(msg, name))


def _address(msg: Message, name: str) -> tuple[str, str]:
    """(display name, address) of an address header; the display name decoded."""
    raw = _raw_header(msg, name)
    if not raw:
        return "", ""
    try:
        pairs = getaddresses([raw])
    except Exception:  # malformed address list
        return "", ""
    display, addr = pairs[0] if pairs else ("", "")
    return decode_words(display), addr.strip()


def _attached_subjects(msg: Message) -> list[str]:
    """Subjects of mails attached whole (a forward as message/rfc822)."""
    subjects = []
    for count, part in enumerate(msg.walk()):
        if count >= MAX_PARTS:
            break
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                subjects.append(_header(inner[0], "subject"))
    return subjects


def _strip_prefixes(subject: str) -> str:
    previous = None
    while previous != subject:
        previous = subject
        subject = _SUBJECT_PREFIX.sub("", subject)
    return subject.strip()


def company_from_subject(subject: str) -> str | None:
    """The company named in `Resetting MFA authenticator (<company>)`, tolerating case, Re:/Fwd: and dashes."""
    subject = _strip_prefixes(" ".join(subject.split()))
    found = _SUBJECT_PHRASE.search(subject)
    if not found:
        return None
    rest = subject[found.end():].strip()
    if rest.startswith("(") and ")" in rest:
        rest = rest[1:rest.rindex(")")]
    elif rest[:1] in ("-", "\u2013", "\u2014", ":", "|", "/"):
        rest = rest[1:]
    elif rest.startswith(("for ", "voor ", "für ")):
        rest = rest.split(" ", 1)[1]
    return clean_company(rest.strip(" ()[]\"'"))


def _texts(msg: Message) -> tuple[str, list[str]]:
    """The main body as text (the first plain part, else the first HTML part) and the other text parts."""
    plain: Message | None = None
    html: Message | None = None
    rest: list[Message] = []
    for part in leaves(msg):
        if part.get_content_maintype() != "text" or _is_attachment(part):
            continue
        subtype = part.get_content_subtype()
        if subtype == "plain" and plain is None:
            plain = part
        elif subtype == "html" and html is None:
            html = part
        else:
            rest.append(part)
    body = plain or html
    if plain is not None and html is not None:
        rest.insert(0, html)
    others = [text for text in (part_text(p) for p in rest) if text.strip()]
    return (part_text(body) if body is not None else ""), others


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment"


def leaves(msg: Message):
    """The non-multipart parts of `msg` (attached mails included), at most MAX_PARTS of them.

    Parts whose Content-Type or Content-Disposition is absurdly long are skipped: reading their
    parameters is quadratic in the stdlib.
    """
    for count, part in enumerate(msg.walk()):
        if count >= MAX_PARTS:
            return
        if part.is_multipart():
            continue
        if any(len(str(part.get(h, ""))) > MAX_HEADER_CHARS for h in ("content-type", "content-disposition")):
            continue
        yield part


def part_text(part: Message) -> str:
    """A text part decoded to str (unknown charsets read as UTF-8 with replacements); HTML as plain text."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    payload = payload[: MAX_TEXT_CHARS * 4]
    charset = (part.get_content_charset() or "utf-8").strip()
    if charset in ("us-ascii", "ascii"):
        charset = "utf-8"  # clients declare ASCII and send UTF-8 more often than not
    try:
        content = payload.decode(charset, "replace")
    except LookupError:
        content = payload.decode("utf-8", "replace")
    content = content[:MAX_TEXT_CHARS]
    if part.get_content_subtype() == "html":
        content = html_to_text(content)
    return bounded_lines(content)


# One token of HTML: a tag (its attributes up to 2000 characters, never across another "<"), the
# start of a comment, or a declaration or processing instruction. Because no part of it can run past
# the next "<", a failed match costs at most the distance to it, and a whole body is read in linear
# time (html.parser rescans an unclosed tag from its start on each "<": minutes for `<a <a <a ...`).
_HTML_TOKEN = re.compile(r"<(?:(?P<close>/?)(?P<name>[A-Za-z][A-Za-z0-9]{0,20})(?P<rest>[^<>]{0,2000})>"
                         r"|(?P<comment>!--)|[!?][^<>]{0,2000}>)")
_HTML_BLOCKS = {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr", "pre"}
_HTML_HIDDEN = {"script", "style", "head", "title"}


def html_to_text(html: str) -> str:
    """The visible text of an HTML body, one block per line; blockquotes come out as `> ` quoted lines.

    Linear in the length of `html`, whatever it holds; broken markup is read as text.
    """
    lines: list[tuple[int, list[str]]] = [(0, [])]
    quote = hidden = pos = 0
    while True:
        token = _HTML_TOKEN.search(html, pos)
        data = html[pos:token.start() if token else len(html)]
        if data and not hidden:
            if lines[-1][0] != quote:
                lines.append((quote, []))
            lines[-1][1].append(unescape(data))
        if token is None:
            break
        pos = token.end()
        if token.group("comment"):
            end = html.find("-->", pos)
            pos = len(html) if end < 0 else end + 3
            continue
        name = (token.group("name") or "").lower()
        if not name:
            continue
        closing, empty = bool(token.group("close")), token.group("rest").endswith("/")
        if name in _HTML_HIDDEN and not empty:
            hidden = max(0, hidden - 1) if closing else hidden + 1
        elif name == "blockquote" and not empty:
            quote = max(0, quote - 1) if closing else quote + 1
            lines.append((quote, []))
        elif name in _HTML_BLOCKS:
            lines.append((quote, []))
    out = []
    for depth, parts in lines:
        line = " ".join("".join(parts).split())
        if line:
            out.append("> " * depth + line)
    return "\n".join(out)


def split_quoted(text: str) -> tuple[str, str]:
    """Split a body into what the sender wrote now and what it quotes or forwards."""
    fresh: list[str] = []
    quoted: list[str] = []
    in_quote = False
    for line in text.splitlines():
        stripped = line.lstrip()
        if not in_quote and _QUOTE_MARKERS.match(line):
            in_quote = True
            continue
        if stripped.startswith(">"):
            quoted.append(re.sub(r"^(?:\s*>)+\s?", "", line))
        elif in_quote:
            quoted.append(line)
        else:
            fresh.append(line)
    return "\n".join(fresh), "\n".join(quoted)


def _label_kind(label: str) -> str | None:
    key = " ".join(label.casefold().replace("-", " ").replace("_", " ").strip(" *.").split())
    if key in _IGNORED_LABELS:
        return None
    if "company" in key or key in ("organisation", "organization", "bedrijf", "bedrijfsnaam", "firma", "employer",
                                   "firmenname", "entreprise", "société"):
        return "company"
    if "mail" in key:
        return "email"
    if key.startswith(("first", "given", "fore", "voornaam", "vorname", "prénom", "prenom")):
        return "first_name"
    if key.startswith(("last", "sur", "family", "achternaam", "nachname", "familienaam")) or key == "nom":
        return "last_name"
    if key in ("name", "full name", "your name", "naam", "volledige naam", "name and surname", "first and last name",
               "first name and last name", "voor en achternaam"):
        return "full_name"
    return None


def labelled_fields(text: str) -> dict[str, str]:
    """`Label: value` lines of a body, by kind (email, first_name, last_name, full_name, company)."""
    found: dict[str, str] = {}
    for line in text.splitlines()[:2000]:
        match = _LABEL_LINE.match(line)
        if not match:
            continue
        value = line[match.end():].strip()
        kind = _label_kind(match.group("label"))
        if value and kind and kind not in found:
            found[kind] = value
    # "First and last name: Jane Doe" reads as first_name by its prefix; it is a full name.
    if "first_name" in found and "last_name" not in found and "full_name" not in found:
        first, last = split_full_name(found["first_name"])
        if last:
            found.pop("first_name")
            found["full_name"] = f"{first} {last}"
    return found


def split_full_name(full: str) -> tuple[str | None, str | None]:
    """`Jane van der Berg` -> (`Jane`, `van der Berg`); `Berg, Jane` -> (`Jane`, `Berg`)."""
    full = " ".join(full.split())
    if not full:
        return None, None
    if "," in full:
        last, _, first = full.partition(",")
        return first.strip() or None, last.strip() or None
    words = full.split(" ")
    if len(words) == 1:
        return words[0], None
    return words[0], " ".join(words[1:])


def _name_words(rest: str) -> str:
    """The name at the start of `rest` ("Jane Doe and I lost my phone" -> "Jane Doe")."""
    words: list[str] = []
    for word in re.split(r"\s+", rest.strip()):
        token = word.strip(",.;:!?()\"")
        if not token:
            break
        if token[0].isupper() or (words and token.casefold() in _NAME_PARTICLES):
            words.append(token)
            if word != token:  # punctuation ends the name
                break
        else:
            break
        if len(words) >= 5:
            break
    while words and words[-1].casefold() in _NAME_PARTICLES:
        words.pop()
    return " ".join(words)


def find_photo(msg: Message) -> tuple[Photo | None, list[str]]:
    """The largest JPEG, PNG or HEIC image of the mail (attached or inline), recognised by its bytes.

    Problems are reported only when no usable photo was found.
    """
    best: Photo | None = None
    problems: list[str] = []
    for part in leaves(msg):
        maintype = part.get_content_maintype()
        if maintype == "message" or (maintype == "text" and not _is_attachment(part)):
            continue
        try:
            data = part.get_payload(decode=True)
        except Exception:  # an undecodable part is not a photo
            data = None
        if not isinstance(data, bytes) or not data:
            continue
        kind = sniff_image(data)
        if kind is None:
            if "photo_unsupported_type" not in problems:
                problems.append("photo_unsupported_type")
            continue
        if len(data) > MAX_PHOTO_BYTES:
            if "photo_too_large" not in problems:
                problems.append("photo_too_large")
            continue
        if best is None or len(data) > len(best.data):
            best = Photo(data, kind)
    return best, ([] if best else problems)
