"""Test mails built the way phone and desktop mail clients build them, and test images."""

from __future__ import annotations

import io
import os
from email.message import EmailMessage
from email.mime.base import MIMEBase
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid

HELPDESK = "helpdesk@mfa.localhost"


def _image(fmt: str, width: int = 48, height: int = 32) -> bytes:
    """A small real image of noise: something Pillow decodes, as the service now requires."""
    from PIL import Image

    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    if fmt == "HEIF":
        from pillow_heif import register_heif_opener

        register_heif_opener()
    img.save(out, format=fmt)
    return out.getvalue()


def jpeg(size: int = 2048) -> bytes:
    """A real JPEG of `size` bytes: a small decodable image, padded with zeros after its end marker."""
    head = _image("JPEG")
    return head + b"\0" * max(0, size - len(head))


def png(size: int = 1024) -> bytes:
    """A real PNG of `size` bytes (padding after IEND, which decoders ignore)."""
    head = _image("PNG")
    return head + b"\0" * max(0, size - len(head))


def heic(size: int = 1024) -> bytes:
    """An iPhone photo: a real HEIC image (its size is what the encoder makes of it)."""
    return _image("HEIF")


def pdf(size: int = 1024) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size)


def _headers(msg, *, sender: str, subject: str) -> None:
    msg["From"] = sender
    msg["To"] = HELPDESK
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain="phone.example")


def iphone_mail(*, sender: str, subject: str, body: str, photo: bytes | None, filename: str = "IMG_0421.jpeg",
                photo_type: str = "jpeg") -> bytes:
    """iOS Mail: multipart/mixed with multipart/alternative (QP text + HTML) and a base64 photo."""
    msg = MIMEMultipart("mixed")
    _headers(msg, sender=sender, subject=subject)
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText(body, "plain", "utf-8"))
    alt.get_payload()[0].replace_header("Content-Transfer-Encoding", "quoted-printable")
    alt.get_payload()[0].set_payload(_qp(body))
    html = "<html><head><style>p{margin:0}</style></head><body>" + "".join(
        f"<div>{line}</div>" if line else "<div><br></div>" for line in body.splitlines()) + "</body></html>"
    alt.attach(MIMEText(html, "html", "utf-8"))
    msg.attach(alt)
    if photo is not None:
        image = MIMEImage(photo, photo_type, name=filename)
        image.add_header("Content-Disposition", "attachment", filename=filename)
        msg.attach(image)
    return msg.as_bytes()


def _qp(text: str) -> str:
    import quopri

    return quopri.encodestring(text.encode("utf-8")).decode("ascii")


def android_html_only(*, sender: str, subject: str, html: str, photo: bytes, cid: str = "photo1@android") -> bytes:
    """An HTML-only body with the photo inline (multipart/related, Content-ID) as some Android clients send."""
    msg = MIMEMultipart("related")
    _headers(msg, sender=sender, subject=subject)
    msg.attach(MIMEText(html.replace("{cid}", cid), "html", "utf-8"))
    image = MIMEImage(photo, "jpeg")
    image.add_header("Content-ID", f"<{cid}>")
    image.add_header("Content-Disposition", "inline")
    msg.attach(image)
    return msg.as_bytes()


def plain_with_attachment(*, sender: str, subject: str, body: str, data: bytes, maintype: str, subtype: str,
                          filename: str, reply_to: str | None = None, extra_headers: dict | None = None) -> bytes:
    """EmailMessage API (as desktop clients): text body and one attachment of any type."""
    msg = EmailMessage()
    _headers(msg, sender=sender, subject=subject)
    if reply_to:
        msg["Reply-To"] = reply_to
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def forwarded(*, sender: str, original: bytes, note: str = "See my earlier mail below.") -> bytes:
    """A forward with the original mail attached as message/rfc822."""
    msg = MIMEMultipart("mixed")
    _headers(msg, sender=sender, subject="Fwd: something")
    msg.attach(MIMEText(note, "plain", "utf-8"))
    part = MIMEBase("message", "rfc822")
    from email import message_from_bytes

    part.set_payload([message_from_bytes(original)])
    msg.attach(part)
    return msg.as_bytes()


def raw_mail_with_photo(*, sender: str, subject: str, body: str, photo: bytes, filename: str = "IMG_2001.JPG") -> bytes:
    """A multipart/mixed mail written byte by byte (fast for big photos), base64 wrapped at 76 columns."""
    import base64

    encoded = base64.encodebytes(photo).replace(b"\n", b"\r\n")
    return (
        f"From: {sender}\r\nTo: {HELPDESK}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid(domain='phone.example')}\r\n"
        'Content-Type: multipart/mixed; boundary="Apple-Mail-5F1C"\r\n\r\n'
        "--Apple-Mail-5F1C\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body}\r\n"
        "--Apple-Mail-5F1C\r\n"
        f'Content-Type: image/jpeg; name="{filename}"\r\nContent-Disposition: attachment; filename="{filename}"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + encoded + b"--Apple-Mail-5F1C--\r\n"
