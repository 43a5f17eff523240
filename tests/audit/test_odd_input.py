"""Odd input to the audit API is a 400 with a stable code, never a 500 (issue 11, item 6)."""

from __future__ import annotations

import pytest

from services.common.apikeys import create_key


@pytest.fixture(scope="module")
async def auditor(runtime):
    return {"Authorization": f"Bearer {await create_key(runtime.pool, 'auditor', label='odd input')}"}


@pytest.mark.parametrize("query", [
    "company_id=%00", "type=Login%00Succeeded", "account_id=a%00b", "after=1%00", "limit=5%00",
    "since=2024-01-01T00:00:00Z%00", "%00=1", "company_id=%01%1f",
])
async def test_control_characters_in_filters_are_400_invalid_characters(audit_client, auditor, query):
    resp = await audit_client.get(f"/v1/audit/events?{query}", headers=auditor)
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] in ("invalid_characters", "invalid_parameter")


@pytest.mark.parametrize("stamp", [
    "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-00:01",
    "0001-01-01T00:00:00%2B00:01",
])
@pytest.mark.parametrize("name", ["since", "until"])
async def test_timestamps_outside_utc_years_1_to_9999_are_400(audit_client, auditor, name, stamp):
    resp = await audit_client.get(f"/v1/audit/events?{name}={stamp.replace('+', '%2B')}", headers=auditor)
    assert resp.status == 400, await resp.text()
    problem = await resp.json()
    assert problem["code"] == "invalid_parameter" and problem["parameter"] == name


async def test_the_edges_of_the_range_still_work(audit_client, auditor):
    for stamp in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00-14:00"):
        resp = await audit_client.get(f"/v1/audit/events?since={stamp}", headers=auditor)
        assert resp.status == 200, (stamp, await resp.text())
