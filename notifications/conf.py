"""The NOTIFICATIONS_* settings, with their defaults, read at call time.

Reading through `conf` instead of `django.conf.settings` keeps every default in
one place and lets `override_settings` work, since nothing is cached at import.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Longest message accepted by notification_send, in characters.
    "NOTIFICATIONS_MAX_MESSAGE_LENGTH": 2000,
    # How to reach server processes other than the sender's: "local",
    # "database", "postgres" or "redis"; None picks one from the database.
    "NOTIFICATIONS_TRANSPORT": None,
    "NOTIFICATIONS_REDIS_URL": None,
    # Seconds between two polls of the database transport.
    "NOTIFICATIONS_POLL_INTERVAL": 1.0,
    # Days a notification is kept; read ones go after READ_RETENTION_DAYS.
    "NOTIFICATIONS_RETENTION_DAYS": 30,
    "NOTIFICATIONS_READ_RETENTION_DAYS": 7,
    # Threads shared by all open event streams of a process for their short
    # database reads (notifications.streaming); not one thread per stream.
    "NOTIFICATIONS_STREAM_THREADS": 4,
    # Seconds a page may leave its socket undrained (the server holding what
    # it was sent) before its connection is dropped; it reconnects and resumes.
    "NOTIFICATIONS_STREAM_STALL_SECONDS": 30.0,
    # Seconds the report job pauses after each step, so its progress shows.
    "NOTIFICATIONS_REPORT_STEP_SECONDS": 1.0,
    # Most report jobs one browser session may start in a minute (0: no limit),
    # so that a held-down button cannot fill the worker's queue.
    "NOTIFICATIONS_REPORTS_PER_MINUTE": 5,
    # Most unread notifications listed by the inbox and the JSON endpoint.
    "NOTIFICATIONS_INBOX_LIMIT": 50,
}


class Settings:
    def __getattr__(self, name: str) -> Any:
        key = f"NOTIFICATIONS_{name}"
        if key not in DEFAULTS:
            raise AttributeError(name)
        return getattr(settings, key, DEFAULTS[key])


conf = Settings()
