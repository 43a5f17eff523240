"""schemathesis against all four OpenAPI files, with real API keys, against a real `mfa run all`.

Positive and negative (schema-breaking) cases for every operation, bounded by EXAMPLES per
operation. Checks: no server error, and every response (status, content type, body) as its
OpenAPI file says. The whole module runs in about a minute or two on two cores.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from services.common.apikeys import create_key

from .processes import free_ports, run_all_env, start, stop, url, wait_ready

SPECS = Path(__file__).resolve().parent.parent / "schemas" / "openapi"
EXAMPLES = int(os.environ.get("MFA_FUZZ_EXAMPLES", "30"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
PORTS = {"auth": "AUTH", "recovery": "RECOVERY", "audit": "AUDIT", "notifier": "NOTIFIER"}


def _schema(api: str):
    schema = schemathesis.openapi.from_path(SPECS / f"{api}.yaml")
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=EXAMPLES)
    return schema


auth_schema = _schema("auth")
recovery_schema = _schema("recovery")
audit_schema = _schema("audit")
notifier_schema = _schema("notifier")


@dataclass
class Stack:
    urls: dict[str, str]
    keys: dict[str, str]

    def headers(self, api: str, path: str) -> dict[str, str]:
        if api == "audit":
            role = "auditor"
        elif api == "recovery" and path.startswith(("/v1/recovery-tickets", "/v1/helpdesk-sessions")):
            role = "helpdesk"
        else:
            role = "service"
        return {"Authorization": f"Bearer {self.keys[role]}"}


@pytest.fixture(scope="module")
async def stack(settings, runtime):
    """`mfa run all` on free ports, and a key of each role."""
    ports = free_ports()
    env = run_all_env(settings, ports, MFA_RECOVERY_RATE_PER_SENDER="100000", MFA_RECOVERY_RATE_PER_IP="100000")
    keys = {role: await create_key(runtime.pool, role, label="fuzz") for role in ("service", "helpdesk", "auditor")}
    proc = await start("run", "all", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    urls = {api: url(ports[name]) for api, name in PORTS.items()}
    try:
        await wait_ready(urls, timeout=40)
        yield Stack(urls, keys)
    finally:
        await stop(proc)


def _run(stack: Stack, api: str, case) -> None:
    case.call_and_validate(base_url=stack.urls[api], headers=stack.headers(api, case.path), checks=CHECKS,
                           timeout=30)


FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=EXAMPLES)


@auth_schema.parametrize()
@FUZZ
def test_auth_api(case, stack):
    _run(stack, "auth", case)


@recovery_schema.parametrize()
@FUZZ
def test_recovery_api(case, stack):
    _run(stack, "recovery", case)


@audit_schema.parametrize()
@FUZZ
def test_audit_api(case, stack):
    _run(stack, "audit", case)


@notifier_schema.parametrize()
@FUZZ
def test_notifier_api(case, stack):
    _run(stack, "notifier", case)
