"""The event stream of one page, and the threads that serve all of them.

Catch up from the table, then follow the pushes. django-eventstream's own
stream loop re-reads from a stale position when a push arrives during a read
(the page gets the same rows again) and sends a pushed event whatever its
number, so a push that overtook another, or one that never came, leaves a hole
the client cannot detect. This loop keeps the position of each channel itself:
a pushed event is sent only when it is the next number on its channel, one
already sent is dropped, and anything else makes it re-read the table from its
position. Listeners register with django-eventstream's listener manager, so
its senders and transports work unchanged.

Fan-out: an event for this process's streams is handed to the streams' event
loop once (`queue_for_streams`), not once per page. There `_fan_out` writes the
frame itself to each page that waits with nothing queued and for which the
event is the next number, through its response's ASGI `send`, without waking
the page's task; other pages get it queued and their loop decides as above.
Pages are served a few hundred per turn of the loop, so the first sockets are
flushed while later ones are written. Keep-alives come from one sweeper per
loop, not from a timer per page re-armed at every wake-up.

Threads: Django runs every ASGI request inside asgiref's
`ThreadSensitiveContext`; the first thread-sensitive `sync_to_async` in it (the
`request_started` signal) makes a one-thread executor that lives as long as the
request. A stream lasts minutes, so each open page cost an idle OS thread and,
once that thread had read the database, a connection of its own.
`SharedStreamThreads` enters a `ThreadSensitiveContext` bound to one of a few
shared one-thread executors before Django does, for the stream's path only.
The sync work of a stream (the view's session and channel reads, the table
reads) is short and read-only, and returns its connection after each read, so
streams can take turns on a thread. Other requests keep Django's thread each.

Connects: Django's async handler runs each built-in middleware's request and
response hooks through their own `sync_to_async` call, a dozen trips between
the event loop and a thread per request. The stream's path is served by
`StreamHandler` instead, which sends `request_started` and runs the same
middleware and the same view in Django's sync mode, all in one trip, and
streams the response from the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import math
import re
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, closing
from datetime import datetime
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse, set_script_prefix
from django.utils import timezone
from django_eventstream.event import Event
from django_eventstream.storage import EventDoesNotExist
from django_eventstream.utils import make_id, sse_encode_error, sse_encode_event
from django_eventstream.views import MAX_PENDING, get_listener_manager
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from .conf import conf
from .listener import get_listener
from .models import Notification
from .storage import NotificationStorage

logger = logging.getLogger(__name__)

# A keep-alive event after 20 s without a write keeps proxies and load
# balancers from closing an idle stream; the 2 KB comment first makes some
# clients start parsing at once.
KEEP_ALIVE_SECONDS = 20.0
# How often one sweeper per event loop looks for pages that are due one. A
# timer per page, re-armed at each of its wake-ups, cost more than the rest of
# a broadcast's fan-out together.
KEEP_ALIVE_CHECK_SECONDS = 2.0
KEEP_ALIVE = b"event: keep-alive\ndata:\n\n"
OPENING_PADDING = ":" + " " * 2048 + "\n\n"
# Every stream without a reset opens with these same bytes, shared, not copied.
OPENING = (OPENING_PADDING + "event: stream-open\ndata:\n\n").encode()
# A stream whose session has no Visitor: one error event, then a long retry so
# that clients reconnecting on their own wait instead of storming.
NO_SESSION_FRAMES = (
    sse_encode_error(
        "no-session", "This page has no session. Load the page again to get one."
    )
    + "retry: 15000\n\n"
)
# Rows read per channel at a time; a longer backlog is read in several rounds,
# each sent before the next is read, so a slow page holds little in memory.
READ_LIMIT = 100

Positions = dict[str, int]


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class StreamHandler(ASGIHandler):
    """Django's ASGI handler with the middleware and view run in one thread trip.

    The request, the middleware (settings.MIDDLEWARE, in order), the view and
    the response are Django's own; only the mode differs: the chain is loaded
    for sync use and called once through `sync_to_async`, then the streaming
    response is sent from the event loop as `ASGIHandler` sends any other.
    """

    def __init__(self) -> None:
        BaseHandler.__init__(self)
        self.load_middleware(is_async=False)

    async def handle(self, scope: Scope, receive: Any, send: Any) -> None:
        # ASGIHandler.handle, with the request_started signal sent from the
        # same thread trip as the middleware and the view, as under WSGI.
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        with closing(body_file):
            set_script_prefix(get_script_prefix(scope))
            request, error_response = self.create_request(scope, body_file)
            if request is None:
                await self.send_response(error_response, send)
                await sync_to_async(error_response.close)()
                return
            response = None
            # The view reads where the page's channels stand: the process's
            # listener must be running by then, or rows other processes
            # commit to a channel first read by this page would pass it by.
            process_listener = get_listener()
            if process_listener is not None:
                await process_listener.ensure_started()
            # Copied into the view's thread with the rest of the context.
            _handler_loop.set(asyncio.get_running_loop())
            try:
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self.listen_for_disconnect(receive))
                        response = await sync_to_async(
                            self._respond, thread_sensitive=True
                        )(scope, request)
                        await self.send_response(response, send)
                        raise _Served
                except* (_Served, RequestAborted):
                    pass
            except BaseExceptionGroup as group_error:
                # One failure is raised as itself, as Django's handler does.
                if len(group_error.exceptions) == 1:
                    raise group_error.exceptions[0] from None
                raise
            if response is None:
                await signals.request_finished.asend(sender=self.__class__)
            else:
                await sync_to_async(response.close)()

    def _respond(self, scope: Scope, request: HttpRequest) -> HttpResponseBase:
        signals.request_started.send(sender=self.__class__, scope=scope)
        response = self.get_response(request)
        response._handler_class = self.__class__
        return response

    async def send_response(self, response: HttpResponseBase, send: Any) -> None:
        if not response.streaming:
            await super().send_response(response, send)
            return
        # Unlike Django's loop, keep no header list and no chunking state for
        # the minutes a stream lasts: an open page should cost little memory.
        # Each part is one short batch of frames, sent as one message.
        await send(_response_start(response))
        request = None
        if isinstance(response, EventStreamResponse):
            response.page.send = send
            request = _guard_stalls(response.page, send)
        try:
            async with aclosing(aiter(response)) as content:
                async for part in content:
                    await send(
                        {"type": "http.response.body", "body": part, "more_body": True}
                    )
        finally:
            if request is not None:
                # Twisted logs an error for a request finished with a producer
                # still registered; a lost connection has let go of it already.
                with contextlib.suppress(Exception):
                    request.unregisterProducer()
        await send({"type": "http.response.body"})


class _Served(Exception):
    """Ends the task group that listens for a disconnect once a response is out."""


def _response_start(response: HttpResponseBase) -> dict[str, Any]:
    headers = [
        (name.encode("ascii"), value.encode("latin-1"))
        for name, value in response.items()
    ]
    headers += [
        (b"Set-Cookie", cookie.OutputString().encode("ascii"))
        for cookie in response.cookies.values()
    ]
    return {
        "type": "http.response.start",
        "status": response.status_code,
        "headers": headers,
    }


class SharedStreamThreads:
    """ASGI middleware: stream requests share `NOTIFICATIONS_STREAM_THREADS` threads.

    They are served by a `StreamHandler`; every other request goes to `app`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._stream_handler: StreamHandler | None = None
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
        if self._stream_handler is None:
            self._stream_handler = StreamHandler()
        async with ThreadSensitiveContext(executor=self._next_executor()):
            await self._stream_handler(scope, receive, send)


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
    loop = _stream_loop
    if loop is None or loop.is_closed() or not loop.is_running():
        get_listener_manager().add_to_queues(channel, event)
    elif _running_loop() is loop:
        _fan_out(channel, event)
    else:
        loop.call_soon_threadsafe(_fan_out, channel, event)


