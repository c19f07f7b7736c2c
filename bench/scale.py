"""Scale-out run: several product processes behind one nginx port.

    python -m bench.run --scale-out --processes 2 --n-per-process 3000

Starts P Daphne processes of the product (the `postgres` transport, listen
backlog 2048) on their own loopback ports and an nginx child process in front
of them (its own config, pid and logs under /tmp), then opens P x N streams
through nginx and measures: connect rate and success, each process's streams
(established connections on its port, from /proc/net/tcp), RSS and threads
(procfs), one session's notification sent through either process, and a
broadcast's time to every page. With `--baseline` it first takes the same
measurements on one process at N streams, direct, for comparison.

nginx and every Daphne are stopped at the end whatever happens; when nginx or
the database is missing the mode says so and exits non-zero.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .client import Stream, open_all, post
from .run import (
    BACKLOG,
    CONNECT_CONCURRENCY,
    HOST,
    Collector,
    ProductDatabase,
    Target,
    free_port,
    machine,
    ms,
    percentile,
    raise_file_limit,
    start_target,
)

logger = logging.getLogger(__name__)

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream notifysite {{
{servers}
        keepalive 64;
    }}
    server {{
        # reuseport: the kernel spreads the connections over both workers.
        listen {host}:{port} backlog=4096 reuseport;
        location /notifications/ {{
            proxy_pass http://notifysite;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
        }}
        location / {{
            proxy_pass http://notifysite;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """nginx to run: `BENCH_NGINX` if set, else `nginx` on PATH or in /usr/sbin."""
    chosen = os.environ.get("BENCH_NGINX")
    if chosen:
        return shutil.which(chosen)
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


class Unavailable(Exception):
    """Something the scale-out run needs is missing on this machine."""


class Nginx:
    """An nginx child process (not the system service) with its own config."""

    def __init__(self, upstream_ports: list[int], pages: int) -> None:
        binary = nginx_binary()
        if binary is None:
            raise Unavailable("nginx is not installed (apt-get install -y nginx)")
        self.dir = Path(tempfile.mkdtemp(prefix=f"notify-bench7-nginx-{os.getpid()}-"))
        self.port = free_port()
        # Each page is a client and an upstream connection in one worker; allow
        # every page on one worker should the kernel spread them badly.
        connections = 2 * pages + 1024
        servers = "\n".join(f"        server {HOST}:{p};" for p in upstream_ports)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(
                dir=self.dir,
                nofile=connections + 1024,
                connections=connections,
                servers=servers,
                host=HOST,
                port=self.port,
            )
        )
        self.log_path = self.dir / "stderr.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.process = subprocess.Popen(
            [binary, "-p", str(self.dir), "-c", str(self.conf)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.close()
                said = self.log_path.read_text()[-800:] + "".join(self.errors())
                raise Unavailable(f"nginx exited: {said}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise Unavailable("nginx did not listen within 15 s")

    def errors(self) -> list[str]:
        path = self.dir / "error.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return lines[-5:]

    def stop(self) -> None:
        if self.process.poll() is None:
            # SIGTERM is nginx's fast shutdown: workers close every connection.
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


def established(port: int) -> int:
    """Established TCP connections whose local end is `port` (IPv4 loopback)."""
    wanted = f":{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(wanted) and fields[3] == "01":
            count += 1
    return count


def process_figures(targets: list[Target]) -> list[dict[str, Any]]:
    figures = []
    for target in targets:
        status = target.server.status()
        figures.append(
            {
                "port": target.server.port,
                "streams": established(target.server.port),
                "rss_mb": round(status["VmRSS"] / 1024, 1),
                "threads": status["Threads"],
            }
        )
    return figures


async def measure(
    targets: list[Target],
    connect_port: int,
    cookies: list[str],
    sends: int,
    broadcasts: int = 3,
) -> dict[str, Any]:
    """Open one stream per cookie on `connect_port`; take the scale-out table."""
    collector = Collector()
    total = len(cookies)
    result: dict[str, Any] = {"pages": total, "processes": len(targets)}

    # Warm every process (imports, first queries) directly with one stream.
    for target in targets:
        warm = Stream(
            -1, HOST, target.server.port, "/notifications/", cookies[0], collector
        )
        await warm.open(20)
        await warm.close()
    await asyncio.sleep(1)
    result["before"] = process_figures(targets)

    streams = [
        Stream(i, HOST, connect_port, "/notifications/", cookie, collector)
        for i, cookie in enumerate(cookies)
    ]
    result.update(await open_all(streams, CONNECT_CONCURRENCY, 120 + total / 20))
    await asyncio.sleep(2)
    result["open"] = process_figures(targets)

    live = [s for s in streams if not s.error and not s.closed]
    if not live:
        result["note"] = "no stream opened"
        await asyncio.gather(*(s.close() for s in streams))
        return result

    # One session's notification, posted straight to each process in turn, to
    # a page chosen at random: the page sits behind either process, so about
    # half the sends cross between processes through the transport.
    rng = random.Random(7)
    latency: list[float] = []
    by_sender: dict[int, list[float]] = {t.server.port: [] for t in targets}
    lost = 0
    deadline = time.monotonic() + 90
    for k in range(sends):
        if time.monotonic() > deadline:
            break
        page = rng.choice(live)
        sender = targets[k % len(targets)].server.port
        marker = f"s{k}"
        status = await post(HOST, sender, f"/bench/send/?marker={marker}", page.cookie)
        if status != 204:
            raise RuntimeError(f"send answered {status}")
        got = await collector.wait(marker, 1, 5)
        if not got:
            lost += 1
            continue
        delay = got[0].received - got[0].sent
        latency.append(delay)
        by_sender[sender].append(delay)
    result.update(
        session_sends=len(latency) + lost,
        session_lost=lost,
        session_p50_ms=ms(percentile(latency, 0.5)),
        session_p99_ms=ms(percentile(latency, 0.99)),
        session_by_sender={
            str(port): {
                "n": len(values),
                "p50_ms": ms(percentile(values, 0.5)),
                "p99_ms": ms(percentile(values, 0.99)),
            }
            for port, values in by_sender.items()
        },
    )

    # Broadcast: one warm-up, then `broadcasts` measured, each sent through
    # the processes in turn; every page's delay and the slowest page's.
    delays: list[float] = []
    slowest: list[float] = []
    reached: list[int] = []
    for k in range(broadcasts + 1):
        sender = targets[k % len(targets)].server.port
        marker = f"b{k}"
        status = await post(
            HOST, sender, f"/bench/send/?marker={marker}&to=all", live[0].cookie
        )
        if status != 204:
            raise RuntimeError(f"broadcast answered {status}")
        got = await collector.wait(marker, len(live), 30 + total / 200)
        if k == 0:
            continue
        these = [r.received - r.sent for r in got]
        delays += these
        if these:
            slowest.append(max(these))
        reached.append(len(got))
        await asyncio.sleep(0.5)
    result.update(
        live=len(live),
        broadcast_reached=reached,
        broadcast_p50_ms=ms(percentile(delays, 0.5)),
        broadcast_p99_ms=ms(percentile(delays, 0.99)),
        broadcast_max_ms=ms(max(slowest)) if slowest else None,
        broadcast_max_each_ms=[ms(v) for v in slowest],
    )
    await asyncio.gather(*(s.close() for s in streams))
    return result


def _streams(figures: list[dict[str, Any]]) -> str:
    return " / ".join(str(f["streams"]) for f in figures)


def table(runs: dict[str, dict[str, Any]]) -> str:
    """A Markdown table, one column per run (baseline, scale-out)."""
    rows = [
        ("pages", lambda r: r["pages"]),
        ("streams open", lambda r: r["opened"]),
        ("connects per second", lambda r: r["connect_rate"]),
        ("connect errors", lambda r: sum(r["connect_errors"].values())),
        ("streams per process", lambda r: _streams(r["open"])),
        (
            "RSS per process (MB)",
            lambda r: " / ".join(str(f["rss_mb"]) for f in r["open"]),
        ),
        (
            "threads per process",
            lambda r: " / ".join(str(f["threads"]) for f in r["open"]),
        ),
        (
            "one session sends (lost)",
            lambda r: f"{r['session_sends']} ({r['session_lost']})",
        ),
        ("one session p50 (ms)", lambda r: r["session_p50_ms"]),
        ("one session p99 (ms)", lambda r: r["session_p99_ms"]),
        ("broadcast reached", lambda r: "/".join(map(str, r["broadcast_reached"]))),
        ("broadcast p50 (ms)", lambda r: r["broadcast_p50_ms"]),
        ("broadcast p99 (ms)", lambda r: r["broadcast_p99_ms"]),
        ("broadcast all reached, max (ms)", lambda r: r["broadcast_max_ms"]),
    ]
    names = list(runs)
    lines = [
        "| measure | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label, get in rows:
        cells = []
        for name in names:
            try:
                cells.append(str(get(runs[name])))
            except (KeyError, TypeError):
                cells.append("n/a")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_scale_out(
    processes: int, per_process: int, sends: int, baseline: bool, out: str
) -> int:
    """Run the scale-out measurement; return the exit status."""
    total = processes * per_process
    try:
        raise_file_limit(2 * total)
    except SystemExit as exc:
        print(f"scale-out: not available: {exc}", flush=True)
        return 2
    if nginx_binary() is None:
        print("scale-out: not available: nginx is not installed", flush=True)
        return 2
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "transport": "postgres",
        "backlog": BACKLOG,
        "runs": {},
    }
    extra = {"NOTIFICATIONS_TRANSPORT": "postgres"}
    database = ProductDatabase()
    status = 0
    try:
        try:
            database.create(total)
        except Exception as exc:
            print(f"scale-out: not available: database: {exc}", flush=True)
            return 2
        if baseline:
            target = start_target("product", database, extra=extra)
            try:
                report["runs"][f"1 process, direct, N={per_process}"] = asyncio.run(
                    measure(
                        [target],
                        target.server.port,
                        database.cookies[:per_process],
                        sends,
                    )
                )
            finally:
                target.server.stop()
            print(json.dumps(report["runs"]), flush=True)
        targets: list[Target] = []
        nginx = None
        name = f"{processes} processes + nginx, N={total}"
        try:
            targets = [
                start_target("product", database, extra=extra) for _ in range(processes)
            ]
            nginx = Nginx([t.server.port for t in targets], total)
            report["runs"][name] = asyncio.run(
                measure(targets, nginx.port, database.cookies, sends)
            )
            report["nginx_errors"] = nginx.errors()
            report["nginx_dir"] = str(nginx.dir)
        except Unavailable as exc:
            print(f"scale-out: not available: {exc}", flush=True)
            status = 2
        finally:
            if nginx is not None:
                nginx.stop()
            for target in targets:
                target.server.stop()
    finally:
        database.drop()
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if report["runs"]:
        print(table(report["runs"]), flush=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")
    return status
