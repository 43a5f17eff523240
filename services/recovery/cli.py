"""`mfa helpdesk-link --agent NAME`: a sign-in link to the helpdesk console, for an operator at the server."""

from __future__ import annotations

import sys

from ..common.config import Settings
from ..common.crypto import Keyring
from ..common.db import create_pool
from . import handlers
from .domain import valid_agent


async def helpdesk_link_command(settings: Settings, agent: str) -> int:
    """Print the single-use link alone on the last line; 2 when the name cannot be an agent's."""
    agent = agent.strip()
    if not valid_agent(agent):
        print("mfa: --agent must be 1 to 200 characters without control characters", file=sys.stderr)
        return 2
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        token_key = handlers.console_token_key(Keyring(settings.secret_keys))
        link = await handlers.issue_helpdesk_link(pool, token_key, settings.recovery_public_url, agent, None)
    finally:
        await pool.close()
    print(f"sign-in link for {agent}, single use, valid until {link.expires_at.isoformat(timespec='seconds')}:")
    print(link.url)
    return 0
