"""System checks for the settings this app depends on."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.checks import Error, register

from .conf import conf

TRANSPORTS = ("local", "database", "postgres", "redis")


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Check the middleware, django-eventstream and NOTIFICATIONS_* settings."""
    errors: list[Error] = []
    if not apps.is_installed("django_eventstream"):
        errors.append(
            Error(
                "django_eventstream is not in INSTALLED_APPS.",
                hint="Add 'django_eventstream' to INSTALLED_APPS.",
                id="notifications.E001",
            )
        )
    if (
        "django.contrib.sessions.middleware.SessionMiddleware"
        not in settings.MIDDLEWARE
    ):
        errors.append(
            Error(
                "SessionMiddleware is required: notifications are addressed to sessions.",
                id="notifications.E002",
            )
        )
    if "django.middleware.gzip.GZipMiddleware" in settings.MIDDLEWARE:
        errors.append(
            Error(
                "GZipMiddleware buffers the event stream.",
                hint="Remove it, or compress at a proxy that skips text/event-stream.",
                id="notifications.E003",
            )
        )
    max_length = conf.MAX_MESSAGE_LENGTH
    if (
        not isinstance(max_length, int)
        or isinstance(max_length, bool)
        or max_length < 1
    ):
        errors.append(
            Error(
                "NOTIFICATIONS_MAX_MESSAGE_LENGTH must be a positive integer.",
                id="notifications.E004",
            )
        )
    for name, low, check_id in (
        ("RETENTION_DAYS", 1, "E008"),
        ("READ_RETENTION_DAYS", 1, "E008"),
        ("INBOX_LIMIT", 1, "E008"),
        ("REPORTS_PER_MINUTE", 0, "E011"),
    ):
        value = getattr(conf, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            kind = (
                "a positive integer" if low else "an integer, zero (no limit) or more"
            )
            errors.append(
                Error(
                    f"NOTIFICATIONS_{name} must be {kind}, not {value!r}.",
                    id=f"notifications.{check_id}",
                )
            )
    transport = conf.TRANSPORT
    if transport is not None and transport not in TRANSPORTS:
        errors.append(
            Error(
                f"NOTIFICATIONS_TRANSPORT is {transport!r}.",
                hint=f"Use one of {', '.join(TRANSPORTS)}, or leave it unset.",
                id="notifications.E005",
            )
        )
    if transport == "redis" and not conf.REDIS_URL:
        errors.append(
            Error(
                "NOTIFICATIONS_TRANSPORT is 'redis' but no Redis URL is set.",
                hint="Set REDIS_URL (NOTIFICATIONS_REDIS_URL).",
                id="notifications.E006",
            )
        )
    if transport == "postgres" and settings.DATABASES["default"]["ENGINE"] != (
        "django.db.backends.postgresql"
    ):
        errors.append(
            Error(
                "NOTIFICATIONS_TRANSPORT is 'postgres' but the database is not PostgreSQL.",
                id="notifications.E007",
            )
        )
    for name, low, inclusive in (
        ("POLL_INTERVAL", 0.0, False),
        ("REPORT_STEP_SECONDS", 0.0, True),
        ("STREAM_STALL_SECONDS", 0.0, False),
    ):
        value = getattr(conf, name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < low or (value == low and not inclusive):
            bound = "zero or more" if inclusive else "more than zero"
            errors.append(
                Error(
                    f"NOTIFICATIONS_{name} must be a number of seconds, {bound}; "
                    f"it is {value!r}.",
                    id="notifications.E010",
                )
            )
    origins = getattr(settings, "EVENTSTREAM_ALLOW_ORIGINS", None) or getattr(
        settings, "EVENTSTREAM_ALLOW_ORIGIN", None
    )
    if origins and "*" in (origins if isinstance(origins, list | tuple) else [origins]):
        errors.append(
            Error(
                "The event stream allows any origin ('*').",
                hint="List the origins allowed to read the stream; streams carry cookies.",
                id="notifications.E009",
            )
        )
    return errors
