"""The one way to send a notification, and the other writes of the app.

Views, the admin, management commands and background jobs all call
`notification_send`; nothing sends from `save()` or from signals.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.functions import Substr
from django.http import HttpRequest
from django.utils import timezone

from . import transport
from .channels import SESSION_PREFIX, user_channel
from .conf import conf
from .models import (
    BroadcastReceipt,
    ChannelSequence,
    Notification,
    Visitor,
    channel_for,
)
from .selectors import SESSION_TOKEN_KEY, notifications_unread, visitor_for_request

logger = logging.getLogger(__name__)

# Event types become the `event:` line of the SSE frame and a JavaScript
# listener name: letters, digits, dash and underscore only, so CR, LF and NUL
# can never split a frame.
EVENT_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
PAYLOAD_MAX_BYTES = 8192
# SQLite's JSON check refuses nesting past 1,000 levels (2,000 in older
# releases), failing the insert; no notification needs a tenth of that.
PAYLOAD_MAX_DEPTH = 100
# Streams end when their session logs in or out (see visitor_session_changed).
SESSION_CHANGED_EVENT = Notification.SESSION_CHANGED_EVENT_TYPE
# Tells a reader's other pages what was read; past this many ids a page
# reloads its inbox instead (the payload stays small).
READ_EVENT = Notification.READ_EVENT_TYPE
READ_EVENT_MAX_IDS = 500
# Names the stream itself writes (django-eventstream's and the browser's) and
# the app's steering events: a notification may not pose as one of them.
RESERVED_EVENT_TYPES = frozenset(
    {
        "message",
        "keep-alive",
        "stream-open",
        "stream-reset",
        "stream-error",
        # EventSource fires these itself; a page listening for them would take
        # a notification of that name for a connection event.
        "error",
        "open",
        SESSION_CHANGED_EVENT,
        READ_EVENT,
    }
)


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
    return _send(
        message=message,
        level=level,
        event_type=event_type,
        visitor=visitor,
        user=user,
        payload=payload,
        broadcast=broadcast,
        system=False,
    )


def _send(*, broadcast: bool, system: bool, **fields: Any) -> Notification:
    # `system` lets the app's own steering events (read receipts, session
    # changes) use event types that notification_send refuses to its callers.
    _validate(**fields, broadcast=broadcast, system=system)
    return _store(**fields)


def _store(
    *,
    message: str,
    level: str,
    event_type: str,
    visitor: Visitor | None,
    user: AbstractBaseUser | None,
    payload: dict[str, Any] | None,
    channel: str | None = None,
) -> Notification:
    """Insert the row, numbered on its channel, and publish it once committed."""
    if channel is None:
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
    _validate(
        message=message,
        level=level,
        event_type=event_type,
        visitor=visitor,
        user=user,
        broadcast=broadcast,
        payload=payload,
        system=False,
    )


def _validate(
    *,
    message: str,
    level: str,
    event_type: str,
    visitor: Visitor | None,
    user: AbstractBaseUser | None,
    broadcast: bool,
    payload: dict[str, Any] | None,
    system: bool,
) -> None:
    audiences = sum([visitor is not None, user is not None, broadcast is True])
    if audiences != 1 or broadcast not in (True, False):
        raise ValidationError(
            "Choose exactly one audience: a browser session, a user, or broadcast.",
            code="audience",
        )
    if visitor is not None and not isinstance(visitor, Visitor):
        raise ValidationError(
            "visitor must be a Visitor (a browser session), not %(kind)s.",
            code="audience",
            params={"kind": type(visitor).__name__},
        )
    if user is not None and not isinstance(user, AbstractBaseUser):
        raise ValidationError(
            "user must be a user instance, not %(kind)s.",
            code="audience",
            params={"kind": type(user).__name__},
        )
    if level not in Notification.Level.values:
        raise ValidationError(
            "Unknown level %(level)r; use one of %(choices)s.",
            code="level",
            params={"level": level, "choices": ", ".join(Notification.Level.values)},
        )
    if not isinstance(message, str):
        raise ValidationError(
            "The message must be text, not %(kind)s.",
            code="not_text",
            params={"kind": type(message).__name__},
        )
    if not message.strip():
        raise ValidationError("The message is empty.", code="empty")
    if "\x00" in message:
        raise ValidationError("The message contains a NUL character.", code="nul")
    if not _is_unicode_text(message):
        raise _surrogate_error("message", code="surrogate")
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
    if not system and event_type in RESERVED_EVENT_TYPES:
        raise ValidationError(
            "Event type %(event_type)r is reserved: the stream or the page uses it "
            "for its own signals.",
            code="event_type_reserved",
            params={"event_type": event_type},
        )
    if payload is not None:
        _validate_payload(payload)
    if user is not None and user.pk is None:
        raise ValidationError("The user is not saved.", code="user")
    if visitor is not None and visitor.pk is None:
        raise ValidationError("The browser session is not saved.", code="visitor")


def _is_unicode_text(text: str) -> bool:
    # A str may hold surrogate code points that no database encoding accepts.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_error(what: str, *, code: str) -> ValidationError:
    return ValidationError(
        "The %(what)s contains a surrogate character (such as '\\ud800'), "
        "which is not valid Unicode text.",
        code=code,
        params={"what": what},
    )


def _validate_payload(payload: Any) -> None:
    """Refuse a payload the JSONField or PostgreSQL's jsonb could not store."""
    shape_error = ValidationError(
        "The payload must be a JSON object of at most %(max)d bytes.",
        code="payload",
        params={"max": PAYLOAD_MAX_BYTES},
    )
    if not isinstance(payload, dict):
        raise shape_error
    # The plain encoder is what the JSONField stores with: a payload that only
    # DjangoJSONEncoder could write (datetime, Decimal) would fail at insert.
    try:
        encoded = json.dumps(payload)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(
            "The payload must hold only JSON values (text, numbers, true, false, "
            "null, lists and objects): %(problem)s.",
            code="payload",
            params={"problem": str(exc)[:200]},
        ) from None
    if len(encoded) > PAYLOAD_MAX_BYTES:
        raise shape_error
    depth = _check_payload_values(payload)
    if depth > PAYLOAD_MAX_DEPTH:
        raise ValidationError(
            "The payload nests %(depth)d levels deep; the most is %(max)d.",
            code="payload",
            params={"depth": depth, "max": PAYLOAD_MAX_DEPTH},
        )


