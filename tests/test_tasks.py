"""The report job, run in-process by Django's immediate task backend."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

from django.test import Client, TestCase, override_settings
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from notifications import tasks
from notifications.models import Notification, Visitor
from notifications.services import (
    ReportLimitReached,
    notification_send,
    report_job_enqueue,
)

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

    def test_success_message_counts_in_words_that_agree(self):
        for existing, expected in [
            (0, "Your report is ready: 0 notifications, 0 unread."),
            (1, "Your report is ready: 1 notification, 1 unread."),
            (2, "Your report is ready: 2 notifications, 2 unread."),
        ]:
            # Each report's own success notification would count in the next.
            Notification.objects.all().delete()
            for _ in range(existing):
                notification_send(message="earlier", visitor=self.visitor)
            with self.subTest(expected=expected):
                report_job_enqueue(self.visitor)
                self.assertEqual(self.sent()[-1].message, expected)

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

    def test_job_stops_when_its_session_ends_while_it_runs(self):
        def end_session():
            Visitor.objects.filter(pk=self.visitor.pk).delete()
            return 0

        steps = [("Counting", end_session), ("Counting again", lambda: 0)]
        with mock.patch.object(tasks, "report_steps", return_value=steps):
            result = tasks.report_build.enqueue(visitor_id=self.visitor.pk)

        self.assertEqual(result.status, "SUCCESSFUL")
        # Only the event that closes the ended session's streams is left.
        self.assertEqual(
            list(Notification.objects.values_list("event_type", "visitor")),
            [("session-changed", None)],
        )

    def test_job_for_a_session_that_ended_sends_nothing(self):
        result = tasks.report_build.enqueue(visitor_id=self.visitor.pk + 1000)

        self.assertEqual(result.status, "SUCCESSFUL")
        self.assertFalse(Notification.objects.exists())


@override_settings(NOTIFICATIONS_REPORTS_PER_MINUTE=2)
class ReportLimitTests(TestCase):
    """A session may start NOTIFICATIONS_REPORTS_PER_MINUTE reports a minute."""

    def setUp(self):
        self.visitor = Visitor.objects.create()

    def warnings(self):
        return list(Notification.objects.filter(visitor=self.visitor, level="warning"))

    def test_the_limit_refuses_the_next_job_and_tells_the_session(self):
        report_job_enqueue(self.visitor)
        report_job_enqueue(self.visitor)
        queued = Notification.objects.filter(visitor=self.visitor).count()

        with self.assertRaises(ReportLimitReached):
            report_job_enqueue(self.visitor)

        # Nothing queued for the refused press: no job, no progress row.
        self.assertEqual(DBTaskResult.objects.count(), 2)
        self.assertEqual(
            Notification.objects.filter(visitor=self.visitor).count(), queued + 1
        )
        # A held-down button: refused again, and not told again this minute.
        with self.assertRaises(ReportLimitReached):
            report_job_enqueue(self.visitor)
        [warning] = self.warnings()
        self.assertEqual(warning.event_type, "notification")
        self.assertIn("Too many reports at once (at most 2 a minute)", warning.message)

    def test_jobs_older_than_a_minute_and_other_sessions_do_not_count(self):
        other = Visitor.objects.create()
        report_job_enqueue(self.visitor)
        report_job_enqueue(other)
        report_job_enqueue(other)
        Notification.objects.filter(visitor=self.visitor).update(
            created_at=timezone.now() - timedelta(seconds=61)
        )

        report_job_enqueue(self.visitor)
        report_job_enqueue(self.visitor)

        self.assertEqual(self.warnings(), [])
        with self.assertRaises(ReportLimitReached):
            report_job_enqueue(other)

    @override_settings(TASKS=IMMEDIATE, NOTIFICATIONS_REPORT_STEP_SECONDS=0)
    def test_jobs_run_at_once_count_by_their_progress(self):
        report_job_enqueue(self.visitor)
        report_job_enqueue(self.visitor)

        with self.assertRaises(ReportLimitReached):
            report_job_enqueue(self.visitor)

    @override_settings(NOTIFICATIONS_REPORTS_PER_MINUTE=0)
    def test_zero_means_no_limit(self):
        for _ in range(5):
            report_job_enqueue(self.visitor)

        self.assertEqual(DBTaskResult.objects.count(), 5)
        self.assertEqual(self.warnings(), [])


class ReportViewLimitTests(TestCase):
    def setUp(self):
        self.client = Client(enforce_csrf_checks=True)
        self.client.get("/")
        self.token = self.client.cookies["csrftoken"].value
        self.visitor = Visitor.objects.get()

    @override_settings(NOTIFICATIONS_REPORTS_PER_MINUTE=1)
    def test_script_post_past_the_limit_gets_429_with_retry_after(self):
        headers = {"X-CSRFToken": self.token, "X-Requested-With": "fetch"}
        first = self.client.post("/report/", headers=headers)
        second = self.client.post("/report/", headers=headers)

        self.assertEqual(first.status_code, 204)
        self.assertEqual(second.status_code, 429)
        self.assertEqual(second["Retry-After"], "60")
        self.assertEqual(DBTaskResult.objects.count(), 1)
        self.assertTrue(
            Notification.objects.filter(visitor=self.visitor, level="warning").exists()
        )

    @override_settings(NOTIFICATIONS_REPORTS_PER_MINUTE=1)
    def test_form_post_past_the_limit_goes_back_to_the_page_with_the_warning(self):
        headers = {"X-CSRFToken": self.token}
        self.client.post("/report/", headers=headers)
        response = self.client.post("/report/", headers=headers, follow=True)

        self.assertEqual(response.redirect_chain, [("/", 302)])
        self.assertContains(response, "Too many reports at once (at most 1 a minute)")
