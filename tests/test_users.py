"""Users across sessions: per-user delivery, login and logout, on a live server."""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import TransactionTestCase
from django.utils.module_loading import import_string

from notifications.models import Notification
from notifications.models import Visitor as VisitorRow
from notifications.services import notification_send

from .utils import DaphneServer, Visitor, session_token


class LiveUsersTestCase(TransactionTestCase):
    """A server of its own, users carol and dave, and browsers signed in as them."""

    def setUp(self):
        # One server per test: the admin caches content type ids in the server
        # process, and the flush between tests gives them new ids.
        self.server = DaphneServer().start()
        self.addCleanup(self.server.stop)
        User = get_user_model()
        self.carol = User.objects.create_user("carol", password="pw-carol-123")
        User.objects.create_user("dave", password="pw-dave-123")

    def browser(self, username=None):
        visitor = Visitor(self.server.url)
        self.addCleanup(visitor.close)
        visitor.open_page()
        if username:
            visitor.login(username, f"pw-{username}-123")
            visitor.open_page()
        return visitor


class LiveUserTests(LiveUsersTestCase):
    def setUp(self):
        super().setUp()
        get_user_model().objects.create_superuser(
            "staff", "staff@example.com", "pw-staff-123"
        )

    def admin_send(self, staff, **fields):
        staff.client.get("/admin/notifications/notification/add/")
        data = {"level": "info", "event_type": "notification", **fields}
        data["csrfmiddlewaretoken"] = staff.csrf_token
        response = staff.post(
            "/admin/notifications/notification/add/", data=data, csrf=False
        )
        self.assertEqual(response.status_code, 302, response.text[:3000])

    def test_user_notification_reaches_every_session_of_that_user_only(self):
        laptop, phone, other, anonymous = (
            self.browser("carol"),
            self.browser("carol"),
            self.browser("dave"),
            self.browser(),
        )
        staff = self.browser("staff")
        streams = [b.listen() for b in (laptop, phone, other, anonymous)]
        for stream in streams:
            stream.next("stream-open")

        self.admin_send(staff, audience="user", user=self.carol.pk, message="Hi Carol")

        for stream in streams[:2]:
            data = stream.next("notification").json()
            self.assertEqual((data["message"], data["audience"]), ("Hi Carol", "user"))
        for stream in streams[2:]:
            self.assertEqual(stream.collect(wait=1.0), [])
        self.assertEqual(Notification.objects.filter(user=self.carol).count(), 1)

    def test_marking_read_on_one_device_updates_the_others_live(self):
        from notifications.services import notification_send

        laptop, phone = self.browser("carol"), self.browser("carol")
        phone_stream = phone.listen()
        phone_stream.next("stream-open")
        notification = notification_send(user=self.carol, message="Read me once")
        self.assertEqual(
            phone_stream.next("notification", timeout=3).json()["id"], notification.pk
        )

        response = laptop.post(
            f"/notifications/{notification.pk}/read/",
            headers={"X-Requested-With": "fetch"},
        )

        self.assertEqual(response.status_code, 200)
        event = phone_stream.next("notification-read", timeout=3).json()
        self.assertEqual(event["data"], {"ids": [notification.pk], "complete": True})
        unread = phone.client.get("/notifications/unread/").json()
        self.assertNotIn(notification.pk, [n["id"] for n in unread["notifications"]])

    def test_login_keeps_the_session_notifications_and_inbox(self):
        browser = self.browser()
        browser.press_button()
        token_before = VisitorRow.objects.get().token
        key_before = browser.session_key

        browser.login("carol", "pw-carol-123")
        page = browser.open_page()

        self.assertNotEqual(browser.session_key, key_before)
        self.assertEqual(VisitorRow.objects.get(token=token_before).user, self.carol)
        self.assertIn("You pressed the button", page)
        self.assertIn(f"user-{self.carol.pk}:", browser.last_event_id())
        self.assertIn(f"session-{token_before}:", browser.last_event_id())

    def test_logout_closes_the_session_streams_within_a_second(self):
        browser = self.browser("carol")
        stream = browser.listen()
        stream.next("stream-open")
        old_cookies = dict(browser.client.cookies)

        started = time.monotonic()
        response = browser.post("/accounts/logout/")
        event = stream.next("session-changed", timeout=1.0)
        stream._thread.join(timeout=1.0)
        elapsed = time.monotonic() - started

        self.assertEqual(response.status_code, 302)
        self.assertEqual(event.json()["data"], {"reason": "logout"})
        self.assertFalse(
            stream._thread.is_alive(), "the stream stayed open after logout"
        )
        self.assertLess(elapsed, 2.0)
        # Reconnecting with the old cookie finds no session and no user channel.
        stale = Visitor(self.server.url)
        self.addCleanup(stale.close)
        stale.client.cookies.update(old_cookies)
        retry = stale.listen()
        self.assertEqual(retry.next("stream-error").json()["condition"], "no-session")
        self.assertNotIn(f"user-{self.carol.pk}", bytes(retry.raw).decode())
        self.assertIn("retry: 15000", bytes(retry.raw).decode())

    def test_login_ends_the_anonymous_stream_so_it_reconnects_with_the_user(self):
        browser = self.browser()
        stream = browser.listen()
        stream.next("stream-open")

        browser.login("carol", "pw-carol-123")

        self.assertEqual(
            stream.next("session-changed").json()["data"], {"reason": "login"}
        )
        stream._thread.join(timeout=1.0)
        self.assertFalse(stream._thread.is_alive())
        fresh = browser.listen()
        fresh.next("stream-open")
        self.admin_send(
            self.browser("staff"),
            audience="user",
            user=self.carol.pk,
            message="Welcome",
        )
        self.assertEqual(fresh.next("notification").json()["message"], "Welcome")

    def test_deleting_a_session_ends_its_open_streams(self):
        from django.contrib.sessions.models import Session
        from django.core.management import call_command
        from django.utils import timezone

        browser = self.browser()
        stream = browser.listen()
        stream.next("stream-open")
        Session.objects.filter(session_key=browser.session_key).update(
            expire_date=timezone.now() - timezone.timedelta(seconds=1)
        )

        call_command("clearsessions")

        # The server learns of it from this process through the transport.
        event = stream.next("session-changed", timeout=5)
        self.assertEqual(event.json()["data"], {"reason": "ended"})
        stream._thread.join(timeout=2.0)
        self.assertFalse(stream._thread.is_alive(), "the stream outlived its session")
        self.assertEqual(
            browser.listen().next("stream-error").json()["condition"], "no-session"
        )

    def test_reserved_event_types_cannot_be_sent(self):
        from django.core.exceptions import ValidationError

        from notifications.services import notification_send

        # "error" and "open" are EventSource's own: a page's handler for the
        # connection's errors would take such a notification for one.
        names = ["session-changed", "notification-read", "stream-reset", "message"]
        for name in [*names, "error", "open"]:
            with (
                self.subTest(event_type=name),
                self.assertRaises(ValidationError) as cm,
            ):
                notification_send(broadcast=True, message="x", event_type=name)
            self.assertEqual(cm.exception.code, "event_type_reserved")
        self.assertFalse(Notification.objects.filter(message="x").exists())

    def test_expired_session_gets_a_clear_error_and_no_stream(self):
        from django.contrib.sessions.models import Session
        from django.utils import timezone

        browser = self.browser()
        Session.objects.filter(session_key=browser.session_key).update(
            expire_date=timezone.now() - timezone.timedelta(seconds=1)
        )

        stream = browser.listen()

        self.assertEqual(stream.next("stream-error").json()["condition"], "no-session")


