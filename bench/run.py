"""Load benchmark: the product, a bare django-eventstream app and a floor, side by side.

    python -m bench.run --n 1000                  # what `make bench` runs
    python -m bench.run --n 1000 --n 3000 --n 10000 --out bench/results/full.json
    python -m bench.run --n 1000 --apps floor,bare --cross-count 0

Three apps (`--apps`): "product" (notifysite.asgi), "bare" (the library alone,
bench/bare/) and "floor" (a plain ASGI callable, bench/floor.py: the least any
app can cost on Daphne, so its column shows what Daphne itself bounds). For
each N, each app in turn gets a fresh Daphne process (same command, same
listen backlog) on loopback, N open streams, and the same measurements: connect
rate, memory and threads per stream from procfs, database connections held
while idle, one session's notification while N-1 others are open, a broadcast
to all N, and a burst of 1,000 to one page. The product runs on a PostgreSQL
database of its own, created for the run and dropped after it. Every wait is
bounded in time; the figures are printed as a table (product, bare, floor, and
product / bare) and written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import Received, Stream, open_all, post

BASE_DIR = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
POSTGRES_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
# Streams being set up at once; more only fills the listen backlog.
CONNECT_CONCURRENCY = 200
BACKLOG = 2048


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * (len(ordered) - 1))))
    return ordered[rank]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """Return VmRSS (KB) and Threads of a process, from /proc/<pid>/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "Threads"}:
            found[key] = int(value.split()[0])
    return found


class Server:
    """One Daphne process, started with the listen backlog the README gives."""

    def __init__(
        self, name: str, app: str, env: dict[str, str], profile: bool = False
    ) -> None:
        self.name = name
        self.port = free_port()
        log_dir = BASE_DIR / "bench" / "results"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"daphne-{name}-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        endpoint = f"tcp:port={self.port}:interface={HOST}:backlog={BACKLOG}"
        # cProfile sees the event loop's thread: the fan-out, the stream loops
        # and Daphne's writes; it writes its stats when Daphne exits.
        self.profile_path = log_dir / f"profile-{name}-{self.port}.pstats"
        wrapper = ["-m", "cProfile", "-o", str(self.profile_path)] if profile else []
        self.process = subprocess.Popen(
            [sys.executable, *wrapper, "-m", "daphne", "-e", endpoint, app],
            cwd=BASE_DIR,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log_path.read_text()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not listen within 30 s")

    def status(self) -> dict[str, int]:
        return proc_status(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


class ProductDatabase:
    """A PostgreSQL database of the run's own, with N real sessions in it."""

    def __init__(self) -> None:
        self.name = f"notify_bench7_{os.getpid()}_{secrets.token_hex(3)}"
        self.url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{self.name}"
        self.cookies: list[str] = []
        # The server must read the session data the sessions child signed.
        self.secret_key = secrets.token_urlsafe(40)

    def _admin(self):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)

    def create(self, sessions: int) -> None:
        with self._admin() as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=BASE_DIR,
            env={**os.environ, "DATABASE_URL": self.url},
            check=True,
            timeout=120,
        )
        # Sessions are made the way the product makes them (a Visitor row and
        # its token in signed session data), in bulk, by a child process so
        # this one holds no connection while the server is measured.
        out = subprocess.run(
            [sys.executable, "-m", "bench.sessions", str(sessions)],
            cwd=BASE_DIR,
            env={
                **os.environ,
                "DATABASE_URL": self.url,
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": self.secret_key,
            },
            check=True,
            timeout=300,
            capture_output=True,
            text=True,
        )
        self.cookies = [f"sessionid={key}" for key in out.stdout.split()]
        if len(self.cookies) != sessions:
            raise RuntimeError(f"made {len(self.cookies)} sessions of {sessions}")

    def connections(self) -> int:
        with self._admin() as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                [self.name],
            ).fetchone()
        return int(row[0])

    def drop(self) -> None:
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@dataclass
class Target:
    """How the load tool talks to one app: stream path, cookie, send path."""

    name: str
    server: Server
    database: ProductDatabase | None
    cookies: list[str] = field(default_factory=list)

    def stream_path(self, index: int) -> str:
        if self.database is None:
            return f"/events/s{index}/"
        return "/notifications/"

    def cookie(self, index: int) -> str:
        return self.cookies[index] if self.cookies else ""

    def send_path(self, index: int | None, marker: str, count: int = 1) -> str:
        extra = f"&count={count}&seconds=1" if count > 1 else ""
        if self.database is None:
            channel = "broadcast" if index is None else f"c-s{index}"
            return f"/send/?channel={channel}&marker={marker}{extra}"
        to = "&to=all" if index is None else ""
        return f"/bench/send/?marker={marker}{to}{extra}"


