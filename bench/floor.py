"""The floor of the benchmark: the least any application can cost on Daphne.

`daphne bench.floor:application` answers exactly what the load tool asks of the
bare django-eventstream app (`bench/bare/`), with no Django, no library and no
storage: a stream is a registered ASGI `send` callable that waits for
`http.disconnect`, and a send writes one prepared frame to every stream of a
channel with a plain `await send(...)` loop. Whatever it costs per stream, per
connect or per broadcast is Daphne's own (Twisted, one application instance
and queue per connection, its writes), so the table's `floor` column shows what
Daphne bounds, and bare minus floor is what Django and the library add.

- `GET /events/<name>/` opens a stream hearing `broadcast` and `c-<name>`.
- `POST /send/?channel=<c>&marker=<m>[&count=K&seconds=S]` answers 204, then
  writes one event (or a burst of K spread over S seconds) to that channel.

Loopback benchmark only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The bare app's caps (bench/bare/urls.py), so one request costs the same here.
MAX_BURST = 5000
MAX_BURST_SECONDS = 10.0

# The same opening as django-eventstream's and the product's first body message:
# 2 KB of comment padding (for proxies and browsers that buffer) and the event
# the load tool counts a stream as open on.
OPENING = (":" + " " * 2048 + "\n\n" + "event: stream-open\ndata:\n\n").encode()
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
STREAM_PATH = re.compile(r"/events/([-a-zA-Z0-9_]+)/")

# Channel -> the open streams' send callables, keyed by a token per stream; a
# dict keeps insertion order (writes go out in connect order) and drops one
# stream in O(1) when it closes.
_listeners: dict[str, dict[object, Send]] = {}
# Event ids, one counter for the process, as a store would number them.
_ids = itertools.count(1)
# Running bursts, held so the event loop does not drop them mid-way.
_bursts: set[asyncio.Task[None]] = set()


def frame(marker: str) -> bytes:
    """One SSE event in the bare app's shape: the JSON the load tool reads."""
    data = json.dumps({"bench": marker, "t": time.time()})
    return f"event: message\nid: {next(_ids)}\ndata: {data}\n\n".encode()


async def publish(channel: str, marker: str) -> int:
    """Write one event to every open stream of `channel`; return how many."""
    # Built once: the same message (and bytes) goes to every stream.
    message = {"type": "http.response.body", "body": frame(marker), "more_body": True}
    # A snapshot, since a stream may close while an await here yields.
    sends = list(_listeners.get(channel, {}).values())
    for send in sends:
        await send(message)
    return len(sends)


async def _burst(channel: str, prefix: str, count: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index in range(count):
        delay = start + seconds * index / count - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await publish(channel, f"{prefix}{index}")


async def _read_body(receive: Receive) -> bool:
    """Consume the request body; False if the client left first."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        if not message.get("more_body", False):
            return True


async def _respond(send: Send, status: int, body: bytes = b"") -> None:
    headers = [(b"content-type", b"text/plain")] if body else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _stream(name: str, receive: Receive, send: Send) -> None:
    token = object()
    channels = ("broadcast", f"c-{name}")
    # Registered before the opening goes out: once the client has seen
    # `stream-open`, a send reaches it, as with django-eventstream.
    for channel in channels:
        _listeners.setdefault(channel, {})[token] = send
    try:
        await send(
            {"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS}
        )
        await send({"type": "http.response.body", "body": OPENING, "more_body": True})
        # The request body (empty for a GET) arrives here too; only the
        # disconnect ends the stream.
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        for channel in channels:
            streams = _listeners.get(channel)
            if streams is not None:
                streams.pop(token, None)
                if not streams:
                    del _listeners[channel]


async def _send_view(scope: Scope, receive: Receive, send: Send) -> None:
    if not await _read_body(receive):
        return
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    channel = query.get("channel", [""])[0]
    marker = query.get("marker", [""])[0]
    try:
        count = min(int(query.get("count", ["1"])[0]), MAX_BURST)
        seconds = min(float(query.get("seconds", ["1"])[0]), MAX_BURST_SECONDS)
    except ValueError:
        count = 0
    if not channel or not marker or count < 1:
        await _respond(send, 400, b"channel and marker are required")
        return
    # The answer first: the POST's round trip stays out of the fan-out's time.
    await _respond(send, 204)
    if count == 1:
        await publish(channel, marker)
        return
    task = asyncio.create_task(_burst(channel, marker, count, seconds))
    _bursts.add(task)
    task.add_done_callback(_bursts.discard)


async def _lifespan(receive: Receive, send: Send) -> None:
    # Daphne 4 sends none, but another server might; nothing to set up.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI 3 entry: streams, the sender, lifespan; anything else is 404."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path, method = scope["path"], scope["method"]
    if match := STREAM_PATH.fullmatch(path):
        if method != "GET":
            await _read_body(receive)
            await _respond(send, 405)
            return
        await _stream(match.group(1), receive, send)
        return
    if path == "/send/":
        if method != "POST":
            await _read_body(receive)
            await _respond(send, 405)
            return
        await _send_view(scope, receive, send)
        return
    await _read_body(receive)
    await _respond(send, 404)