class Page:
    """What the fan-out may write to directly: set once the headers are out.

    `stalled_since` is the loop's clock when the server last said the page's
    socket stopped draining (infinity while it drains), and `abort` drops its
    connection; both come from `_Backpressure`, where the server offers them.
    """

    __slots__ = ("send", "stalled_since", "abort", "ends_at")

    def __init__(self) -> None:
        self.send: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self.stalled_since = math.inf
        self.abort: Callable[[], None] | None = None
        # The loop's clock when the page's session expires: its stream ends
        # then, and the browser's reconnect finds the session as it is.
        self.ends_at = math.inf


@implementer(IPushProducer)
class _Backpressure:
    """Hears from Twisted when a page's socket stops draining, and again when it does.

    Daphne's ASGI `send` never waits: whatever is written to a page that does
    not read piles up in the process's memory for as long as the connection
    lives. Registered as the producer of Daphne's request (a Twisted HTTP
    request), this is paused once the socket's kernel buffer is full and 64 KB
    more are queued, and resumed when that drains. The sweeper drops a page
    that stays paused for `NOTIFICATIONS_STREAM_STALL_SECONDS`; the browser
    reconnects and gets what it missed from the table.
    """

    __slots__ = ("page", "loop")

    def __init__(self, page: Page, loop: asyncio.AbstractEventLoop) -> None:
        self.page = page
        self.loop = loop

    def pauseProducing(self) -> None:
        if self.page.stalled_since == math.inf:
            self.page.stalled_since = self.loop.time()

    def resumeProducing(self) -> None:
        self.page.stalled_since = math.inf

    def stopProducing(self) -> None:
        pass


