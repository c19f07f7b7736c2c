"""Channel names, built in one place.

A channel name goes into every SSE event id, so it must never carry a session
key: sessions are named by the random token of their Visitor row instead.
"""

from __future__ import annotations

import re

BROADCAST = "broadcast"
SESSION_PREFIX = "session-"
USER_PREFIX = "user-"

# Tokens are 32 hex characters and user keys are integers; anything else is not
# a channel this product ever makes.
CHANNEL_RE = re.compile(r"^(broadcast|session-[0-9a-f]{32}|user-[0-9]{1,18})$")


def session_channel(token: str) -> str:
    return f"{SESSION_PREFIX}{token}"


def user_channel(user_pk: int) -> str:
    return f"{USER_PREFIX}{user_pk}"


def is_valid_channel(name: str) -> bool:
    return bool(CHANNEL_RE.fullmatch(name))
