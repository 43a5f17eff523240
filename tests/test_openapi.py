"""The OpenAPI files: each is valid OpenAPI 3.1, and auth.yaml matches the auth app route for route and code for code.

Static checks only: no database, broker or fixture is needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate

from services.auth import api as auth_api

from .specs import OPENAPI_DIR, ROOT, load_spec, operations, raised_codes, resolve, routes_of

AUTH_SPEC = OPENAPI_DIR / "auth.yaml"
# Where the auth service raises its errors, and the shared HTTP edge in front of it.
AUTH_SOURCES = [*sorted((ROOT / "services" / "auth" / "handlers").glob("*.py")), ROOT / "services" / "auth" / "domain.py"]
EDGE_SOURCE = ROOT / "services" / "common" / "web.py"
# Added by services.common.web.create_base_app, not by the service's add_routes.
BASE_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
PROBLEM_REF = "#/components/schemas/Problem"


def _refers_to(schema: Any, target: str) -> bool:
    """True when `schema` is, or is composed (allOf/oneOf/anyOf) from, a `$ref` to `target`."""
    if not isinstance(schema, dict):
        return False
    if schema.get("$ref") == target:
        return True
    return any(_refers_to(sub, target) for key in ("allOf", "oneOf", "anyOf") for sub in schema.get(key, []))


@pytest.fixture(scope="module")
def auth_spec() -> dict[str, Any]:
    return load_spec(AUTH_SPEC)


@pytest.fixture(scope="module")
def auth_routes() -> set[tuple[str, str]]:
    app = web.Application()
    auth_api.add_routes(app)
    return routes_of(app)


def test_auth_spec_exists():
    assert AUTH_SPEC.is_file(), f"{AUTH_SPEC} is missing"


# Whatever OpenAPI files exist now (other services' files are added independently).
@pytest.mark.parametrize("path", sorted(OPENAPI_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_openapi_file_parses_and_validates(path: Path):
    spec = load_spec(path)
    assert isinstance(spec, dict), f"{path.name}: not a YAML mapping"
    assert str(spec.get("openapi", "")).startswith("3.1."), f"{path.name}: not OpenAPI 3.1"
    validate(spec)


def test_auth_spec_and_app_have_the_same_routes(auth_spec, auth_routes):
    documented = set(operations(auth_spec))
    assert auth_routes, "add_routes registered nothing"
    missing = sorted(auth_routes - documented)
    assert not missing, f"routes of services/auth/api.py missing from auth.yaml: {missing}"
    extra = sorted(documented - auth_routes - BASE_ROUTES)
    assert not extra, f"auth.yaml documents operations the auth app does not have: {extra}"
    base_missing = sorted(BASE_ROUTES - documented)
    assert not base_missing, f"auth.yaml lacks the common endpoints: {base_missing}"


def test_every_error_code_of_auth_is_documented(auth_spec, auth_routes):
    text = AUTH_SPEC.read_text(encoding="utf-8")
    raised = raised_codes(*AUTH_SOURCES)
    assert len(raised) >= 10, "the code= regex no longer finds the auth error codes; update this test"
    edge = raised_codes(EDGE_SOURCE)
    assert edge, "the code= regex no longer finds the edge's error codes; update this test"
    # A path parameter that does not match the id pattern is `<name>_not_found` (api._id).
    from_params = {
        f"{name.removesuffix('_id')}_not_found"
        for _, path in auth_routes
        for name in re.findall(r"\{([a-z_]+)\}", path)
    }
    undocumented = sorted(code for code in raised | edge | from_params if not re.search(rf"\b{code}\b", text))
    assert not undocumented, f"error codes raised by the auth service but absent from auth.yaml: {undocumented}"


def test_auth_operations_are_described_secured_and_use_problem(auth_spec):
    operation_ids = []
    for (method, path), operation in operations(auth_spec).items():
        where = f"{method} {path}"
        for key in ("operationId", "summary", "description", "responses"):
            assert operation.get(key), f"{where}: no {key}"
        operation_ids.append(operation["operationId"])
        security = operation.get("security", auth_spec.get("security"))
        if path.startswith("/v1/"):
            assert security, f"{where}: a /v1 call needs the bearer API key"
        else:
            assert security == [], f"{where}: public endpoints take no API key"
        responses = operation["responses"]
        assert any(str(status).startswith("2") for status in responses), f"{where}: no success response"
        if not path.startswith("/v1/"):
            continue
        for status, response in responses.items():
            if not str(status).startswith(("4", "5")):
                continue
            response = resolve(auth_spec, response)
            content = response.get("content", {})
            assert list(content) == ["application/problem+json"], f"{where} {status}: not problem+json"
            schema = content["application/problem+json"]["schema"]
            assert _refers_to(schema, PROBLEM_REF) or _refers_to(resolve(auth_spec, schema), PROBLEM_REF), (
                f"{where} {status}: the schema does not reference Problem"
            )
            assert "`" in response.get("description", ""), f"{where} {status}: list the `code` values"
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def test_auth_path_parameters_use_the_id_schema_of_the_api(auth_spec):
    for path, item in auth_spec["paths"].items():
        names = set(re.findall(r"\{([a-z_]+)\}", path))
        declared = {}
        for parameter in item.get("parameters", []):
            parameter = resolve(auth_spec, parameter)
            if parameter["in"] == "path":
                declared[parameter["name"]] = resolve(auth_spec, parameter["schema"])
        assert set(declared) == names, f"{path}: path parameters {sorted(declared)} != {sorted(names)}"
        for name, schema in declared.items():
            assert {k: schema.get(k) for k in auth_api._ID} == auth_api._ID, f"{path} {name}: not api._ID"