def _guard_stalls(page: Page, send: Any) -> Any:
    """Register `page` for Twisted's pause and resume; return the request, or None.

    Daphne's `send` is `partial(server.handle_reply, request)`, the request a
    Twisted HTTP request. Under another server (or a test calling the app
    directly) there is none, and the page goes without the stall guard.
    """
    request = (
        send.args[0] if isinstance(send, functools.partial) and send.args else None
    )
    transport = getattr(request, "transport", None)
    if not hasattr(transport, "abortConnection") or request.producer is not None:
        return None
    request.registerProducer(_Backpressure(page, asyncio.get_running_loop()), True)
    page.abort = transport.abortConnection
    return request


class EventStreamResponse(StreamingHttpResponse):
    """The response of one page's event stream (see `event_stream`).

    Made in a view that `StreamHandler` serves, it registers the page and reads
    where its channels stand right away, in the view's thread and on the
    connection the view already holds, instead of in a second thread trip once
    the stream starts.
    """

    def __init__(
        self,
        *,
        channels: list[str],
        token: str,
        positions: Positions | None,
        reset_reason: str = "",
        expires: datetime | None = None,
    ) -> None:
        self.page = Page()
        self._listener = None
        start = None
        loop = _handler_loop.get()
        if loop is not None and expires is not None:
            left = (expires - timezone.now()).total_seconds()
            self.page.ends_at = loop.time() + max(0.0, left)
        if loop is not None:
            self._listener = _register(channels, self.page, loop)
            # Also when a middleware drops this response without closing it.
            weakref.finalize(self, _unregister, self._listener)
            start = _start(token, channels)
        super().__init__(
            event_stream(
                channels=channels,
                token=token,
                positions=positions,
                reset_reason=reset_reason,
                page=self.page,
                opened=None if self._listener is None else (self._listener, start),
            ),
            content_type="text/event-stream",
        )

    def close(self) -> None:
        # A client gone before the stream started leaves its page registered.
        if self._listener is not None:
            _unregister(self._listener)
        super().close()


# The event loop of the StreamHandler request being served, seen from its view.
_handler_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = (
    contextvars.ContextVar("notifications_stream_loop", default=None)
)


def _register(channels: list[str], page: Page | None, loop: Any) -> Any:
    """Make a page's listener and register it (from any thread)."""
    global _stream_loop
    listener = _listener_class()()
    listener.channels = set(channels)
    listener.page = page
    listener.loop = loop
    listener.registered = True
    _stream_loop = loop
    get_listener_manager().add_listener(listener)
    return listener


