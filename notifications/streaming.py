"""The event stream of one page: catch up from the table, then follow the pushes.

django-eventstream's own stream loop re-reads from a stale position when a push
arrives during a read (the page gets the same rows again) and sends a pushed
event whatever its number, so a push that overtook another, or one that never
came, leaves a hole the client cannot detect. This loop keeps the position of
each channel itself: a pushed event is sent only when it is the next number on
its channel, one already sent is dropped, and anything else makes it re-read
the table from its position. Listener registration and pushes still go through
django-eventstream's listener manager, so its senders and transports work
unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django_eventstream.event import Event
from django_eventstream.storage import EventDoesNotExist
from django_eventstream.utils import make_id, sse_encode_error, sse_encode_event
from django_eventstream.views import Listener, get_listener_manager

from .storage import NotificationStorage

logger = logging.getLogger(__name__)

# A comment line every 20 s keeps proxies and load balancers from closing an
# idle stream; the 2 KB comment first makes some clients start parsing at once.
KEEP_ALIVE_SECONDS = 20.0
OPENING_PADDING = ":" + " " * 2048 + "\n\n"
# Rows read per channel at a time; a longer backlog is read in several rounds,
# each sent before the next is read, so a slow page holds little in memory.
READ_LIMIT = 100

Positions = dict[str, int]


def _read(positions: Positions) -> tuple[list[Event], list[str], bool]:
    """Read every channel's rows after its position (advancing `positions`).

    Return the events in order per channel, the channels that could not be
    resumed (their position now the current number), and whether more rows
    are waiting.
    """
    storage = NotificationStorage()
    events: list[Event] = []
    reset: list[str] = []
    more = False
    for channel, position in positions.items():
        try:
            rows = storage.get_events(channel, position, limit=READ_LIMIT)
        except EventDoesNotExist as exc:
            positions[channel] = int(exc.current_id)
            reset.append(channel)
            continue
        if rows:
            positions[channel] = rows[-1].id
            events += rows
        more = more or len(rows) == READ_LIMIT
    return events, reset, more


def _current(channels: list[str]) -> Positions:
    storage = NotificationStorage()
    return {channel: storage.get_current_id(channel) for channel in channels}


async def event_stream(
    *, channels: list[str], positions: Positions | None, reset_reason: str = ""
) -> AsyncIterator[str]:
    """Yield the SSE frames of a page that hears `channels`.

    With `positions` (a validated Last-Event-ID) the page first gets every row
    after them; without, it starts at the current rows, announced by a
    `stream-reset` event when `reset_reason` says why its position was refused.
    """
    manager = get_listener_manager()
    listener = Listener()
    listener.channels = set(channels)
    listener.assign_loop()
    # Listen before reading the positions, so that nothing committed after the
    # read can pass unseen; a push of a row the read already covered is dropped.
    manager.add_listener(listener)
    try:
        need_read = positions is not None
        if positions is None:
            positions = await sync_to_async(_current)(channels)
        else:
            positions = {channel: positions[channel] for channel in channels}
        opening = OPENING_PADDING
        if reset_reason:
            opening += _reset_frame(channels, positions, reason=reset_reason)
        yield opening + "event: stream-open\ndata:\n\n"

        while True:
            with manager.lock:
                queued, overflow = listener.channel_items, listener.overflow
                error = listener.error
                listener.channel_items, listener.overflow = {}, False
                listener.aevent.clear()
            body: list[str] = []
            need_read = need_read or overflow
            for channel, items in queued.items():
                for event in items:
                    if event.id <= positions[channel]:
                        continue  # a read sent it already
                    if event.id != positions[channel] + 1:
                        need_read = True  # a hole: the table has what is missing
                        break
                    positions[channel] = event.id
                    body.append(_event_frame(event, positions))
            if need_read:
                # Each frame's id is the position right after its own event.
                at = dict(positions)
                events, reset, need_read = await sync_to_async(_read)(positions)
                if reset:
                    at.update({channel: positions[channel] for channel in reset})
                    body.append(_reset_frame(reset, at))
                for event in events:
                    at[event.channel] = event.id
                    body.append(_event_frame(event, at))
            if error:
                body.append(
                    sse_encode_error(
                        error["condition"], error["text"], extra=error.get("extra")
                    )
                )
            if body:
                yield "".join(body)
            if error:
                return
            if need_read:
                continue
            try:
                await asyncio.wait_for(listener.aevent.wait(), KEEP_ALIVE_SECONDS)
            except TimeoutError:
                yield "event: keep-alive\ndata:\n\n"
    finally:
        manager.remove_listener(listener)


def _event_frame(event: Event, positions: Positions) -> str:
    return sse_encode_event(event.type, event.data, event_id=make_id(positions))


def _reset_frame(channels: list[str], positions: Positions, reason: str = "") -> str:
    data: dict[str, object] = {"channels": channels}
    if reason:
        data["reason"] = reason
    return sse_encode_event(
        "stream-reset", data, event_id=make_id(positions), json_encode=True
    )
