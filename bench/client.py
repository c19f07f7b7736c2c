"""A small asyncio HTTP/1.1 client for many SSE streams on loopback.

httpx costs a few hundred kilobytes and a task tree per stream; this reader
keeps 10,000 streams within one process of the 2-core machine that also runs
the server. It speaks only what Daphne answers: a status line, headers, then a
chunked (or close-delimited) body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HEADER_LIMIT = 64 * 1024


class HTTPError(Exception):
    pass


@dataclass
class Received:
    """A benchmark event as it arrived: its marker and both clocks."""

    stream: int
    marker: str
    sent: float
    received: float
    event_id: str | None


OnEvent = Callable[[Received], None]


def _request(method: str, host: str, port: int, path: str, headers: dict) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > HEADER_LIMIT:
        raise HTTPError("headers too long")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HTTPError(f"bad status line {status_line!r}")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def post(
    host: str, port: int, path: str, cookie: str = "", within: float = 10.0
) -> int:
    """POST with an empty body on a fresh connection; return the status."""

    async def run() -> int:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            headers = {
                "Content-Length": "0",
                "Connection": "close",
                "X-Requested-With": "bench",
            }
            if cookie:
                headers["Cookie"] = cookie
            writer.write(_request("POST", host, port, path, headers))
            status, _ = await _read_head(reader)
            return status
        finally:
            writer.close()

    return await asyncio.wait_for(run(), within)


@dataclass
class Stream:
    """One open event stream, parsed frame by frame as bytes arrive."""

    index: int
    host: str
    port: int
    path: str
    cookie: str
    on_event: OnEvent
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    status: int = 0
    error: str = ""
    closed: bool = False

    def __post_init__(self) -> None:
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._buffer = b""

    async def open(self, within: float) -> bool:
        """Connect and wait for `stream-open`; return whether it came in time."""
        self._task = asyncio.ensure_future(self._run())
        try:
            await asyncio.wait_for(self.opened.wait(), within)
        except TimeoutError:
            self.error = self.error or "timeout"
            return False
        return not self.error

    async def _run(self) -> None:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._writer = writer
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if self.cookie:
                headers["Cookie"] = self.cookie
            writer.write(_request("GET", self.host, self.port, self.path, headers))
            self.status, headers = await _read_head(reader)
            if self.status != 200:
                self.error = f"status {self.status}"
                self.opened.set()
                return
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0], 16)
                    if size == 0:
                        break
                    chunk = await reader.readexactly(size + 2)
                    self._feed(chunk[:-2])
            else:
                while chunk := await reader.read(65536):
                    self._feed(chunk)
        except (OSError, asyncio.IncompleteReadError, HTTPError, ValueError) as exc:
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            pass
        finally:
            self.closed = True
            self.opened.set()

    def _feed(self, data: bytes) -> None:
        now = time.time()
        self._buffer += data
        while b"\n\n" in self._buffer:
            frame, self._buffer = self._buffer.split(b"\n\n", 1)
            self._frame(frame, now)

    def _frame(self, frame: bytes, now: float) -> None:
        name, data, event_id = "message", [], None
        for line in frame.decode("utf-8", "replace").split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = value
        if name == "stream-open":
            self.opened.set()
            return
        text = "\n".join(data)
        if '"bench"' not in text:
            return
        body = json.loads(text)
        # The product wraps the payload in its event JSON; the bare app sends it.
        payload = body.get("data") if isinstance(body.get("data"), dict) else body
        self.on_event(
            Received(self.index, payload["bench"], payload["t"], now, event_id)
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 5)


async def open_all(
    streams: list[Stream], concurrency: int, limit_seconds: float
) -> dict[str, Any]:
    """Open every stream, `concurrency` at a time; return the connect figures.

    A stream still opening after `limit_seconds` counts as not opened.
    """
    gate = asyncio.Semaphore(concurrency)

    async def connect(stream: Stream) -> bool:
        async with gate:
            return await stream.open(60)

    started = time.monotonic()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(connect(s) for s in streams)), timeout=limit_seconds
        )
    except TimeoutError:
        outcomes = [s.opened.is_set() and not s.error for s in streams]
    elapsed = time.monotonic() - started
    opened = sum(outcomes)
    errors: dict[str, int] = {}
    for stream in streams:
        if stream.error:
            errors[stream.error[:80]] = errors.get(stream.error[:80], 0) + 1
    return {
        "opened": opened,
        "connect_seconds": round(elapsed, 2),
        "connect_rate": round(opened / elapsed, 1) if elapsed else None,
        "connect_errors": errors,
    }