def _unregister(listener: Any) -> None:
    """Remove a page's listener, once, whichever of its stream and response ends first."""
    manager = get_listener_manager()
    with manager.lock:
        if not listener.registered:
            return
        listener.registered = False
    manager.remove_listener(listener)


# Pages written to per turn of the event loop during a fan-out. Between turns
# the loop flushes the sockets written so far, so the first pages receive
# their frame while later ones are still being written, and other requests
# are not held up by a broadcast to thousands.
FAN_OUT_STEP = 256
# Per event loop, fan-outs not finished yet, each [event, channel, pages, next
# index]; one finishes before the next starts, so a channel's events leave in
# the order they were handed over.
_fan_outs: dict[asyncio.AbstractEventLoop, deque[list[Any]]] = {}


def _fan_out(channel: str, event: Any) -> None:
    """Give `event` to every stream of `channel` in this process (on the loop).

    The pages are taken from django-eventstream's listener manager under its
    lock, and served after it is released, `FAN_OUT_STEP` at a time.
    """
    manager = get_listener_manager()
    with manager.lock:
        listeners = list(manager.listeners_by_channel.get(channel, ()))
    if not listeners:
        return
    loop = asyncio.get_running_loop()
    pending = _fan_outs.setdefault(loop, deque())
    pending.append([event, channel, listeners, 0])
    if len(pending) == 1:
        _fan_out_step(loop, pending)


def _fan_out_step(loop: asyncio.AbstractEventLoop, pending: deque[list[Any]]) -> None:
    budget = FAN_OUT_STEP
    now = loop.time()
    while pending and budget > 0:
        item = pending[0]
        event, channel, listeners, start = item
        end = min(len(listeners), start + budget)
        for index in range(start, end):
            _give(listeners[index], channel, event, loop, now)
        budget -= end - start
        if end == len(listeners):
            pending.popleft()
        else:
            item[3] = end
    if pending:
        loop.call_soon(_fan_out_step, loop, pending)
    elif _fan_outs.get(loop) is pending:
        del _fan_outs[loop]


def _give(
    listener: Any,
    channel: str,
    event: Any,
    loop: asyncio.AbstractEventLoop,
    now: float,
) -> None:
    """Write `event` to one page now, or queue it for the page's stream loop.

    A page waiting with nothing queued, for which the event is the next number
    on the channel, gets its frame at once through the ASGI `send` of its
    response, without waking its task: Daphne's `send` returns without
    suspending, so this costs one call. Any other page (busy, behind, on
    another loop, or served where `send` is not known) gets the event in its
    queue, as django-eventstream queues it, and its stream loop decides.
    """
    page = getattr(listener, "page", None)
    if (
        listener.idle
        and page is not None
        and page.send is not None
        and listener.loop is loop
        and event.type != SESSION_CHANGED
        and not listener.aevent.is_set()
        and listener.positions.get(channel) == event.id - 1
    ):
        listener.positions[channel] = event.id
        frame = _event_frame(event, listener.positions).encode()
        message = {"type": "http.response.body", "body": frame, "more_body": True}
        listener.last_write = now
        task = asyncio.Task(page.send(message), loop=loop, eager_start=True)
        if not task.done():
            # A server whose send waits (flow control): the stream loop waits
            # for this write before its next one, and until then events queue.
            listener.idle = False
            listener.inflight = task
            task.add_done_callback(lambda _task: listener.aevent.set())
        elif not task.cancelled() and task.exception() is not None:
            # The connection is going; its stream loop, woken, ends at its
            # next write.
            logger.warning("stream: a write failed", exc_info=task.exception())
            listener.idle = False
            listener.aevent.set()
        return
    with get_listener_manager().lock:
        items = listener.channel_items.setdefault(channel, [])
        if len(items) < MAX_PENDING:
            items.append(event)
        else:
            listener.overflow = True
    listener.wake_threadsafe()


