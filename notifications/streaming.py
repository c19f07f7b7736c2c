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

import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext
from django.urls import reverse

from .conf import conf

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
