"""Serve event streams from a few shared threads instead of one thread each.

Django runs every ASGI request inside asgiref's `ThreadSensitiveContext`; the
first thread-sensitive `sync_to_async` in it (the `request_started` signal)
makes a one-thread executor that lives as long as the request. A stream is a
request that lasts minutes, so each open page cost an idle OS thread (about
60 KB) and, once that thread had read the database, a connection of its own.

`SharedStreamThreads` enters a `ThreadSensitiveContext` bound to one of a few
shared one-thread executors before Django does, for the stream's path only;
Django then reuses that context instead of making its own. The sync work of a
stream (the view's session and channel reads, django-eventstream's storage
reads) is short and read-only, and the storage returns its connection after
each read, so streams can take turns on a thread. Other requests (pages,
POSTs, the admin, which may hold a transaction across calls) keep Django's
thread per request.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django_eventstream.utils import add_default_headers, make_id
from django_eventstream.views import get_listener_manager

from .conf import conf
from .storage import release_connection

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class SharedStreamThreads:
    """ASGI middleware: stream requests share `NOTIFICATIONS_STREAM_THREADS` threads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._executors: list[ThreadPoolExecutor] = []
        self._cycle: Iterator[ThreadPoolExecutor] | None = None
        self._stream_path: str | None = None

    def _is_stream(self, scope: Scope) -> bool:
        if scope["type"] != "http":
            return False
        if self._stream_path is None:
            # Resolved on the first request: the URLconf is loaded by then.
            self._stream_path = reverse("notifications:stream")
        return scope.get("path") == self._stream_path

    def _next_executor(self) -> ThreadPoolExecutor:
        # Only the event loop's thread gets here, so the cycle needs no lock.
        if self._cycle is None:
            count = max(1, int(conf.STREAM_THREADS))
            # One worker each: asgiref requires a thread-sensitive executor to
            # run one call at a time on one thread.
            self._executors = [
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream")
                for _ in range(count)
            ]
            self._cycle = itertools.cycle(self._executors)
            logger.info("event streams share %d threads", count)
        return next(self._cycle)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if not self._is_stream(scope):
            await self.app(scope, receive, send)
            return
        async with ThreadSensitiveContext(executor=self._next_executor()):
            await self.app(scope, receive, send)


# Seconds without an event before a comment-like keep-alive event is sent,
# as django-eventstream does, so proxies do not close an idle stream.
KEEP_ALIVE_SECONDS = 20
# The first chunk is padded so that old proxies and browsers flush at once.
OPENING = ":" + " " * 2048 + "\n\nevent: stream-open\ndata:\n\n"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_UNSAFE = re.compile(r"[\r\n\0]")


@functools.lru_cache(maxsize=1024)
def _encoded(event_type: str, data: str) -> tuple[str, str]:
    # A broadcast is the same event for every page: encode its name and data
    # once for all of them; only the id line differs from page to page.
    name = f"event: {_UNSAFE.sub('', event_type)}\n"
    lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    return name, lines


def encode_event(event_type: str, data: str, event_id: str | None) -> str:
    """Return one SSE frame, as django_eventstream.utils.sse_encode_event writes it."""
    name, lines = _encoded(str(event_type), str(data))
    if event_id:
        return f"{name}id: {_UNSAFE.sub('', event_id)}\n{lines}\n"
    return f"{name}{lines}\n"


# The event loop that serves this process's streams, once one has started.
_stream_loop: asyncio.AbstractEventLoop | None = None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def queue_for_streams(channel: str, event: Any) -> None:
    """Queue `event` for this process's streams of `channel`, waking them at once.

    From a sender's thread, django-eventstream's `add_to_queues` wakes each
    listener with its own `call_soon_threadsafe` (a write to the loop's wake
    pipe per page). Handing the whole fan-out to the streams' loop in one call
    wakes every page from inside the loop instead.
    """
    manager = get_listener_manager()
    loop = _stream_loop
    idle = loop is None or loop.is_closed() or not loop.is_running()
    if idle or _running_loop() is loop:
        manager.add_to_queues(channel, event)
    else:
        loop.call_soon_threadsafe(manager.add_to_queues, channel, event)


@functools.cache
def _listener_class() -> type:
    from django_eventstream.views import Listener

    class StreamListener(Listener):
        def wake_threadsafe(self) -> None:
            # Inside the loop (see `queue_for_streams`) a plain set() is enough.
            if _running_loop() is self.loop:
                self.aevent.set()
            else:
                self.loop.call_soon_threadsafe(self.aevent.set)

    return StreamListener


