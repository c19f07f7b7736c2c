"""The Notification table as django-eventstream's store: replay and its limits."""

from __future__ import annotations

import json

from django.test import TestCase
from django_eventstream.storage import EventDoesNotExist

from notifications.models import Notification, Visitor
from notifications.services import notification_send
from notifications.storage import NotificationStorage


class NotificationStorageTests(TestCase):
    def setUp(self):
        self.storage = NotificationStorage()
        self.visitor = Visitor.objects.create()
        self.channel = self.visitor.channel
        self.sent = [
            notification_send(message=f"n{i}", visitor=self.visitor) for i in range(5)
        ]

    def messages(self, events):
        return [json.loads(event.data)["message"] for event in events]

    def test_events_after_an_id_come_in_order_with_their_numbers(self):
        events = self.storage.get_events(self.channel, 2)

        self.assertEqual(self.messages(events), ["n2", "n3", "n4"])
        self.assertEqual([event.id for event in events], [3, 4, 5])
        self.assertEqual({event.channel for event in events}, {self.channel})

    def test_limit_cuts_the_batch_from_the_oldest(self):
        events = self.storage.get_events(self.channel, 0, limit=2)

        self.assertEqual([event.id for event in events], [1, 2])

    def test_caught_up_client_gets_nothing(self):
        self.assertEqual(self.storage.get_events(self.channel, 5), [])
        self.assertEqual(self.storage.get_current_id(self.channel), 5)

    def test_unused_channel_starts_at_zero(self):
        other = Visitor.objects.create().channel

        self.assertEqual(self.storage.get_current_id(other), 0)
        self.assertEqual(self.storage.get_events(other, 0), [])

    def test_position_beyond_the_channel_is_refused_with_the_current_id(self):
        for last_id in (6, 10**17, -1):
            with self.subTest(last_id=last_id):
                with self.assertRaises(EventDoesNotExist) as cm:
                    self.storage.get_events(self.channel, last_id)
                self.assertEqual(cm.exception.current_id, 5)

    def test_trimmed_first_row_is_refused(self):
        Notification.objects.filter(seq=3, channel=self.channel).delete()

        with self.assertRaises(EventDoesNotExist):
            self.storage.get_events(self.channel, 2)
        self.assertEqual(
            self.messages(self.storage.get_events(self.channel, 3)), ["n3", "n4"]
        )

    def test_hole_in_the_middle_or_at_the_end_is_refused(self):
        Notification.objects.filter(seq__in=[4, 5], channel=self.channel).delete()

        with self.assertRaises(EventDoesNotExist):
            self.storage.get_events(self.channel, 1)
        with self.assertRaises(EventDoesNotExist):
            self.storage.get_events(self.channel, 4)

    def test_other_channels_rows_are_never_returned(self):
        other = Visitor.objects.create()
        notification_send(message="not yours", visitor=other)
        notification_send(message="everyone", broadcast=True)

        events = self.storage.get_events(self.channel, 0)

        self.assertEqual(self.messages(events), ["n0", "n1", "n2", "n3", "n4"])

    def test_send_event_cannot_write_a_second_copy(self):
        with self.assertRaises(NotImplementedError):
            self.storage.append_event(self.channel, "notification", "{}")
