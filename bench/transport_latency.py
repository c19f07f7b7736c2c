"""Measure commit-to-page latency of each cross-process transport.

Starts Daphne on a PostgreSQL database of its own (and a private Redis for the
`redis` transport), opens one stream, and sends notifications from a separate
process, each carrying its commit time; prints percentiles of the delay until
the stream receives it. Run from the repository root:

    python bench/transport_latency.py [count]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifysite.settings")

import django

django.setup()

from tests.processes import ManageProcess, RedisServer  # noqa: E402
from tests.utils import DaphneServer, PostgresDatabase, Visitor  # noqa: E402

SENDER = (
    "import time\n"
    "from django.db import transaction\n"
    "from notifications.services import notification_send\n"
    "for i in range({count}):\n"
    "    with transaction.atomic():\n"
    "        notification_send(broadcast=True, message=f'bench {{i}}')\n"
    "    # the time just after commit, read back from the message's order\n"
    "    print(i, time.time(), flush=True)\n"
    "    time.sleep(0.02)\n"
)


def measure(transport: str, count: int) -> list[float]:
    database = PostgresDatabase("bench4").create()
    redis = RedisServer().start() if transport == "redis" else None
    env = {"DATABASE_URL": database.url, "NOTIFICATIONS_TRANSPORT": transport}
    if redis:
        env["REDIS_URL"] = redis.url
    server = DaphneServer(env=env).start()
    visitor = Visitor(server.url)
    try:
        visitor.open_page()
        stream = visitor.listen()
        stream.next("stream-open")
        arrivals: dict[str, float] = {}
        sender = ManageProcess("shell", "-c", SENDER.format(count=count), env=env)
        sender.start()
        deadline = time.monotonic() + 60
        while len(arrivals) < count and time.monotonic() < deadline:
            event = stream.next("notification", timeout=10)
            arrivals[event.json()["message"]] = time.time()
        sender.wait(timeout=60)
        sender.stop()
        committed = {}
        for line in sender.log().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                committed[f"bench {parts[0]}"] = float(parts[1])
        return [arrivals[m] - committed[m] for m in committed if m in arrivals]
    finally:
        visitor.close()
        server.stop()
        if redis:
            redis.stop()
        database.drop()


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for transport in ("postgres", "redis", "database"):
        delays = sorted(d * 1000 for d in measure(transport, count))
        print(
            f"{transport:9} n={len(delays)} "
            f"p50={statistics.median(delays):.1f} ms "
            f"p95={delays[int(len(delays) * 0.95) - 1]:.1f} ms "
            f"max={delays[-1]:.1f} ms"
        )


if __name__ == "__main__":
    main()
