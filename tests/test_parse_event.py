"""A message body no handler could use is an EventError, so the consumer parks it at once and keeps serving."""

from __future__ import annotations

import json
import uuid

import aio_pika
import pytest

from services.common.consumer import BatchConsumer, Consumer
from services.common.events import EventError, encode, new_event, parse_event

from .conftest import parked_messages, wait_for

# The backbone tests' scratch schema (tests/backbone_migrations): each handled TestPing leaves a row.
SCHEMA = "bbtest"


def _event(**data) -> dict:
    return new_event("TestPing", {"n": 1, "account_id": "acct-1", **data}, source="/tests", subject="acct-1")


def _in_envelope(name: bytes, raw_value: bytes, event: dict | None = None) -> bytes:
    """An event with one more envelope member (the envelope schema allows extensions), as raw JSON text."""
    return b'{"' + name + b'":' + raw_value + b"," + encode(event or _event())[1:]


def _sent_at(raw_value: bytes, event: dict | None = None) -> bytes:
    """An event whose `data.sent_at` (a schema "number") is `raw_value`, as raw JSON text."""
    head, _, tail = encode(event or _event()).partition(b'"data":{')
    return head + b'"data":{"sent_at":' + raw_value + b"," + tail


DEEP = b"[" * 100_000 + b"]" * 100_000
BAD_BODIES = {
    "deep-array": DEEP,
    "deep-in-envelope": _in_envelope(b"ext", DEEP),
    "deep-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "nul-escape": encode(_event(account_id="acct\u0000x")),
    # orjson refuses to write a lone surrogate, so the escape is put into the JSON text by hand.
    "lone-surrogate-escape": encode(_event()).replace(b'"acct-1"', b'"acct\\ud800"', 1),
    "surrogate-as-utf8-bytes": encode(_event()).replace(b'"acct-1"', b'"acct-\xed\xa0\x80"', 1),
    "nul-in-member-name": _in_envelope(b"x\\u0000", b"1"),
    "nan": _sent_at(b"NaN"),
    "infinity": _sent_at(b"-Infinity"),
    "number-out-of-range": _sent_at(b"1e400"),
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_undecodable_bodies_are_event_errors(body):
    with pytest.raises(EventError):
        parse_event(body)


def test_escaped_pairs_and_non_ascii_text_parse_but_half_a_pair_does_not():
    event = _event(account_id="Jos\u00e9 \U0001F600 \\u0000")
    assert parse_event(encode(event)) == event  # UTF-8 text, as the services write it
    escaped = json.dumps(event).encode()  # the emoji as an escaped surrogate pair, as other producers may
    assert b"\\ud83d\\ude00" in escaped
    assert parse_event(escaped) == event
    with pytest.raises(EventError):
        parse_event(escaped.replace(b"\\ude00", b"", 1))


def ping(run: str, account: str, n: int) -> dict:
    return new_event("TestPing", {"n": n, "account_id": account}, source="/tests", subject=account, correlation_id=run)


def recording_consumer(runtime, run: str, seen: list[dict], *, batched: bool) -> Consumer:
    """A consumer of its own queue whose handler records each TestPing of `run` in bbtest.effects."""

    async def handler(conn, event):
        seen.append(event)
        await conn.execute(
            "INSERT INTO bbtest.effects (run, account_id, n, event_id) VALUES ($1, $2, $3, $4)",
            run, event["data"]["account_id"], event["data"]["n"], event["id"],
        )

    return (BatchConsumer if batched else Consumer)(
        runtime, party="auth", schema=SCHEMA, queue=runtime.queue(f"parse-{run}"),
        handlers={"TestPing": handler}, retry_delays=(0.2, 0.4, 0.6))


async def effects(pool, run: str) -> list:
    return await pool.fetch("SELECT account_id, n, event_id FROM bbtest.effects WHERE run = $1 ORDER BY id", run)


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
async def test_deep_and_unstorable_messages_are_parked_and_the_worker_keeps_serving(runtime, batched):
    run = uuid.uuid4().hex
    seen: list[dict] = []
    consumer = recording_consumer(runtime, run, seen, batched=batched)
    await consumer.start()
    try:
        exchange = runtime.broker.exchange
        # Without the checks: the first escaped the consumer unsettled, the other two reached the handler.
        bad = [
            _in_envelope(b"ext", DEEP, ping(run, "acct-deep", 1)),
            encode(ping(run, "acct-\u0000nul", 1)),
            _sent_at(b"NaN", ping(run, "acct-nan", 1)),
        ]
        for body in bad:
            await exchange.publish(aio_pika.Message(body), routing_key="TestPing")
        parked = await parked_messages(runtime, consumer.parked_queue, len(bad))
        good = ping(run, "acct-good", 2)
        await exchange.publish(aio_pika.Message(encode(good), message_id=good["id"]), routing_key="TestPing")
        rows = await wait_for(lambda: effects(runtime.pool, run), message="the good event after the bad ones")
    finally:
        await consumer.stop()
    # Parked at once as invalid, not after its retries ran out, and never handed to the handler.
    assert [m.headers["x-parked-reason"] for m in parked] == ["invalid"] * len(bad)
    assert sorted(m.body for m in parked) == sorted(bad)
    assert [e["id"] for e in seen] == [good["id"]]
    assert [r["n"] for r in rows] == [2]
