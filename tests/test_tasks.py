"""The report job, run in-process by Django's immediate task backend."""

from __future__ import annotations

from unittest import mock

from django.test import TestCase, override_settings

from notifications import tasks
from notifications.models import Notification, Visitor
from notifications.services import report_job_enqueue

IMMEDIATE = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}


@override_settings(TASKS=IMMEDIATE, NOTIFICATIONS_REPORT_STEP_SECONDS=0)
class ReportJobTests(TestCase):
    def setUp(self):
        self.visitor = Visitor.objects.create()

    def sent(self):
        return list(Notification.objects.filter(visitor=self.visitor).order_by("seq"))

    def test_job_reports_progress_then_success_to_its_session(self):
        with self.captureOnCommitCallbacks(execute=True):
            job = report_job_enqueue(self.visitor)

        rows = self.sent()
        progress = [row for row in rows if row.event_type == "progress"]
        percents = [row.payload["percent"] for row in progress]
        self.assertEqual(percents, sorted(percents))
        self.assertEqual((percents[0], percents[-1]), (0, 100))
        self.assertEqual({row.payload["job"] for row in progress}, {job})
        self.assertEqual({row.level for row in progress}, {"info"})
        self.assertEqual(rows[-1].level, "success")
        self.assertEqual(rows[-1].event_type, "notification")
        self.assertEqual(rows[-1].payload["job"], job)
        self.assertIn("Your report is ready", rows[-1].message)

    def test_failed_step_sends_danger_saying_what_went_wrong(self):
        def broken():
            raise LookupError("boom")

        steps = [("Counting your notifications", broken)]
        with (
            mock.patch.object(tasks, "report_steps", return_value=steps),
            self.assertLogs("notifications.tasks", "ERROR"),
        ):
            report_job_enqueue(self.visitor)

        last = self.sent()[-1]
        self.assertEqual(last.level, "danger")
        self.assertEqual(
            last.message,
            "The report failed while counting your notifications: LookupError.",
        )
        self.assertFalse(Notification.objects.filter(level="success").exists())

    def test_job_for_a_session_that_ended_sends_nothing(self):
        result = tasks.report_build.enqueue(visitor_id=self.visitor.pk + 1000)

        self.assertEqual(result.status, "SUCCESSFUL")
        self.assertFalse(Notification.objects.exists())