class Collector:
    """Routes arriving benchmark events to whoever waits for their marker."""

    def __init__(self) -> None:
        self.by_marker: dict[str, list[Received]] = {}
        self.waiting: dict[str, tuple[int, asyncio.Event]] = {}
        self.burst: list[Received] = []
        self.burst_prefix = ""

    def __call__(self, received: Received) -> None:
        if self.burst_prefix and received.marker.startswith(self.burst_prefix):
            self.burst.append(received)
            return
        found = self.by_marker.setdefault(received.marker, [])
        found.append(received)
        wanted = self.waiting.get(received.marker)
        if wanted and len(found) >= wanted[0]:
            wanted[1].set()

    async def wait(self, marker: str, count: int, within: float) -> list[Received]:
        done = asyncio.Event()
        self.waiting[marker] = (count, done)
        if len(self.by_marker.get(marker, [])) >= count:
            done.set()
        try:
            await asyncio.wait_for(done.wait(), within)
        except TimeoutError:
            pass
        finally:
            del self.waiting[marker]
        return self.by_marker.pop(marker, [])


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


async def measure(target: Target, n: int, sends: int, burst: int) -> dict[str, Any]:
    """Open n streams on one app and take every measurement of the table."""
    collector = Collector()
    result: dict[str, Any] = {"n": n}

    # Warm the server (imports, first queries) with one stream, then note
    # its baseline memory and threads.
    warm = Stream(-1, HOST, target.server.port, target.stream_path(0), "", collector)
    if target.cookies:
        warm.cookie = target.cookie(0)
    await warm.open(20)
    await warm.close()
    await asyncio.sleep(1)
    before = target.server.status()

    # Connect: N streams, CONNECT_CONCURRENCY in flight, each within 60 s.
    streams = [
        Stream(
            i,
            HOST,
            target.server.port,
            target.stream_path(i),
            target.cookie(i),
            collector,
        )
        for i in range(n)
    ]
    result.update(await open_all(streams, CONNECT_CONCURRENCY, 120 + n / 20))

    # Idle: memory, threads and database connections with N streams waiting.
    await asyncio.sleep(2)
    after = target.server.status()
    result.update(
        rss_before_mb=round(before["VmRSS"] / 1024, 1),
        rss_open_mb=round(after["VmRSS"] / 1024, 1),
        kb_per_stream=round(
            (after["VmRSS"] - before["VmRSS"]) / max(result["opened"], 1), 1
        ),
        threads_before=before["Threads"],
        threads_open=after["Threads"],
        db_connections_idle=(
            target.database.connections() if target.database else None
        ),
    )

    live = [s for s in streams if not s.error and not s.closed]
    if not live:
        result["note"] = "no stream opened"
        return result
    one = live[0]

    # One session's notification while the others stay open: sequential sends.
    send_latency: list[float] = []
    round_trip: list[float] = []
    lost = 0
    deadline = time.monotonic() + 60
    for k in range(sends):
        if time.monotonic() > deadline:
            break
        marker = f"s{k}"
        posted = time.time()
        status = await post(
            HOST, target.server.port, target.send_path(one.index, marker), one.cookie
        )
        if status != 204:
            raise RuntimeError(f"{target.name}: send answered {status}")
        got = await collector.wait(marker, 1, 5)
        if not got:
            lost += 1
            continue
        send_latency.append(got[0].received - got[0].sent)
        round_trip.append(got[0].received - posted)
    result.update(
        session_sends=len(send_latency) + lost,
        session_lost=lost,
        session_p50_ms=ms(percentile(send_latency, 0.5)),
        session_p99_ms=ms(percentile(send_latency, 0.99)),
        post_to_event_p50_ms=ms(percentile(round_trip, 0.5)),
        post_to_event_p99_ms=ms(percentile(round_trip, 0.99)),
    )

    # Broadcast to all: one warm-up, then three measured, every page's delay.
    delays: list[float] = []
    slowest: list[float] = []
    reached: list[int] = []
    for k in range(4):
        marker = f"b{k}"
        status = await post(
            HOST, target.server.port, target.send_path(None, marker), one.cookie
        )
        if status != 204:
            raise RuntimeError(f"{target.name}: broadcast answered {status}")
        got = await collector.wait(marker, len(live), 30 + n / 200)
        if k == 0:
            continue
        these = [r.received - r.sent for r in got]
        delays += these
        slowest.append(max(these) if these else float("nan"))
        reached.append(len(got))
        await asyncio.sleep(0.5)
    result.update(
        broadcast_reached=reached,
        broadcast_p50_ms=ms(percentile(delays, 0.5)),
        broadcast_p99_ms=ms(percentile(delays, 0.99)),
        broadcast_max_ms=ms(statistics.median(slowest)) if slowest else None,
    )

    # Burst: `burst` notifications to one page within one second.
    target_stream = live[1] if len(live) > 1 else one
    collector.burst_prefix = "u"
    collector.burst = []
    status = await post(
        HOST,
        target.server.port,
        target.send_path(target_stream.index, "u", count=burst),
        target_stream.cookie,
    )
    last_count, quiet_since = -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        count = len(collector.burst)
        if count >= burst:
            break
        if count != last_count:
            last_count, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since > 5:
            break
    indexes = [int(r.marker[1:]) for r in collector.burst]
    result.update(
        burst_sent=burst,
        burst_received=len(set(indexes)),
        burst_in_order=indexes == sorted(indexes),
        burst_duplicates=len(indexes) - len(set(indexes)),
    )

    # Close: every stream, each within 5 s.
    await asyncio.gather(*(s.close() for s in streams))
    return result


