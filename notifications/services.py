"""The one way to send a notification, and the other writes of the app.

Views, the admin, management commands and background jobs all call
`notification_send`; nothing sends from `save()` or from signals.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.http import HttpRequest
from django.utils import timezone

from . import transport
from .conf import conf
from .models import ChannelSequence, Notification, Visitor, channel_for
from .selectors import SESSION_TOKEN_KEY, visitor_for_request

logger = logging.getLogger(__name__)

# Event types become the `event:` line of the SSE frame and a JavaScript
# listener name: letters, digits, dash and underscore only, so CR, LF and NUL
# can never split a frame.
EVENT_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
PAYLOAD_MAX_BYTES = 8192


def notification_send(
    *,
    message: str,
    level: str = Notification.Level.INFO,
    visitor: Visitor | None = None,
    user: AbstractBaseUser | None = None,
    broadcast: bool = False,
    event_type: str = Notification.DEFAULT_EVENT_TYPE,
    payload: dict[str, Any] | None = None,
) -> Notification:
    """Store a notification and deliver it to its audience once committed.

    Exactly one audience: `visitor` (one browser session), `user` (all of that
    user's sessions) or `broadcast=True` (everyone). `payload`, a small JSON
    object, reaches the page as the event's `data`. Raise ValidationError,
    storing and sending nothing, when an argument is invalid.
    """
    notification_validate(
        message=message,
        level=level,
        event_type=event_type,
        visitor=visitor,
        user=user,
        broadcast=broadcast,
        payload=payload,
    )

    # Persist, numbering the row on its channel.
    channel = channel_for(
        visitor=visitor, user_pk=user.pk if user is not None else None
    )
    with transaction.atomic():
        notification = Notification.objects.create(
            level=level,
            message=message,
            event_type=event_type,
            visitor=visitor,
            user=user,
            channel=channel,
            payload=payload,
            seq=_next_seq(channel),
        )
        # A PostgreSQL NOTIFY, when that is the transport, commits with the row.
        transport.announce(notification)
        # Publish on commit: a rolled-back send must never reach a page, and a
        # page must never learn of a row it cannot read back yet.
        transaction.on_commit(lambda: transport.publish(notification))

    logger.info(
        "notification %s stored (level=%s, audience=%s)",
        notification.pk,
        level,
        notification.audience,
    )
    return notification


def notification_validate(
    *,
    message: str,
    level: str,
    event_type: str,
    visitor: Visitor | None,
    user: AbstractBaseUser | None,
    broadcast: bool,
    payload: dict[str, Any] | None = None,
) -> None:
    """Raise ValidationError unless notification_send would accept these arguments."""
    audiences = sum([visitor is not None, user is not None, bool(broadcast)])
    if audiences != 1:
        raise ValidationError(
            "Choose exactly one audience: a browser session, a user, or broadcast.",
            code="audience",
        )
    if level not in Notification.Level.values:
        raise ValidationError(
            "Unknown level %(level)r; use one of %(choices)s.",
            code="level",
            params={"level": level, "choices": ", ".join(Notification.Level.values)},
        )
    if not isinstance(message, str) or not message.strip():
        raise ValidationError("The message is empty.", code="empty")
    if "\x00" in message:
        raise ValidationError("The message contains a NUL character.", code="nul")
    max_length = conf.MAX_MESSAGE_LENGTH
    if len(message) > max_length:
        raise ValidationError(
            "The message is %(length)d characters long; the most is %(max)d.",
            code="too_long",
            params={"length": len(message), "max": max_length},
        )
    if not isinstance(event_type, str) or not EVENT_TYPE_RE.fullmatch(event_type):
        raise ValidationError(
            "Event type %(event_type)r is not allowed: use a letter, then letters, "
            "digits, '-' or '_' (64 at most).",
            code="event_type",
            params={"event_type": event_type},
        )
    if payload is not None:
        try:
            size = (
                len(json.dumps(payload, cls=DjangoJSONEncoder))
                if isinstance(payload, dict)
                else -1
            )
        except (TypeError, ValueError):
            size = -1
        if size < 0 or size > PAYLOAD_MAX_BYTES:
            raise ValidationError(
                "The payload must be a JSON object of at most %(max)d bytes.",
                code="payload",
                params={"max": PAYLOAD_MAX_BYTES},
            )
    if user is not None and user.pk is None:
        raise ValidationError("The user is not saved.", code="user")
    if visitor is not None and visitor.pk is None:
        raise ValidationError("The browser session is not saved.", code="visitor")


def _next_seq(channel: str) -> int:
    """Take the channel's next number; the counter row stays locked until commit."""
    table = connection.ops.quote_name(ChannelSequence._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (channel, last_seq) VALUES (%s, 1) "
            f"ON CONFLICT (channel) DO UPDATE SET last_seq = {table}.last_seq + 1 "
            "RETURNING last_seq",
            [channel],
        )
        return cursor.fetchone()[0]


def visitor_touch(visitor: Visitor, *, user: AbstractBaseUser | None) -> Visitor:
    """Record that a visitor was seen, and by which user, at most once a minute."""
    now = timezone.now()
    user_pk = user.pk if user is not None and user.is_authenticated else None
    stale = (now - visitor.last_seen).total_seconds() > 60
    if stale or visitor.user_id != user_pk:
        visitor.last_seen = now
        visitor.user_id = user_pk
        visitor.save(update_fields=["last_seen", "user"])
    return visitor


def visitor_ensure(request: HttpRequest) -> Visitor:
    """Return the request's Visitor, giving the session one if it has none.

    Called by page views so that a first-time visitor has a session (and its
    cookie) before the page's stream connects.
    """
    visitor = visitor_for_request(request)
    if visitor is None:
        visitor = Visitor.objects.create()
        request.session[SESSION_TOKEN_KEY] = visitor.token
        logger.info("new browser session %s", visitor.pk)
    return visitor_touch(visitor, user=getattr(request, "user", None))


def report_job_enqueue(visitor: Visitor) -> str:
    """Queue the report job for a browser session; return the job's id.

    The session hears at once that the job is queued, since a worker may be
    busy or not running yet.
    """
    from .tasks import PROGRESS_EVENT_TYPE, report_build

    # One transaction: a database-backed worker cannot see the job before the
    # "queued" event is numbered, so the job's own events come after it.
    with transaction.atomic():
        result = report_build.enqueue(visitor_id=visitor.pk)
        if not result.is_finished:
            notification_send(
                visitor=visitor,
                message="Report: queued (0%)",
                event_type=PROGRESS_EVENT_TYPE,
                payload={"job": str(result.id), "percent": 0, "step": "queued"},
            )
    logger.info("report job %s queued for browser session %s", result.id, visitor.pk)
    return str(result.id)
