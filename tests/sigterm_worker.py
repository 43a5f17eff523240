"""A consumer process for the SIGTERM test: slow handlers, stops on SIGTERM like a service."""

from __future__ import annotations

import asyncio
import signal
import sys

from services.common.config import Settings
from services.common.consumer import Consumer
from services.common.logs import configure_logging
from services.common.runtime import Runtime


async def main(queue: str, run: str) -> int:
    settings = Settings.from_env()
    configure_logging("WARNING", "console")
    runtime = await Runtime.open(settings)

    async def slow(conn, event):
        await conn.execute(
            "INSERT INTO bbtest.effects (run, account_id, n, event_id) VALUES ($1, $2, $3, $4)",
            run, event["data"]["account_id"], event["data"]["n"], event["id"],
        )
        await asyncio.sleep(0.05)  # work in flight inside the transaction when SIGTERM lands

    consumer = Consumer(runtime, party="auth", schema="bbtest", queue=queue,
                        handlers={"TestPing": slow}, prefetch=20)
    await consumer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await consumer.stop()
    await runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
