"""Two Daphne instances on one PostgreSQL, woken by LISTEN/NOTIFY or by Redis.

Pages connect to one instance while the news comes from the other instance,
its admin, `manage.py notify`, a shell or the task worker: every sender is a
separate process.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import httpx
from django.test import SimpleTestCase

from .processes import (
    STAFF_PASSWORD,
    STAFF_USERNAME,
    ClonedPostgresDatabase,
    ManageProcess,
    RedisServer,
    db_worker,
    messages_until,
    redis_server_available,
)
from .utils import (
    DaphneServer,
    SSEStream,
    Visitor,
    requires_postgres,
    run_manage,
    session_token,
    skip_unless_service,
)

requires_redis_server = skip_unless_service(
    redis_server_available(), "redis-server is not installed"
)

LARGE_MESSAGE = ("Grüße, 世界 ✓ 𝄞 " * 200)[:2000]


def listen_on(visitor: Visitor, server: DaphneServer) -> SSEStream:
    """Open the visitor's stream on another instance, as a load balancer might."""
    client = httpx.Client(base_url=server.url, cookies=visitor.client.cookies)
    stream = SSEStream(client, "/notifications/")
    visitor.streams.append(stream)
    stream.next("stream-open")
    return stream


class InstancesMixin:
    """The tests every cross-process transport must pass; subclasses set it up."""

    transport = ""

    @classmethod
    def start_instances(cls, extra_env: dict[str, str]) -> None:
        cls.database = ClonedPostgresDatabase("i4").create()
        cls.env = {
            "DATABASE_URL": cls.database.url,
            "NOTIFICATIONS_TRANSPORT": cls.transport,
            **extra_env,
        }
        cls.a = DaphneServer(env=cls.env).start()
        cls.b = DaphneServer(env=cls.env).start()

    @classmethod
    def stop_instances(cls) -> None:
        for name in ("a", "b"):
            if hasattr(cls, name):
                getattr(cls, name).stop()
        cls.database.drop()

    def manage(self, *args: str, check: bool = True):
        return run_manage(*args, env=self.env, check=check)

    def visitor(self, server: DaphneServer) -> Visitor:
        visitor = Visitor(server.url)
        self.addCleanup(visitor.close)
        visitor.open_page()
        return visitor

    def test_notify_command_reaches_both_instances_within_half_a_second(self):
        on_a = self.visitor(self.a).listen()
        on_b = self.visitor(self.b).listen()
        on_a.next("stream-open")
        on_b.next("stream-open")

        self.manage("notify", "--broadcast", "--level", "warning", "Deploy at noon")

        for stream in (on_a, on_b):
            data = stream.next("notification", timeout=0.5).json()
            self.assertEqual(
                (data["message"], data["type"]), ("Deploy at noon", "warning")
            )

    def test_button_on_one_instance_reaches_the_stream_on_the_other_both_ways(self):
        for page_server, stream_server in ((self.a, self.b), (self.b, self.a)):
            with self.subTest(page=page_server.port, stream=stream_server.port):
                visitor = self.visitor(page_server)
                stream = listen_on(visitor, stream_server)
                other = self.visitor(stream_server).listen()
                other.next("stream-open")

                self.assertEqual(visitor.press_button().status_code, 204)

                data = stream.next("notification", timeout=0.5).json()
                self.assertEqual(data["message"], "You pressed the button")
                self.assertEqual(other.collect(wait=0.3), [])

    def test_admin_on_one_instance_reaches_pages_on_the_other(self):
        staff = Visitor(self.a.url)
        self.addCleanup(staff.close)
        staff.login(STAFF_USERNAME, STAFF_PASSWORD)
        target = self.visitor(self.b)
        stream = target.listen()
        stream.next("stream-open")
        staff.client.get("/admin/notifications/notification/add/")

        response = staff.post(
            "/admin/notifications/notification/add/",
            data={
                "audience": "broadcast",
                "level": "info",
                "event_type": "notification",
                "message": "From the admin of A",
                "csrfmiddlewaretoken": staff.csrf_token,
            },
            csrf=False,
        )

        self.assertEqual(response.status_code, 302, response.text[:1000])
        data = stream.next("notification", timeout=0.5).json()
        self.assertEqual(data["message"], "From the admin of A")

    def test_rolled_back_send_is_never_delivered_on_any_instance(self):
        on_a = self.visitor(self.a).listen()
        on_b = self.visitor(self.b).listen()
        on_a.next("stream-open")
        on_b.next("stream-open")
        code = (
            "from django.db import transaction\n"
            "from notifications.services import notification_send\n"
            "try:\n"
            "    with transaction.atomic():\n"
            "        notification_send(broadcast=True, message='rolled back')\n"
            "        raise RuntimeError\n"
            "except RuntimeError:\n"
            "    pass\n"
            "notification_send(broadcast=True, message='committed')\n"
        )

        self.manage("shell", "-c", code)

        for stream in (on_a, on_b):
            self.assertEqual(messages_until(stream, "committed", 2), ["committed"])

    def test_largest_multibyte_message_crosses_instances_intact(self):
        visitor = self.visitor(self.a)
        stream = listen_on(visitor, self.b)
        self.assertEqual(len(LARGE_MESSAGE), 2000)

        self.manage("notify", "--session", session_token(visitor), LARGE_MESSAGE)

        self.assertEqual(
            stream.next("notification", timeout=0.5).json()["message"], LARGE_MESSAGE
        )

    def test_report_job_in_the_worker_reaches_the_page_on_the_other_instance(self):
        visitor = self.visitor(self.a)
        stream = listen_on(visitor, self.b)
        worker = db_worker(env=self.env)
        self.addCleanup(worker.stop)

        response = visitor.post("/report/", headers={"X-Requested-With": "fetch"})

        self.assertEqual(response.status_code, 204)
        percents = []
        while not percents or percents[-1] < 100:
            percents.append(
                stream.next("progress", timeout=15).json()["data"]["percent"]
            )
        done = stream.next("notification", timeout=5).json()
        self.assertEqual(done["type"], "success")
        self.assertEqual(percents, sorted(percents))

    def drop_listener_connection(self) -> None:
        raise NotImplementedError

    def test_listener_drop_while_sending_loses_and_repeats_nothing(self):
        on_a = self.visitor(self.a).listen()
        on_b = self.visitor(self.b).listen()
        on_a.next("stream-open")
        on_b.next("stream-open")
        code = (
            "import time\n"
            "from notifications.services import notification_send\n"
            "for i in range(40):\n"
            "    notification_send(broadcast=True, message=f'drop {i}')\n"
            "    time.sleep(0.05)\n"
        )
        sender = ManageProcess("shell", "-c", code, env=self.env).start()
        self.addCleanup(sender.stop)
        on_b.next("notification", timeout=10)

        self.drop_listener_connection()

        self.assertEqual(sender.wait(timeout=60), 0, sender.log())
        expected = [f"drop {i}" for i in range(1, 40)]
        self.assertEqual(messages_until(on_b, "drop 39", 20), expected)
        self.assertEqual(messages_until(on_a, "drop 39", 20), ["drop 0", *expected])
        deadline = time.monotonic() + 10
        while "reconnected" not in self.a.log() + self.b.log():
            self.assertLess(time.monotonic(), deadline, "no reconnect was logged")
            time.sleep(0.1)
        self.assertIn("WARNING notifications.listener", self.b.log())