@functools.cache
def _listener_class() -> type:
    from django_eventstream.views import Listener

    class StreamListener(Listener):
        # The loop's clock at this page's last write, and whether the sweeper
        # asks for a keep-alive.
        last_write = 0.0
        keep_alive_due = False
        # Set while the stream loop waits with nothing queued: only then may
        # the fan-out write to the page itself (see `_fan_out`).
        idle = False
        positions: Positions = {}
        page: Page | None = None
        inflight: asyncio.Task[None] | None = None
        registered = False

        def wake_threadsafe(self) -> None:
            # Inside the loop (see `queue_for_streams`) a plain set() is enough.
            if _running_loop() is self.loop:
                self.aevent.set()
            else:
                self.loop.call_soon_threadsafe(self.aevent.set)

    return StreamListener


# The open pages of each event loop that serves streams, for its sweeper.
_open_pages: dict[asyncio.AbstractEventLoop, set[Any]] = {}
_sweepers: set[asyncio.Task[None]] = set()


def _watch(listener: Any) -> None:
    loop = listener.loop
    listener.last_write = loop.time()
    pages = _open_pages.get(loop)
    if pages is None:
        pages = _open_pages[loop] = set()
        task = loop.create_task(_sweep(loop, pages))
        _sweepers.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_sweepers.discard)
    pages.add(listener)


async def _sweep(loop: asyncio.AbstractEventLoop, pages: set[Any]) -> None:
    """Wake each page of `loop` that has written nothing for KEEP_ALIVE_SECONDS."""
    try:
        while pages:
            await asyncio.sleep(KEEP_ALIVE_CHECK_SECONDS)
            now = loop.time()
            due = now - KEEP_ALIVE_SECONDS
            stalled_before = now - float(conf.STREAM_STALL_SECONDS)
            for page in list(pages):
                held = page.page
                if held is not None and held.stalled_since <= stalled_before:
                    _drop_stalled(page, held)
                elif held is not None and held.ends_at <= now:
                    page.aevent.set()  # its stream loop ends (session expired)
                elif page.last_write <= due:
                    page.keep_alive_due = True
                    page.aevent.set()
    finally:
        # Ends with the loop's last page; the next page starts a new sweeper.
        if _open_pages.get(loop) is pages:
            del _open_pages[loop]


def _drop_stalled(listener: Any, page: Page) -> None:
    # The connection goes at once, with what it had queued: closing it cleanly
    # would wait for a client that does not read. Its stream ends on the
    # server's disconnect message; the browser resumes from its last event id.
    logger.warning(
        "stream: a page read nothing for %.0f s; dropping its connection",
        listener.loop.time() - page.stalled_since,
    )
    abort, page.abort = page.abort, None
    page.stalled_since = math.inf
    if abort is None:
        return
    try:
        abort()
    except Exception:
        logger.exception("stream: dropping a stalled page failed")


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


def _start(token: str, channels: list[str]) -> Positions | None:
    return NotificationStorage().get_start_ids(token, channels)


