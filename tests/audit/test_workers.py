"""Several audit workers appending at once keep one unbroken chain, each event once."""

from __future__ import annotations

import uuid
from collections import Counter

from services.audit.handlers import batch_handler, redaction_key, verify
from services.common.consumer import Consumer

from .conftest import event_of, publish, rows_for, wait_landed


async def test_competing_workers_keep_one_chain(settings, runtime, audit_client):
    u = uuid.uuid4().hex[:10]
    queue = runtime.queue(f"audit-pair-{u}")
    inner = batch_handler(redaction_key(settings.secret_keys))
    calls: Counter = Counter()

    def counting(name):
        async def handle(conn, events):
            calls[name] += 1
            await inner(conn, events)

        return handle

    # Two workers on one queue (small prefetch, so the broker splits the work between them),
    # racing the app's own audit consumer, which receives every event through its queue too.
    workers = [
        Consumer(broker=runtime.broker, pool=runtime.pool, schema="audit", queue=queue, handlers={},
                 bind_all=True, batch_handler=counting(name), prefetch=8, max_batch=4)
        for name in ("w1", "w2")
    ]
    for worker in workers:
        await worker.start()
    try:
        events = [
            event_of("TestPing", {"n": n, "account_id": f"acct-{u}-{n % 13}"}, company=f"co-{u}",
                     subject=f"acct-{u}-{n % 13}")
            for n in range(300)
        ]
        await publish(runtime, *events)
        await wait_landed(runtime.pool, [e["id"] for e in events], within=30)
    finally:
        for worker in workers:
            await worker.stop()
    rows = await rows_for(runtime.pool, [e["id"] for e in events])
    assert len(rows) == 300 and len({r["event_id"] for r in rows}) == 300
    assert calls["w1"] > 0 and calls["w2"] > 0
    result = await verify(runtime.pool)
    assert result.ok, result.broken
    seqs = await runtime.pool.fetch("SELECT seq FROM audit.events ORDER BY seq")
    assert [r["seq"] for r in seqs] == list(range(1, len(seqs) + 1))
    # One clock (the database's, read under the head lock) for every appender.
    assert await runtime.pool.fetchval(
        "SELECT count(*) FROM (SELECT recorded_at < lag(recorded_at) OVER (ORDER BY seq) AS back"
        " FROM audit.events) x WHERE back"
    ) == 0
