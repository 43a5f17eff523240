"""Pure rules of the audit log: canonical rows, redaction, the chain and its verification."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from services.audit.domain import (
    GENESIS,
    AuditRuleError,
    ChainVerifier,
    canonical,
    company_of,
    entry_json,
    link,
    parse_time,
    prepare,
    redact,
    row_bytes,
)
from services.common.events import new_event

KEY = b"k" * 32


def _event(n: int, company: str | None = "c1", **data) -> dict:
    return new_event(
        "TestPing",
        {"n": n, "account_id": f"a{n}", **data},
        source="/tests",
        subject=f"a{n}",
        company_id=company,
        time=datetime(2024, 5, 1, 12, 0, n % 60, 123456, tzinfo=UTC),
    )


def _chain(count: int) -> list:
    rows = [prepare(_event(n), [], KEY) for n in range(count)]
    return link(rows, 0, GENESIS, datetime(2024, 5, 1, 13, 0, tzinfo=UTC))


def test_row_bytes_equal_the_canonical_json_of_the_whole_row():
    envelope = canonical({"data": {"name": "Zoë \"quoted\" \\ \u2603", "n": 1.5}, "id": "e1", "type": "T"}).decode()
    when = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    for company in ("acme", None, 'we"ird\n'):
        spliced = row_bytes(7, "e1", "T", when, company, "s1", when, envelope)
        naive = canonical(
            {
                "seq": 7,
                "event_id": "e1",
                "type": "T",
                "time": "2024-01-02T03:04:05.000006Z",
                "company_id": company,
                "subject": "s1",
                "recorded_at": "2024-01-02T03:04:05.000006Z",
                "envelope": json.loads(envelope),
            }
        )
        assert spliced == naive


def test_entry_json_is_the_hashed_row_plus_both_hashes():
    entry = _chain(2)[1]
    row = json.loads(entry_json(entry))
    assert row["prev_hash"] == entry.prev_hash.hex() and row["hash"] == entry.hash.hex()
    content = {k: v for k, v in row.items() if k not in ("hash", "prev_hash")}
    # What an auditor does with an exported line, without any of our code:
    assert hashlib.sha256(bytes.fromhex(row["prev_hash"]) + canonical(content)).hexdigest() == row["hash"]


def test_redact_replaces_sensitive_values_with_a_keyed_digest():
    event = {"type": "X", "data": {"link_token": "v1.k.secretsealed", "other": "plain", "n": [1, 2]}}
    out = redact(event, {"link_token", "n", "absent"}, KEY)
    assert out["data"]["other"] == "plain"
    assert out["data"]["link_token"] == {
        "redacted": True,
        "hmac_sha256": hmac.new(KEY, b"v1.k.secretsealed", hashlib.sha256).hexdigest(),
    }
    assert out["data"]["n"]["redacted"] is True
    assert "secretsealed" not in json.dumps(out)
    assert event["data"]["link_token"] == "v1.k.secretsealed"  # the input is not modified
    assert redact(event, {"link_token"}, b"another key" * 3)["data"]["link_token"] != out["data"]["link_token"]


def test_company_comes_from_the_envelope_then_the_data():
    assert company_of({"companyid": "c1", "data": {"company_id": "c2"}}) == "c1"
    assert company_of({"companyid": None, "data": {"company_id": "c2"}}) == "c2"
    assert company_of({"companyid": None, "data": {"company_id": None}}) is None


def test_parse_time_normalises_to_utc_and_refuses_garbage():
    assert parse_time("2024-05-01T14:00:00+02:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_time("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_time("2024-05-01T12:00:00") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    with pytest.raises(AuditRuleError):
        parse_time("yesterday around noon, more or less")


def test_prepare_refuses_an_envelope_that_cannot_be_encoded():
    event = _event(1)
    event["data"] = {"n": 1, "account_id": "\ud800"}
    with pytest.raises(AuditRuleError):
        prepare(event, [], KEY)


def test_link_continues_from_the_head():
    first = _chain(3)
    more = link([prepare(_event(9), [], KEY)], first[-1].seq, first[-1].hash, datetime.now(UTC))
    assert [e.seq for e in first + more] == [1, 2, 3, 4]
    assert more[0].prev_hash == first[-1].hash


def _verify(entries, head=None):
    verifier = ChainVerifier()
    for entry in entries:
        if verifier.feed(entry):
            break
    last = entries[-1] if entries else None
    head_seq, head_hash = head or ((last.seq, last.hash) if last else (0, GENESIS))
    return verifier.finish(head_seq, head_hash), verifier


def test_intact_chain_verifies():
    entries = _chain(5)
    broken, verifier = _verify(entries)
    assert broken is None and verifier.rows == 5
    assert _verify([])[0] is None


def test_changed_content_breaks_at_that_row():
    entries = _chain(5)
    entries[2] = dataclasses.replace(entries[2], envelope=entries[2].envelope.replace('"n":2', '"n":3'))
    broken, _ = _verify(entries)
    assert (broken.seq, broken.reason, broken.event_id) == (3, "hash_mismatch", entries[2].event_id)
    entries = _chain(5)
    entries[1] = dataclasses.replace(entries[1], company_id="other")
    assert _verify(entries)[0].seq == 2


def test_changed_time_breaks_at_that_row():
    entries = _chain(4)
    entries[3] = dataclasses.replace(entries[3], time=entries[3].time + timedelta(seconds=1))
    assert _verify(entries)[0].seq == 4


def test_deleted_row_shows_as_missing():
    entries = _chain(5)
    del entries[1]
    broken, _ = _verify(entries, head=(5, _chain(5)[-1].hash))
    assert (broken.seq, broken.reason) == (2, "missing_row")


def test_rewritten_chain_with_a_wrong_link_breaks_at_the_link():
    entries = _chain(4)
    entries[2] = dataclasses.replace(entries[2], prev_hash=bytes(32))
    assert _verify(entries)[0].reason == "prev_hash_mismatch"


def test_cut_tail_is_caught_by_the_head():
    entries = _chain(5)
    head = (5, entries[-1].hash)
    broken, _ = _verify(entries[:3], head=head)
    assert (broken.seq, broken.reason) == (4, "head_mismatch")
    broken, _ = _verify(entries, head=(3, entries[2].hash))
    assert (broken.seq, broken.reason) == (4, "head_mismatch")


def test_prepare_refuses_a_nul_in_an_indexed_column():
    event = _event(1)
    event["subject"] = "acct\x00"
    with pytest.raises(AuditRuleError):
        prepare(event, [], KEY)
