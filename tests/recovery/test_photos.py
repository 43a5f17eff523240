"""Photos are decoded and re-encoded: what does not decode is refused, EXIF (GPS) is gone, bombs are stopped."""

from __future__ import annotations

import io
import struct
import uuid
import zlib

from PIL import ExifTags, Image

from services.recovery.imaging import MAX_PIXELS, PhotoRejected, reencode_photo

from .mails import jpeg, plain_with_attachment
from .test_intake import form, post_form, send_mail


def gps_jpeg() -> bytes:
    """A real JPEG from a phone that recorded where it was taken (EXIF GPS IFD), rotated by EXIF."""
    img = Image.new("RGB", (64, 40), (180, 120, 90))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif[ExifTags.Base.Orientation] = 6  # shown rotated by 90 degrees
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (52.0, 22.0, 31.0),
        ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (4.0, 53.0, 28.0),
    }
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares `width` x `height` pixels: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def gps_of(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as img:
        return dict(img.getexif().get_ifd(ExifTags.IFD.GPSInfo))


def test_the_test_photo_carries_gps():
    assert gps_of(gps_jpeg())[ExifTags.GPS.GPSLatitudeRef] == "N"


def test_reencoding_drops_exif_and_applies_the_orientation():
    photo = reencode_photo(gps_jpeg())
    assert photo.content_type == "image/jpeg"
    with Image.open(io.BytesIO(photo.data)) as img:
        assert dict(img.getexif()) == {} and img.size == (40, 64)
    assert b"Exif" not in photo.data and b"PhoneMaker" not in photo.data


def test_bytes_that_only_look_like_an_image_are_refused():
    fake = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 40
    try:
        reencode_photo(fake)
    except PhotoRejected as exc:
        assert exc.code == "photo_not_an_image"
    else:
        raise AssertionError("a fake JPEG was accepted")


def test_a_decompression_bomb_is_refused_from_its_header():
    side = int(MAX_PIXELS ** 0.5) + 100
    try:
        reencode_photo(png_declaring(side, side))
    except PhotoRejected as exc:
        assert exc.code == "photo_too_large"
    else:
        raise AssertionError("a bomb was accepted")


async def test_the_form_stores_a_copy_without_gps(recovery):
    person = await recovery.company_with_account()
    resp = await post_form(recovery, form(person["email"], person["company_name"], photo=gps_jpeg()))
    assert resp.status == 202, await resp.text()
    ticket_id = (await resp.json())["ticket_id"]
    got = await recovery.client.get(f"/v1/recovery-tickets/{ticket_id}/photo", headers=recovery.auth("helpdesk"))
    assert got.status == 200 and got.content_type == "image/jpeg"
    stored = await got.read()
    assert gps_of(stored) == {} and b"Exif" not in stored


async def test_the_form_refuses_a_photo_that_does_not_decode_and_a_bomb(recovery):
    email, company = f"x.{uuid.uuid4().hex[:8]}@acme.example", f"Acme {uuid.uuid4().hex[:6]}"
    fake = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 40
    resp = await post_form(recovery, form(email, company, photo=fake))
    assert resp.status == 400 and (await resp.json())["code"] == "photo_not_an_image"
    side = int(MAX_PIXELS ** 0.5) + 100
    resp = await post_form(recovery, form(email, company, photo=png_declaring(side, side), photo_type="image/png"))
    assert resp.status == 413 and (await resp.json())["code"] == "photo_too_large"
    assert await recovery.ticket_row(email, company) is None  # nothing was stored


async def test_mail_photos_are_reencoded_and_a_fake_one_leaves_the_ticket_incomplete(recovery):
    person = await recovery.company_with_account()
    subject = f"Resetting MFA authenticator ({person['company_name']})"
    body = f"Account email: {person['email']}\nFirst name: Jane\nLast name: Doe"
    raw = plain_with_attachment(sender=person["email"], subject=subject, body=body, data=gps_jpeg(),
                                maintype="image", subtype="jpeg", filename="IMG_1.jpg")
    assert (await send_mail(recovery, raw, person["email"])).code == 250
    row = await recovery.ticket_row(person["email"], person["company_name"])
    stored = await recovery.runtime.pool.fetchval("SELECT data FROM recovery.photos WHERE ticket_id = $1",
                                                  row["ticket_id"])
    assert row["status"] == "open" and gps_of(bytes(stored)) == {}

    other = await recovery.company_with_account()
    fake = jpeg(3000)[:200] + bytes(range(256)) * 10  # a JPEG's first bytes, then no image
    raw = plain_with_attachment(sender=other["email"], subject=f"Resetting MFA authenticator ({other['company_name']})",
                                body=f"Account email: {other['email']}\nFirst name: Jane\nLast name: Doe", data=fake,
                                maintype="image", subtype="jpeg", filename="IMG_2.jpg")
    assert (await send_mail(recovery, raw, other["email"])).code == 250
    row = await recovery.ticket_row(other["email"], other["company_name"])
    assert row["status"] == "incomplete" and list(row["missing"]) == ["photo"]
    assert list(row["problems"]) == ["photo_not_an_image"]
