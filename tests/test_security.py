"""Each hardening rule, named after what it protects."""

from __future__ import annotations

import logging

from django.contrib.auth import get_user_model
from django.test import Client, TestCase, TransactionTestCase
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from notifications.models import Notification, Visitor
from notifications.services import notification_send

from .utils import DaphneServer
from .utils import Visitor as Browser

# Views that only read; every other view of the app changes state.
READ_ONLY_VIEWS = {
    "notifications:index",
    "notifications:stream",
    "notifications:unread",
}


def app_views():
    """Yield (name, path) for every URL of the notifications app."""
    for entry in get_resolver().url_patterns:
        if isinstance(entry, URLResolver) and entry.namespace == "notifications":
            for pattern in entry.url_patterns:
                if isinstance(pattern, URLPattern):
                    name = f"notifications:{pattern.name}"
                    kwargs = dict.fromkeys(pattern.pattern.regex.groupindex, 1)
                    yield name, reverse(name, kwargs=kwargs)


class StateChangingViewsTests(TestCase):
    def test_every_state_changing_view_needs_post_and_csrf(self):
        client = Client(enforce_csrf_checks=True)
        client.get("/")
        checked = []
        for name, path in app_views():
            if name in READ_ONLY_VIEWS:
                continue
            with self.subTest(view=name):
                self.assertEqual(client.get(path).status_code, 405)
                self.assertEqual(client.post(path).status_code, 403)
            checked.append(name)

        self.assertIn("notifications:button_pressed", checked)
        self.assertIn("notifications:mark_read", checked)
        self.assertIn("notifications:report_start", checked)
        self.assertFalse(Notification.objects.exists())


class SessionKeyNeverLeaksTests(TestCase):
    def test_session_key_is_not_in_logs_pages_or_channel_names(self):
        client = Client()
        records = []
        handler = logging.Handler(level=logging.DEBUG)
        handler.emit = lambda record: records.append(record.getMessage())
        watched = [logging.getLogger(name) for name in ("", "notifications", "django")]
        for logger in watched:
            logger.addHandler(handler)
            self.addCleanup(logger.removeHandler, handler)
            self.addCleanup(logger.setLevel, logger.level)
            logger.setLevel(logging.DEBUG)

        client.get("/")
        key = client.session.session_key
        client.post("/button-pressed/", headers={"X-Requested-With": "fetch"})
        page = client.get("/").text

        notification = Notification.objects.get()
        self.assertTrue(records, "nothing was logged, so nothing was checked")
        self.assertNotIn(key, "\n".join(records))
        self.assertNotIn(key, page)
        self.assertNotIn(key, notification.channel)
        self.assertNotIn(key, Visitor.objects.get().token)


class NotificationTextIsNeverHtmlTests(TestCase):
    def setUp(self):
        self.admin = get_user_model().objects.create_superuser(
            "root", "r@example.com", "pw"
        )
        self.client.force_login(self.admin)
        self.notification = notification_send(
            message='<img src=x onerror="alert(1)">', broadcast=True
        )

    def test_admin_list_and_detail_escape_the_message(self):
        for path in [
            "/admin/notifications/notification/",
            f"/admin/notifications/notification/{self.notification.pk}/change/",
        ]:
            with self.subTest(path=path):
                response = self.client.get(path)
                self.assertEqual(response.status_code, 200)
                self.assertNotContains(response, "<img src=x")
                self.assertContains(response, "&lt;img src=x")

    def test_page_escapes_the_message(self):
        response = self.client.get("/")

        self.assertNotContains(response, "<img src=x")
        self.assertContains(response, "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;")


class CorsTests(TransactionTestCase):
    def test_stream_allows_only_configured_origins_with_credentials(self):
        allowed = "https://app.example"
        with DaphneServer(env={"NOTIFICATIONS_CORS_ORIGINS": allowed}) as server:
            browser = Browser(server.url)
            self.addCleanup(browser.close)
            browser.open_page()

            good = browser.listen(
                headers={"Referer": allowed + "/page", "Origin": allowed}
            )
            evil = browser.listen(
                headers={
                    "Referer": "https://evil.example/",
                    "Origin": "https://evil.example",
                }
            )

            self.assertEqual(
                good.response_headers["access-control-allow-origin"], allowed
            )
            self.assertEqual(
                good.response_headers["access-control-allow-credentials"], "true"
            )
            self.assertNotIn("access-control-allow-origin", evil.response_headers)

    def test_stream_sends_no_cors_headers_by_default(self):
        with DaphneServer() as server:
            browser = Browser(server.url)
            self.addCleanup(browser.close)
            browser.open_page()

            stream = browser.listen(headers={"Origin": "https://evil.example"})

            self.assertNotIn("access-control-allow-origin", stream.response_headers)
            self.assertNotIn(
                "access-control-allow-credentials", stream.response_headers
            )
