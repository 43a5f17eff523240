"""What every family of auth use cases shares: the service object, the caller, the clock, loading accounts.

The transaction convention of every service: a use case called from HTTP takes the service
object (here `Auth`) and opens its own transaction(s) on its pool; a use case called for an
event takes `conn`, already inside the consumer's transaction (which also records the event
id). None does both: what HTTP and events share is a `conn` use case, and the HTTP one opens
the transaction around it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from ...common import sealing
from ...common.apikeys import Principal
from ...common.crypto import Keyring, keyed_hash
from ...common.errors import Conflict, Gone, NotFound, TooManyRequests
from ...common.events import Actor, iso
from .. import domain, store
from ..tokens import Signer

SCHEMA = "auth"
SOURCE = "/mfa/auth"


class Opened:
    """What the link exchanges of this process read, per session, for the requests that follow.

    The exchange reads the new session's view in its one statement and answers a 303 to the page.
    The browser follows it at once, most often on the same keep-alive connection, so to this
    process, and then posts the page's form. So the view serves:

    - the first page (`first_page`): once, and only within `page_ttl` seconds of the exchange,
      so a reload, a language switch or the "check your mail" page's refresh read the database;
    - a code's check (`known`): its facts (the login, the account's sealed secret, last step and
      lock) are what the claiming statement re-checks under the row locks, the secret included,
      so facts that changed meanwhile make the claim fail and the locked path decide with the
      database's (`handlers.logins`). Forgotten once a code was posted (`forget`).

    A browser that lands on another auth process reads the database instead. At most `size`
    sessions are kept; the oldest go first.
    """

    def __init__(self, page_ttl: float = 2.0, size: int = 4096) -> None:
        self.page_ttl = page_ttl
        self.size = size
        self._views: dict[bytes, tuple[float, store.PageView]] = {}  # session hash -> (first page until, view)

    def put(self, session_hash: bytes, view: store.PageView) -> None:
        """Keep the view an exchange read for its new session."""
        while len(self._views) >= self.size:
            del self._views[next(iter(self._views))]
        self._views[session_hash] = (time.monotonic() + self.page_ttl, view)

    def first_page(self, session_hash: bytes) -> store.PageView | None:
        """The view for the page the exchange redirected to: once, while it is that fresh."""
        entry = self._views.get(session_hash)
        if entry is None or entry[0] == 0.0:
            return None
        self._views[session_hash] = (0.0, entry[1])
        return entry[1] if entry[0] > time.monotonic() else None

    def known(self, session_hash: bytes, at: datetime) -> store.PageView | None:
        """The view as the exchange read it, for a check its claim re-verifies; None once the session ended."""
        entry = self._views.get(session_hash)
        if entry is None:
            return None
        if entry[1].session.expires_at <= at:
            del self._views[session_hash]
            return None
        return entry[1]

    def forget(self, session_hash: bytes) -> None:
        """Drop the session's view: a form is about to change what it saw."""
        self._views.pop(session_hash, None)


@dataclass
class Auth:
    """Everything the auth use cases need: the pool, the keyring and the assertion signer."""

    pool: asyncpg.Pool
    keyring: Keyring
    signer: Signer
    opened: Opened = field(default_factory=Opened)

    def __post_init__(self) -> None:
        self._code_key = self.keyring.derive("backup-codes")
        self._token_key = self.keyring.derive("tokens")

    def code_hash(self, account_id: str, normalized: str) -> bytes:
        return keyed_hash(self._code_key, f"{account_id}:{normalized}")

    def token_hash(self, token: str) -> bytes:
        return keyed_hash(self._token_key, token)

    def seal_secret(self, account_id: str, secret: str) -> str:
        return self.keyring.seal(secret.encode(), aad=sealing.totp_secret(account_id))

    def open_secret(self, account_id: str, sealed: str) -> str:
        return self.keyring.open(sealed, aad=sealing.totp_secret(account_id)).decode()

    def assertion(self, caller: Caller, account_id: str, company_id: str, login_id: str, method: str) -> str:
        """The signed assertion that `login_id` passed its second step with `method`, for the caller's audience."""
        return self.signer.sign(account_id=account_id, company_id=company_id, login_id=login_id,
                                amr=domain.amr_for(method), audience=caller.audience)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the API key's principal, or a consumed event's actor."""

    principal: Principal | None
    correlation_id: str | None = None
    actor: Actor = Actor("system")

    def sees(self, company_id: str) -> bool:
        return self.principal is None or self.principal.sees(company_id)

    @property
    def audience(self) -> str | None:
        """The `aud` its assertions carry: its API key's audience, None for the company id."""
        return self.principal.audience if self.principal else None

    @property
    def scope(self) -> str | None:
        """The company whose login ids this caller names (None: a caller bound to no company)."""
        return self.principal.company_id if self.principal is not None else None


def now() -> datetime:
    return datetime.now(UTC)


async def load_account(
    conn: asyncpg.Connection, caller: Caller, account_id: str, *, lock: bool = False
) -> store.Account:
    """The account, or 404 also when it belongs to a company the caller may not see."""
    account = await store.get_account(conn, account_id, lock=lock)
    if account is None or not caller.sees(account.company_id):
        raise NotFound(f"No account {account_id!r}.", code="account_not_found")
    return account


def check_not_locked(account: store.Account, at: datetime) -> None:
    """429 `mfa_locked` while a lock from wrong codes holds: it holds for every way in."""
    locked_until = domain.lock_in_force(account.locked_until, at)
    if locked_until is not None:
        raise TooManyRequests(
            "Too many wrong codes: MFA is locked for a while.",
            code="mfa_locked",
            locked_until=iso(locked_until),
            retry_after=int((locked_until - at).total_seconds()) + 1,
        )


async def lock_pending_login(
    conn: asyncpg.Connection, caller: Caller, login_id: str, at: datetime
) -> tuple[store.Login, store.Account]:
    """A pending `verify` login and its account, both locked: the account first.

    Every statement that writes both takes the account before the login (the one-statement
    fast path of verify, enrolment, account removal's cascade), so two requests on one login
    wait for each other instead of deadlocking.
    """
    account_id = await store.lock_account_of_login(conn, login_id, caller.scope)
    login = await store.find_login(conn, login_id, caller.scope, lock=True)
    if login is None:
        raise NotFound(f"No login {login_id!r}.", code="login_not_found")
    check_pending(login, "verify", at)
    # Locked already, unless the login was committed between the two statements.
    account = await store.get_account(conn, login.account_id, lock=account_id is None)
    assert account is not None  # logins cascade with their account
    check_same_company(login, account)
    return login, account


def check_same_company(login: store.Login, account: store.Account) -> None:
    """409 `login_state_changed` once the account moved to another company than its login's."""
    if account.company_id != login.company_id:
        raise Conflict("The account moved to another company since this login started; start a new login.",
                       code="login_state_changed")


def check_pending(login: store.Login, decision: str, at: datetime) -> None:
    """409 unless `login` waits for a second step of kind `decision`; 410 once it expired."""
    if login.decision != decision:
        raise Conflict(f"This login's decision is {login.decision!r}; there is nothing to verify.",
                       code="wrong_login_state")
    if login.status != "pending":
        raise Conflict(f"This login is already {login.status}.", code="login_completed")
    if login.expires_at <= at:
        raise Gone("The login expired; log in again.", code="login_expired")
