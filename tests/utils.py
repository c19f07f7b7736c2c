"""Builders for the tests: a real Daphne server, visitors, and an SSE reader."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent


def services_required() -> bool:
    return os.environ.get("NOTIFICATIONS_REQUIRE_SERVICES") == "1"


def skip_unless_service(available: bool, reason: str):
    """Skip when a service is missing, or fail when the run requires services."""
    if available:
        return lambda obj: obj
    if services_required():

        def fail(obj):
            def setUpClass(cls):
                raise AssertionError(f"{reason} (NOTIFICATIONS_REQUIRE_SERVICES=1)")

            obj.setUpClass = classmethod(setUpClass)
            return obj

        return fail
    return unittest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def current_database_url() -> str:
    """Return a DATABASE_URL for the database the running tests use."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    if connection.vendor == "postgresql":
        user = settings.get("USER") or ""
        password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        host = settings.get("HOST") or "localhost"
        port = settings.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{settings['NAME']}"
    raise NotImplementedError(connection.vendor)


POSTGRES_ADMIN_URL = os.environ.get(
    "NOTIFICATIONS_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
REDIS_TEST_URL = os.environ.get(
    "NOTIFICATIONS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"
)


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2):
            return True
    except Exception:
        return False


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=2).ping())
    except Exception:
        return False


requires_postgres = skip_unless_service(
    postgres_available(), f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}"
)
requires_redis = skip_unless_service(
    redis_available(), f"Redis is not reachable at {REDIS_TEST_URL}"
)


class PostgresDatabase:
    """A migrated PostgreSQL database of its own, for child processes to share.

    The test runner's own database stays SQLite; a test of PostgreSQL behaviour
    runs Daphne, senders and workers as child processes pointed at this one,
    and reads it back with psycopg.
    """

    def __init__(self, label: str = "tests") -> None:
        self.name = f"notify_{label}_{os.getpid()}_{free_port()}"
        base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
        self.url = f"{base}/{self.name}"

    def create(self) -> PostgresDatabase:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        run_manage("migrate", "--noinput", env={"DATABASE_URL": self.url})
        return self

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def connect(self):
        import psycopg

        return psycopg.connect(self.url, autocommit=True)

    def __enter__(self) -> PostgresDatabase:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.drop()


def run_manage(
    *args: str, env: dict[str, str] | None = None, check: bool = True, timeout=60
):
    """Run `manage.py` in a child process, as an operator or a worker would."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def end_process(process: subprocess.Popen | None, log=None) -> None:  # type: ignore[type-arg]
    """Stop a child process politely, then firmly, and close its log file."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if log is not None:
        log.close()


class DaphneServer:
    """`daphne notifysite.asgi:application` in a child process on a free port."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = BASE_DIR / "artifacts" / f"daphne-{self.port}.log"

    def start(self) -> DaphneServer:
        env = {
            **os.environ,
            "DATABASE_URL": self.env.get("DATABASE_URL") or current_database_url(),
            "DJANGO_DEBUG": "1",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        self.log_path.parent.mkdir(exist_ok=True)
        # Appending keeps the log of a run before a restart on the same port.
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "notifysite.asgi:application",
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited: {self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("daphne did not start listening within 20 s")

    def stop(self) -> None:
        end_process(self.process, getattr(self, "_log", None))

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would: no clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        if getattr(self, "_log", None):
            self._log.close()

    def restart(self, *, kill: bool = False) -> DaphneServer:
        """Stop the server and start it again on the same port and URL.

        Pages that were connected see their streams drop and must reconnect
        to the same address, as they would after a deployment or a crash.
        """
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> DaphneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class SSEEvent:
    event: str
    data: str
    id: str | None

    def json(self):
        return json.loads(self.data)


@dataclass
class SSEStream:
    """Read a live stream on a thread, parsing events as their bytes arrive."""

    client: httpx.Client
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    events: queue.Queue[SSEEvent] = field(default_factory=queue.Queue)
    raw: bytearray = field(default_factory=bytearray)
    response_headers: httpx.Headers | None = None
    status_code: int | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._opened.wait(10):
            raise AssertionError(f"stream {self.url} did not open within 10 s")

    def _run(self) -> None:
        buffer = b""
        try:
            with self.client.stream(
                "GET",
                self.url,
                headers=self.headers,
                timeout=httpx.Timeout(5, read=None),
            ) as response:
                self.status_code = response.status_code
                self.response_headers = response.headers
                self._opened.set()
                for chunk in response.iter_raw(1):
                    if self._stop.is_set():
                        return
                    self.raw.extend(chunk)
                    buffer += chunk
                    while b"\n\n" in buffer:
                        frame, buffer = buffer.split(b"\n\n", 1)
                        event = self._parse(frame.decode())
                        if event is not None:
                            self.events.put(event)
        except (httpx.HTTPError, OSError):
            pass
        finally:
            self._opened.set()

    @staticmethod
    def _parse(frame: str) -> SSEEvent | None:
        name, data, event_id = "message", [], None
        for line in frame.split("\n"):
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "id":
                event_id = value
        if not data and name == "message":
            return None
        return SSEEvent(name, "\n".join(data), event_id)

    def next(self, event: str = "notification", timeout: float = 2.0) -> SSEEvent:
        """Return the next event named `event`, skipping others, or fail."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {event!r} event within {timeout} s")
            try:
                found = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if found.event == event:
                return found

    def collect(self, event: str = "notification", wait: float = 1.0) -> list[SSEEvent]:
        """Return every `event` event that arrives within `wait` seconds."""
        deadline = time.monotonic() + wait
        found = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                item = self.events.get(timeout=remaining)
            except queue.Empty:
                break
            if item.event == event:
                found.append(item)
        return found

    def close(self) -> None:
        self._stop.set()
        self.client.close()


