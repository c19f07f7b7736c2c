"""Child processes for the cross-process tests: a worker, a sender, a private Redis."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import time

from .utils import (
    BASE_DIR,
    POSTGRES_ADMIN_URL,
    PostgresDatabase,
    SSEStream,
    current_database_url,
    end_process,
    free_port,
    run_manage,
)

STAFF_USERNAME = "admin"
STAFF_PASSWORD = "pw-for-tests"
_template: PostgresDatabase | None = None


class ClonedPostgresDatabase(PostgresDatabase):
    """A PostgreSQL database copied from one migrated template with a staff user.

    Migrating costs seconds per database; the template is migrated once per
    test run and dropped when the run ends.
    """

    def create(self) -> ClonedPostgresDatabase:
        import psycopg

        template = _migrated_template()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}" TEMPLATE "{template.name}"')
        # Dropped at the end of the run too, should a class's teardown not run.
        atexit.register(self.drop)
        return self


def _migrated_template() -> PostgresDatabase:
    global _template
    if _template is None:
        template = PostgresDatabase("i4tpl").create()
        atexit.register(template.drop)
        run_manage(
            "createsuperuser",
            "--noinput",
            "--username",
            STAFF_USERNAME,
            "--email",
            "admin@example.com",
            env={
                "DATABASE_URL": template.url,
                "DJANGO_SUPERUSER_PASSWORD": STAFF_PASSWORD,
            },
        )
        _template = template
    return _template


class ManageProcess:
    """`manage.py <args>` running in the background, its output in artifacts/."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env or {}
        self.log_path = (
            BASE_DIR / "artifacts" / f"{args[0]}-{os.getpid()}-{free_port()}.log"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManageProcess:
        env = {
            **os.environ,
            "DATABASE_URL": self.env.get("DATABASE_URL") or current_database_url(),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        self.log_path.parent.mkdir(exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", *self.args],
            cwd=BASE_DIR,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        end_process(self.process, getattr(self, "_log", None))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def db_worker(env: dict[str, str] | None = None) -> ManageProcess:
    """Start django-tasks-db's worker, polling often so that tests stay quick."""
    return ManageProcess(
        "db_worker",
        "--no-reload",
        "--no-startup-delay",
        "--interval",
        "0.1",
        env={"NOTIFICATIONS_REPORT_STEP_SECONDS": "0.05", **(env or {})},
    ).start()


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """A private `redis-server` on a free loopback port, free to stop and restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


def messages_until(stream: SSEStream, last: str, timeout: float) -> list[str]:
    """Collect notification messages up to `last`, then any that follow briefly.

    The half second after `last` is there to catch a duplicate, not to wait
    for anything expected.
    """
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while last not in found and time.monotonic() < deadline:
        found += [event.json()["message"] for event in stream.collect(wait=0.2)]
    found += [event.json()["message"] for event in stream.collect(wait=0.5)]
    return found
