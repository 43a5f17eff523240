"""The OpenAPI file describes every audit call and every error code the API answers with."""

from __future__ import annotations

from ..specs import OPENAPI_DIR, ROOT, load_spec, raised_codes


def test_openapi_lists_every_route_and_problem_code():
    spec = load_spec(OPENAPI_DIR / "audit.yaml")
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/audit/events", "/v1/audit/verify", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    codes = raised_codes(ROOT / "services/audit/api.py")
    documented = set(spec["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    assert codes and codes <= documented, codes - documented
    params = {p["name"] for p in spec["paths"]["/v1/audit/events"]["get"]["parameters"] if p["in"] == "query"}
    assert params == {"company_id", "type", "account_id", "since", "until", "after", "limit"}
