"""One exception tree for every service; the HTTP edge maps it to problem+json once.

    MfaError                 base: carries a stable machine `code`, an HTTP `status` and a `detail`
    ├── BadRequest           400  malformed or invalid input: bodies get `invalid_json`, `invalid_characters`,
    │                             `missing_field`, `unknown_field`, `wrong_type` or `validation_failed`; ...
    ├── Unauthorized         401  missing or unknown credentials, wrong codes
    ├── Forbidden            403  the caller may not do this
    ├── NotFound             404  unknown id, or an id in another company (so ids cannot be probed)
    ├── Conflict             409  the call does not fit the current state (`mfa_forced`, `already_decided`)
    ├── Gone                 410  expired or used tokens
    ├── PayloadTooLarge      413
    ├── UnsupportedMedia     415
    ├── TooManyRequests      429  rate limits and lockouts
    └── Unavailable          503  a dependency is down

Domain code raises these with its own `code`; nothing else reaches the client.
"""

from __future__ import annotations

from typing import Any

import asyncpg

# Where a database outage surfaces: the pool is closed, connecting fails, refuses or times out,
# the server shuts down or has no connection left. The HTTP edge answers these with 503, the
# consumer hands the message back without using up an attempt, the mail intake answers 451.
# The one list: everything that asks "is the database away?" uses it. The chaos soak
# (bench/soak.py) met the last three while PostgreSQL restarted under load: a session ended by
# the shutdown (ConnectionDoesNotExistError, a PostgresConnectionError), the crash-restart of
# the other backends (CrashShutdownError), and a pooled connection whose socket died in the
# middle of a statement (InternalClientError "cannot switch to state ...").
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InternalClientError,
)


class MfaError(Exception):
    """Base error: a stable `code`, an HTTP `status` and a human `detail`."""

    status = 500
    title = "Internal error"
    default_code = "internal_error"

    def __init__(self, detail: str = "", *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.code = code or self.default_code
        self.extra = extra


class BadRequest(MfaError):
    status, title, default_code = 400, "Bad request", "bad_request"


class Unauthorized(MfaError):
    status, title, default_code = 401, "Unauthorized", "unauthorized"


class Forbidden(MfaError):
    status, title, default_code = 403, "Forbidden", "forbidden"


class NotFound(MfaError):
    status, title, default_code = 404, "Not found", "not_found"


class Conflict(MfaError):
    status, title, default_code = 409, "Conflict", "conflict"


class Gone(MfaError):
    status, title, default_code = 410, "Gone", "gone"


class PayloadTooLarge(MfaError):
    status, title, default_code = 413, "Payload too large", "payload_too_large"


class UnsupportedMedia(MfaError):
    status, title, default_code = 415, "Unsupported media type", "unsupported_media_type"


class TooManyRequests(MfaError):
    status, title, default_code = 429, "Too many requests", "too_many_requests"


class Unavailable(MfaError):
    status, title, default_code = 503, "Service unavailable", "unavailable"
