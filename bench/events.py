"""Benchmark of the event backbone: outbox -> relay -> RabbitMQ -> consumer (with its idempotency write).

Run: `.venv/bin/python bench/events.py` (PostgreSQL and RabbitMQ on this machine).

As in production, the producer (writers + outbox relay) and the consumer are separate
processes: this one, and a child it starts. Reports p50/p99 commit-to-handled latency at a
fixed 500 events/s (first, after one uncounted second of warm-up), then sustained events/s
and the CPU each process spent per event (wall clocks of one machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_runtime, cpu_report, cpu_times, machine, percentile, start_profiler  # noqa: E402
from services.common.config import Settings  # noqa: E402
from services.common.consumer import BatchConsumer, Consumer  # noqa: E402
from services.common.db import MigrationSet  # noqa: E402
from services.common.events import new_event  # noqa: E402
from services.common.logs import configure_logging  # noqa: E402
from services.common.outbox import OutboxRelay, add_events  # noqa: E402
from services.common.runtime import Runtime  # noqa: E402

SCHEMA = "bench"
ACCOUNTS = [f"acct-{i}" for i in range(200)]


def ping(n: int) -> dict:
    account = ACCOUNTS[n % len(ACCOUNTS)]
    return new_event("TestPing", {"n": n, "account_id": account}, source="/bench", subject=account)


async def consumer_process(expected: int, batched: bool) -> None:
    """Child: consume until `expected` events were handled, then print their handled times as JSON."""
    configure_logging("WARNING", "console")
    runtime = await Runtime.open(Settings.from_env())
    handled: dict[str, float] = {}
    done = asyncio.Event()

    async def handler(conn, event):
        handled[event["id"]] = time.time()
        if len(handled) >= expected:
            done.set()

    consumer = (BatchConsumer if batched else Consumer)(runtime, party="auth", schema=SCHEMA, queue=runtime.queue("bench"),
                                                        handlers={"TestPing": handler}, prefetch=256)
    await consumer.start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start_cpu = usage.ru_utime + usage.ru_stime  # start-up is not part of the work measured
    print("ready", flush=True)
    await done.wait()
    await consumer.stop()
    await runtime.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"handled": handled, "cpu": usage.ru_utime + usage.ru_stime - start_cpu}), flush=True)


async def start_consumer(runtime: Runtime, expected: int, batched: bool, profile: bool = False) -> asyncio.subprocess.Process:
    env = {**os.environ, "MFA_DATABASE_URL": runtime.settings.database_url, "MFA_EXCHANGE": runtime.settings.exchange,
           "MFA_QUEUE_PREFIX": runtime.settings.queue_prefix}
    command = [sys.executable, __file__, "--consumer", str(expected), *(["--batched"] if batched else [])]
    proc = await asyncio.create_subprocess_exec(*command, env=env, stdout=asyncio.subprocess.PIPE, limit=2**26)
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.strip() == b"ready", line
    if profile and os.environ.get("BENCH_PROFILE"):  # a py-spy profile of the consumer in the sustained run
        await start_profiler(proc.pid, os.environ["BENCH_PROFILE"])  # stops when the consumer exits
    return proc


async def collect(proc: asyncio.subprocess.Process, timeout: float) -> tuple[dict[str, float], float]:
    """The consumer's handled times by event id, and the CPU seconds it used once ready."""
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    await proc.wait()
    report = json.loads(line)
    return report["handled"], report["cpu"]


async def write_events(runtime: Runtime, events: list[dict], batch: int, writers: int = 4) -> None:
    """Commit `events` to the bench outbox from `writers` concurrent writers, `batch` per transaction."""

    async def writer(chunk):
        for i in range(0, len(chunk), batch):
            async with runtime.pool.acquire() as conn, conn.transaction():
                await add_events(conn, SCHEMA, chunk[i : i + batch])

    await asyncio.gather(*(writer(events[k::writers]) for k in range(writers)))


