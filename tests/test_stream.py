"""The product end to end: a real Daphne server, real HTTP clients, the real stream."""

from __future__ import annotations

import contextlib
import socket
import time

from django.contrib.auth import get_user_model
from django.test import TransactionTestCase

from notifications.models import Notification
from notifications.models import Visitor as VisitorRow
from notifications.services import notification_send

from .utils import DaphneServer, Visitor, session_token


class LiveStreamTests(TransactionTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = DaphneServer().start()

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

    def test_stream_headers_disable_caching_and_proxy_buffering(self):
        stream = self.alice.listen()

        self.assertEqual(stream.status_code, 200)
        headers = stream.response_headers
        self.assertEqual(headers["content-type"].split(";")[0], "text/event-stream")
        self.assertEqual(headers["cache-control"], "no-cache")
        self.assertEqual(headers["x-accel-buffering"], "no")
        self.assertNotIn("content-encoding", headers)
        self.assertNotIn("access-control-allow-origin", headers)

    def test_button_notifies_the_presser_only(self):
        alice_stream = self.alice.listen()
        bob_stream = self.bob.listen()
        alice_stream.next("stream-open")
        bob_stream.next("stream-open")

        response = self.alice.press_button()

        self.assertEqual(response.status_code, 204)
        event = alice_stream.next("notification", timeout=2)
        data = event.json()
        self.assertEqual(data["type"], "info")
        self.assertEqual(data["message"], "You pressed the button")
        self.assertEqual(data["audience"], "session")
        self.assertEqual(data["id"], Notification.objects.get().pk)
        self.assertIn("created", data)
        self.assertRegex(event.id, r"session-[0-9a-f]{32}:1")
        self.assertEqual(alice_stream.collect(wait=1.0), [])
        self.assertEqual(bob_stream.collect(wait=0.5), [])

    def test_post_without_csrf_token_is_refused_and_sends_nothing(self):
        stream = self.alice.listen()
        stream.next("stream-open")

        response = self.alice.press_button(csrf=False)

        self.assertEqual(response.status_code, 403)
        self.assertEqual(stream.collect(wait=1.0), [])
        self.assertFalse(Notification.objects.exists())

    def test_button_get_is_not_allowed(self):
        response = self.alice.client.get("/button-pressed/")

        self.assertEqual(response.status_code, 405)
        self.assertFalse(Notification.objects.exists())

    def test_query_parameters_cannot_choose_channels(self):
        self.alice.press_button()
        alice_token = session_token(self.alice)
        bob_stream = self.bob.listen(
            f"?channel=session-{alice_token}&channels=session-{alice_token}"
        )
        bob_stream.next("stream-open")

        self.alice.press_button()

        self.assertEqual(bob_stream.collect(wait=1.0), [])
        self.assertNotIn(alice_token, bytes(bob_stream.raw).decode())

    def test_multi_line_message_arrives_intact_as_one_event(self):
        from notifications.models import Visitor as VisitorRow
        from notifications.services import notification_send

        token = session_token(self.alice)
        message = "first line\nsecond line\r\nthird\rfourth\n\ndata: not a field"
        notification_send(message=message, visitor=VisitorRow.objects.get(token=token))

        # Resuming from the rendered position replays the row from the table.
        stream = self.alice.listen(f"?lastEventId={self.alice.last_event_id()}")

        events = [stream.next("notification")] + stream.collect(wait=0.5)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0].json()["message"], message)

    def test_stream_without_session_gets_a_clear_error(self):
        stranger = Visitor(self.server.url)
        self.addCleanup(stranger.close)

        stream = stranger.listen()

        error = stream.next("stream-error").json()
        self.assertEqual(error["condition"], "no-session")

    def test_signed_es_meta_parameter_cannot_override_channels(self):
        import jwt
        from django.conf import settings

        user = get_user_model().objects.create_user("victim")
        forged = jwt.encode(
            {
                "iss": "es",
                "exp": 9999999999,
                "channels": [f"user-{user.pk}"],
                "user": user.pk,
            },
            settings.SECRET_KEY.encode(),
        )
        stream = self.bob.listen(f"?es-meta={forged}")
        stream.next("stream-open")

        from notifications.services import notification_send

        notification_send(message="private", user=user)
        self.bob.press_button()

        self.assertEqual(
            stream.next("notification").json()["message"], "You pressed the button"
        )
        self.assertNotIn(f"user-{user.pk}", bytes(stream.raw).decode())


