"""Remove what killed test and benchmark runs left on the shared broker and database.

A run deletes its own queues, exchanges and databases when it ends; a run that was killed cannot,
and thousands of leftover quorum queues once stopped RabbitMQ from accepting connections. CI runs
alone on its machine, so every name of the test and benchmark patterns below is a leftover here.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import aio_pika
import asyncpg

from services.common.config import Settings

QUEUES = re.compile(r"^(test|bench)\.")
EXCHANGES = re.compile(r"^mfa\.events\.(test|bench)\.|^(test|bench)\.")
DATABASES = re.compile(r"^mfa_(test|bench|pkg|keys|users|audit_tamper|replicas|failover|scale|soak)_")


def _names(kind: str) -> list[str]:
    out = subprocess.run(["rabbitmqctl", "-q", "--no-table-headers", f"list_{kind}", "name"],
                         check=True, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


async def main(dry_run: bool) -> None:
    settings = Settings.from_env()
    queues = [q for q in _names("queues") if QUEUES.match(q)]
    exchanges = [e for e in _names("exchanges") if EXCHANGES.match(e)]
    if dry_run:
        print(f"sweep (dry run): would remove {len(queues)} queues, {len(exchanges)} exchanges")
        return
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            await channel.queue_delete(name)
        for name in exchanges:
            await channel.exchange_delete(name)
    head, _, _ = settings.database_url.rpartition("/")
    admin = await asyncpg.connect(f"{head}/postgres")
    try:
        databases = [r[0] for r in await admin.fetch("SELECT datname FROM pg_database") if DATABASES.match(r[0])]
        for name in databases:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    print(f"sweep: removed {len(queues)} queues, {len(exchanges)} exchanges, {len(databases)} databases left by earlier runs")


if __name__ == "__main__":
    asyncio.run(main(dry_run="--dry-run" in sys.argv))
