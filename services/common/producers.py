"""Who may publish which event type: one table, enforced by the broker and checked by every consumer.

RabbitMQ enforces it with topic permissions on the exchange (`mfa broker setup` grants each
party's user the routing keys, i.e. the event types, of this table) and validates the AMQP
`user_id` property: a publisher can set only its own user name. Every consumer checks that
property against the table, so an event from the wrong party is parked even where the broker
was set up by hand (see :class:`Publishers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .config import PARTIES, Settings

UPSTREAM_TYPES = ("CompanyUpserted", "AccountUpserted", "AccountRemoved", "LoginAttempted")

# Event type -> the parties allowed to produce it. auth announces the directory changes made
# over its HTTP API itself, so CompanyUpserted and AccountUpserted come from upstream or auth.
PRODUCERS: dict[str, frozenset[str]] = {
    "CompanyUpserted": frozenset({"upstream", "auth"}),
    "AccountUpserted": frozenset({"upstream", "auth"}),
    "AccountRemoved": frozenset({"upstream"}),
    "LoginAttempted": frozenset({"upstream"}),
    **{
        event_type: frozenset({"auth"})
        for event_type in (
            "MfaEnrolled", "MfaDisabled", "BackupEmailRequested", "BackupEmailChanged", "BackupEmailConfirmed",
            "BackupCodesRegenerated", "MfaPolicyChanged", "LoginChallengeIssued", "LoginSucceeded", "LoginFailed",
            "MfaLocked",
        )
    },
    **{
        event_type: frozenset({"recovery"})
        for event_type in ("RecoveryTicketOpened", "RecoveryTicketApproved", "RecoveryTicketRejected",
                           "RecoveryPhotoDeleted")
    },
    # The backbone's own tests and benchmark: any service, never upstream.
    "TestPing": frozenset({"auth", "notifier", "recovery", "audit"}),
}


def types_of(party: str) -> list[str]:
    """The event types `party` may publish, sorted."""
    return sorted(t for t, parties in PRODUCERS.items() if party in parties)


@dataclass(frozen=True)
class Publishers:
    """The broker user of each party, and the check of a message's `user_id` against PRODUCERS."""

    users: Mapping[str, str]  # party -> broker user

    @classmethod
    def from_settings(cls, settings: Settings) -> Publishers:
        return cls({party: settings.amqp_user(party) for party in PARTIES})

    @property
    def shared(self) -> bool:
        """Every party is one user (the development default): nobody can be told apart."""
        return len(set(self.users.values())) == 1

    def refusal(self, event_type: str, user_id: str | None) -> str | None:
        """Why a message of `event_type` published by `user_id` must not be acted on; None when it may.

        Without a `user_id` RabbitMQ vouches for nobody, so such a message is refused unless
        every party shares one user anyway.
        """
        parties = PRODUCERS.get(event_type)
        if parties is None:
            return f"no party may publish {event_type}"
        if user_id is None and self.shared:
            return None
        if user_id is not None and any(self.users.get(party) == user_id for party in parties):
            return None
        who = f"user {user_id!r}" if user_id is not None else "a message without user_id"
        return f"{event_type} comes only from {' or '.join(sorted(parties))}, not from {who}"