class LiveAdminTests(TransactionTestCase):
    """Staff sending from the admin of a live server.

    Each test gets its own server: the admin caches content type ids in the
    server process, and the flush between tests gives them new ids.
    """

    def setUp(self):
        self.server = DaphneServer().start()
        self.addCleanup(self.server.stop)
        self.alice = Visitor(self.server.url)
        self.bob = Visitor(self.server.url)
        self.addCleanup(self.alice.close)
        self.addCleanup(self.bob.close)
        self.alice.open_page()
        self.bob.open_page()

    def test_admin_broadcast_reaches_every_page_and_never_the_session_key(self):
        get_user_model().objects.create_superuser(
            "admin", "admin@example.com", "pw-for-tests"
        )
        staff = Visitor(self.server.url)
        self.addCleanup(staff.close)
        staff.login("admin", "pw-for-tests")
        alice_stream = self.alice.listen()
        bob_stream = self.bob.listen()
        alice_stream.next("stream-open")
        bob_stream.next("stream-open")
        staff.client.get("/admin/notifications/notification/add/")

        response = staff.post(
            "/admin/notifications/notification/add/",
            data={
                "audience": "broadcast",
                "level": "warning",
                "event_type": "notification",
                "message": "Maintenance at <b>noon</b>",
                "csrfmiddlewaretoken": staff.csrf_token,
            },
            csrf=False,
        )

        self.assertEqual(response.status_code, 302, response.text[:2000])
        for stream in (alice_stream, bob_stream):
            data = stream.next("notification", timeout=2).json()
            self.assertEqual(data["type"], "warning")
            self.assertEqual(data["message"], "Maintenance at <b>noon</b>")
            self.assertEqual(data["audience"], "broadcast")
        for visitor in (self.alice, self.bob):
            raw = bytes(visitor.streams[0].raw).decode()
            self.assertNotIn(visitor.session_key, raw)
            self.assertNotIn(visitor.session_key, visitor.page)

    def test_admin_sends_to_one_session_only(self):
        get_user_model().objects.create_superuser(
            "admin", "admin@example.com", "pw-for-tests"
        )
        staff = Visitor(self.server.url)
        self.addCleanup(staff.close)
        staff.login("admin", "pw-for-tests")
        alice_stream = self.alice.listen()
        bob_stream = self.bob.listen()
        alice_stream.next("stream-open")
        bob_stream.next("stream-open")
        token = session_token(self.bob)
        from notifications.models import Visitor as VisitorRow

        bob_row = VisitorRow.objects.get(token=token)
        staff.client.get("/admin/notifications/notification/add/")

        response = staff.post(
            "/admin/notifications/notification/add/",
            data={
                "audience": "session",
                "visitor": bob_row.pk,
                "level": "success",
                "event_type": "notification",
                "message": "Just for Bob",
                "csrfmiddlewaretoken": staff.csrf_token,
            },
            csrf=False,
        )

        self.assertEqual(response.status_code, 302, response.text[:2000])
        self.assertEqual(
            bob_stream.next("notification").json()["message"], "Just for Bob"
        )
        self.assertEqual(alice_stream.collect(wait=1.0), [])


class DeadDatabaseStreamTests(TransactionTestCase):
    """A stream whose database cannot be reached fails at once, and clearly."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = DaphneServer(
            env={"DATABASE_URL": "sqlite:////nonexistent-notifysite-dir/db.sqlite3"}
        ).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        super().tearDownClass()

    def test_each_stream_gets_a_server_error_and_the_server_goes_on(self):
        import httpx

        for _ in range(2):
            response = httpx.get(
                f"{self.server.url}/notifications/",
                cookies={"sessionid": "a" * 32},
                timeout=10,
            )
            self.assertEqual(response.status_code, 500)
        self.assertIn("unable to open database file", self.server.log())
        self.assertIsNone(self.server.process.poll())


class StalledPageTests(TransactionTestCase):
    """A page that stops reading is dropped, not buffered for without end."""

    def test_a_page_that_reads_nothing_is_dropped_and_others_stay(self):
        server = DaphneServer(env={"NOTIFICATIONS_STREAM_STALL_SECONDS": "1"}).start()
        self.addCleanup(server.stop)
        flooded, other = Visitor(server.url), Visitor(server.url)
        for browser in (flooded, other):
            self.addCleanup(browser.close)
            browser.open_page()
        other_stream = other.listen()
        other_stream.next("stream-open")
        # The flooded session's page, on a socket with a small receive buffer
        # that the client never reads.
        stalled = socket.socket()
        self.addCleanup(stalled.close)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", server.port))
        cookies = "; ".join(f"{k}={v}" for k, v in flooded.client.cookies.items())
        stalled.sendall(
            f"GET /notifications/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Cookie: {cookies}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        time.sleep(0.5)

        # About 7 MB: more than the kernel buffers of a loopback socket hold
        # (4 MB at most here), so the rest would wait in the server's memory.
        visitor = VisitorRow.objects.get(token=session_token(flooded))
        for index in range(1000):
            notification_send(
                visitor=visitor, message=f"big {index}", payload={"pad": "x" * 7000}
            )

        deadline = time.monotonic() + 30
        while "dropping its connection" not in server.log():
            self.assertLess(time.monotonic(), deadline, "the stalled page stayed")
            time.sleep(0.2)
        # The client finds its connection gone once it reads again.
        stalled.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while stalled.recv(1 << 20):
                pass
        # Only that page went: another session's page still gets its events.
        notification_send(
            visitor=VisitorRow.objects.get(token=session_token(other)),
            message="still here",
        )
        self.assertEqual(other_stream.next(timeout=5).json()["message"], "still here")
        self.assertEqual(server.log().count("dropping its connection"), 1)
