"""Retention: expired notifications are trimmed in bulk; ended sessions leave nothing."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client, TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.conf import conf
from notifications.models import (
    BroadcastReceipt,
    ChannelSequence,
    Notification,
    Visitor,
)
from notifications.selectors import SESSION_TOKEN_KEY
from notifications.services import notification_send, notifications_trim


class TrimTests(TestCase):
    def setUp(self):
        self.visitor = Visitor.objects.create()
        self.now = timezone.now()

    def send(self, message, *, age_days=0, read_days_ago=None, **audience):
        audience = audience or {"visitor": self.visitor}
        notification = notification_send(message=message, **audience)
        Notification.objects.filter(pk=notification.pk).update(
            created_at=self.now - timedelta(days=age_days),
            read_at=(
                None
                if read_days_ago is None
                else self.now - timedelta(days=read_days_ago)
            ),
        )
        return notification

    def remaining(self):
        return set(Notification.objects.values_list("message", flat=True))

    def test_old_and_long_read_rows_go_recent_ones_stay(self):
        self.send("old unread", age_days=31)
        self.send("read long ago", age_days=10, read_days_ago=8)
        self.send("read lately", age_days=10, read_days_ago=6)
        self.send("recent unread", age_days=29)
        old_broadcast = self.send("old broadcast", age_days=40, broadcast=True)
        BroadcastReceipt.objects.create(
            notification=old_broadcast, visitor=self.visitor
        )

        deleted = notifications_trim(now=self.now)

        self.assertEqual(deleted, 3)
        self.assertEqual(self.remaining(), {"read lately", "recent unread"})
        self.assertFalse(BroadcastReceipt.objects.exists())

    @override_settings(
        NOTIFICATIONS_RETENTION_DAYS=2, NOTIFICATIONS_READ_RETENTION_DAYS=1
    )
    def test_periods_follow_the_settings(self):
        self.send("three days old", age_days=3)
        self.send("read two days ago", age_days=2, read_days_ago=2)
        self.send("yesterday", age_days=1)

        notifications_trim(now=self.now)

        self.assertEqual(self.remaining(), {"yesterday"})

    def test_trim_runs_a_fixed_number_of_statements_per_batch(self):
        def statements(count):
            for i in range(count):
                self.send(f"old {i}", age_days=40)
            with CaptureQueriesContext(connection) as queries:
                notifications_trim(now=self.now, batch_size=1000)
            return len(queries)

        few, many = statements(3), statements(300)

        self.assertEqual(few, many)
        self.assertLessEqual(many, 8)  # with one for ended channels' counters
        self.assertEqual(Notification.objects.count(), 0)

    def test_batches_cover_everything(self):
        for i in range(7):
            self.send(f"old {i}", age_days=40)

        self.assertEqual(notifications_trim(now=self.now, batch_size=3), 7)
        self.assertFalse(Notification.objects.exists())

    def test_command_reports_and_refuses_a_bad_batch_size(self):
        self.send("old", age_days=40)
        out = StringIO()

        call_command("notifications_trim", stdout=out)

        self.assertIn("Deleted 1 notifications", out.getvalue())
        with self.assertRaises(CommandError):
            call_command("notifications_trim", "--batch-size", "0")


class EndedSessionTests(TestCase):
    def visit(self, client):
        client.get("/")
        return Visitor.objects.get(token=client.session[SESSION_TOKEN_KEY])

    def test_clearsessions_removes_the_sessions_rows_and_counter(self):
        client = Client()
        visitor = self.visit(client)
        notification_send(message="private", visitor=visitor)
        Session.objects.update(expire_date=timezone.now() - timedelta(days=1))

        call_command("clearsessions")

        self.assertFalse(Visitor.objects.filter(pk=visitor.pk).exists())
        self.assertFalse(Notification.objects.filter(message="private").exists())
        # What is left on the channel is the event that ends its open streams.
        self.assertEqual(
            list(Notification.objects.values_list("channel", "event_type", "visitor")),
            [(visitor.channel, "session-changed", None)],
        )

    def test_logout_removes_the_sessions_rows_and_the_next_visitor_sees_none(self):
        get_user_model().objects.create_user("erin", password="pw-for-tests")
        client = Client()
        client.login(username="erin", password="pw-for-tests")
        visitor = self.visit(client)
        notification_send(message="private", visitor=visitor)

        client.post("/accounts/logout/")
        after = self.visit(client)
        page = client.get("/")

        self.assertNotEqual(after.token, visitor.token)
        self.assertFalse(Notification.objects.filter(message="private").exists())
        self.assertNotContains(page, "private")
        # The browser session ended with the Django session; only the event
        # that closes its open streams is left on its channel.
        self.assertFalse(Visitor.objects.filter(pk=visitor.pk).exists())
        self.assertEqual(
            list(
                Notification.objects.filter(channel=visitor.channel).values_list(
                    "event_type", "visitor"
                )
            ),
            [("session-changed", None)],
        )

    def test_trim_removes_the_counters_of_ended_sessions_once_their_rows_go(self):
        ended, live = Visitor.objects.create(), Visitor.objects.create()
        for visitor in (ended, live):
            notification_send(message="hi", visitor=visitor)
        ended_channel = ended.channel
        ended.delete()  # leaves its closing event on the channel

        call_command("notifications_trim", stdout=StringIO())
        self.assertTrue(ChannelSequence.objects.filter(channel=ended_channel).exists())

        later = timezone.now() + timedelta(days=conf.RETENTION_DAYS + 1)
        Visitor.objects.filter(pk=live.pk).update(last_seen=later)
        notifications_trim(now=later)

        self.assertFalse(ChannelSequence.objects.filter(channel=ended_channel).exists())
        self.assertTrue(ChannelSequence.objects.filter(channel=live.channel).exists())

    def test_trim_removes_visitors_unseen_for_longer_than_a_session(self):
        visitor = Visitor.objects.create(
            last_seen=timezone.now()
            - timedelta(seconds=settings.SESSION_COOKIE_AGE + 60)
        )
        notification_send(message="private", visitor=visitor)
        recent = Visitor.objects.create()

        call_command("notifications_trim", stdout=StringIO())

        self.assertFalse(Visitor.objects.filter(pk=visitor.pk).exists())
        self.assertFalse(Notification.objects.filter(message="private").exists())
        self.assertTrue(Visitor.objects.filter(pk=recent.pk).exists())