class SignInChangeTests(LiveUsersTestCase):
    """A user's streams end when the user leaves a session without its logout."""

    def open_stream(self, browser):
        stream = browser.listen()
        stream.next("stream-open")
        return stream

    def assert_ended(self, stream, reason):
        event = stream.next("session-changed", timeout=3)
        self.assertEqual(event.json()["data"], {"reason": reason})
        stream._thread.join(timeout=2.0)
        self.assertFalse(stream._thread.is_alive(), "the stream stayed open")

    def assert_no_carol(self, browser):
        # What the same cookies reconnect to: no longer carol's channel.
        retry = self.open_stream(browser)
        notification_send(user=self.carol, message="for carol only")
        self.assertEqual(retry.collect(wait=1.0), [])
        self.assertNotIn(f"user-{self.carol.pk}", bytes(retry.raw).decode())

    def test_signing_in_as_someone_else_over_a_session_ends_its_streams(self):
        browser = self.browser("carol")
        stream = self.open_stream(browser)

        # Django flushes a signed-in session when another user signs in on it.
        browser.login("dave", "pw-dave-123")

        self.assert_ended(stream, "ended")
        browser.open_page()
        self.assert_no_carol(browser)

    def test_a_new_password_ends_the_streams_of_the_users_other_sessions(self):
        laptop, phone = self.browser("carol"), self.browser("carol")
        laptop_stream, phone_stream = self.open_stream(laptop), self.open_stream(phone)

        laptop.client.get("/accounts/password_change/")
        response = laptop.post(
            "/accounts/password_change/",
            data={
                "old_password": "pw-carol-123",
                "new_password1": "a-new-pw-for-carol-42",
                "new_password2": "a-new-pw-for-carol-42",
            },
        )

        self.assertEqual(response.status_code, 302, response.text[:2000])
        self.assert_ended(phone_stream, "password-changed")
        self.assert_ended(laptop_stream, "password-changed")
        # The phone's session failed its hash check: it is nobody now. The
        # laptop, which changed the password, is still carol.
        phone.open_page()
        self.assert_no_carol(phone)
        laptop.open_page()
        self.assertIn(f"user-{self.carol.pk}:", laptop.last_event_id())

    def test_deactivating_or_deleting_the_user_ends_their_streams(self):
        for change, reason in [
            ("deactivate", "deactivated"),
            ("delete", "user-deleted"),
        ]:
            with self.subTest(change=change):
                browser = self.browser("carol")
                stream = self.open_stream(browser)

                if change == "deactivate":
                    self.carol.is_active = False
                    self.carol.save()
                else:
                    self.carol.delete()

                self.assert_ended(stream, reason)
                if change == "deactivate":
                    browser.open_page()
                    self.assert_no_carol(browser)
                    self.carol.is_active = True
                    self.carol.save()

    def test_nothing_sent_after_the_session_changed_event_reaches_the_page(self):
        browser = self.browser("carol")
        stream = self.open_stream(browser)

        # One commit: both reach the stream in the same batch.
        with transaction.atomic():
            self.carol.is_active = False
            self.carol.save()
            notification_send(user=self.carol, message="SECRET after deactivation")

        self.assert_ended(stream, "deactivated")
        self.assertNotIn(b"SECRET", bytes(stream.raw))

    def test_deleting_a_session_ends_its_streams_and_its_visitor(self):
        from django.contrib.sessions.models import Session

        SessionStore = import_string(f"{settings.SESSION_ENGINE}.SessionStore")
        ways = {
            "the session store": lambda key: SessionStore(key).delete(),
            "a queryset (the admin, a script)": lambda key: Session.objects.filter(
                session_key=key
            ).delete(),
        }
        for way, delete in ways.items():
            with self.subTest(way=way):
                browser = self.browser("carol")
                stream = self.open_stream(browser)
                token = session_token(browser)

                delete(browser.session_key)

                self.assert_ended(stream, "ended")
                self.assertFalse(VisitorRow.objects.filter(token=token).exists())

    def test_a_stream_ends_when_its_session_expires(self):
        from datetime import timedelta

        from django.contrib.sessions.models import Session
        from django.utils import timezone

        browser = self.browser("carol")
        Session.objects.filter(session_key=browser.session_key).update(
            expire_date=timezone.now() + timedelta(seconds=2)
        )
        stream = self.open_stream(browser)

        # Within the sweeper's two seconds after the expiry, without a word.
        stream._thread.join(timeout=8)
        self.assertFalse(stream._thread.is_alive(), "the stream outlived its session")
        self.assertEqual(stream.collect("session-changed", wait=0.1), [])
        # Reconnecting, the browser is told its session is gone.
        retry = browser.listen()
        self.assertEqual(retry.next("stream-error").json()["condition"], "no-session")

    def test_signing_in_elsewhere_or_other_saves_keep_the_streams(self):
        laptop = self.browser("carol")
        stream = self.open_stream(laptop)

        self.browser("carol")  # a login updates last_login
        self.carol.first_name = "Carol"
        self.carol.save()
        notification_send(user=self.carol, message="still here")

        self.assertEqual(
            stream.next("notification", timeout=3).json()["message"], "still here"
        )
        self.assertEqual(stream.collect("session-changed", wait=0.5), [])
