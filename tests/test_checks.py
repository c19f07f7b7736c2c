from __future__ import annotations

from django.test import SimpleTestCase, override_settings

from notifications.checks import check_settings

from .utils import run_manage


def ids(errors):
    return [error.id for error in errors]


class CheckSettingsTests(SimpleTestCase):
    def test_project_settings_pass(self):
        self.assertEqual(check_settings(), [])

    @override_settings(MIDDLEWARE=["django.middleware.gzip.GZipMiddleware"])
    def test_gzip_and_missing_sessions_are_reported(self):
        self.assertEqual(
            ids(check_settings()), ["notifications.E002", "notifications.E003"]
        )

    @override_settings(NOTIFICATIONS_MAX_MESSAGE_LENGTH="2000")
    def test_max_length_must_be_an_integer(self):
        self.assertEqual(ids(check_settings()), ["notifications.E004"])

    @override_settings(NOTIFICATIONS_TRANSPORT="carrier-pigeon")
    def test_unknown_transport_is_reported(self):
        self.assertEqual(ids(check_settings()), ["notifications.E005"])

    @override_settings(NOTIFICATIONS_TRANSPORT="redis", NOTIFICATIONS_REDIS_URL=None)
    def test_redis_transport_needs_a_url(self):
        self.assertEqual(ids(check_settings()), ["notifications.E006"])

    @override_settings(NOTIFICATIONS_TRANSPORT="postgres")
    def test_postgres_transport_needs_postgres(self):
        self.assertEqual(ids(check_settings()), ["notifications.E007"])

    @override_settings(EVENTSTREAM_ALLOW_ORIGINS=["https://app.example", "*"])
    def test_cors_wildcard_is_refused(self):
        self.assertEqual(ids(check_settings()), ["notifications.E009"])


class IntervalCheckTests(SimpleTestCase):
    def test_poll_interval_must_be_positive(self):
        for value in [0, -1, "1"]:
            with (
                self.subTest(value=value),
                override_settings(NOTIFICATIONS_POLL_INTERVAL=value),
            ):
                self.assertEqual(ids(check_settings()), ["notifications.E010"])

    def test_report_step_may_be_zero_but_not_negative(self):
        with override_settings(NOTIFICATIONS_REPORT_STEP_SECONDS=0):
            self.assertEqual(check_settings(), [])
        with override_settings(NOTIFICATIONS_REPORT_STEP_SECONDS=-1):
            self.assertEqual(ids(check_settings()), ["notifications.E010"])

    def test_report_limit_is_a_count_zero_or_more(self):
        for value in [0, 5]:
            with override_settings(NOTIFICATIONS_REPORTS_PER_MINUTE=value):
                self.assertEqual(check_settings(), [])
        for value in [-1, "5", 2.5, True]:
            with (
                self.subTest(value=value),
                override_settings(NOTIFICATIONS_REPORTS_PER_MINUTE=value),
            ):
                self.assertEqual(ids(check_settings()), ["notifications.E011"])

    def test_malformed_environment_values_fail_with_a_clear_message(self):
        for env, text in [
            ({"NOTIFICATIONS_POLL_INTERVAL": "abc"}, "must be a number of seconds"),
            ({"NOTIFICATIONS_LOG_LEVEL": "bogus"}, "NOTIFICATIONS_LOG_LEVEL must be"),
        ]:
            with self.subTest(env=env):
                result = run_manage("check", env=env, check=False)
                self.assertNotEqual(result.returncode, 0)
                self.assertIn(text, result.stderr)
                self.assertIn("ImproperlyConfigured", result.stderr)


class DeploySettingsTests(SimpleTestCase):
    def test_check_deploy_passes_with_debug_off(self):
        result = run_manage(
            "check",
            "--deploy",
            "--fail-level",
            "WARNING",
            env={
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": "x7" * 30
                + "-production-like-secret-for-the-check",
                "DJANGO_ALLOWED_HOSTS": "notify.example",
            },
            check=False,
        )

        self.assertEqual(result.returncode, 0, result.stderr + result.stdout)
        self.assertIn("no issues", result.stdout)

    def test_debug_off_without_secret_key_refuses_to_start(self):
        result = run_manage(
            "check", env={"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": ""}, check=False
        )

        self.assertNotEqual(result.returncode, 0)
        self.assertIn("DJANGO_SECRET_KEY must be set", result.stderr)