def start_target(
    name: str,
    database: ProductDatabase | None,
    profile: bool = False,
    extra: dict[str, str] | None = None,
) -> Target:
    if name == "bare":
        server = Server(
            "bare",
            "bench.bare.asgi:application",
            {"DJANGO_SETTINGS_MODULE": "bench.bare.settings"},
            profile,
        )
        return Target("bare", server, None)
    if name == "floor":
        # No database: the Target speaks the bare app's paths, which floor answers.
        server = Server("floor", "bench.floor:application", {}, profile)
        return Target("floor", server, None)
    assert database is not None
    server = Server(
        "product",
        "notifysite.asgi:application",
        {
            "DJANGO_SETTINGS_MODULE": "bench.product_settings",
            "DATABASE_URL": database.url,
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": database.secret_key,
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "NOTIFICATIONS_LOG_LEVEL": "WARNING",
            **(extra or {}),
        },
        profile,
    )
    return Target("product", server, database, database.cookies)


ROWS = [
    ("streams open", "opened", ""),
    ("connects per second", "connect_rate", ""),
    ("memory per stream (KB)", "kb_per_stream", ""),
    ("server RSS open (MB)", "rss_open_mb", ""),
    ("OS threads open", "threads_open", ""),
    ("DB connections idle", "db_connections_idle", ""),
    ("one session p50 (ms)", "session_p50_ms", ""),
    ("one session p99 (ms)", "session_p99_ms", ""),
    ("POST to event p50 (ms)", "post_to_event_p50_ms", ""),
    ("POST to event p99 (ms)", "post_to_event_p99_ms", ""),
    ("broadcast p50 (ms)", "broadcast_p50_ms", ""),
    ("broadcast p99 (ms)", "broadcast_p99_ms", ""),
    ("broadcast all reached (ms)", "broadcast_max_ms", ""),
    ("burst received", "burst_received", ""),
    ("burst in order", "burst_in_order", ""),
]


def table(run: dict[str, Any]) -> str:
    product, bare = run.get("product", {}), run.get("bare", {})
    floor = run.get("floor", {})
    lines = [
        f"N = {run['n']}",
        f"| {'measure':<28} | {'product':>10} | {'bare':>10} | {'floor':>10} "
        f"| {'p/bare':>6} |",
        f"|{'-' * 30}|{'-' * 12}|{'-' * 12}|{'-' * 12}|{'-' * 8}|",
    ]
    for label, key, _ in ROWS:
        a, b, f = product.get(key), bare.get(key), floor.get(key)
        ratio = ""
        if (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and not isinstance(a, bool)
            and b
        ):
            ratio = f"{a / b:.2f}"
        lines.append(
            f"| {label:<28} | {_cell(a):>10} | {_cell(b):>10} | {_cell(f):>10} "
            f"| {ratio:>6} |"
        )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return str(value)


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "memory_mb": int(Path("/proc/meminfo").read_text().split()[1]) // 1024,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def raise_file_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * n + 1024))
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < n + 256:
        raise SystemExit(f"the file limit ({hard}) is too low for {n} streams")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, action="append", help="open streams")
    parser.add_argument("--sends", type=int, default=500)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--apps", default="product,bare,floor")
    parser.add_argument("--cross-rate", type=int, default=500)
    parser.add_argument(
        "--cross-only", action="store_true", help="only the two-process run"
    )
    parser.add_argument(
        "--cross-count", type=int, default=2500, help="0 skips the two-process run"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run each server under cProfile (event-loop thread); stats in results/",
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="several product processes behind nginx (bench/scale.py); not for CI",
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--n-per-process", type=int, default=3000)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="with --scale-out: first one process, direct, at --n-per-process",
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.scale_out:
        from .scale import run_scale_out

        out = args.out or str(BASE_DIR / "bench/results/scale.json")
        return run_scale_out(
            args.processes, args.n_per_process, min(args.sends, 300), args.baseline, out
        )
    args.out = args.out or str(BASE_DIR / "bench/results/latest.json")
    sizes = args.n or [1000]
    apps = [a for a in args.apps.split(",") if a]
    raise_file_limit(max(sizes))

    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "runs": [],
        "cross_instance": {"status": "not run"},
    }
    database = None
    try:
        if "product" in apps:
            database = ProductDatabase()
            database.create(max(sizes))
        for n in [] if args.cross_only else sizes:
            run: dict[str, Any] = {"n": n}
            for name in apps:
                target = start_target(name, database, args.profile)
                try:
                    run[name] = asyncio.run(measure(target, n, args.sends, args.burst))
                finally:
                    target.server.stop()
                print(f"{name} N={n}: {json.dumps(run[name])}", flush=True)
            report["runs"].append(run)
            print(table(run), flush=True)
        if database is not None and args.cross_count:
            report["cross_instance"] = cross_instance(
                database, args.cross_rate, args.cross_count
            )
    finally:
        if database is not None:
            database.drop()
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"cross-instance: {report['cross_instance']['status']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


