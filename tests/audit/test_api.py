"""The auditor's HTTP API: filters, cursor paging, NDJSON export, company-bound keys, errors."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta

import pytest

from services.audit.domain import canonical
from services.common.apikeys import create_key

from .conftest import NOW, event_of, publish, wait_landed

NDJSON = {"Accept": "application/x-ndjson"}


@pytest.fixture(scope="module")
async def world(settings, runtime, audit_client):
    """Two companies with a few events each, landed in the log, and keys of each kind."""
    u = uuid.uuid4().hex[:10]
    a, b = f"co-a-{u}", f"co-b-{u}"
    alice, bob, carol = f"alice-{u}", f"bob-{u}", f"carol-{u}"
    events = []
    for n in range(6):
        account = alice if n % 2 == 0 else bob
        event_type = "LoginSucceeded" if n < 4 else "MfaLocked"
        data = (
            {"login_id": f"l{n}", "account_id": account, "company_id": a, "method": "totp"}
            if event_type == "LoginSucceeded"
            else {"account_id": account, "company_id": a, "email": "x@example.com", "first_name": "X",
                  "locked_until": "2024-05-01T13:00:00Z", "consecutive_failures": 5}
        )
        events.append(event_of(event_type, data, company=a, subject=account, when=NOW + timedelta(hours=n)))
    others = [
        event_of("LoginSucceeded", {"login_id": f"m{n}", "account_id": carol, "company_id": b, "method": "totp"},
                 company=b, subject=carol, when=NOW + timedelta(hours=n))
        for n in range(3)
    ]
    await publish(runtime, *events, *others)
    await wait_landed(runtime.pool, [e["id"] for e in events + others])
    keys = {
        "auditor": await create_key(runtime.pool, "auditor"),
        "auditor_a": await create_key(runtime.pool, "auditor", a),
        "service": await create_key(runtime.pool, "service"),
    }
    return {"a": a, "b": b, "alice": alice, "bob": bob, "events": events, "others": others, "keys": keys}


def auth(world, key="auditor") -> dict:
    return {"Authorization": f"Bearer {world['keys'][key]}"}


async def get(client, world, key="auditor", headers=None, **params):
    return await client.get("/v1/audit/events", params=params, headers={**auth(world, key), **(headers or {})})


async def ndjson(resp) -> list[dict]:
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/x-ndjson"
    return [json.loads(line) for line in (await resp.text()).splitlines()]


async def test_company_filter_returns_its_events_in_order_and_the_hashes_recompute(audit_client, world):
    resp = await get(audit_client, world, company_id=world["a"])
    assert resp.status == 200
    body = await resp.json()
    assert [e["event_id"] for e in body["events"]] == [e["id"] for e in world["events"]]
    assert body["next_cursor"] is None
    seqs = [e["seq"] for e in body["events"]]
    assert seqs == sorted(seqs)
    for item in body["events"]:
        content = {k: v for k, v in item.items() if k not in ("hash", "prev_hash")}
        assert hashlib.sha256(bytes.fromhex(item["prev_hash"]) + canonical(content)).hexdigest() == item["hash"]
        assert item["envelope"]["id"] == item["event_id"] and item["company_id"] == world["a"]


async def test_type_account_and_time_filters(audit_client, world):
    events = world["events"]

    async def ids(**params):
        resp = await get(audit_client, world, company_id=world["a"], **params)
        assert resp.status == 200, await resp.text()
        return [e["event_id"] for e in (await resp.json())["events"]]

    assert await ids(type="MfaLocked") == [e["id"] for e in events[4:]]
    assert await ids(type="MfaLocked,LoginSucceeded") == [e["id"] for e in events]
    assert await ids(account_id=world["bob"]) == [e["id"] for e in events[1::2]]
    since, until = (NOW + timedelta(hours=2)).isoformat(), (NOW + timedelta(hours=4)).isoformat()
    assert await ids(since=since, until=until) == [e["id"] for e in events[2:4]]
    assert await ids(since=since, type="MfaLocked", account_id=world["alice"]) == [events[4]["id"]]
    assert await ids(type="NoSuchType") == []


async def test_cursor_pages_through_everything_once(audit_client, world):
    seen, cursor = [], None
    for _ in range(10):
        params = {"company_id": world["a"], "limit": "4"} | ({"after": cursor} if cursor else {})
        body = await (await get(audit_client, world, **params)).json()
        seen += [e["event_id"] for e in body["events"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["events"]) == 4
    assert seen == [e["id"] for e in world["events"]]


async def test_ndjson_exports_everything_and_respects_filters(audit_client, world):
    rows = await ndjson(await get(audit_client, world, headers=NDJSON))
    ids = [r["event_id"] for r in rows]
    wanted = [e["id"] for e in world["events"] + world["others"]]
    assert set(wanted) <= set(ids)
    assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
    assert len(ids) == len(set(ids))
    rows = await ndjson(await get(audit_client, world, headers=NDJSON, company_id=world["b"]))
    assert [r["event_id"] for r in rows] == [e["id"] for e in world["others"]]


async def test_company_bound_key_sees_only_its_company(audit_client, world):
    body = await (await get(audit_client, world, key="auditor_a", limit="1000")).json()
    assert {e["company_id"] for e in body["events"]} == {world["a"]}
    assert [e["event_id"] for e in body["events"]] == [e["id"] for e in world["events"]]
    rows = await ndjson(await get(audit_client, world, key="auditor_a", headers=NDJSON))
    assert [r["event_id"] for r in rows] == [e["id"] for e in world["events"]]
    for params in ({"company_id": world["b"]}, {"company_id": "no-such-company"}):
        resp = await get(audit_client, world, key="auditor_a", **params)
        assert resp.status == 404 and (await resp.json())["code"] == "company_not_found"
    resp = await get(audit_client, world, key="auditor_a", headers=NDJSON, company_id=world["b"])
    assert resp.status == 404
    body = await (await audit_client.get("/v1/audit/verify", headers=auth(world, "auditor_a"))).json()
    assert body["ok"] is True and "rows_checked" not in body and "head" not in body


async def test_verify_reports_an_intact_chain(audit_client, world):
    resp = await audit_client.get("/v1/audit/verify", headers=auth(world))
    body = await resp.json()
    assert resp.status == 200 and body["ok"] is True and body["first_broken"] is None
    assert body["rows_checked"] == body["head"]["seq"] >= 9


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "invalid_parameter"),
        ({"limit": "1001"}, "invalid_parameter"),
        ({"limit": "ten"}, "invalid_parameter"),
        ({"after": "-1"}, "invalid_cursor"),
        ({"after": "abc"}, "invalid_cursor"),
        ({"since": "yesterday"}, "invalid_parameter"),
        ({"since": "2024-05-02T00:00:00Z", "until": "2024-05-01T00:00:00Z"}, "invalid_parameter"),
        ({"type": "mfa disabled"}, "invalid_parameter"),
        ({"company": "x"}, "unknown_parameter"),
    ],
)
async def test_bad_queries_get_problem_json(audit_client, world, params, code):
    resp = await get(audit_client, world, **params)
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == code


async def test_keys_are_checked(audit_client, world):
    resp = await audit_client.get("/v1/audit/events")
    assert resp.status == 401 and (await resp.json())["code"] == "missing_api_key"
    for path in ("/v1/audit/events", "/v1/audit/verify"):
        resp = await audit_client.get(path, headers=auth(world, "service"))
        assert resp.status == 403 and (await resp.json())["code"] == "wrong_role"


async def test_an_export_failing_midway_is_cut_short_not_finished(audit_client, world, monkeypatch):
    import aiohttp

    from services.audit import api

    def broken(entry):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(api, "entry_json", broken)
    resp = await get(audit_client, world, headers=NDJSON)
    assert resp.status == 200  # the headers were out before the failure
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # no final chunk: the client cannot mistake this for a complete export


async def test_an_unbound_export_verifies_with_the_documented_recipe(audit_client, world):
    rows = await ndjson(await get(audit_client, world, headers=NDJSON))
    # The recipe of docs/audit.md, on the exported lines only.
    prev = bytes(32)
    for n, row in enumerate(rows, start=1):
        body = {k: v for k, v in row.items() if k not in ("hash", "prev_hash")}
        assert row["seq"] == n and bytes.fromhex(row["prev_hash"]) == prev
        assert hashlib.sha256(prev + canonical(body)).hexdigest() == row["hash"]
        prev = bytes.fromhex(row["hash"])
    assert len(rows) >= 9
