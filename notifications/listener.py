"""One listener per server process: rows sent by other processes reach its streams.

It starts with the first stream of the process (Daphne has no lifespan startup)
and runs on the server's event loop. Whatever wakes it (a PostgreSQL `NOTIFY`,
a Redis message, the poll timer of the `database` transport, or a reconnect),
it runs one scan: an indexed read of the rows whose ids it has not seen, then
the rows above the mark of each channel that has streams here, handed on in
order by `transport.deliver`. Wake-ups that arrive during a scan fold into one
more scan, and database work runs on one thread of its own, off the loop.

Ids are taken when a row is inserted but become visible when it commits, so a
lower id can appear after a higher one. An id missing below the highest seen is
looked for again on every scan until it shows up or `GAP_WAIT` passes (a
rolled-back send leaves such a hole forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import reduce
from operator import or_
from typing import Any

from django.db.models import Max, Q

from . import transport
from .conf import conf

logger = logging.getLogger(__name__)

# Rows read by one scan; a full batch is followed by another scan at once.
SCAN_LIMIT = 500
# Seconds an id may stay missing below the highest seen before it is given up.
GAP_WAIT = 120.0
# Most missing ids remembered; the oldest are given up first beyond this.
MAX_MISSING = 1000
# Seconds between safety scans of the push transports, which also test the
# connection: a wake-up lost on the way costs at most this long.
SAFETY_INTERVAL = 15.0
BACKOFF_FIRST = 0.25
LISTENER_APPLICATION_NAME = "notifysite-listener"
BACKOFF_MAX = 10.0


class IdScanner:
    """Find rows committed since the last scan, by id, allowing late commits."""

    def __init__(self) -> None:
        self.top: int | None = None
        self.missing: dict[int, float] = {}

    def start(self) -> None:
        from .models import Notification

        self.top = Notification.objects.aggregate(top=Max("id"))["top"] or 0

    def scan(self) -> tuple[list[tuple[int, str, int]], bool]:
        """Return (id, channel, seq) of rows not seen before, and whether more wait."""
        from .models import Notification

        now = time.monotonic()
        for row_id, since in list(self.missing.items()):
            if now - since > GAP_WAIT:
                del self.missing[row_id]
        assert self.top is not None
        where = Q(id__gt=self.top)
        if self.missing:
            where |= Q(id__in=list(self.missing))
        found = list(
            Notification.objects.filter(where)
            .order_by("id")
            .values_list("id", "channel", "seq")[:SCAN_LIMIT]
        )
        for row_id, _channel, _seq in found:
            if self.missing.pop(row_id, None) is not None:
                continue
            if row_id > self.top:
                first = max(self.top + 1, row_id - MAX_MISSING)
                for hole in range(first, row_id):
                    self.missing[hole] = now
                self.top = row_id
        while len(self.missing) > MAX_MISSING:
            del self.missing[min(self.missing)]
        return found, len(found) == SCAN_LIMIT


def scan_once(scanner: IdScanner) -> bool:
    """Deliver the rows committed since the last scan; return whether more wait."""
    from .models import Notification
    from .storage import release_connection

    try:
        found, more = scanner.scan()
        marks = transport.marks_of(channel for _id, channel, _seq in found)
        wanted: dict[str, int] = {}
        for _id, channel, seq in found:
            mark = marks.get(channel)
            if mark is not None and seq > mark:
                wanted[channel] = mark
        rows = []
        names = list(wanted)
        for start in range(0, len(names), 100):
            where = reduce(
                or_,
                (
                    Q(channel=name, seq__gt=wanted[name])
                    for name in names[start : start + 100]
                ),
            )
            rows.extend(Notification.objects.filter(where).order_by("channel", "seq"))
    finally:
        release_connection()
    for channel in transport.deliver(rows):
        # A row of this channel is still missing here (it committed late
        # behind a given-up id): read the channel from its mark.
        transport.catch_up_channel(channel)
    transport.scan_finished()
    return more


class ProcessListener:
    """The listener of this process, for the configured transport."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="notifications-listener"
        )
        self.scanner = IdScanner()
        self.started: asyncio.Future[None] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.wake_event: asyncio.Event | None = None
        self.transport = ""

    async def ensure_started(self) -> None:
        """Start on the running loop once; later callers wait for the first start."""
        if self.started is None:
            loop = asyncio.get_running_loop()
            self.started = loop.create_future()
            try:
                self.transport = await loop.run_in_executor(
                    self.executor, self._prepare
                )
            except BaseException as exc:
                # Callers waiting meanwhile get the same error; marking it
                # retrieved keeps asyncio from logging it when there were none.
                failed, self.started = self.started, None
                failed.set_exception(exc)
                failed.exception()
                raise
            self.wake_event = asyncio.Event()
            self.tasks.append(loop.create_task(self._scan_loop()))
            if self.transport == "postgres":
                self.tasks.append(loop.create_task(self._listen_postgres()))
            elif self.transport == "redis":
                self.tasks.append(loop.create_task(self._listen_redis()))
            transport.set_listener_active(True)
            logger.info("notification listener started (transport=%s)", self.transport)
            self.started.set_result(None)
        await asyncio.shield(self.started)

    def _prepare(self) -> str:
        from .storage import release_connection

        name = transport.transport_name()
        try:
            self.scanner.start()
        finally:
            release_connection()
        return name

    def wake(self) -> None:
        if self.wake_event is not None:
            self.wake_event.set()

    async def _scan_loop(self) -> None:
        assert self.wake_event is not None
        loop = asyncio.get_running_loop()
        while True:
            interval = (
                float(conf.POLL_INTERVAL)
                if self.transport == "database"
                else SAFETY_INTERVAL
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake_event.wait(), interval)
            self.wake_event.clear()
            try:
                more = True
                while more:
                    more = await loop.run_in_executor(
                        self.executor, scan_once, self.scanner
                    )
            except Exception:
                logger.warning(
                    "notification listener could not read the table; retrying",
                    exc_info=True,
                )

    async def _listen_postgres(self) -> None:
        import psycopg

        params = postgres_params()
        delay = BACKOFF_FIRST
        lost = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
                try:
                    await conn.execute(f"LISTEN {transport.WAKE_CHANNEL}")
                    if lost:
                        logger.warning(
                            "notification listener reconnected to PostgreSQL; "
                            "catching up from the table"
                        )
                    lost, delay = False, BACKOFF_FIRST
                    # Rows committed before LISTEN took hold are read now.
                    self.wake()
                    while True:
                        async for _notify in conn.notifies(timeout=SAFETY_INTERVAL):
                            self.wake()
                        await conn.execute("SELECT 1")
                        self.wake()
                finally:
                    await conn.close()
            except Exception as exc:
                logger.warning(
                    "notification listener lost PostgreSQL (%s); reconnecting in %.2f s",
                    type(exc).__name__,
                    delay,
                )
                lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _listen_redis(self) -> None:
        from redis.asyncio import Redis

        delay = BACKOFF_FIRST
        lost = False
        while True:
            client = Redis.from_url(
                conf.REDIS_URL, socket_connect_timeout=2, socket_keepalive=True
            )
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(transport.WAKE_CHANNEL)
                if lost:
                    logger.warning(
                        "notification listener reconnected to Redis; "
                        "catching up from the table"
                    )
                lost, delay = False, BACKOFF_FIRST
                self.wake()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=SAFETY_INTERVAL
                    )
                    if message is None:
                        await pubsub.ping()
                    self.wake()
            except Exception as exc:
                logger.warning(
                    "notification listener lost Redis (%s); reconnecting in %.2f s",
                    type(exc).__name__,
                    delay,
                )
                lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:  # the connection is already gone
                    pass


def postgres_params() -> dict[str, Any]:
    """Return psycopg connection arguments for the default database."""
    from django.db import connection

    settings = connection.settings_dict
    params: dict[str, Any] = {
        "dbname": settings["NAME"],
        "connect_timeout": 5,
        # Names the connection in pg_stat_activity for operators (and tests).
        "application_name": LISTENER_APPLICATION_NAME,
    }
    for key, name in (
        ("USER", "user"),
        ("PASSWORD", "password"),
        ("HOST", "host"),
        ("PORT", "port"),
    ):
        if settings.get(key):
            params[name] = settings[key]
    # Keepalives notice a peer that vanished without closing the connection.
    params.update(keepalives=1, keepalives_idle=30, keepalives_interval=10)
    return params


_listener: ProcessListener | None = None


def get_listener() -> ProcessListener | None:
    """Return this process's listener, or None for the `local` transport."""
    global _listener
    if _listener is None and transport.transport_name() != "local":
        _listener = ProcessListener()
    return _listener