class Visitor:
    """A browser: a cookie jar that loads the page, presses buttons and listens."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.Client(
            base_url=base_url, timeout=10, follow_redirects=False
        )
        self.streams: list[SSEStream] = []
        self.page = ""

    def open_page(self) -> str:
        response = self.client.get("/")
        assert response.status_code == 200, response.status_code
        self.page = response.text
        return self.page

    @property
    def csrf_token(self) -> str:
        return self.client.cookies["csrftoken"]

    @property
    def session_key(self) -> str:
        return self.client.cookies["sessionid"]

    def last_event_id(self) -> str:
        match = re.search(
            r'<script id="last-event-id" type="application/json">"([^"]*)"', self.page
        )
        assert match, "the page has no last-event-id"
        return match.group(1)

    def post(self, path: str, data: dict | None = None, csrf: bool = True, **kwargs):
        headers = {"Referer": self.base_url + "/", **kwargs.pop("headers", {})}
        if csrf:
            headers["X-CSRFToken"] = self.csrf_token
        return self.client.post(path, data=data, headers=headers, **kwargs)

    def press_button(self, csrf: bool = True):
        return self.post(
            "/button-pressed/", csrf=csrf, headers={"X-Requested-With": "fetch"}
        )

    def listen(
        self, query: str = "", headers: dict[str, str] | None = None
    ) -> SSEStream:
        # A second client with the same cookies: httpx clients are not shared
        # between a streaming thread and the test's own requests.
        client = httpx.Client(base_url=self.base_url, cookies=self.client.cookies)
        stream = SSEStream(client, "/notifications/" + query, headers or {})
        self.streams.append(stream)
        return stream

    def login(self, username: str, password: str) -> None:
        self.client.get("/accounts/login/")
        response = self.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": self.csrf_token,
            },
            csrf=False,
        )
        assert response.status_code == 302, response.text[:500]

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        self.client.close()


class RecordingListener:
    """Register a django-eventstream listener and record what its stream would send.

    Like the stream, it takes queued events as they are and, when asked to
    (`overflow`), re-reads the table from the position it has reached.
    """

    def __init__(self, *channels: str) -> None:
        from django_eventstream.views import Listener, get_listener_manager

        from notifications.storage import NotificationStorage

        self.storage = NotificationStorage()
        self.manager = get_listener_manager()
        self.listener = Listener()
        self.listener.channels = set(channels)
        self.listener.wake_threadsafe = lambda: None  # no event loop in these tests
        # The table's numbers, read without the storage: its get_current_id
        # would also set this process's delivery mark, which tests of the
        # marks set themselves.
        from notifications.selectors import current_seqs

        self.position = current_seqs(list(channels))
        self.received: list = []
        self.manager.add_listener(self.listener)

    def events(self) -> list:
        with self.manager.lock:
            queued, overflow = self.listener.channel_items, self.listener.overflow
            self.listener.channel_items, self.listener.overflow = {}, False
        fresh = [event for items in queued.values() for event in items]
        if overflow:
            for channel, position in self.position.items():
                fresh += self.storage.get_events(channel, position, limit=10**6)
        for event in fresh:
            self.position[event.channel] = event.id
        self.received += fresh
        return list(self.received)

    def close(self) -> None:
        self.manager.remove_listener(self.listener)


class SenderProcess:
    """`tests/sender.py` in a child process: one connection, one transaction."""

    def __init__(self, database_url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.sender"],
            cwd=BASE_DIR,
            env={**os.environ, "DATABASE_URL": database_url},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.replies: queue.Queue[dict] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.replies.put(json.loads(line))

    def request(self, op: str, **arguments: object) -> None:
        """Send a command without waiting for its answer."""
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()

    def reply(self, timeout: float = 15.0) -> dict:
        answer = self.replies.get(timeout=timeout)
        assert answer["ok"], answer
        return answer

    def call(self, op: str, **arguments: object) -> dict:
        self.request(op, **arguments)
        return self.reply()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def session_token(visitor: Visitor) -> str:
    """Return the session token a visitor's page shows in its stream position."""
    match = re.search(r"session-([0-9a-f]{32})", visitor.last_event_id())
    assert match, visitor.last_event_id()
    return match.group(1)