async def sustained(runtime: Runtime, total: int, batch: int, batched: bool, first: int = 0) -> float:
    """Sustained events/s while writers, the running relay and a consumer process all work at once; prints it.

    The relay of `SCHEMA` must be running. Counted from the first write to the last event handled.
    """
    proc = await start_consumer(runtime, total, batched, profile=True)
    events = [ping(first + n) for n in range(total)]
    cpu_before = cpu_times()
    started = time.time()
    await write_events(runtime, events, batch)
    written = time.time()
    while await runtime.pool.fetchval(f"SELECT count(*) FROM {SCHEMA}.outbox"):  # noqa: ASYNC110 (polls the database)
        await asyncio.sleep(0.05)
    relayed = time.time()
    handled, consumer_cpu = await collect(proc, 600)
    cpu_after = cpu_times()
    cpu_after[0] = ("consumer process", consumer_cpu)  # it has exited: its own count
    elapsed = max(handled.values()) - started
    print(f"sustained: {total} events in {elapsed:.2f} s = {total / elapsed:,.0f} events/s "
          f"(writes done after {written - started:.2f} s, all published after {relayed - started:.2f} s; "
          f"{batch} events per transaction)")
    print(cpu_report(cpu_before, cpu_after, total, "event"))
    return total / elapsed


async def main(total: int, rate: int, seconds: float, batch: int, batched: bool) -> None:
    configure_logging("WARNING", "console")
    extra = [MigrationSet.for_service(SCHEMA, Path(__file__).parent / "migrations")]
    async with bench_runtime(extra) as runtime:
        relay = OutboxRelay(runtime.pool, runtime.broker, SCHEMA, signal=runtime.signal)
        relay_task = asyncio.create_task(relay.run())
        try:
            print(f"machine: {machine()}")
            print(f"consumer mode: {'batched (one transaction and one ack per batch)' if batched else 'one transaction per event'}")
            # 1. Latency at a fixed rate: one event per transaction, paced. Measured first, on a quiet
            #    machine: right after the sustained run the kernel is still writing back its dirty
            #    pages and that, not the pipeline, sets the tail. The first second warms up
            #    (connections, prepared statements) and is not counted.
            warmup = rate
            count = int(rate * seconds) + warmup
            proc = await start_consumer(runtime, count, batched)
            committed: dict[str, float] = {}

            async def write_one(n: int) -> None:
                event = ping(n)
                async with runtime.pool.acquire() as conn, conn.transaction():
                    await add_events(conn, SCHEMA, [event])
                committed[event["id"]] = time.time()

            # Each event is its own transaction started on its due time, as concurrent requests would be.
            writes = []
            t0 = time.perf_counter()
            for n in range(count):
                delay = t0 + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                writes.append(asyncio.create_task(write_one(n)))
            await asyncio.gather(*writes)
            actual_rate = count / (time.perf_counter() - t0)
            handled, _ = await collect(proc, 120)
            measured = sorted(committed, key=committed.get)[warmup:]
            latencies = [(handled[i] - committed[i]) * 1000 for i in measured]
            if os.environ.get("BENCH_DEBUG"):
                order = sorted(committed, key=committed.get)
                print("first", [round((handled[i] - committed[i]) * 1000) for i in order[:10]])
                print("last", [round((handled[i] - committed[i]) * 1000) for i in order[-10:]])
                print("commit span", round(committed[order[-1]] - committed[order[0]], 2), "handled span", round(max(handled.values()) - min(handled.values()), 2))
                first = committed[order[0]]
                for second in range(int(seconds) + 1):
                    bucket = [(handled[i] - committed[i]) * 1000 for i in order if int(committed[i] - first) == second]
                    if bucket:
                        print(f"second {second}: p50 {percentile(bucket, 50):.0f} ms, p99 {percentile(bucket, 99):.0f} ms, max {max(bucket):.0f} ms")
            print(f"latency at {actual_rate:,.0f} events/s over {seconds:.0f} s ({len(measured)} events after 1 s of warm-up): "
                  f"p50 {percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms, "
                  f"max {max(latencies):.1f} ms")
            # 2. Sustained throughput: 4 writers commit `batch` events per transaction as fast as they can.
            await sustained(runtime, total, batch, batched, first=count)
        finally:
            relay.stop()
            await relay_task


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--batched", action="store_true", help="the consumer's batched mode (as auth and recovery use)")
    parser.add_argument("--consumer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop  # as `mfa run` uses

    if args.consumer:
        uvloop.run(consumer_process(args.consumer, args.batched))
    else:
        uvloop.run(main(args.total, args.rate, args.seconds, args.batch, args.batched))
