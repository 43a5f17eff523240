"""docker-compose.yml, read as Compose reads it (YAML with merge keys; no Docker engine here)."""

from __future__ import annotations

import re

import yaml

from services.common.config import Settings

from .conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
MFA = {name: spec for name, spec in SERVICES.items() if spec.get("image") == SERVICES["migrate"]["image"]}
PORTS = {"auth": "auth_port", "notifier": "notifier_port", "recovery": "recovery_port", "audit": "audit_port",
         "relay": "relay_port"}


def test_every_service_restarts_and_every_long_running_one_has_a_health_check():
    for name, spec in SERVICES.items():
        assert spec.get("restart") in ("unless-stopped", "always", "on-failure"), name
        if name != "migrate":  # a one-shot job: the others wait for it to complete instead
            assert spec["healthcheck"]["test"][0] == "CMD", name


def test_one_image_built_once_runs_every_mfa_service():
    assert set(MFA) == {"migrate", *PORTS}
    built = [name for name, spec in SERVICES.items() if "build" in spec]
    assert built == ["migrate"]
    for name in PORTS:
        assert SERVICES[name]["pull_policy"] == "never"  # the local image, never a registry's
        assert SERVICES[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_each_health_check_asks_its_own_service_for_readyz():
    defaults = Settings()
    for name, setting in PORTS.items():
        command = " ".join(SERVICES[name]["healthcheck"]["test"])
        port = re.search(r"127\.0\.0\.1:(\d+)/readyz", command)
        assert port and int(port.group(1)) == getattr(defaults, setting), name


def test_postgres_keeps_its_data_in_a_volume():
    mounts = SERVICES["postgres"]["volumes"]
    volume, _, target = mounts[0].partition(":")
    assert target == "/var/lib/postgresql/data" and volume in COMPOSE["volumes"]


def test_secret_keys_come_from_the_users_env_file_and_are_required():
    for name in MFA:
        assert re.fullmatch(r"\$\{MFA_SECRET_KEYS:\?.+\}", SERVICES[name]["environment"]["MFA_SECRET_KEYS"]), name
    readme = (ROOT / "README.md").read_text()
    assert "docker compose exec auth mfa api-key create --role service" in readme
    assert "MFA_SECRET_KEYS=" in readme and ".env" in readme
