"""The OpenAPI file describes every audit call and every error code the API answers with."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_lists_every_route_and_problem_code():
    spec = yaml.safe_load((ROOT / "schemas/openapi/audit.yaml").read_text())
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/audit/events", "/v1/audit/verify", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    source = (ROOT / "services/audit/api.py").read_text()
    codes = set(re.findall(r'code="([a-z_]+)"', source))
    documented = set(spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    assert codes and codes <= documented, codes - documented
    params = {p["name"] for p in spec["paths"]["/v1/audit/events"]["get"]["parameters"] if p["in"] == "query"}
    assert params == {"company_id", "type", "account_id", "since", "until", "after", "limit"}
