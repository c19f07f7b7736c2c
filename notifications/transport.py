"""Delivery of committed notifications to the streams of server processes.

`publish` runs after the sending transaction commits. It hands the event to
this process's django-eventstream listeners at once, and wakes the other
processes through the configured transport (`announce` puts a PostgreSQL
`NOTIFY` into the sending transaction; Redis is told on commit). A wake-up
carries only the row's id, channel and number: each process's listener
(`notifications.listener`) reads the rows back from the table, which stays the
truth.

Every process keeps, per watched channel, the highest `seq` it has handed to
its streams (its "mark"). Numbers have no gaps and commit in order on a
channel, so delivering only `mark + 1` and moving the mark under one lock lets
the immediate local publish, the listener and the stream's first read share
the work without sending a row twice or out of order.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django_eventstream.event import Event
from django_eventstream.views import get_listener_manager

from .conf import conf

if TYPE_CHECKING:
    from .models import Notification

logger = logging.getLogger(__name__)

# The PostgreSQL NOTIFY channel and the Redis pub/sub channel.
WAKE_CHANNEL = "notifysite_notifications"

# Guards `_marks`; taken before django-eventstream's own lock, never after it.
_lock = threading.Lock()
_marks: dict[str, int] = {}
# Counts listener scans and mark moves, so that a stream's first read can tell
# whether either happened while it read the database.
_scan_generation = 0
_listener_active = False
# Marks of channels that no stream here listens to any more are dropped this
# often, not at every scan: with thousands of pages the sweep walks every
# channel, and a stale mark costs only its place in `_marks` meanwhile.
MARK_PRUNE_SECONDS = 15.0
_pruned_at = 0.0


def to_event(notification: Notification) -> Event:
    """Build the django-eventstream event of a row, encoded once for all pages."""
    data = json.dumps(notification.event_data(), cls=DjangoJSONEncoder)
    return Event(
        notification.channel, notification.event_type, data, id=notification.seq
    )


def transport_name() -> str:
    """Return the configured transport, or the default for the database."""
    if conf.TRANSPORT:
        return conf.TRANSPORT
    return "postgres" if connection.vendor == "postgresql" else "database"


def wake_payload(notification: Notification) -> str:
    # Ids and names only: never the message, which could pass NOTIFY's limit.
    return json.dumps(
        {
            "id": notification.pk,
            "channel": notification.channel,
            "seq": notification.seq,
        }
    )


def announce(notification: Notification) -> None:
    """Queue the cross-process wake-up that must commit with the row, if any.

    PostgreSQL delivers a `NOTIFY` only when its transaction commits, so the
    row and the wake-up reach other processes together or not at all.
    """
    if connection.vendor == "postgresql" and transport_name() == "postgres":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_notify(%s, %s)", [WAKE_CHANNEL, wake_payload(notification)]
            )


def publish(notification: Notification) -> None:
    """Deliver a committed notification here at once, and wake other processes."""
    try:
        publish_local(notification)
    except Exception:
        # The row is committed; a page that missed the push replays it on
        # reconnect, so a failed publish must not fail the sender.
        logger.exception("publishing notification %s failed", notification.pk)
    if transport_name() == "redis":
        try:
            _redis_publish(wake_payload(notification))
        except Exception:
            # Other processes catch up at their next wake-up or safety scan.
            logger.exception(
                "telling Redis about notification %s failed", notification.pk
            )


def publish_local(notification: Notification) -> None:
    """Hand a committed row to this process's streams, unless already handed."""
    channel = notification.channel
    with _lock:
        mark = _marks.get(channel)
        if mark is None:
            # No stream here has read this channel yet: a stream that is
            # opening reads the committed row from the table itself.
            _hand_over(channel, to_event(notification))
            return
        if notification.seq <= mark:
            return
        if notification.seq == mark + 1:
            _advance(channel, notification.seq)
            _hand_over(channel, to_event(notification))
            return
    # Rows from other processes come first and are not here yet.
    catch_up_channel(channel, upto=notification.seq)


