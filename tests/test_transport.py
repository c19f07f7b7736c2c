"""Cross-process delivery on SQLite: the `database` transport and the report job.

The Daphne child polls the shared test database; senders are other processes
(`manage.py notify`, `manage.py shell`, the task worker), never the server.
"""

from __future__ import annotations

from django.core.management import CommandError, call_command
from django.test import TransactionTestCase

from notifications.models import Notification

from .processes import db_worker, messages_until
from .utils import (
    DaphneServer,
    Visitor,
    current_database_url,
    run_manage,
    session_token,
)


def manage(*args: str, check: bool = True, **env: str):
    """Run `manage.py` as another process on the test database."""
    return run_manage(
        *args, env={"DATABASE_URL": current_database_url(), **env}, check=check
    )


class DatabaseTransportTests(TransactionTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = DaphneServer(env={"NOTIFICATIONS_TRANSPORT": "database"}).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        super().tearDownClass()

    def setUp(self):
        self.alice = Visitor(self.server.url)
        self.bob = Visitor(self.server.url)
        self.addCleanup(self.alice.close)
        self.addCleanup(self.bob.close)
        self.alice.open_page()
        self.bob.open_page()

    def test_notify_command_reaches_the_session_within_two_seconds(self):
        alice_stream = self.alice.listen()
        bob_stream = self.bob.listen()
        alice_stream.next("stream-open")
        bob_stream.next("stream-open")

        result = manage(
            "notify",
            "--session",
            session_token(self.alice),
            "--level",
            "success",
            "From the shell",
        )

        self.assertIn("Sent notification", result.stdout)
        data = alice_stream.next("notification", timeout=2).json()
        self.assertEqual((data["message"], data["type"]), ("From the shell", "success"))
        self.assertEqual(bob_stream.collect(wait=1.5), [])

    def test_burst_from_another_process_arrives_once_in_order(self):
        stream = self.alice.listen()
        stream.next("stream-open")
        code = (
            "from notifications.services import notification_send\n"
            "for i in range(25):\n"
            "    notification_send(broadcast=True, message=f'burst {i}')\n"
        )

        manage("shell", "-c", code)

        messages = messages_until(stream, "burst 24", timeout=3)
        self.assertEqual(messages, [f"burst {i}" for i in range(25)])

    def test_rolled_back_send_in_another_process_is_never_delivered(self):
        stream = self.alice.listen()
        stream.next("stream-open")
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

        manage("shell", "-c", code)

        self.assertEqual(messages_until(stream, "committed", timeout=3), ["committed"])
        self.assertFalse(Notification.objects.filter(message="rolled back").exists())

    def test_notify_command_refuses_unknown_targets_and_levels(self):
        cases = [
            (["--session", "0" * 32, "hi"], "No browser session has that token."),
            (["--user", "nobody", "hi"], "No user is named 'nobody'."),
            (["--broadcast", "--level", "loud", "hi"], "invalid choice: 'loud'"),
            (["hi"], "one of the arguments --broadcast --session --user is required"),
            (["--broadcast", "   "], "The message is empty."),
        ]
        for args, error in cases:
            with self.subTest(args=args), self.assertRaisesMessage(CommandError, error):
                call_command("notify", *args)

        result = manage("notify", "--user", "nobody", "hi", check=False)

        self.assertEqual(result.returncode, 1)
        self.assertIn("No user is named 'nobody'.", result.stderr)
        self.assertFalse(Notification.objects.exists())


class ReportJobTests(TransactionTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = DaphneServer().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        super().tearDownClass()

    def test_report_runs_in_the_worker_and_reports_progress_to_its_session(self):
        alice = Visitor(self.server.url)
        bob = Visitor(self.server.url)
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        alice.open_page()
        bob.open_page()
        self.assertIn('id="report-form"', alice.page)
        alice_stream = alice.listen()
        bob_stream = bob.listen()
        alice_stream.next("stream-open")
        bob_stream.next("stream-open")
        worker = db_worker()
        self.addCleanup(worker.stop)

        response = alice.post("/report/", headers={"X-Requested-With": "fetch"})

        self.assertEqual(response.status_code, 204)
        progress = []
        while not progress or progress[-1]["percent"] < 100:
            progress.append(alice_stream.next("progress", timeout=10).json()["data"])
        done = alice_stream.next("notification", timeout=5).json()
        self.assertEqual(done["type"], "success")
        self.assertIn("Your report is ready", done["message"])
        percents = [item["percent"] for item in progress]
        self.assertEqual(percents, sorted(percents))
        self.assertEqual((percents[0], percents[-1]), (0, 100))
        self.assertEqual({item["job"] for item in progress}, {done["data"]["job"]})
        self.assertEqual(bob_stream.collect("progress", wait=0.5), [])
        self.assertEqual(bob_stream.collect(wait=0.1), [])

    def test_report_form_post_without_script_redirects_and_needs_csrf(self):
        alice = Visitor(self.server.url)
        self.addCleanup(alice.close)
        alice.open_page()

        refused = alice.post("/report/", csrf=False)
        accepted = alice.post("/report/")

        self.assertEqual(refused.status_code, 403)
        self.assertEqual(
            (accepted.status_code, accepted.headers["location"]), (302, "/")
        )
        self.assertEqual(Notification.objects.filter(event_type="progress").count(), 1)


class ResumeAheadTests(TransactionTestCase):
    """A page rendered from the table can be ahead of its server's listener."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # A slow poll keeps the listener behind the table for the whole test.
        cls.server = DaphneServer(
            env={
                "NOTIFICATIONS_TRANSPORT": "database",
                "NOTIFICATIONS_POLL_INTERVAL": "30",
            }
        ).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        super().tearDownClass()

    def test_stream_resuming_past_the_listener_neither_resets_nor_repeats(self):
        visitor = Visitor(self.server.url)
        self.addCleanup(visitor.close)
        visitor.open_page()
        first_stream = visitor.listen()
        first_stream.next("stream-open")
        manage("notify", "--session", session_token(visitor), "From the shell")
        visitor.open_page()
        self.assertIn(":1", visitor.last_event_id())

        stream = visitor.listen(f"?lastEventId={visitor.last_event_id()}")
        stream.next("stream-open")
        visitor.press_button()

        events = stream.collect("notification", wait=1.0)
        self.assertEqual(
            [e.json()["message"] for e in events], ["You pressed the button"]
        )
        self.assertNotIn(b"stream-reset", bytes(stream.raw))
        self.assertEqual(
            [e.json()["message"] for e in first_stream.collect(wait=0.2)],
            ["From the shell", "You pressed the button"],
        )