class RedisChild:
    """A private `redis-server` on a free loopback port, stopped after the run."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not listen within 10 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


# Sessions the cross-instance load is spread over: sends to one session's
# channel queue on its counter row, so one channel alone cannot take 500/s.
CROSS_SESSIONS = 5


async def cross_send(
    sender: Target, reader: Target, rate: int, count: int
) -> dict[str, Any]:
    """Send `count` notifications at `rate`/s through one process to pages on another.

    Each of CROSS_SESSIONS sessions gets a page on the reader and an even
    share of the sends, paced inside the sender (`/bench/send/` with a count)
    so the figure is the transport's, not the load tool's HTTP.
    """
    collector = Collector()
    streams = [
        Stream(
            j,
            HOST,
            reader.server.port,
            reader.stream_path(j),
            reader.cookie(j),
            collector,
        )
        for j in range(CROSS_SESSIONS)
    ]
    for stream in streams:
        if not await stream.open(20):
            return {"error": f"stream did not open: {stream.error}"}
    await asyncio.sleep(1)
    each = count // CROSS_SESSIONS
    seconds = count / rate
    start = time.monotonic()
    for j in range(CROSS_SESSIONS):
        path = f"/bench/send/?marker=x{j}_&count={each}&seconds={seconds}"
        status = await post(HOST, sender.server.port, path, sender.cookie(j))
        if status != 204:
            return {"error": f"sender answered {status}"}
    deadline = start + seconds + 20
    while time.monotonic() < deadline:
        if sum(len(v) for v in collector.by_marker.values()) >= each * CROSS_SESSIONS:
            break
        await asyncio.sleep(0.1)
    received = [got[0] for got in collector.by_marker.values()]
    delays = [r.received - r.sent for r in received]
    span = (
        max(r.sent for r in received) - min(r.sent for r in received)
        if len(received) > 1
        else 0.0
    )
    for stream in streams:
        await stream.close()
    return {
        "sent": each * CROSS_SESSIONS,
        "rate_achieved": round(len(received) / span, 1) if span else None,
        "received": len(received),
        "p50_ms": ms(percentile(delays, 0.5)),
        "p99_ms": ms(percentile(delays, 0.99)),
        "max_ms": ms(max(delays)) if delays else None,
    }


def cross_instance(database: ProductDatabase, rate: int, count: int) -> dict:
    """Two product processes per transport: send through one, read on the other."""
    results: dict[str, Any] = {"status": "measured", "rate": rate}
    for transport in ("postgres", "redis"):
        redis = RedisChild() if transport == "redis" else None
        extra = {"NOTIFICATIONS_TRANSPORT": transport}
        if redis is not None:
            extra["REDIS_URL"] = redis.url
        targets = []
        try:
            targets = [start_target("product", database, extra=extra) for _ in range(2)]
            results[transport] = asyncio.run(
                cross_send(targets[0], targets[1], rate, count)
            )
        except Exception as exc:
            results[transport] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for target in targets:
                target.server.stop()
            if redis is not None:
                redis.stop()
        print(f"cross-instance {transport}: {results[transport]}", flush=True)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
