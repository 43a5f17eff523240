"""Reading the OpenAPI files and what they are checked against: operations, `$ref`s, routes, raised error codes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_DIR = ROOT / "schemas" / "openapi"
CODE_RE = re.compile(r'code="([a-z_]+)"')
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


def load_spec(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every operation of `spec` by (METHOD, path)."""
    return {
        (method.upper(), path): operation
        for path, item in (spec.get("paths") or {}).items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow local `$ref`s (`#/components/...`) until a plain node."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), f"only local references are expected: {ref}"
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def raised_codes(*sources: Path) -> set[str]:
    """The problem `code`s the source files raise (`code="..."`)."""
    return {code for path in sources for code in CODE_RE.findall(path.read_text(encoding="utf-8"))}


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """The (METHOD, path) of every route of `app` (aiohttp's automatic HEAD routes left out)."""
    return {(route.method, route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"}