def deliver(rows: Iterable[Notification]) -> list[str]:
    """Hand rows to local streams in order; return channels left with a gap.

    Rows at or below a channel's mark are skipped, so any number of wake-ups
    for one row deliver it once. Channels without a mark have no stream that
    has read them yet, and are left to that stream's first read.
    """
    gaps: list[str] = []
    with _lock:
        for row in sorted(rows, key=lambda r: (r.channel, r.seq)):
            mark = _marks.get(row.channel)
            if mark is None or row.seq <= mark:
                continue
            if row.seq != mark + 1:
                if row.channel not in gaps:
                    gaps.append(row.channel)
                continue
            _advance(row.channel, row.seq)
            _hand_over(row.channel, to_event(row))
    return gaps


def _hand_over(channel: str, event: Event) -> None:
    # The one place that gives an event to this process's streams; called
    # with _lock held, so events of a channel leave in the order of its marks.
    # queue_for_streams hands the fan-out to the streams' event loop in one
    # call (in order), instead of one cross-thread wake-up per page.
    from .streaming import queue_for_streams  # streaming imports this module

    queue_for_streams(channel, event)


def _advance(channel: str, seq: int) -> None:
    # Called with _lock held.
    global _scan_generation
    _marks[channel] = seq
    _scan_generation += 1


def catch_up_channel(channel: str, *, upto: int | None = None) -> None:
    """Read a watched channel's rows above its mark and deliver them in order."""
    from .models import Notification
    from .storage import release_connection

    with _lock:
        mark = _marks.get(channel)
    if mark is None:
        return
    rows = Notification.objects.filter(channel=channel, seq__gt=mark)
    if upto is not None:
        rows = rows.filter(seq__lte=upto)
    try:
        found = list(rows.order_by("seq")[:1000])
    finally:
        release_connection()
    deliver(found)


def marks_snapshot() -> dict[str, int]:
    with _lock:
        return dict(_marks)


def marks_of(channels: Iterable[str]) -> dict[str, int]:
    """Return the marks of those of `channels` that have one."""
    with _lock:
        return {c: _marks[c] for c in set(channels) if c in _marks}


def listener_active() -> bool:
    return _listener_active


def set_listener_active(active: bool) -> None:
    global _listener_active
    _listener_active = active


def scan_generation() -> int:
    return _scan_generation


def scan_finished() -> None:
    """Count a scan; now and then forget the marks no local stream needs."""
    global _scan_generation
    with _lock:
        _scan_generation += 1
    if time.monotonic() - _pruned_at >= MARK_PRUNE_SECONDS:
        prune_marks()


def prune_marks() -> None:
    """Forget the marks of channels that no local stream listens to."""
    global _pruned_at
    manager = get_listener_manager()
    # Streams register on the event loop while this runs on the listener's
    # thread: copy the channel names under django-eventstream's lock.
    with manager.lock:
        listening = set(manager.listeners_by_channel)
    with _lock:
        _pruned_at = time.monotonic()
        for channel in [c for c in _marks if c not in listening]:
            del _marks[channel]


def mark_for_read(channel: str, current: int, generation: int) -> int:
    """Return the position a stream's read of `channel` may reach.

    The first read of a channel in this process sets its mark to the table's
    `current` number (read after `generation` was taken); later reads stop at
    the mark, and rows above it reach the stream from the listener. Reading no
    further than the mark keeps a row from arriving by both ways.
    """
    with _lock:
        mark = _marks.get(channel)
        if mark is not None and (mark <= current or generation != _scan_generation):
            return mark
        # A mark above the table's number, with no delivery since the read,
        # means the channel's rows and counter were deleted (a flushed
        # database): the table is the truth.
        _marks[channel] = current
        passed = generation != _scan_generation
    if passed:
        # A scan ran during the read and skipped this channel, which had no
        # mark yet: look for rows it may have passed over.
        catch_up_channel(channel)
    return current


def forget_marks() -> None:
    """Drop every mark (tests and a listener restart)."""
    with _lock:
        _marks.clear()


_redis_client = None
_redis_lock = threading.Lock()


def _redis_publish(payload: str) -> None:
    global _redis_client
    with _redis_lock:
        if _redis_client is None:
            import redis

            _redis_client = redis.Redis.from_url(
                conf.REDIS_URL, socket_timeout=1, socket_connect_timeout=1
            )
        client = _redis_client
    client.publish(WAKE_CHANNEL, payload)
