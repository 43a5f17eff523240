"""The `mfa` command: migrate, run services, create API keys, set up the broker, verify the audit chain."""

from __future__ import annotations

import argparse
import asyncio
import sys

from .common.broker import BrokerUnreachable
from .common.brokeradmin import AdminError
from .common.config import ConfigError, Settings
from .common.db import DatabaseUnreachable
from .common.logs import configure_logging
from .common.supervisor import PARTS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mfa", description="Multi-factor authentication service")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations of every service")
    start = sub.add_parser("start", help="run everything (or the parts named) as the recommended processes:"
                           " MFA_AUTH_WORKERS auth processes on one port, one for the other services, one relay")
    start.add_argument("parts", nargs="*", choices=[[], *PARTS], metavar="PART",
                       help=f"some of {', '.join(PARTS)} (default: all of them)")
    run = sub.add_parser("run", help="run services in this one process (all: every service)")
    run.add_argument("service", nargs="+", choices=["auth", "notifier", "recovery", "audit", "all"])
    run.add_argument("--no-migrate", action="store_true", help=argparse.SUPPRESS)  # `mfa start` migrated
    run.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # `mfa start`'s auth processes
    relay = sub.add_parser("relay", help="publish the outboxes of services run with MFA_RELAY=separate")
    relay.add_argument("service", choices=["auth", "notifier", "recovery", "all"])
    relay.add_argument("--no-migrate", action="store_true", help=argparse.SUPPRESS)
    keys = sub.add_parser("api-key", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--role", required=True, choices=["service", "helpdesk", "auditor"])
    create.add_argument("--company", default=None, help="bind the key to one company id")
    create.add_argument("--label", default="")
    create.add_argument("--audience", default=None,
                        help="service keys: the `aud` of the assertions this key's calls receive (default: the company id)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key (the key itself, or its first 10 characters)")
    revoke.add_argument("key")
    helpdesk = sub.add_parser("helpdesk-link", help="print a single-use sign-in link to the helpdesk console")
    helpdesk.add_argument("--agent", required=True, help="the agent's name, carried by every decision")
    audit = sub.add_parser("audit", help="audit log tools")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    audit_sub.add_parser("verify", help="recompute the audit hash chain")
    broker = sub.add_parser("broker", help="RabbitMQ users, permissions and queues")
    broker_sub = broker.add_subparsers(dest="action", required=True)
    broker_sub.add_parser("setup", help="create or update the broker user of upstream and of each service,"
                          " with only the permissions each needs (MFA_AMQP_USER_PREFIX, MFA_AMQP_PASSWORD_*)")
    teardown = broker_sub.add_parser("teardown", help="delete the queues and consumer exchanges of MFA_QUEUE_PREFIX")
    teardown.add_argument("--exchange", action="store_true", help="also delete the MFA_EXCHANGE exchange")
    teardown.add_argument("--users", action="store_true", help="also delete the users `mfa broker setup` created")
    secrets = sub.add_parser("secrets", help="encryption key tools")
    secrets_sub = secrets.add_subparsers(dest="action", required=True)
    secrets_sub.add_parser("rotate", help="re-encrypt stored TOTP secrets under the newest MFA_SECRET_KEYS key")
    signing = sub.add_parser("signing-keys", help="the keys that sign assertions")
    signing_sub = signing.add_subparsers(dest="action", required=True)
    rotate = signing_sub.add_parser("rotate", help="add the next signing key; the current one stays in the JWKS until its assertions expired")
    rotate.add_argument("--now", action="store_true",
                        help="sign with the new key at once (a compromised key) instead of after verifiers' JWKS caches refreshed")
    signing_sub.add_parser("list", help="the published keys, when each signs and until when it is published")
    return parser


async def _main(args: argparse.Namespace, settings: Settings) -> int:
    from .common.runner import relay, run_migrations, serve
    from .registry import SERVICES

    specs = list(SERVICES.values())
    if args.command == "migrate":
        applied = await run_migrations(settings, specs)
        print(f"migrations applied: {len(applied)}")
        for name in applied:
            print(f"  {name}")
        return 0
    if args.command == "start":
        from .common.supervisor import start

        return await start(settings, specs, args.parts or list(PARTS))
    if args.command == "run":
        chosen = specs if "all" in args.service else [s for s in specs if s.name in args.service]
        return await serve(settings, chosen, migrations=not args.no_migrate, reuse_port=args.reuse_port)
    if args.command == "relay":
        return await relay(settings, specs if args.service == "all" else [SERVICES[args.service]],
                           migrations=not args.no_migrate)
    if args.command == "api-key":
        import asyncpg

        from .common.apikeys import create_key, revoke_key

        await run_migrations(settings, specs)
        conn = await asyncpg.connect(settings.database_url)
        try:
            if args.action == "revoke":
                count = await revoke_key(conn, args.key)
                print(f"revoked {count} key(s); services stop accepting them within 30 s")
                return 0 if count else 1
            try:
                key = await create_key(conn, args.role, args.company, args.label, args.audience)
            except ValueError as exc:
                print(f"mfa: {exc}", file=sys.stderr)
                return 2
        finally:
            await conn.close()
        print(f"created {args.role} key" + (f" bound to company {args.company}" if args.company else "")
              + (f" for audience {args.audience}" if args.audience else ""))
        print(key)
        return 0
    if args.command == "helpdesk-link":
        from .recovery.cli import helpdesk_link_command

        await run_migrations(settings, specs)
        return await helpdesk_link_command(settings, args.agent)
    if args.command == "audit":
        from .audit.cli import verify_command

        return await verify_command(settings)
    if args.command == "broker":
        from .common import brokeradmin

        if args.action == "setup":
            for line in await brokeradmin.setup(settings):
                print(line)
            return 0
        removed = await brokeradmin.teardown(settings, exchange=args.exchange, users=args.users)
        print(f"removed {len(removed)}: " + ", ".join(removed) if removed else "nothing to remove")
        return 0
    if args.command == "secrets":
        from .auth.cli import rotate_command

        return await rotate_command(settings)
    if args.command == "signing-keys":
        from .auth.cli import signing_keys_command

        await run_migrations(settings, specs)
        return await signing_keys_command(settings, args.action, now=getattr(args, "now", False))
    return 2


def _run(coro) -> int:
    """Run on uvloop where it is installed (it roughly halves the event loop's own cost)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mfa` console script."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"mfa: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, cache=True)
    try:
        return _run(_main(args, settings))
    except (DatabaseUnreachable, ConfigError, BrokerUnreachable, AdminError) as exc:
        print(f"mfa: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
