"""Several audit workers appending at once keep one unbroken chain, each event once."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter

from services.audit.handlers import batch_handler, redaction_key, verify
from services.common.consumer import BatchConsumer
from services.common.events import encode
from services.common.outbox import partition_of

from ..conftest import wait_for
from .conftest import event_of, rows_for, wait_landed


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

    # Two workers sharing one queue's two partitions (small prefetch), racing the app's own audit
    # consumer, which receives every event through its queue too.
    two = dataclasses.replace(runtime, settings=dataclasses.replace(settings, queue_partitions=2))
    workers = [
        BatchConsumer(two, party="audit", schema="audit", queue=queue, handlers={},
                      bind_all=True, batch_handler=counting(name), prefetch=8, max_batch=4)
        for name in ("w1", "w2")
    ]
    for worker in workers:
        await worker.start()
    try:
        # The first one took both partitions; within a lease round it gives one to the second.
        await wait_for(lambda: all(len(w.consuming) == 1 for w in workers), message="one partition each")
        events = [
            event_of("TestPing", {"n": n, "account_id": f"acct-{u}-{n % 13}"}, company=f"co-{u}",
                     subject=f"acct-{u}-{n % 13}")
            for n in range(300)
        ]
        for event in events:  # as a relay publishes them: with the partition of their subject
            await runtime.broker.publish_event(encode(event), event_type=event["type"], event_id=event["id"],
                                               partition=partition_of(event["subject"]))
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
