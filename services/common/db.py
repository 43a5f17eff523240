"""PostgreSQL: one asyncpg pool per process, and numbered SQL migrations per schema.

Each service owns one schema and a `migrations/NNN_name.sql` folder. `migrate` applies
what is missing, once each, under a cluster-wide advisory lock so that several processes
starting together are safe.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from .logs import get_logger

log = get_logger("db")

# Arbitrary constant: the advisory lock that serialises migrations across processes.
MIGRATION_LOCK_KEY = 0x6D666120  # "mfa "


class DatabaseUnreachable(RuntimeError):
    """PostgreSQL cannot be reached at the configured URL."""


PLUMBING = Path(__file__).parent / "migrations" / "plumbing"


@dataclass(frozen=True)
class MigrationSet:
    """The migrations of one schema: its name and folders of NNN_*.sql files, applied in order.

    Service schemas list the shared plumbing folder (outbox, processed events) first.
    """

    schema: str
    folders: tuple[Path, ...]

    def files(self) -> list[tuple[str, Path]]:
        found = []
        for folder in self.folders:
            for path in sorted(folder.glob("*.sql")):
                found.append((f"{folder.name}/{path.name}", path))
        return found

    @classmethod
    def for_service(cls, schema: str, folder: Path) -> MigrationSet:
        return cls(schema, (PLUMBING, folder))


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No reset on release: asyncpg's default costs a round trip per acquire.

    Nothing here leaves session state on a pooled connection: transactions end, `SET LOCAL`
    only, and the outbox relay unlistens and drops its advisory locks itself.
    """


class PooledConnection(asyncpg.Connection):
    """asyncpg's connection plus `wakes`: channels whose listeners are told once it is back in the pool.

    `wakes` is None when the pool was opened without `on_release`; writers then NOTIFY
    inside their own transaction (see `outbox.wake_relays`).
    """

    __slots__ = ("wakes",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.wakes: set[str] | None = None


class FairPool:
    """asyncpg's pool behind a FIFO semaphore, lending connections strictly in the order they were asked for.

    asyncpg hands a returned connection to whoever asks next, not to the oldest waiter: a
    coroutine that asks at the right moment takes it, and the woken waiter goes to the back
    of the line again. Under load (more requests in flight than connections) that left a few
    requests waiting four times as long as the rest. A FIFO semaphore (asyncio's is fair
    since 3.11) with one permit per connection decides who goes next, so asyncpg's own
    queue never has a waiter. Only asyncpg's public pool API is used.
    """

    def __init__(self, pool: asyncpg.Pool, max_size: int) -> None:
        self._pool = pool
        self._turns = asyncio.Semaphore(max_size)
        self._lent: set[int] = set()  # id() of the connections that hold a permit

    def acquire(self, *, timeout: float | None = None) -> _Lending:
        """A connection, awaited (give it back with :meth:`release`) or as `async with`."""
        return _Lending(self, timeout)

    async def _lend(self, timeout: float | None) -> asyncpg.Connection:
        started = time.monotonic()
        if timeout is None:
            await self._turns.acquire()
        else:
            await asyncio.wait_for(self._turns.acquire(), timeout)
            timeout = max(0.0, timeout - (time.monotonic() - started))
        try:
            conn = await self._pool.acquire(timeout=timeout)
        except BaseException:
            self._turns.release()
            raise
        self._lent.add(id(conn))
        return conn

    async def release(self, connection: asyncpg.Connection, *, timeout: float | None = None) -> None:
        """Give the connection back; its permit goes to the oldest waiter."""
        held = id(connection) in self._lent
        self._lent.discard(id(connection))  # a second release of the same connection frees nothing
        try:
            await self._pool.release(connection, timeout=timeout)
        finally:
            if held:
                self._turns.release()

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        async with self.acquire() as conn:
            return await conn.execute(query, *args, timeout=timeout)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return await conn.fetch(query, *args, timeout=timeout)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args, timeout=timeout)

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args, column=column, timeout=timeout)

    async def close(self) -> None:
        await self._pool.close()

    def terminate(self) -> None:
        self._pool.terminate()

    def get_size(self) -> int:
        return self._pool.get_size()


class _Lending:
    """What :meth:`FairPool.acquire` returns: awaitable, and an async context manager that gives back."""

    def __init__(self, pool: FairPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    def __await__(self):
        return self._pool._lend(self._timeout).__await__()

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await self._pool._lend(self._timeout)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)


async def create_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, on_release: Callable[[set[str]], None] | None = None
) -> FairPool:
    """Open the process's pool; JSON columns come back as Python objects.

    With `on_release`, each connection collects channels in `wakes` while it is lent out, and
    `on_release` gets them when the connection comes back, after its transaction has ended.
    """

    async def init(conn: PooledConnection) -> None:
        await _init_connection(conn)
        if on_release is not None:
            conn.wakes = set()

    async def reset(conn: PooledConnection) -> None:
        if conn.wakes:
            channels, conn.wakes = conn.wakes, set()
            on_release(channels)  # type: ignore[misc]

    try:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=init, reset=reset if on_release else _keep_session,
            connection_class=PooledConnection, max_queries=50000, max_inactive_connection_lifetime=300.0,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnreachable(f"cannot reach PostgreSQL at {redact_url(url)}: {exc}") from exc
    return FairPool(pool, max_size)


async def delete_expired(pool: asyncpg.Pool | FairPool, table: str, column: str, before: datetime,
                         batch: int = 1000) -> int:
    """Delete the rows of `table` whose `column` is before `before`, `batch` rows per statement; how many went.

    Small statements keep each lock and each WAL burst short beside live traffic; `table` and
    `column` are the caller's constants, never input.
    """
    sql = (f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
           f"SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))")
    total = 0
    while True:
        async with pool.acquire() as conn:
            deleted = int((await conn.execute(sql, before, batch)).split()[-1])
        total += deleted
        if deleted < batch:
            return total


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


async def ensure_database(url: str) -> None:
    """Create the database named in `url` if it does not exist yet."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    try:
        conn = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnreachable(f"cannot reach PostgreSQL at {redact_url(admin_url)}: {exc}") from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
                log.info("database_created", database=name)
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # another process created it between our check and our CREATE
    finally:
        await conn.close()


async def migrate(url: str, sets: list[MigrationSet]) -> list[str]:
    """Apply every missing migration of `sets`, in order; return what was applied."""
    await ensure_database(url)
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DatabaseUnreachable(f"cannot reach PostgreSQL at {redact_url(url)}: {exc}") from exc
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            for mset in sets:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {mset.schema}")
                await conn.execute(
                    f"""CREATE TABLE IF NOT EXISTS {mset.schema}.schema_migrations (
                        version text PRIMARY KEY,
                        applied_at timestamptz NOT NULL DEFAULT now())"""
                )
                done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {mset.schema}.schema_migrations")}
                for version, path in mset.files():
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL search_path TO {mset.schema}, public")
                        await conn.execute(path.read_text())
                        await conn.execute(
                            f"INSERT INTO {mset.schema}.schema_migrations (version) VALUES ($1)", version
                        )
                    applied.append(f"{mset.schema}/{version}")
                    log.info("migration_applied", schema=mset.schema, migration=path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return applied
