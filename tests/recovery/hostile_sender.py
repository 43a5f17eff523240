"""The attacker of the login-latency test, run as a process of its own: hostile mails and forms, answers as JSON.

`python -m tests.recovery.hostile_sender SMTP_PORT RECOVERY_URL SERVICE_KEY` prints one JSON list:
the SMTP codes of three hostile mails, then [status, code] of two hostile forms.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp
import aiosmtplib

from .mails import HELPDESK
from .test_hostile_input import empty_parts_form, long_line_mail


async def main(smtp_port: int, recovery: str, key: str) -> list:
    # Each is far past what the old patterns could take (100,000 characters without "@": minutes).
    mails = [long_line_mail("x" * 200_000), long_line_mail("<a " * 70_000, subtype="html"),
             long_line_mail("Name" + " " * 200_000 + ":")]

    async def hostile_mail(raw: bytes) -> int:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port, timeout=120) as smtp:
            await smtp.mail("someone@attacker.example")
            await smtp.rcpt(HELPDESK)
            try:
                return (await smtp.data(raw)).code
            except aiosmtplib.SMTPResponseException as exc:
                return exc.code

    async def preamble():
        # 11 MB without Content-Length and without a boundary: only a cap on streamed bytes stops it.
        for _ in range(1375):
            yield b"x" * 7998 + b"\r\n"

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async def hostile_form(body, *, chunked: bool = False) -> list:
            headers = {"Content-Type": "multipart/form-data; boundary=b"}
            try:
                async with http.post(f"{recovery}/v1/recovery-requests", data=body, headers=headers,
                                     chunked=chunked or None) as resp:
                    problem = await resp.json(content_type=None)
                    return [resp.status, problem.get("code", "")]
            except aiohttp.ClientError as exc:  # the server may close the connection on a body it refused
                return [0, type(exc).__name__]

        return list(await asyncio.gather(*(hostile_mail(raw) for raw in mails),
                                         hostile_form(empty_parts_form(200_000)),
                                         hostile_form(preamble(), chunked=True)))


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))), flush=True)
