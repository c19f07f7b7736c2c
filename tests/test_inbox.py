"""The inbox: unread on load, mark read, mark all read, and the JSON list."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import Client, TestCase, override_settings

from notifications.models import BroadcastReceipt, Notification, Visitor
from notifications.selectors import SESSION_TOKEN_KEY, notifications_unread
from notifications.services import notification_send, visitor_streams_close


class InboxTestCase(TestCase):
    def setUp(self):
        self.client = Client(enforce_csrf_checks=True)
        self.client.get("/")
        self.csrf = self.client.cookies["csrftoken"].value
        self.visitor = Visitor.objects.get(token=self.client.session[SESSION_TOKEN_KEY])
        self.other = Visitor.objects.create()

    def post(self, path, data=None, script=True, client=None):
        headers = {"X-CSRFToken": self.csrf}
        if script:
            headers["X-Requested-With"] = "fetch"
        return (client or self.client).post(path, data or {}, headers=headers)


class InboxPageTests(InboxTestCase):
    def test_page_lists_unread_newest_first_with_the_count(self):
        notification_send(message="older", visitor=self.visitor)
        notification_send(message="everyone", broadcast=True)
        notification_send(message="newer", visitor=self.visitor)
        notification_send(message="not mine", visitor=self.other)
        read = notification_send(message="read already", visitor=self.visitor)
        Notification.objects.filter(pk=read.pk).update(read_at=read.created_at)

        response = self.client.get("/")

        self.assertEqual(
            [row.message for row in response.context["unread"]],
            ["newer", "everyone", "older"],
        )
        self.assertEqual(response.context["unread_count"], 3)
        self.assertNotContains(response, "not mine")
        self.assertNotContains(response, "read already")

    @override_settings(NOTIFICATIONS_INBOX_LIMIT=2)
    def test_count_is_not_capped_by_the_listing_limit(self):
        for i in range(3):
            notification_send(message=f"n{i}", visitor=self.visitor)

        response = self.client.get("/")

        self.assertEqual(len(response.context["unread"]), 2)
        self.assertEqual(response.context["unread_count"], 3)


class MarkReadTests(InboxTestCase):
    def test_own_row_is_marked_read_and_the_count_returned(self):
        mine = notification_send(message="mine", visitor=self.visitor)
        notification_send(message="still unread", visitor=self.visitor)

        response = self.post(f"/notifications/{mine.pk}/read/")

        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"unread_count": 1})
        mine.refresh_from_db()
        self.assertIsNotNone(mine.read_at)
        self.assertNotIn(mine, self.client.get("/").context["unread"])

    def test_another_sessions_row_is_404_and_unchanged(self):
        theirs = notification_send(message="theirs", visitor=self.other)

        response = self.post(f"/notifications/{theirs.pk}/read/")

        self.assertEqual(response.status_code, 404)
        theirs.refresh_from_db()
        self.assertIsNone(theirs.read_at)
        self.assertFalse(BroadcastReceipt.objects.exists())

    def test_another_users_row_is_404_and_unchanged(self):
        someone = get_user_model().objects.create_user("someone")
        theirs = notification_send(message="theirs", user=someone)

        response = self.post(f"/notifications/{theirs.pk}/read/")

        self.assertEqual(response.status_code, 404)
        theirs.refresh_from_db()
        self.assertIsNone(theirs.read_at)

    def test_closing_events_of_ended_sessions_and_users_are_404(self):
        from notifications.services import user_streams_close

        someone = get_user_model().objects.create_user("someone")
        closing = [
            user_streams_close(someone.pk, reason="deactivated"),
            visitor_streams_close(self.other),
        ]

        for row in closing:
            with self.subTest(channel=row.channel):
                response = self.post(f"/notifications/{row.pk}/read/")
                self.assertEqual(response.status_code, 404)
                row.refresh_from_db()
                self.assertIsNone(row.read_at)
        self.assertFalse(BroadcastReceipt.objects.exists())

    def test_unknown_and_out_of_range_ids_are_404(self):
        for pk in (999999, 2**63, 10**30):
            with self.subTest(pk=pk):
                self.assertEqual(
                    self.post(f"/notifications/{pk}/read/").status_code, 404
                )

    def test_post_without_csrf_is_forbidden_and_changes_nothing(self):
        mine = notification_send(message="mine", visitor=self.visitor)

        response = self.client.post(f"/notifications/{mine.pk}/read/")

        self.assertEqual(response.status_code, 403)
        mine.refresh_from_db()
        self.assertIsNone(mine.read_at)

    def test_get_is_not_allowed(self):
        mine = notification_send(message="mine", visitor=self.visitor)

        self.assertEqual(
            self.client.get(f"/notifications/{mine.pk}/read/").status_code, 405
        )
        self.assertEqual(self.client.get("/notifications/read-all/").status_code, 405)

    def test_broadcast_is_read_for_this_reader_only(self):
        broadcast = notification_send(message="everyone", broadcast=True)

        response = self.post(f"/notifications/{broadcast.pk}/read/")
        again = self.post(f"/notifications/{broadcast.pk}/read/")

        self.assertEqual(response.json(), {"unread_count": 0})
        self.assertEqual(again.status_code, 200)
        receipt = BroadcastReceipt.objects.get()
        self.assertEqual(receipt.visitor, self.visitor)
        broadcast.refresh_from_db()
        self.assertIsNone(broadcast.read_at)
        self.assertIn(broadcast, notifications_unread(visitor=self.other, user=None))

    def test_logged_in_reader_marks_its_user_rows(self):
        user = get_user_model().objects.create_user("dora", password="pw-for-tests")
        self.client.force_login(user)
        self.client.get("/")
        self.csrf = self.client.cookies["csrftoken"].value
        for_user = notification_send(message="for dora", user=user)
        broadcast = notification_send(message="everyone", broadcast=True)

        self.post(f"/notifications/{for_user.pk}/read/")
        self.post(f"/notifications/{broadcast.pk}/read/")

        for_user.refresh_from_db()
        self.assertIsNotNone(for_user.read_at)
        self.assertEqual(BroadcastReceipt.objects.get().user, user)

    def test_form_post_without_script_goes_back_to_the_page(self):
        mine = notification_send(message="mine", visitor=self.visitor)

        response = self.post(
            f"/notifications/{mine.pk}/read/",
            {"csrfmiddlewaretoken": self.csrf},
            script=False,
        )

        self.assertRedirects(response, "/")


class MarkAllReadTests(InboxTestCase):
    def test_marks_own_rows_and_broadcasts_but_not_others(self):
        mine = notification_send(message="mine", visitor=self.visitor)
        broadcast = notification_send(message="everyone", broadcast=True)
        theirs = notification_send(message="theirs", visitor=self.other)

        response = self.post("/notifications/read-all/")

        self.assertEqual(response.json(), {"unread_count": 0})
        mine.refresh_from_db()
        theirs.refresh_from_db()
        self.assertIsNotNone(mine.read_at)
        self.assertIsNone(theirs.read_at)
        self.assertTrue(
            BroadcastReceipt.objects.filter(
                notification=broadcast, visitor=self.visitor
            ).exists()
        )
        self.assertEqual(BroadcastReceipt.objects.count(), 1)

    def test_up_to_leaves_newer_notifications_unread(self):
        seen = notification_send(message="seen", visitor=self.visitor)
        newer = notification_send(message="arrived later", visitor=self.visitor)

        response = self.post("/notifications/read-all/", {"up_to": seen.pk})

        self.assertEqual(response.json(), {"unread_count": 1})
        newer.refresh_from_db()
        self.assertIsNone(newer.read_at)

    def test_malformed_up_to_is_a_bad_request(self):
        notification_send(message="mine", visitor=self.visitor)
        for bad in ("-1", "abc", "1.5", "١٢"):
            with self.subTest(up_to=bad):
                response = self.post("/notifications/read-all/", {"up_to": bad})
                self.assertEqual(response.status_code, 400)
        self.assertEqual(Notification.objects.filter(read_at__isnull=True).count(), 1)

    def test_post_without_csrf_is_forbidden(self):
        notification_send(message="mine", visitor=self.visitor)

        response = self.client.post("/notifications/read-all/")

        self.assertEqual(response.status_code, 403)
        self.assertEqual(Notification.objects.filter(read_at__isnull=True).count(), 1)


class UnreadJsonTests(InboxTestCase):
    def test_lists_own_and_broadcast_unread_newest_first(self):
        notification_send(message="mine", visitor=self.visitor)
        notification_send(message="<b>everyone</b>", broadcast=True)
        notification_send(message="theirs", visitor=self.other)

        response = self.client.get("/notifications/unread/")

        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Cache-Control"], "no-store")
        body = response.json()
        self.assertEqual(body["unread_count"], 2)
        self.assertEqual(
            [n["message"] for n in body["notifications"]], ["<b>everyone</b>", "mine"]
        )
        self.assertEqual(body["last_event_id"], f"broadcast:1,{self.visitor.channel}:1")
        self.assertNotIn(self.client.session.session_key, response.text)
        self.assertNotIn(self.other.token, response.text)

    def test_read_rows_leave_the_list(self):
        mine = notification_send(message="mine", visitor=self.visitor)
        self.post(f"/notifications/{mine.pk}/read/")

        body = self.client.get("/notifications/unread/").json()

        self.assertEqual(body["notifications"], [])
        self.assertEqual(body["unread_count"], 0)

    def test_query_parameters_cannot_choose_whose_list(self):
        notification_send(message="theirs", visitor=self.other)

        response = self.client.get(
            f"/notifications/unread/?visitor={self.other.pk}&channel={self.other.channel}"
        )

        self.assertEqual(response.json()["notifications"], [])
