"""Odd input to the recovery API is a 400 or 404 with a stable code, never a 500 (issue 11, item 6)."""

from __future__ import annotations

import base64

import pytest


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8", "surrogatepass")).decode().rstrip("=")


@pytest.mark.parametrize("path", ["/v1/recovery-tickets/%00", "/v1/recovery-tickets/a%00b/photo",
                                  "/v1/recovery-tickets/%1B"])
async def test_control_characters_in_ticket_ids_are_400(recovery, path):
    resp = await recovery.client.get(path, headers=recovery.auth("helpdesk"))
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_characters"
    resp = await recovery.client.post(path.removesuffix("/photo") + "/claim", json={"agent": "ann"},
                                      headers=recovery.auth("helpdesk"))
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_characters"


@pytest.mark.parametrize("after", [
    "%00", cursor("2024-01-01T00:00:00+00:00|\x00"), cursor("9999-12-31T23:59:59-23:59|t"),
    cursor("0001-01-01T00:00:00+14:00|t"), cursor("2024-01-01T00:00:00|" + "\ud800"), cursor("x" * 500),
    cursor("2024-01-01T00:00:00+00:00|" + "t" * 300),
])
async def test_odd_cursors_are_400(recovery, after):
    resp = await recovery.client.get(f"/v1/recovery-tickets?after={after}", headers=recovery.auth("helpdesk"))
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["code"] in ("invalid_cursor", "invalid_characters")


def _multipart(part_headers: bytes) -> bytes:
    return (b"--b\r\n" + part_headers + b"\r\n\r\nvalue\r\n--b--\r\n")


@pytest.mark.parametrize("part_headers", [
    b'Content-Disposition: form-data; name="email"\r\nX-Bad: a\x00b',
    b'Content-Disposition: form-data; name="email"\r\nno colon here',
    b'Content-Disposition: form-data; name="em\x01ail"',
    b'Content-Disposition: form-data; name="email"\r\n X-Folded: continued',
    b'Content-Disposition: form-data; name="email"\r\n' + b"X-Long: " + b"a" * 9000,
    b'Content-Disposition: form-data; name="email"\r\n' + b"".join(b"X-%d: 1\r\n" % i for i in range(200)).rstrip(),
    b'Content-Disposition: form-data; name="email"\r\nContent-Transfer-Encoding: rot13',
], ids=["nul", "no-colon", "control-in-name", "folded", "long-header", "many-headers", "unknown-encoding"])
async def test_malformed_part_headers_are_400_invalid_multipart(recovery, part_headers):
    resp = await recovery.client.post(
        "/v1/recovery-requests", data=_multipart(part_headers),
        headers={**recovery.auth("service"), "Content-Type": "multipart/form-data; boundary=b"})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["code"] in ("invalid_multipart", "missing_field")


async def test_more_than_20_parts_is_400_and_a_chunked_body_is_capped(recovery):
    many = b"--b\r\n\r\n\r\n" * 5000 + b"--b--\r\n"
    headers = {**recovery.auth("service"), "Content-Type": "multipart/form-data; boundary=b"}
    resp = await recovery.client.post("/v1/recovery-requests", data=many, headers=headers)
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_multipart"

    async def endless():
        for _ in range(1200):  # 12 MB of preamble in short lines, never a boundary
            yield (b"x" * 998 + b"\r\n") * 10

    resp = await recovery.client.post("/v1/recovery-requests", data=endless(), headers=headers, chunked=True)
    assert resp.status == 413 and (await resp.json())["code"] == "photo_too_large", await resp.text()


async def test_json_bodies_sent_chunked_are_capped_too(recovery):
    async def big():
        yield b'{"agent": "'
        for _ in range(100):
            yield b"a" * 10_000
        yield b'"}'

    resp = await recovery.client.post("/v1/recovery-tickets/x/claim", data=big(), chunked=True,
                                      headers={**recovery.auth("helpdesk"), "Content-Type": "application/json"})
    assert resp.status == 413 and (await resp.json())["code"] == "payload_too_large"
