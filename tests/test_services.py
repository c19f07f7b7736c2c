from __future__ import annotations

import datetime
import decimal
import json
import uuid

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import TestCase, TransactionTestCase, override_settings

from notifications.models import Notification, Visitor
from notifications.services import notification_send

from .utils import RecordingListener


class NotificationSendValidationTests(TestCase):
    def setUp(self):
        self.visitor = Visitor.objects.create()
        self.recorder = RecordingListener(self.visitor.channel, "broadcast")
        self.addCleanup(self.recorder.close)

    def assertRefused(self, code, **kwargs):
        arguments = {"message": "hello", "visitor": self.visitor, **kwargs}
        with (
            self.captureOnCommitCallbacks(execute=True),
            self.assertRaises(ValidationError) as cm,
        ):
            notification_send(**arguments)
        self.assertEqual(cm.exception.code, code)
        self.assertFalse(Notification.objects.exists())
        self.assertEqual(self.recorder.events(), [])
        return cm.exception

    def test_unknown_level_is_refused(self):
        error = self.assertRefused("level", level="critical")
        self.assertIn("'critical'", error.messages[0])
        self.assertIn("info, success, warning, danger", error.messages[0])

    def test_empty_message_is_refused(self):
        self.assertRefused("empty", message="")
        self.assertRefused("empty", message="   \n ")

    def test_message_over_the_limit_is_refused(self):
        error = self.assertRefused("too_long", message="x" * 2001)
        self.assertEqual(
            error.messages[0], "The message is 2001 characters long; the most is 2000."
        )

    @override_settings(NOTIFICATIONS_MAX_MESSAGE_LENGTH=10)
    def test_limit_follows_the_setting(self):
        self.assertRefused("too_long", message="x" * 11)

    def test_nul_in_message_is_refused(self):
        self.assertRefused("nul", message="a\x00b")

    def test_event_type_with_line_breaks_is_refused(self):
        for bad in [
            "a\nb",
            "a\rb",
            "a\x00b",
            "notification\n",
            "",
            "1abc",
            "x" * 65,
            "a b",
        ]:
            with self.subTest(event_type=bad):
                self.assertRefused("event_type", event_type=bad)

    def test_payload_must_be_a_small_json_object(self):
        self.assertRefused("payload", payload=["not", "an", "object"])
        self.assertRefused("payload", payload={"big": "x" * 9000})
        self.assertRefused("payload", payload={"bad": object()})

    def test_message_that_is_not_text_is_refused(self):
        error = self.assertRefused("not_text", message=123)
        self.assertEqual(error.messages[0], "The message must be text, not int.")
        self.assertRefused("not_text", message=None)

    def test_message_with_a_lone_surrogate_is_refused(self):
        for bad in ["\ud800", "a\udfffb", "\ud83d\ude00"]:
            with self.subTest(message=bad):
                error = self.assertRefused("surrogate", message=bad)
                self.assertIn("not valid Unicode text", error.messages[0])

    def test_payload_with_nan_or_infinity_is_refused(self):
        for bad in [float("nan"), float("inf"), float("-inf")]:
            with self.subTest(value=bad):
                error = self.assertRefused("payload", payload={"n": [1, {"x": bad}]})
                self.assertIn("NaN or Infinity", error.messages[0])

    def test_payload_with_a_nul_character_is_refused(self):
        for bad in [{"a\x00": 1}, {"a": "b\x00"}, {"a": [{"b": ["\x00"]}]}]:
            with self.subTest(payload=bad):
                error = self.assertRefused("payload", payload=bad)
                self.assertIn("NUL character", error.messages[0])

    def test_payload_with_a_lone_surrogate_is_refused(self):
        for bad in [{"\ud800": 1}, {"a": "\udc00"}, {"a": ["ok", {"b": "x\ud800"}]}]:
            with self.subTest(payload=bad):
                error = self.assertRefused("payload", payload=bad)
                self.assertIn("not valid Unicode text", error.messages[0])

    def test_payload_the_field_cannot_store_is_refused(self):
        for bad in [
            {"when": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)},
            {"price": decimal.Decimal("1.50")},
            {"id": uuid.uuid4()},
            {"set": {1, 2}},
        ]:
            with self.subTest(payload=bad):
                error = self.assertRefused("payload", payload=bad)
                self.assertIn("must hold only JSON values", error.messages[0])

    def test_payload_nested_too_deeply_is_refused(self):
        deep: list = []
        for _ in range(2000):
            deep = [deep]
        error = self.assertRefused("payload", payload={"deep": deep})
        self.assertEqual(
            error.messages[0], "The payload nests 2002 levels deep; the most is 100."
        )
        self.assertRefused("payload", payload={"deep": self.nested(100)})

    def test_payload_at_the_depth_limit_with_look_alike_text_is_stored(self):
        # Escaped spellings of the refused characters are ordinary text.
        text = "\\u0000 \\ud800 é 😀 NaN"
        payload = {"text": text, "deep": self.nested(99)}
        with self.captureOnCommitCallbacks(execute=True):
            notification_send(message="hi", visitor=self.visitor, payload=payload)

        self.assertEqual(Notification.objects.get().payload, payload)
        self.assertEqual(len(self.recorder.events()), 1)

    @staticmethod
    def nested(levels: int) -> list:
        """Lists inside lists, `levels` of them."""
        value: list = []
        for _ in range(levels - 1):
            value = [value]
        return value

    def test_exactly_one_audience_is_required(self):
        self.assertRefused("audience", visitor=None)
        self.assertRefused("audience", broadcast=True)

    def test_an_audience_of_the_wrong_kind_is_refused(self):
        user = get_user_model().objects.create_user("kim")
        for wrong in [
            {"visitor": None, "user": user.pk},
            {"visitor": user},
            {"visitor": None, "broadcast": "yes"},
        ]:
            with self.subTest(audience=wrong):
                self.assertRefused("audience", **wrong)

    def test_message_at_the_limit_is_accepted(self):
        with self.captureOnCommitCallbacks(execute=True):
            notification = notification_send(message="é" * 2000, visitor=self.visitor)

        self.assertEqual(Notification.objects.get().message, "é" * 2000)
        self.assertEqual(len(self.recorder.events()), 1)
        self.assertEqual(notification.seq, 1)


