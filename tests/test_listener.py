"""The per-process bookkeeping that makes every row reach a stream once, in order."""

from __future__ import annotations

from unittest import mock

from django.test import TestCase

from notifications import listener, transport
from notifications.models import Notification
from notifications.services import notification_send
from notifications.storage import NotificationStorage

from .utils import RecordingListener


class MarkTests(TestCase):
    def setUp(self):
        transport.forget_marks()
        transport.set_listener_active(True)
        self.addCleanup(transport.set_listener_active, False)
        self.addCleanup(transport.forget_marks)
        self.recorder = RecordingListener("broadcast")
        self.addCleanup(self.recorder.close)

    def send(self, count):
        with mock.patch.object(transport, "publish"):
            return [
                notification_send(broadcast=True, message=f"n{i}") for i in range(count)
            ]

    def delivered(self):
        return [event.id for event in self.recorder.events()]

    def test_rows_at_or_below_the_mark_are_not_delivered_again(self):
        rows = self.send(3)
        self.assertEqual(NotificationStorage().get_current_id("broadcast"), 3)

        transport.deliver(rows)
        more = self.send(2)
        transport.deliver(rows + more)
        transport.publish_local(more[-1])

        self.assertEqual(self.delivered(), [4, 5])

    def test_row_after_a_gap_waits_and_the_catch_up_fills_the_gap_in_order(self):
        NotificationStorage().get_current_id("broadcast")
        rows = self.send(3)

        gaps = transport.deliver([rows[2]])
        transport.publish_local(rows[1])

        self.assertEqual(gaps, ["broadcast"])
        self.assertEqual(self.delivered(), [1, 2])
        transport.catch_up_channel("broadcast")
        self.assertEqual(self.delivered(), [1, 2, 3])

    def test_stream_read_stops_at_the_mark(self):
        storage = NotificationStorage()
        self.assertEqual(storage.get_current_id("broadcast"), 0)
        self.send(2)

        events = storage.get_events("broadcast", 0)

        self.assertEqual(events, [])
        self.assertEqual(storage.get_current_id("broadcast"), 0)

    def test_stream_ahead_of_the_mark_moves_the_mark_without_a_reset(self):
        storage = NotificationStorage()
        storage.get_current_id("broadcast")
        self.send(3)

        events = storage.get_events("broadcast", 2)

        self.assertEqual(events, [])
        self.assertEqual(self.delivered(), [1, 2])
        self.assertEqual(transport.marks_snapshot()["broadcast"], 2)

    def test_marks_of_channels_without_streams_are_forgotten(self):
        NotificationStorage().get_current_id("broadcast")
        NotificationStorage().get_current_id("user-1")

        transport.prune_marks()

        self.assertEqual(transport.marks_snapshot(), {"broadcast": 0})

    def test_scans_prune_marks_only_now_and_then(self):
        NotificationStorage().get_current_id("user-1")
        transport.prune_marks()
        NotificationStorage().get_current_id("user-2")

        transport.scan_finished()
        self.assertIn("user-2", transport.marks_snapshot())

        with mock.patch.object(transport, "MARK_PRUNE_SECONDS", 0.0):
            transport.scan_finished()
        self.assertNotIn("user-2", transport.marks_snapshot())


class IdScannerTests(TestCase):
    def make(self, pk):
        return Notification.objects.create(
            pk=pk, message="m", channel="broadcast", seq=pk
        )

    def test_missing_id_is_looked_for_until_it_commits(self):
        self.make(1)
        scanner = listener.IdScanner()
        scanner.start()
        self.make(3)

        first, _ = scanner.scan()
        self.make(2)
        second, _ = scanner.scan()
        third, _ = scanner.scan()

        self.assertEqual([row[0] for row in first], [3])
        self.assertEqual([row[0] for row in second], [2])
        self.assertEqual(third, [])
        self.assertEqual(scanner.missing, {})

    def test_missing_id_is_given_up_after_the_wait(self):
        scanner = listener.IdScanner()
        scanner.start()
        self.make(2)
        scanner.scan()
        self.assertEqual(list(scanner.missing), [1])

        with mock.patch.object(listener, "GAP_WAIT", -1):
            scanner.scan()

        self.assertEqual(scanner.missing, {})
