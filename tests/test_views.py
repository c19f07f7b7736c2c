from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.templatetags.static import static
from django.test import Client, RequestFactory, TestCase

from notifications.channelmanager import NotificationChannelManager
from notifications.models import Notification, Visitor
from notifications.selectors import SESSION_TOKEN_KEY
from notifications.services import notification_send


class IndexTests(TestCase):
    def test_first_visit_creates_a_session_and_a_visitor(self):
        response = self.client.get("/")

        self.assertEqual(response.status_code, 200)
        self.assertIn("sessionid", response.cookies)
        self.assertIn("csrftoken", response.cookies)
        visitor = Visitor.objects.get()
        self.assertEqual(self.client.session[SESSION_TOKEN_KEY], visitor.token)

    def test_page_never_contains_the_session_key(self):
        self.client.get("/")
        response = self.client.get("/")

        self.assertNotIn(self.client.session.session_key, response.text)

    def test_unread_notifications_are_rendered_as_text(self):
        self.client.get("/")
        visitor = Visitor.objects.get()
        notification_send(message="<script>alert(1)</script>", visitor=visitor)

        response = self.client.get("/")

        self.assertContains(response, "&lt;script&gt;alert(1)&lt;/script&gt;")
        self.assertNotContains(response, "<script>alert(1)")

    def test_page_embeds_the_stream_position(self):
        self.client.get("/")
        visitor = Visitor.objects.get()
        notification_send(message="one", visitor=visitor)
        notification_send(message="two", broadcast=True)

        response = self.client.get("/")

        self.assertEqual(
            response.context["last_event_id"], f"broadcast:1,{visitor.channel}:1"
        )

    def test_page_links_a_favicon_that_exists(self):
        # Without the link, browsers ask for /favicon.ico and log its 404.
        response = self.client.get("/")

        href = static("notifications/favicon.svg")
        self.assertContains(
            response, f'<link rel="icon" href="{href}" type="image/svg+xml">', html=True
        )
        path = finders.find("notifications/favicon.svg")
        self.assertIsNotNone(path)
        with open(path, encoding="utf-8") as svg:
            self.assertIn("<svg", svg.read())


class ButtonTests(TestCase):
    def setUp(self):
        self.client = Client(enforce_csrf_checks=True)
        self.client.get("/")
        self.token = self.client.cookies["csrftoken"].value

    def test_script_post_gets_204_and_notifies_the_session(self):
        response = self.client.post(
            "/button-pressed/",
            headers={"X-CSRFToken": self.token, "X-Requested-With": "fetch"},
        )

        self.assertEqual(response.status_code, 204)
        notification = Notification.objects.get()
        self.assertEqual(notification.message, "You pressed the button")
        self.assertEqual(notification.level, "info")
        self.assertEqual(notification.visitor, Visitor.objects.get())

    def test_form_post_redirects_to_the_page(self):
        response = self.client.post(
            "/button-pressed/", {"csrfmiddlewaretoken": self.token}
        )

        self.assertRedirects(response, "/")
        self.assertEqual(Notification.objects.count(), 1)

    def test_post_without_csrf_is_forbidden_and_sends_nothing(self):
        response = self.client.post("/button-pressed/")

        self.assertEqual(response.status_code, 403)
        self.assertFalse(Notification.objects.exists())

    def test_get_is_not_allowed(self):
        response = self.client.get("/button-pressed/")

        self.assertEqual(response.status_code, 405)


class ChannelManagerTests(TestCase):
    def setUp(self):
        self.manager = NotificationChannelManager()
        self.factory = RequestFactory()
        self.mine = Visitor.objects.create()
        self.other = Visitor.objects.create()

    def request(self, path="/notifications/", session=None, user=None):
        request = self.factory.get(path)
        request.session = (
            {SESSION_TOKEN_KEY: self.mine.token} if session is None else session
        )
        from django.contrib.auth.models import AnonymousUser

        request.user = user or AnonymousUser()
        return request

    def test_channels_come_from_the_session(self):
        channels = self.manager.get_channels_for_request(self.request(), {})

        self.assertEqual(channels, {"broadcast", self.mine.channel})

    def test_query_and_view_kwargs_cannot_add_or_replace_channels(self):
        tricks = [
            "/notifications/?channel=broadcast",
            f"/notifications/?channel={self.other.channel}",
            f"/notifications/?channels={self.other.channel}&channel=user-1",
            f"/notifications/../{self.other.channel}/",
        ]
        for path in tricks:
            with self.subTest(path=path):
                request = self.request(path)
                channels = self.manager.get_channels_for_request(
                    request, {"channel": self.other.channel, "channels": ["user-1"]}
                )
                self.assertEqual(channels, {"broadcast", self.mine.channel})

    def test_user_channel_is_added_for_a_logged_in_user(self):
        user = get_user_model().objects.create_user("dora")

        channels = self.manager.get_channels_for_request(self.request(user=user), {})

        self.assertEqual(channels, {"broadcast", self.mine.channel, f"user-{user.pk}"})

    def test_unknown_token_gives_only_broadcast(self):
        request = self.request(session={SESSION_TOKEN_KEY: "f" * 32})

        self.assertEqual(
            self.manager.get_channels_for_request(request, {}), {"broadcast"}
        )

    def test_can_read_only_own_user_channel(self):
        user = get_user_model().objects.create_user("erin")

        self.assertTrue(self.manager.can_read_channel(user, f"user-{user.pk}"))
        self.assertFalse(self.manager.can_read_channel(user, f"user-{user.pk + 1}"))
        self.assertFalse(self.manager.can_read_channel(None, f"user-{user.pk}"))
        self.assertFalse(self.manager.can_read_channel(None, "anything-else"))


class StreamPathTests(TestCase):
    def test_paths_below_the_stream_do_not_exist(self):
        self.client.get("/")
        for path in [
            "/notifications/broadcast/",
            "/notifications/session-x/",
            "/events/",
        ]:
            with self.subTest(path=path):
                self.assertEqual(self.client.get(path).status_code, 404)


class PasswordChangeTests(TestCase):
    def test_the_page_is_the_sites_own_and_linked_from_the_navbar(self):
        get_user_model().objects.create_user("erin", password="pw-for-tests-1")
        self.client.login(username="erin", password="pw-for-tests-1")

        home = self.client.get("/")
        page = self.client.get("/accounts/password_change/")

        self.assertContains(home, 'href="/accounts/password_change/"')
        self.assertContains(page, "Change password")
        self.assertNotContains(page, "Django administration")
        self.assertTemplateUsed(page, "base.html")

    def test_password_reset_is_not_offered(self):
        self.assertEqual(self.client.get("/accounts/password_reset/").status_code, 404)
