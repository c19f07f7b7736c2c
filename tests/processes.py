"""Child processes for the cross-process tests: a worker, a sender, a private Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

from .utils import BASE_DIR, current_database_url, free_port


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
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if getattr(self, "_log", None):
            self._log.close()

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
