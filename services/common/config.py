"""Settings read once from the environment into a frozen object.

Every setting has a working local default so that `make run` needs nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/mfa"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# A fixed development key: anything encrypted with it is readable by anyone with the source.
# Production must set MFA_SECRET_KEYS; `make run` prints a warning when it is the default.
DEV_SECRET_KEY = "dev:" + base64.urlsafe_b64encode(hashlib.sha256(b"mfa-dev-only-key").digest()).decode()
ENVIRONMENTS = ("production", "development")
# Who publishes to the bus: upstream (the product this service protects) and each service.
# Each one is a broker user of its own once MFA_AMQP_USER_PREFIX is set (see services/common/producers.py).
PARTIES = ("upstream", "auth", "notifier", "recovery", "audit")


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration; build with :meth:`from_env`."""

    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = DEFAULT_AMQP_URL
    # Empty: every party connects with amqp_url's credentials (development). Else party P is the user <prefix>P.
    amqp_user_prefix: str = ""
    amqp_passwords: Mapping[str, str] = field(default_factory=dict, repr=False)  # party -> password
    amqp_admin_url: str = field(default="", repr=False)  # management API for `mfa broker`; empty: rabbitmqctl
    env: str = "production"  # production | development (allows the development secret key and one broker user)
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_tls: str = "none"  # none | starttls | tls
    smtp_ca_file: str = ""  # extra CA bundle to trust for the SMTP server's certificate
    mail_from: str = "MFA <no-reply@mfa.localhost>"
    helpdesk_email: str = "helpdesk@mfa.localhost"
    public_url: str = "http://127.0.0.1:8081"
    # The recovery service's own address as a browser reaches it: the helpdesk console and /recover.
    recovery_public_url: str = "http://127.0.0.1:8082"
    # (key id, 32-byte key) pairs, oldest first; the last one encrypts, all of them decrypt, the first keys the hashes.
    secret_keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    log_format: str = "json"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    auth_port: int = 8081
    recovery_port: int = 8082
    audit_port: int = 8083
    notifier_port: int = 8084
    relay_port: int = 8085  # /healthz, /readyz and /metrics of `mfa relay`
    inbound_smtp_port: int = 2525
    mail_dir: str = "var/mail"
    recovery_rate_per_sender: int = 5  # recovery requests per sender address per hour
    recovery_rate_per_ip: int = 30  # per client IP (behind an MX relay, raise it: the relay is one IP)
    exchange: str = "mfa.events"
    queue_prefix: str = ""  # joined to queue names with a dot (see queue_name)
    queue_partitions: int = 1  # queues per consumer, each with a single active consumer (see consumer.py)
    login_retention_days: int = 90  # auth deletes a login this long after it expired (MFA_LOGIN_RETENTION_DAYS)
    issuer_url: str = "http://127.0.0.1:8081"  # `iss` of assertions; MFA_ISSUER, default MFA_PUBLIC_URL
    relay_mode: str = "inline"  # inline: `mfa run` publishes its outboxes; separate: `mfa relay` does
    auth_workers: int = 1  # auth processes `mfa start` runs on the one auth port (MFA_AUTH_WORKERS, default_auth_workers())
    # URL prefixes the hosted pages may send a browser back to (loopback too while in development).
    return_urls: tuple[str, ...] = ()
    product_name: str = "MFA"  # named in the pages and the emails

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every MFA_* variable, falling back to the local defaults."""
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        def get_int(name: str, default: int) -> int:
            raw = get(name, str(default))
            try:
                return int(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a whole number, got {raw!r}") from exc

        tls = get("MFA_SMTP_TLS", "none").lower()
        tls = {"true": "starttls", "1": "starttls", "false": "none", "0": "none", "ssl": "tls"}.get(tls, tls)
        if tls not in ("none", "starttls", "tls"):
            raise ConfigError("MFA_SMTP_TLS must be none, starttls or tls")
        log_format = get("MFA_LOG_FORMAT", "json").lower()
        if log_format not in ("json", "console"):
            raise ConfigError("MFA_LOG_FORMAT must be json or console")
        relay_mode = get("MFA_RELAY", "inline").lower()
        if relay_mode not in ("inline", "separate"):
            raise ConfigError("MFA_RELAY must be inline or separate")
        environment = get("MFA_ENV", "production").lower()
        if environment not in ENVIRONMENTS:
            raise ConfigError("MFA_ENV must be production or development")
        partitions = get_int("MFA_QUEUE_PARTITIONS", 1)
        if not 1 <= partitions <= 16:
            raise ConfigError("MFA_QUEUE_PARTITIONS must be between 1 and 16 (the outbox's partitions)")
        login_retention_days = get_int("MFA_LOGIN_RETENTION_DAYS", 90)
        # At least 8 days: a login's links are kept 7 days past expiry to say "expired", and go with it.
        if not 8 <= login_retention_days <= 3650:
            raise ConfigError("MFA_LOGIN_RETENTION_DAYS must be between 8 and 3650")
        auth_workers = get_int("MFA_AUTH_WORKERS", default_auth_workers())
        if not 1 <= auth_workers <= 64:
            raise ConfigError("MFA_AUTH_WORKERS must be between 1 and 64")
        return cls(
            database_url=get("MFA_DATABASE_URL", DEFAULT_DATABASE_URL),
            amqp_url=get("MFA_AMQP_URL", DEFAULT_AMQP_URL),
            amqp_user_prefix=get("MFA_AMQP_USER_PREFIX", ""),
            amqp_passwords={p: env[f"MFA_AMQP_PASSWORD_{p.upper()}"] for p in PARTIES
                            if env.get(f"MFA_AMQP_PASSWORD_{p.upper()}")},
            amqp_admin_url=get("MFA_AMQP_ADMIN_URL", ""),
            env=environment,
            smtp_host=get("MFA_SMTP_HOST", ""),
            smtp_port=get_int("MFA_SMTP_PORT", 465 if tls == "tls" else 587 if tls == "starttls" else 25),
            smtp_user=get("MFA_SMTP_USER", ""),
            smtp_password=env.get("MFA_SMTP_PASSWORD", ""),
            smtp_tls=tls,
            smtp_ca_file=get("MFA_SMTP_CA_FILE", ""),
            mail_from=get("MFA_MAIL_FROM", "MFA <no-reply@mfa.localhost>"),
            helpdesk_email=get("MFA_HELPDESK_EMAIL", "helpdesk@mfa.localhost"),
            public_url=get("MFA_PUBLIC_URL", "http://127.0.0.1:8081").rstrip("/"),
            recovery_public_url=get("MFA_RECOVERY_PUBLIC_URL", "http://127.0.0.1:8082").rstrip("/"),
            secret_keys=parse_secret_keys(get("MFA_SECRET_KEYS", DEV_SECRET_KEY)),
            log_format=log_format,
            log_level=get("MFA_LOG_LEVEL", "INFO").upper(),
            host=get("MFA_HOST", "127.0.0.1"),
            auth_port=get_int("MFA_AUTH_PORT", 8081),
            recovery_port=get_int("MFA_RECOVERY_PORT", 8082),
            audit_port=get_int("MFA_AUDIT_PORT", 8083),
            notifier_port=get_int("MFA_NOTIFIER_PORT", 8084),
            relay_port=get_int("MFA_RELAY_PORT", 8085),
            inbound_smtp_port=get_int("MFA_INBOUND_SMTP_PORT", 2525),
            mail_dir=get("MFA_MAIL_DIR", "var/mail"),
            recovery_rate_per_sender=get_int("MFA_RECOVERY_RATE_PER_SENDER", 5),
            recovery_rate_per_ip=get_int("MFA_RECOVERY_RATE_PER_IP", 30),
            exchange=get("MFA_EXCHANGE", "mfa.events"),
            queue_prefix=get("MFA_QUEUE_PREFIX", ""),
            queue_partitions=partitions,
            login_retention_days=login_retention_days,
            issuer_url=get("MFA_ISSUER", get("MFA_PUBLIC_URL", "http://127.0.0.1:8081").rstrip("/")),
            relay_mode=relay_mode,
            auth_workers=auth_workers,
            return_urls=tuple(u.strip() for u in get("MFA_RETURN_URLS", "").split(",") if u.strip()),
            product_name=get("MFA_PRODUCT_NAME", "MFA"),
        )

    @property
    def uses_dev_secret_key(self) -> bool:
        return bool(self.secret_keys) and self.secret_keys[-1][0] == "dev" and len(self.secret_keys) == 1

    @property
    def development(self) -> bool:
        return self.env == "development"

    def check_safe_to_serve(self) -> None:
        """Refuse what only development may run with: raises ConfigError naming the setting."""
        if self.development:
            return
        if self.uses_dev_secret_key:
            raise ConfigError(
                "MFA_SECRET_KEYS is not set and the development key it falls back to is public:"
                " set MFA_SECRET_KEYS to a key of your own (see the README), or MFA_ENV=development"
            )
        if not self.amqp_user_prefix:
            raise ConfigError(
                "MFA_AMQP_USER_PREFIX is not set, so upstream and every service would share one broker user"
                " and anyone who can publish could reset MFA: set it (see `mfa broker setup`), or MFA_ENV=development"
            )

    def amqp_user(self, party: str) -> str:
        """The broker user `party` publishes and consumes as."""
        if self.amqp_user_prefix:
            return f"{self.amqp_user_prefix}{party}"
        return unquote(urlsplit(self.amqp_url).username or "guest")

    def amqp_url_for(self, party: str) -> str:
        """MFA_AMQP_URL with `party`'s own user and password (unchanged while no user prefix is set)."""
        if not self.amqp_user_prefix:
            return self.amqp_url
        password = self.amqp_passwords.get(party)
        if not password:
            raise ConfigError(
                f"MFA_AMQP_PASSWORD_{party.upper()} is not set: {party} connects to RabbitMQ as"
                f" {self.amqp_user(party)!r} (MFA_AMQP_USER_PREFIX) and needs that user's password"
            )
        parts = urlsplit(self.amqp_url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{quote(self.amqp_user(party), safe='')}:{quote(password, safe='')}@{host}"
        return urlunsplit(parts._replace(netloc=netloc))

    def queue(self, name: str) -> str:
        """A queue (or service exchange) name with MFA_QUEUE_PREFIX, joined by a dot."""
        return queue_name(self.queue_prefix, name)


def default_auth_workers() -> int:
    """Half the cores, at least one: the other half is left to PostgreSQL, RabbitMQ and the other processes.

    Measured on a 2-core VM with everything on it (bench/verify.py, 2026-12-01): one auth process
    verified 928/s at 0.54 ms of auth CPU each, two 693/s at 0.76 ms, p99 127 against 226 ms.
    Where the database and the broker run elsewhere, set MFA_AUTH_WORKERS to the cores.
    """
    return max(1, available_cores() // 2)


def available_cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's limit included)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def queue_name(prefix: str, name: str) -> str:
    """`prefix.name`, or `name` without a prefix; a prefix that already ends in a dot gets no second one."""
    prefix = prefix.rstrip(".")
    return f"{prefix}.{name}" if prefix else name


def parse_secret_keys(raw: str) -> tuple[tuple[str, bytes], ...]:
    """Parse `id:base64key[,id:base64key...]`; the LAST key is the newest and encrypts.

    Listing keys oldest first lets an operator rotate by appending a key.
    """
    keys: list[tuple[str, bytes]] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key_id, sep, b64 = part.partition(":")
        if not sep or not key_id:
            raise ConfigError("MFA_SECRET_KEYS entries look like id:base64key")
        try:
            key = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        except ValueError as exc:
            raise ConfigError(f"MFA_SECRET_KEYS key {key_id!r} is not base64") from exc
        if len(key) != 32:
            raise ConfigError(f"MFA_SECRET_KEYS key {key_id!r} must be 32 bytes")
        keys.append((key_id, key))
    if not keys:
        raise ConfigError("MFA_SECRET_KEYS is empty")
    if len({k for k, _ in keys}) != len(keys):
        raise ConfigError("MFA_SECRET_KEYS has a repeated key id")
    return tuple(keys)