class NotifyCommandValidationTests(TestCase):
    def test_undecodable_message_is_a_clean_command_error(self):
        # A shell argument that is not UTF-8 reaches Python as lone surrogates.
        with self.assertRaisesMessage(CommandError, "not valid Unicode text"):
            call_command(
                "notify", "--broadcast", b"caf\xe9".decode("utf-8", "surrogateescape")
            )
        self.assertFalse(Notification.objects.exists())


class NotificationSendDeliveryTests(TestCase):
    def setUp(self):
        self.visitor = Visitor.objects.create()
        self.recorder = RecordingListener(self.visitor.channel, "broadcast")
        self.addCleanup(self.recorder.close)

    def test_event_carries_the_row_as_json(self):
        with self.captureOnCommitCallbacks(execute=True):
            notification = notification_send(
                message="Line one\nline two", level="success", visitor=self.visitor
            )

        [event] = self.recorder.events()
        self.assertEqual(event.channel, self.visitor.channel)
        self.assertEqual(event.type, "notification")
        self.assertEqual(event.id, 1)
        data = json.loads(event.data)
        self.assertEqual(data["id"], notification.pk)
        self.assertEqual(data["type"], "success")
        self.assertEqual(data["message"], "Line one\nline two")
        self.assertEqual(data["created"], notification.created_at.isoformat())

    def test_nothing_is_published_before_commit(self):
        with self.captureOnCommitCallbacks(execute=False) as callbacks:
            notification_send(message="later", visitor=self.visitor)

        self.assertEqual(self.recorder.events(), [])
        self.assertEqual(len(callbacks), 1)

    def test_numbers_count_up_per_channel(self):
        other = Visitor.objects.create()
        with self.captureOnCommitCallbacks(execute=True):
            first = notification_send(message="1", visitor=self.visitor)
            second = notification_send(message="2", visitor=self.visitor)
            elsewhere = notification_send(message="3", visitor=other)
            broadcast = notification_send(message="4", broadcast=True)

        self.assertEqual(
            (first.seq, second.seq, elsewhere.seq, broadcast.seq), (1, 2, 1, 1)
        )
        self.assertEqual(broadcast.channel, "broadcast")

    def test_user_audience_uses_the_user_channel(self):
        user = get_user_model().objects.create_user("carol")
        with self.captureOnCommitCallbacks(execute=True):
            notification = notification_send(message="hi", user=user)

        self.assertEqual(notification.channel, f"user-{user.pk}")
        self.assertEqual(notification.audience, "user")


class RollbackTests(TransactionTestCase):
    def test_rolled_back_send_is_never_delivered_or_numbered(self):
        visitor = Visitor.objects.create()
        recorder = RecordingListener(visitor.channel)
        self.addCleanup(recorder.close)

        with self.assertRaises(RuntimeError), transaction.atomic():
            notification_send(message="never", visitor=visitor)
            raise RuntimeError("the caller's work failed")
        kept = notification_send(message="kept", visitor=visitor)

        self.assertEqual(
            list(Notification.objects.values_list("message", flat=True)), ["kept"]
        )
        self.assertEqual(
            [json.loads(e.data)["message"] for e in recorder.events()], ["kept"]
        )
        # The rolled-back number is reused: numbers on a channel have no gaps.
        self.assertEqual(kept.seq, 1)
