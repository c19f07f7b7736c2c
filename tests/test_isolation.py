"""Isolation under load: many sessions and users on one live server at once."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
)
from django.contrib.sessions.backends.db import SessionStore
from django.test import TransactionTestCase

from notifications.models import Notification, Visitor
from notifications.selectors import SESSION_TOKEN_KEY
from notifications.services import notification_send

from .utils import DaphneServer

SESSIONS = 200
USERS = 20
SIGNED_IN = 100  # the first 100 sessions belong to the 20 users, 5 each
BROADCASTS = 3


class Page:
    """One open page: a session cookie and the notification events its stream got."""

    def __init__(self, session_key: str, visitor: Visitor, user) -> None:
        self.session_key = session_key
        self.visitor = visitor
        self.user = user
        self.received: list[int] = []
        self.opened = asyncio.Event()


async def read_stream(
    client: httpx.AsyncClient, page: Page, stop: asyncio.Event
) -> None:
    async with client.stream("GET", "/notifications/") as response:
        assert response.status_code == 200
        buffer = ""
        async for text in response.aiter_text():
            buffer += text
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                if "event: stream-open" in frame:
                    page.opened.set()
                if frame.startswith("event: notification\n"):
                    data = next(
                        line[6:]
                        for line in frame.split("\n")
                        if line.startswith("data: ")
                    )
                    page.received.append(json.loads(data)["id"])
            if stop.is_set():
                return


class IsolationUnderLoadTests(TransactionTestCase):
    def setUp(self):
        self.server = DaphneServer().start()
        self.addCleanup(self.server.stop)

    def make_pages(self) -> list[Page]:
        User = get_user_model()
        users = [User.objects.create_user(f"user{n}") for n in range(USERS)]
        pages = []
        for n in range(SESSIONS):
            user = users[n % USERS] if n < SIGNED_IN else None
            visitor = Visitor.objects.create(user=user)
            session = SessionStore()
            session[SESSION_TOKEN_KEY] = visitor.token
            if user is not None:
                # What django.contrib.auth.login() stores, without a password hash
                # per session.
                session[SESSION_KEY] = str(user.pk)
                session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
                session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.create()
            pages.append(Page(session.session_key, visitor, user))
        return pages

    def test_every_page_gets_exactly_its_own_its_users_and_the_broadcasts(self):
        pages = self.make_pages()
        users = {page.user for page in pages if page.user is not None}

        asyncio.run(self.exercise(pages, users))

        broadcast_ids = set(
            Notification.objects.filter(visitor=None, user=None).values_list(
                "pk", flat=True
            )
        )
        self.assertEqual(len(broadcast_ids), BROADCASTS)
        for page in pages:
            expected = set(page.visitor.notifications.values_list("pk", flat=True))
            if page.user is not None:
                expected |= set(
                    Notification.objects.filter(user=page.user).values_list(
                        "pk", flat=True
                    )
                )
            expected |= broadcast_ids
            with self.subTest(session=page.visitor.pk):
                self.assertEqual(sorted(page.received), sorted(expected))

    async def exercise(self, pages: list[Page], users) -> None:
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        clients = [
            httpx.AsyncClient(
                base_url=self.server.url,
                cookies={"sessionid": page.session_key},
                timeout=httpx.Timeout(30, read=None),
                limits=limits,
            )
            for page in pages
        ]
        readers = [
            asyncio.create_task(read_stream(client, page, stop))
            for client, page in zip(clients, pages, strict=True)
        ]
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.opened.wait() for p in pages)), 60
            )

            # Every page presses its own button, through the server, at once.
            async def press(client: httpx.AsyncClient) -> None:
                await client.get("/")
                token = client.cookies["csrftoken"]
                response = await client.post(
                    "/button-pressed/",
                    headers={
                        "X-CSRFToken": token,
                        "X-Requested-With": "fetch",
                        "Referer": self.server.url + "/",
                    },
                )
                assert response.status_code == 204, response.status_code

            await asyncio.gather(*(press(client) for client in clients))
            # Users and everyone get theirs from another process: this one.
            await asyncio.to_thread(self.send_from_here, users)

            expected_total = sum(
                1 + BROADCASTS + (1 if page.user is not None else 0) for page in pages
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if sum(len(page.received) for page in pages) >= expected_total:
                    break
                await asyncio.sleep(0.1)
            # Anything wrongly addressed would arrive with the rest; give it a moment.
            await asyncio.sleep(1.0)
        finally:
            stop.set()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await asyncio.gather(*(client.aclose() for client in clients))

    def send_from_here(self, users) -> None:
        for user in users:
            notification_send(user=user, message=f"for {user.get_username()} only")
        for n in range(BROADCASTS):
            notification_send(broadcast=True, message=f"everyone {n}")