def _check_payload_values(payload: dict[str, Any]) -> int:
    """Refuse the values of an encodable payload a database would; return its depth.

    A loop rather than recursion: a payload within the size limit can still
    nest more deeply than Python's recursion limit.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                # jsonb refuses \u0000, so only PostgreSQL would notice this.
                raise ValidationError(
                    "The payload contains a NUL character.", code="payload"
                )
            if not _is_unicode_text(value):
                raise _surrogate_error("payload", code="payload")
        elif isinstance(value, float) and not math.isfinite(value):
            # NaN and Infinity are not JSON: SQLite's JSON check and jsonb
            # refuse them.
            raise ValidationError(
                "The payload contains NaN or Infinity, which JSON cannot carry.",
                code="payload",
            )
        elif isinstance(value, dict):
            deepest = max(deepest, depth)
            pending.extend((key, depth) for key in value if isinstance(key, str))
            pending.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, (list, tuple)):
            deepest = max(deepest, depth)
            pending.extend((item, depth + 1) for item in value)
    return deepest


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


def visitor_session_changed(
    visitor: Visitor, *, user: AbstractBaseUser | None, reason: str
) -> Notification:
    """Record who the session now belongs to and close its open streams.

    The open streams of the session hear a `session-changed` event and end;
    the browser reconnects with the session as it is now, so a stream never
    keeps a user's channel after that user logged out.
    """
    if reason == "logout":
        # The session's own rows end with it; the session-changed event below
        # stays so that streams in other processes can still read it.
        Notification.objects.filter(visitor=visitor).delete()
    visitor.user_id = user.pk if user is not None else None
    visitor.last_seen = timezone.now()
    visitor.save(update_fields=["user", "last_seen"])
    logger.info("browser session %s: %s", visitor.pk, reason)
    return _send(
        visitor=visitor,
        user=None,
        message="Your session changed; the page will reload.",
        level=Notification.Level.INFO,
        event_type=SESSION_CHANGED_EVENT,
        payload={"reason": reason},
        broadcast=False,
        system=True,
    )


def _reports_started_since(visitor: Visitor, since: datetime) -> int:
    # Every job tells its session how it goes with `progress` rows carrying the
    # job's id, from the moment it is queued (or run, with an immediate
    # backend): the jobs named in rows since then were started or still run.
    return (
        Notification.objects.filter(
            visitor=visitor,
            event_type=Notification.PROGRESS_EVENT_TYPE,
            created_at__gte=since,
        )
        .values("payload__job")
        .distinct()
        .count()
    )


class ReportLimitReached(Exception):
    """The session has started `NOTIFICATIONS_REPORTS_PER_MINUTE` reports this minute."""

    retry_after = 60


def report_job_enqueue(visitor: Visitor) -> str:
    """Queue the report job for a browser session; return the job's id.

    The session hears at once that the job is queued, since a worker may be
    busy or not running yet. Past `NOTIFICATIONS_REPORTS_PER_MINUTE` jobs in a
    minute it hears why nothing was queued instead, and this raises
    `ReportLimitReached`.
    """
    from .tasks import PROGRESS_EVENT_TYPE, report_build

    limit = int(conf.REPORTS_PER_MINUTE)
    since = timezone.now() - timedelta(seconds=ReportLimitReached.retry_after)
    # One transaction: a database-backed worker cannot see the job before the
    # "queued" event is numbered, so the job's own events come after it.
    with transaction.atomic():
        if limit:
            # The Visitor row's lock makes two presses at once count one
            # after the other (PostgreSQL; SQLite has one writer anyway).
            Visitor.objects.select_for_update().filter(pk=visitor.pk).exists()
            started = _reports_started_since(visitor, since)
        refused = bool(limit) and started >= limit
        if not refused:
            result = report_build.enqueue(visitor_id=visitor.pk)
            if not result.is_finished:
                notification_send(
                    visitor=visitor,
                    message="Report: queued (0%)",
                    event_type=PROGRESS_EVENT_TYPE,
                    payload={"job": str(result.id), "percent": 0, "step": "queued"},
                )
    if refused:
        logger.info(
            "report refused for browser session %s: %d this minute", visitor.pk, started
        )
        # Said once a minute: every refused press of a held-down button would
        # otherwise stack another warning in the inbox.
        told = Notification.objects.filter(
            visitor=visitor, created_at__gte=since, payload__refused="report"
        ).exists()
        if not told:
            notification_send(
                visitor=visitor,
                message=(
                    f"Too many reports at once (at most {limit} a minute): "
                    "wait a moment before starting another."
                ),
                level=Notification.Level.WARNING,
                payload={"refused": "report"},
            )
        raise ReportLimitReached
    logger.info("report job %s queued for browser session %s", result.id, visitor.pk)
    return str(result.id)


def notification_mark_read(
    *,
    notification: Notification,
    visitor: Visitor | None,
    user: AbstractBaseUser | None,
) -> None:
    """Mark one notification read for this reader.

    A session's or user's row is read for all of its pages; a broadcast, one row
    shared by everyone, gets a receipt for this reader only (its user when
    logged in, else its session). Marking a read notification again is a no-op.
    """
    with transaction.atomic():
        if notification.audience != "broadcast":
            changed = Notification.objects.filter(
                pk=notification.pk, read_at__isnull=True
            ).update(read_at=timezone.now())
        else:
            reader = Q(user=user) if user is not None else Q(visitor=visitor)
            changed = not BroadcastReceipt.objects.filter(
                reader, notification_id=notification.pk
            ).exists()
            BroadcastReceipt.objects.bulk_create(
                [_receipt(notification.pk, visitor=visitor, user=user)],
                ignore_conflicts=True,
            )
        if changed:
            _announce_read(visitor=visitor, user=user, ids=[notification.pk])


def notifications_mark_all_read(
    *,
    visitor: Visitor | None,
    user: AbstractBaseUser | None,
    up_to: int | None = None,
) -> int:
    """Mark every unread notification of this reader read; return how many.

    `up_to`, the newest notification id the reader has seen, keeps one that
    arrived after the reader looked from being marked unseen.
    """
    unread = notifications_unread(visitor=visitor, user=user, limit=0)
    if up_to is not None:
        unread = unread.filter(pk__lte=up_to)
    rows = list(unread.values_list("pk", "visitor_id", "user_id"))
    own = [pk for pk, visitor_id, user_id in rows if visitor_id or user_id]
    broadcasts = [pk for pk, visitor_id, user_id in rows if not (visitor_id or user_id)]
    with transaction.atomic():
        Notification.objects.filter(pk__in=own, read_at__isnull=True).update(
            read_at=timezone.now()
        )
        BroadcastReceipt.objects.bulk_create(
            [_receipt(pk, visitor=visitor, user=user) for pk in broadcasts],
            ignore_conflicts=True,
            batch_size=500,
        )
        if rows:
            _announce_read(visitor=visitor, user=user, ids=[pk for pk, _, _ in rows])
    return len(rows)


def _announce_read(
    *, visitor: Visitor | None, user: AbstractBaseUser | None, ids: list[int]
) -> None:
    # The reader's other pages (tabs, devices) drop these from their inbox
    # live. A logged-in reader's pages all hear the user channel; an anonymous
    # reader's pages hear the session channel.
    if visitor is None and user is None:
        return
    shown = ids[:READ_EVENT_MAX_IDS]
    _send(
        message=f"{len(ids)} notification(s) marked read.",
        level=Notification.Level.INFO,
        event_type=READ_EVENT,
        visitor=None if user is not None else visitor,
        user=user,
        payload={"ids": shown, "complete": len(shown) == len(ids)},
        broadcast=False,
        system=True,
    )


def _receipt(
    notification_pk: int, *, visitor: Visitor | None, user: AbstractBaseUser | None
) -> BroadcastReceipt:
    # One receipt per reader, matching how notifications_unread looks them up.
    if user is not None:
        return BroadcastReceipt(notification_id=notification_pk, user=user)
    return BroadcastReceipt(notification_id=notification_pk, visitor=visitor)


def notifications_trim(*, now: datetime | None = None, batch_size: int = 1000) -> int:
    """Delete expired notifications in batches; return how many were deleted.

    A notification expires NOTIFICATIONS_RETENTION_DAYS after it was sent, or
    NOTIFICATIONS_READ_RETENTION_DAYS after it was read. Each batch is a few
    set-based statements, not one per row. A client that later resumes from
    before a trimmed row gets a reset and reloads its inbox.
    """
    now = now or timezone.now()
    expired = Notification.objects.filter(
        Q(created_at__lt=now - timedelta(days=conf.RETENTION_DAYS))
        | Q(read_at__lt=now - timedelta(days=conf.READ_RETENTION_DAYS))
    )
    table = connection.ops.quote_name(Notification._meta.db_table)
    # Visitors unseen for longer than a session lives belong to expired
    # sessions, whatever the session backend: their rows go with them.
    stale = now - timedelta(seconds=settings.SESSION_COOKIE_AGE)
    Visitor.objects.filter(last_seen__lt=stale).delete()
    deleted = 0
    # Bounded: each pass deletes what it selected, so the table shrinks.
    for _ in range(1_000_000):
        batch = list(expired.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not batch:
            break
        with transaction.atomic():
            BroadcastReceipt.objects.filter(notification_id__in=batch).delete()
            # One statement for the batch: QuerySet.delete() would first load
            # every row and then delete them 100 at a time.
            with connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {table} WHERE id IN "
                    f"({', '.join(['%s'] * len(batch))})",
                    batch,
                )
        deleted += len(batch)
    # The counters of ended sessions whose last rows are gone: nothing is sent
    # on those channels again, and one row per session ever would pile up.
    # (A session's counter stays while its closing event does, so a stream
    # that resumes meanwhile still finds its number.)
    ended = ChannelSequence.objects.filter(channel__startswith=SESSION_PREFIX).filter(
        ~Exists(Notification.objects.filter(channel=OuterRef("channel"))),
        ~Exists(
            Visitor.objects.filter(
                token=Substr(OuterRef("channel"), len(SESSION_PREFIX) + 1)
            )
        ),
    )
    counters, _ = ended.delete()
    logger.info(
        "trimmed %s expired notifications, %s ended channels", deleted, counters
    )
    return deleted


def user_streams_close(user_pk: int, *, reason: str) -> Notification:
    """End the open streams of every session of a user, on every server process.

    For a change that takes the user away from sessions without a logout in
    them: a new password (the other sessions fail Django's session hash check
    at their next request), a deactivated or deleted account. The pages
    reload and reconnect as whoever their session now holds, usually nobody.
    Stored on the user's channel with no audience row, like
    `visitor_streams_close`, so that it works for a deleted user too.
    """
    logger.info("user %s: %s; closing their streams", user_pk, reason)
    return _streams_close(
        user_channel(user_pk), "Your sign-in changed; the page will reload.", reason
    )


def visitor_streams_close(visitor: Visitor) -> Notification:
    """Tell the open streams of a deleted browser session that it has ended.

    Called once the Visitor row is gone (admin delete, clearsessions, trim):
    its rows went with it, so the closing event is stored on its channel with
    no audience row, which only that channel's streams ever read. They end on
    it and the page reloads into a new session instead of listening to a
    channel nobody sends to any more.
    """
    return _streams_close(
        visitor.channel, "Your session ended; the page will reload.", "ended"
    )


def _streams_close(channel: str, message: str, reason: str) -> Notification:
    # A session-changed event on `channel` with no audience row: only that
    # channel's streams read it, and they end on it.
    return _store(
        message=message,
        level=Notification.Level.INFO,
        event_type=SESSION_CHANGED_EVENT,
        visitor=None,
        user=None,
        payload={"reason": reason},
        channel=channel,
    )
