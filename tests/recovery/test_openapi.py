"""schemas/openapi/recovery.yaml describes every route of the app and every problem code the code raises."""

from __future__ import annotations

import re

from services.recovery.app import create_app

from ..specs import OPENAPI_DIR, ROOT, load_spec, operations, raised_codes, resolve, routes_of

SPEC = OPENAPI_DIR / "recovery.yaml"


async def test_every_route_is_documented(runtime):
    spec = load_spec(SPEC)
    assert spec["openapi"].startswith("3.1")
    assert routes_of(create_app(runtime)) == set(operations(spec))


def test_every_problem_code_raised_is_documented():
    text = SPEC.read_text()
    codes = raised_codes(*(ROOT / "services" / "recovery").glob("*.py"))
    assert codes, "no codes found"
    missing = {c for c in codes if f"`{c}`" not in text}
    assert not missing


def test_refs_resolve():
    spec = load_spec(SPEC)
    refs = set(re.findall(r"\$ref: '#/([^']+)'", SPEC.read_text()))
    for ref in refs:
        assert resolve(spec, {"$ref": f"#/{ref}"})