def stream_response(request: HttpRequest) -> HttpResponse:
    """Return the stream of `request`'s channels, served by our own loop.

    Errors (a bad request, a forbidden channel) and GRIP-proxied requests go
    to django-eventstream's `events` view, which answers them itself.
    """
    from django_eventstream.eventrequest import EventRequest
    from django_eventstream.eventstream import EventPermissionError
    from django_eventstream.views import events as eventstream_events

    grip = getattr(request, "grip", None)
    if grip is not None and grip.proxied:
        return eventstream_events(request)
    try:
        event_request = EventRequest(request)
    except (EventRequest.Error, EventPermissionError):
        return eventstream_events(request)
    listener = _listener_class()()
    listener.user_id = event_request.user.pk if event_request.user else "anonymous"
    listener.channels = event_request.channels
    response = StreamingHttpResponse(
        _stream(event_request, listener), content_type="text/event-stream"
    )
    add_default_headers(response, request=request)
    return response


def read_events(event_request: Any) -> Any:
    """Read what a page missed, with django-eventstream's own `get_events`.

    Each channel's position and rows come from the storage, as the library
    reads them, so the storage alone decides what a stream may read; the
    connection goes back to the pool afterwards, whatever happened.
    """
    from django_eventstream.eventstream import get_events

    try:
        return get_events(event_request)
    finally:
        release_connection()


# One wrapper for all streams; thread-sensitive, so each call runs on the
# executor of the stream's own context (one of the shared threads).
_read_async = sync_to_async(read_events)


async def _stream(event_request: Any, listener: Any) -> AsyncIterator[str]:
    """Send what the store holds after the page's position, then live events.

    The loop follows django-eventstream's own, with three differences: the
    page's position is saved after every chunk, so a re-read after events
    raced the store read neither repeats nor skips them (the library's loop
    re-reads from the connect position, sending duplicates out of order, or
    from the channel's end on a fresh stream, dropping what came in between);
    waiting costs no task per wake-up; and each event is encoded once. On
    each channel a page gets every row once, in `seq` order: a live event
    that skips a number (its sender published before an earlier sender did)
    sends the loop back to the store, and one already sent is dropped.
    """
    from django_eventstream.eventstream import EventPermissionError
    from django_eventstream.utils import sse_encode_error, sse_encode_event

    global _stream_loop
    listener.assign_loop()
    _stream_loop = listener.loop
    manager = get_listener_manager()
    manager.add_listener(listener)
    try:
        opening = OPENING
        while True:
            try:
                # The listener is registered before each read: an event
                # committed meanwhile is queued, and the race check below
                # sends the loop back to the store for it.
                found = await _read_async(event_request)
            except EventPermissionError as exc:
                yield sse_encode_error(
                    "forbidden", str(exc), {"channels": exc.channels}
                )
                return
            position = dict(found.channel_last_ids)
            parts = [opening]
            opening = ""
            if found.channel_reset:
                parts.append(
                    sse_encode_event(
                        "stream-reset",
                        {"channels": list(found.channel_reset)},
                        event_id=make_id(position),
                        json_encode=True,
                    )
                )
            for channel, items in found.channel_items.items():
                for item in items:
                    position[channel] = item.id
                    parts.append(encode_event(item.type, item.data, make_id(position)))
            event_request.channel_last_ids = dict(position)
            body = "".join(parts)
            if body:
                yield body
            if found.channel_more:
                continue
            with manager.lock:
                # Events queued during the read may or may not be in it: drop
                # them and read again from the saved position.
                raced = bool(listener.channel_items)
                if raced:
                    listener.aevent.clear()
                    listener.channel_items = {}
            if raced:
                continue
            # Caught up: wait for wake-ups until an overflow sends us back to
            # the store or an error ends the stream.
            while True:
                try:
                    async with asyncio.timeout(KEEP_ALIVE_SECONDS):
                        await listener.aevent.wait()
                except TimeoutError:
                    yield "event: keep-alive\ndata:\n\n"
                    continue
                with manager.lock:
                    queued = listener.channel_items
                    overflow = listener.overflow
                    error = listener.error
                    listener.aevent.clear()
                    listener.channel_items = {}
                    listener.overflow = False
                parts = []
                gap = False
                for channel, items in queued.items():
                    for item in items:
                        if channel in position and item.id is not None:
                            expected = int(position[channel]) + 1
                            if item.id < expected:
                                # Already sent from the store.
                                continue
                            if item.id > expected:
                                # Two senders' publishes raced: an earlier row
                                # is committed but not queued yet. The store
                                # has both, in order.
                                gap = True
                                break
                        if channel in position:
                            if item.id is not None:
                                position[channel] = item.id
                            else:
                                del position[channel]
                        event_id = make_id(position) if position else None
                        parts.append(encode_event(item.type, item.data, event_id))
                event_request.channel_last_ids = dict(position)
                if error:
                    parts.append(
                        sse_encode_error(
                            error["condition"], error["text"], error.get("extra")
                        )
                    )
                    yield "".join(parts)
                    return
                if parts:
                    yield "".join(parts)
                if overflow or gap:
                    break
    finally:
        listener.aevent.set()
        manager.remove_listener(listener)
