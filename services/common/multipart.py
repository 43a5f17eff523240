"""Multipart bodies from outside, read with a bound on work: total bytes (chunked too), parts, part headers.

aiohttp's reader caps each part header's size but not the number of parts nor the bytes of a
body without Content-Length: 200,000 empty parts, or a chunked body of any length, would each
keep the event loop busy. Every multipart body is read through `multipart_parts` and `read_part`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from .errors import BadRequest, MfaError, PayloadTooLarge
from .web import CONTROL_CHARACTERS, READ_CHUNK


class _BoundedStream:
    """A request's body stream that refuses to deliver more than `limit` bytes in all (chunked bodies included)."""

    def __init__(self, inner: Any, limit: int, too_large: Exception) -> None:
        self._inner = inner
        self._left = limit
        self._too_large = too_large

    def _count(self, data: bytes) -> bytes:
        self._left -= len(data)
        if self._left < 0:
            raise self._too_large
        return data

    async def read(self, n: int = -1) -> bytes:
        return self._count(await self._inner.read(n if n >= 0 else max(self._left + 1, 1)))

    async def readline(self, *, max_line_length: int | None = None) -> bytes:
        # A line may not outgrow what is left: the inner stream would buffer all of it first.
        budget = self._left + 1
        bound = max(1, min(max_line_length or budget, budget))
        try:
            line = await self._inner.readline(max_line_length=bound)
        except LineTooLong:
            if bound == budget:  # the line is too long for what is left of the body, not for a line
                raise self._too_large from None
            raise
        return self._count(line)

    def unread_data(self, data: bytes) -> None:
        self._left += len(data)
        self._inner.unread_data(data)

    def at_eof(self) -> bool:
        return self._inner.at_eof()


async def multipart_parts(request: web.Request, *, max_bytes: int, max_parts: int,
                          too_large: MfaError | None = None) -> AsyncIterator[BodyPartReader]:
    """The parts of a multipart body, bounded in number, in total bytes (chunked too) and per header.

    A body beyond `max_bytes` raises `too_large` (413 `payload_too_large` by default), more than
    `max_parts` parts, nested multiparts, and malformed boundaries or part headers (control
    characters, a line without a colon) 400 `invalid_multipart`.
    """
    too_large = too_large or PayloadTooLarge(f"The body is larger than {max_bytes} bytes.")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    try:
        reader = MultipartReader(request.headers, _BoundedStream(request.content, max_bytes, too_large))
        count = 0
        while (part := await reader.next()) is not None:
            count += 1
            if count > max_parts:
                raise BadRequest(f"The form has more than {max_parts} parts.", code="invalid_multipart")
            if not isinstance(part, BodyPartReader):
                raise BadRequest("Nested multipart bodies are not accepted.", code="invalid_multipart")
            name = part.name or ""
            if CONTROL_CHARACTERS.search(name):
                raise BadRequest("A part name holds a control character.", code="invalid_multipart")
            yield part
    except _MULTIPART_ERRORS as exc:
        raise _unreadable(exc) from exc


async def read_part(part: BodyPartReader, limit: int, too_large: MfaError) -> bytes:
    """A part's decoded bytes, raising `too_large` past `limit`, 400 `invalid_multipart` when unreadable."""
    data = bytearray()
    try:
        while chunk := await part.read_chunk(READ_CHUNK):
            data += chunk
            if len(data) > limit:
                raise too_large
    except _MULTIPART_ERRORS as exc:
        raise _unreadable(exc) from exc
    return bytes(data)


# aiohttp's signals for a broken multipart body: boundary, part headers, transfer encodings.
_MULTIPART_ERRORS = (ValueError, AssertionError, KeyError, LookupError, RuntimeError, HttpProcessingError)


def _unreadable(exc: Exception) -> BadRequest:
    detail = CONTROL_CHARACTERS.sub("\ufffd", str(exc))[:200]
    return BadRequest(f"The multipart body cannot be read: {detail}", code="invalid_multipart")
