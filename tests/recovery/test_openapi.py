"""schemas/openapi/recovery.yaml describes every route of the app and every problem code the code raises."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.recovery.app import create_app

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "schemas" / "openapi" / "recovery.yaml"


def load() -> dict:
    return yaml.safe_load(SPEC.read_text())


async def test_every_route_is_documented(runtime):
    spec = load()
    assert spec["openapi"].startswith("3.1")
    app = create_app(runtime)
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(method, path) for path, item in spec["paths"].items() for method in item if method != "parameters"}
    assert routes == documented


def test_every_problem_code_raised_is_documented():
    text = SPEC.read_text()
    sources = "".join(p.read_text() for p in (ROOT / "services" / "recovery").glob("*.py"))
    codes = set(re.findall(r'code="([a-z_]+)"', sources))
    assert codes, "no codes found"
    missing = {c for c in codes if f"`{c}`" not in text}
    assert not missing


def test_refs_resolve():
    spec = load()
    refs = set(re.findall(r"\$ref: '#/([^']+)'", SPEC.read_text()))
    for ref in refs:
        node = spec
        for key in ref.split("/"):
            node = node[key]
        assert node
