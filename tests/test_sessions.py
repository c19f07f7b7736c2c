"""The session store that every stream connect reads its session with."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.sessions.models import Session
from django.test import TestCase
from django.utils import timezone

from notifications.sessions import SessionStore


class SessionStoreTests(TestCase):
    def saved(self, **data):
        store = SessionStore()
        store.update(data)
        store.save()
        return store.session_key

    def test_it_is_the_configured_engine(self):
        self.assertEqual(settings.SESSION_ENGINE, "notifications.sessions")

    def test_a_saved_session_loads_as_saved(self):
        key = self.saved(token="abc", count=3)

        store = SessionStore(key)

        self.assertEqual(dict(store.items()), {"token": "abc", "count": 3})
        self.assertEqual(store.session_key, key)

    def test_an_expired_session_loads_empty_with_a_new_key(self):
        key = self.saved(token="abc")
        Session.objects.filter(session_key=key).update(
            expire_date=timezone.now() - timedelta(seconds=1)
        )

        store = SessionStore(key)

        self.assertEqual(dict(store.items()), {})
        self.assertIsNone(store.session_key)

    def test_an_unknown_key_loads_empty(self):
        store = SessionStore("x" * 32)

        self.assertEqual(dict(store.items()), {})
        self.assertIsNone(store.session_key)
        self.assertFalse(Session.objects.exists())

    def test_tampered_data_loads_empty(self):
        key = self.saved(token="abc")
        Session.objects.filter(session_key=key).update(session_data="not signed")

        self.assertEqual(dict(SessionStore(key).items()), {})