async def event_stream(
    *,
    channels: list[str],
    token: str,
    positions: Positions | None,
    reset_reason: str = "",
    page: Page | None = None,
    opened: tuple[Any, Positions | None] | None = None,
) -> AsyncIterator[str | bytes]:
    """Yield the SSE frames of a page of session `token` that hears `channels`.

    With `positions` (a validated Last-Event-ID) the page first gets every row
    after them; without, it starts at the current rows, announced by a
    `stream-reset` event when `reset_reason` says why its position was refused.
    A session whose Visitor is gone gets a `no-session` error and no stream.
    `opened` is a listener already registered and the start read after it
    (`EventStreamResponse`); without, the stream registers and reads itself.
    """
    manager = get_listener_manager()
    # This process's cross-process listener starts with its first stream.
    process_listener = get_listener()
    if process_listener is not None:
        await process_listener.ensure_started()
    # Listen before reading the positions, so that nothing committed after the
    # read can pass unseen; a push of a row the read already covered is dropped.
    if opened is None:
        listener = _register(channels, page, asyncio.get_running_loop())
    else:
        listener, current = opened
    _watch(listener)
    loop = listener.loop
    try:
        if opened is None:
            current = await _start_async(token, channels)
        if current is None:
            yield NO_SESSION_FRAMES
            return
        if reset_reason == "other-channels":
            # Expected: a page that reconnects after its session logged in or
            # out elsewhere, before it reloads.
            logger.info("stream: Last-Event-ID of other channels; reset")
        elif reset_reason:
            logger.warning("stream: unusable Last-Event-ID (%s)", reset_reason)
        # A page that resumes where its channels stand (an idle reconnect)
        # needs no read; any other position is read from.
        need_read = positions is not None and positions != current
        if positions is None:
            positions = current
        else:
            positions = {channel: positions[channel] for channel in channels}
        listener.positions = positions
        if reset_reason:
            reset = _reset_frame(channels, positions, reason=reset_reason)
            yield OPENING_PADDING + reset + "event: stream-open\ndata:\n\n"
        else:
            yield OPENING

        while True:
            if listener.inflight is not None:
                inflight, listener.inflight = listener.inflight, None
                await inflight
            if page is not None and loop.time() >= page.ends_at:
                # The session expired: end without a word. The browser
                # reconnects from its last event and, with the session gone,
                # is told so and reloads into a new one.
                logger.info("stream: its session expired; ending it")
                return
            with manager.lock:
                queued, overflow = listener.channel_items, listener.overflow
                error = listener.error
                keep_alive = listener.keep_alive_due
                listener.channel_items, listener.overflow = {}, False
                listener.keep_alive_due = False
                listener.aevent.clear()
            body: list[str] = []
            # After a login or a logout, a session's end or its user's, the
            # stream's channels are stale: it ends with that session-changed
            # event, and nothing after it goes out (the user's next
            # notification is not for this page any more). The browser
            # reconnects with the session as it is now.
            ended = False
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
                    if event.type == SESSION_CHANGED:
                        ended = True
                        break
                if ended:
                    break
            if need_read and not ended:
                # Each frame's id is the position right after its own event.
                at = dict(positions)
                events, reset, need_read = await _read_async(positions)
                if reset:
                    at.update({channel: positions[channel] for channel in reset})
                    body.append(_reset_frame(reset, at, reason="rows-gone"))
                for event in events:
                    at[event.channel] = event.id
                    body.append(_event_frame(event, at))
                    if event.type == SESSION_CHANGED:
                        ended = True
                        break
            if error:
                body.append(
                    sse_encode_error(
                        error["condition"], error["text"], extra=error.get("extra")
                    )
                )
            if body:
                yield "".join(body)
                listener.last_write = loop.time()
            elif keep_alive:
                yield KEEP_ALIVE
                listener.last_write = loop.time()
            if error or ended:
                return
            if not need_read:
                listener.idle = True
                try:
                    await listener.aevent.wait()
                finally:
                    listener.idle = False
    finally:
        _unregister(listener)
        _open_pages.get(loop, set()).discard(listener)


# Thread-sensitive: each call runs on the executor of the stream's own context.
_read_async = sync_to_async(_read)
_start_async = sync_to_async(_start)
SESSION_CHANGED = Notification.SESSION_CHANGED_EVENT_TYPE


def _event_frame(event: Event, positions: Positions) -> str:
    return encode_event(event.type, event.data, _make_id(positions))


def _make_id(positions: Positions) -> str:
    # django_eventstream.utils.make_id, without its quote(): channel names are
    # letters, digits and "-" (channels.CHANNEL_RE), which quote() keeps.
    return ",".join(f"{channel}:{seq}" for channel, seq in positions.items())


def _reset_frame(channels: list[str], positions: Positions, reason: str = "") -> str:
    data: dict[str, object] = {"channels": channels}
    if reason:
        data["reason"] = reason
    return sse_encode_event(
        "stream-reset", data, event_id=make_id(positions), json_encode=True
    )