@requires_postgres
class PostgresInstancesTests(InstancesMixin, SimpleTestCase):
    transport = "postgres"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.start_instances({})

    @classmethod
    def tearDownClass(cls):
        cls.stop_instances()
        super().tearDownClass()

    def drop_listener_connection(self):
        with self.database.connect() as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'notifysite-listener' AND datname = %s",
                [self.database.name],
            ).fetchall()
        self.assertEqual(len(killed), 2)


@requires_postgres
@requires_redis_server
class RedisInstancesTests(InstancesMixin, SimpleTestCase):
    transport = "redis"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.redis = RedisServer().start()
        cls.start_instances({"REDIS_URL": cls.redis.url})

    @classmethod
    def tearDownClass(cls):
        cls.stop_instances()
        cls.redis.stop()
        super().tearDownClass()

    def drop_listener_connection(self):
        self.redis.restart()


@requires_postgres
class PostgresPollingTests(SimpleTestCase):
    """The `database` transport on PostgreSQL, where ids can commit out of order."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.database = ClonedPostgresDatabase("i4poll").create()
        cls.env = {
            "DATABASE_URL": cls.database.url,
            "NOTIFICATIONS_TRANSPORT": "database",
            "NOTIFICATIONS_POLL_INTERVAL": "0.2",
        }
        cls.server = DaphneServer(env=cls.env).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.database.drop()
        super().tearDownClass()

    def test_row_committed_after_a_higher_id_is_still_delivered(self):
        visitor = Visitor(self.server.url)
        self.addCleanup(visitor.close)
        visitor.open_page()
        stream = visitor.listen()
        stream.next("stream-open")
        flag = Path(tempfile.mkdtemp()) / "inserted"
        self.addCleanup(shutil.rmtree, flag.parent)
        code = (
            "import time\n"
            "from pathlib import Path\n"
            "from django.db import transaction\n"
            "from notifications.models import Visitor\n"
            "from notifications.services import notification_send\n"
            "with transaction.atomic():\n"
            f"    visitor = Visitor.objects.get(token='{session_token(visitor)}')\n"
            "    notification_send(visitor=visitor, message='late')\n"
            f"    Path('{flag}').write_text('x')\n"
            # Commit only once the test has sent (and committed) a higher id.
            "    for _ in range(400):\n"
            f"        if Path('{flag}.go').exists():\n"
            "            break\n"
            "        time.sleep(0.05)\n"
        )
        slow = ManageProcess("shell", "-c", code, env=self.env).start()
        self.addCleanup(slow.stop)
        deadline = time.monotonic() + 20
        while not flag.exists():
            self.assertLess(time.monotonic(), deadline, slow.log())
            time.sleep(0.05)

        run_manage("notify", "--broadcast", "early", env=self.env)
        early = stream.next("notification", timeout=2).json()
        Path(f"{flag}.go").write_text("x")

        self.assertEqual(slow.wait(timeout=20), 0, slow.log())
        late = stream.next("notification", timeout=2).json()
        self.assertEqual((early["message"], late["message"]), ("early", "late"))
        # The late row took its id first but committed second.
        self.assertLess(late["id"], early["id"])
        self.assertEqual(stream.collect(wait=0.5), [])
