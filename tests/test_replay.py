"""Nothing lost: replay after a disconnect, the page-load gap, resets and bursts.

Each scenario runs against a real Daphne child process and reads the real
stream; the replay scenarios run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
from django.db import transaction
from django.test import SimpleTestCase, TransactionTestCase

from notifications.models import Notification
from notifications.models import Visitor as VisitorRow
from notifications.services import notification_send

from .utils import (
    DaphneServer,
    PostgresDatabase,
    SenderProcess,
    Visitor,
    requires_postgres,
    session_token,
)


def positions(event_id: str) -> dict[str, int]:
    """Parse an SSE id such as `broadcast:3,session-…:7` into numbers."""
    pairs = (part.rpartition(":") for part in event_id.split(","))
    return {channel: int(number) for channel, _, number in pairs}


def session_seqs(events) -> list[int]:
    return [
        number
        for event in events
        for channel, number in positions(event.id).items()
        if channel.startswith("session-")
    ]


class ReplayScenarios:
    """Scenarios shared by the SQLite and PostgreSQL classes below.

    They need `self.server` (a running DaphneServer) and only send through the
    server itself (the button), so they hold on either database.
    """

    server: DaphneServer

    def visitor(self) -> Visitor:
        visitor = Visitor(self.server.url)
        self.addCleanup(visitor.close)
        visitor.open_page()
        return visitor

    def test_replay_after_disconnect_sends_the_missed_ones_once_in_order(self):
        alice = self.visitor()
        first = alice.listen(f"?lastEventId={alice.last_event_id()}")
        first.next("stream-open")
        alice.press_button()
        alice.press_button()
        seen = [first.next(), first.next()]
        first.close()

        for _ in range(3):
            alice.press_button()
        second = alice.listen(headers={"Last-Event-ID": seen[-1].id})
        replayed = [second.next(timeout=5) for _ in range(3)]
        alice.press_button()
        live = second.next(timeout=5)

        self.assertEqual(session_seqs(seen), [1, 2])
        self.assertEqual(session_seqs(replayed), [3, 4, 5])
        self.assertEqual(session_seqs([live]), [6])
        ids = [event.json()["id"] for event in seen + replayed + [live]]
        self.assertEqual(len(set(ids)), 6)
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(second.collect(wait=0.5), [])

    def test_notification_sent_between_render_and_connect_arrives_once(self):
        alice = self.visitor()
        rendered_at = alice.last_event_id()
        alice.press_button()  # after the page rendered, before the stream opens

        stream = alice.listen(f"?lastEventId={rendered_at}")
        arrived = stream.next(timeout=5)

        self.assertEqual(arrived.json()["message"], "You pressed the button")
        self.assertEqual(session_seqs([arrived]), [1])
        self.assertEqual(stream.collect(wait=1.0), [])

    def test_stream_without_a_position_starts_at_now(self):
        alice = self.visitor()
        alice.press_button()

        stream = alice.listen()
        stream.next("stream-open")
        alice.press_button()

        self.assertEqual(session_seqs([stream.next(timeout=5)]), [2])
        self.assertEqual(stream.collect(wait=0.5), [])


class SqliteReplayTests(ReplayScenarios, TransactionTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = DaphneServer().start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        super().tearDownClass()

    def test_rolled_back_send_never_appears_on_replay(self):
        alice = self.visitor()
        row = VisitorRow.objects.get(token=session_token(alice))
        with self.assertRaises(RuntimeError), transaction.atomic():
            notification_send(message="never", visitor=row)
            raise RuntimeError("the caller's work failed")
        alice.press_button()

        stream = alice.listen(f"?lastEventId={alice.last_event_id()}")
        arrived = stream.next(timeout=5)

        self.assertEqual(arrived.json()["message"], "You pressed the button")
        self.assertEqual(session_seqs([arrived]), [1])
        self.assertEqual(stream.collect(wait=0.5), [])
        self.assertNotIn("never", bytes(stream.raw).decode())

    def test_resume_across_a_trimmed_row_gets_a_reset_then_live_events(self):
        alice = self.visitor()
        start = alice.last_event_id()
        for _ in range(3):
            alice.press_button()
        Notification.objects.filter(seq=2).delete()

        stream = alice.listen(headers={"Last-Event-ID": start})
        reset = stream.next("stream-reset", timeout=5)
        alice.press_button()
        live = stream.next(timeout=5)

        token = session_token(alice)
        self.assertEqual(
            reset.json(), {"channels": [f"session-{token}"], "reason": "rows-gone"}
        )
        self.assertEqual(positions(reset.id)[f"session-{token}"], 3)
        self.assertEqual(session_seqs([live]), [4])
        self.assertEqual(stream.collect(wait=0.5), [])

    def test_malformed_last_event_id_gets_a_reset_never_a_crash(self):
        alice = self.visitor()
        bob = self.visitor()
        token, bob_token = session_token(alice), session_token(bob)
        alice.press_button()
        mine = f"broadcast:0,session-{token}"
        invalid, other = "invalid-last-event-id", "other-channels"
        # name: (value, sent as, expected reason); CR/LF cannot go in a header.
        cases = {
            "garbage": ("garbage", "header", invalid),
            "negative": (f"{mine}:-1", "header", invalid),
            "nineteen digits": (f"{mine}:{'9' * 19}", "header", invalid),
            "too long": (
                "broadcast:0," * 200 + f"session-{token}:0",
                "header",
                invalid,
            ),
            "error marker": ("error", "header", invalid),
            "repeated channel": (f"{mine}:0,broadcast:0", "header", invalid),
            "CR LF": (f"{mine}:0\r\nevent: x\r\n", "query", invalid),
            "NUL": (f"{mine}:0\x00", "query", invalid),
            "another session": (f"broadcast:0,session-{bob_token}:0", "header", other),
            "a missing channel": ("broadcast:0", "query", other),
            "another user": (f"{mine}:0,user-1:0", "header", other),
        }
        for name, (value, sent_as, reason) in cases.items():
            with self.subTest(name):
                if sent_as == "header":
                    stream = alice.listen(headers={"Last-Event-ID": value})
                else:
                    stream = alice.listen(f"?lastEventId={quote(value)}")
                reset = stream.next("stream-reset", timeout=5)
                stream.next("stream-open", timeout=5)
                self.assertEqual(stream.status_code, 200)
                self.assertEqual(reset.json()["reason"], reason)
                self.assertEqual(
                    positions(reset.id), {"broadcast": 0, f"session-{token}": 1}
                )
                self.assertNotIn(bob_token, bytes(stream.raw).decode())
                stream.close()

    def test_huge_position_from_another_database_gets_a_reset(self):
        alice = self.visitor()
        token = session_token(alice)
        alice.press_button()

        stream = alice.listen(
            headers={"Last-Event-ID": f"broadcast:0,session-{token}:{'9' * 18}"}
        )
        reset = stream.next("stream-reset", timeout=5)
        alice.press_button()

        self.assertEqual(reset.json()["channels"], [f"session-{token}"])
        self.assertEqual(positions(reset.id)[f"session-{token}"], 1)
        self.assertEqual(session_seqs([stream.next(timeout=5)]), [2])

    def test_burst_of_a_thousand_presses_arrives_gapless_in_order(self):
        alice = self.visitor()
        stream = alice.listen(f"?lastEventId={alice.last_event_id()}")
        stream.next("stream-open")
        count = 1000

        local = threading.local()
        clients = []

        def press(_):
            # One client per worker: building an httpx client costs more than
            # the request itself.
            if not hasattr(local, "client"):
                local.client = httpx.Client(
                    base_url=self.server.url, cookies=alice.client.cookies
                )
                clients.append(local.client)
            return local.client.post(
                "/button-pressed/",
                headers={
                    "X-CSRFToken": alice.csrf_token,
                    "X-Requested-With": "fetch",
                    "Referer": self.server.url + "/",
                },
            ).status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(press, range(count)))
        for client in clients:
            client.close()
        events = [stream.next(timeout=30) for _ in range(count)]

        self.assertEqual(statuses, [204] * count)
        self.assertEqual(session_seqs(events), list(range(1, count + 1)))
        ids = [event.json()["id"] for event in events]
        self.assertEqual(len(set(ids)), count)
        self.assertEqual(stream.collect(wait=0.5), [])


@requires_postgres
class PostgresReplayTests(ReplayScenarios, SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.database = PostgresDatabase("replay3").create()
        cls.server = DaphneServer(env={"DATABASE_URL": cls.database.url}).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.database.drop()
        super().tearDownClass()

    def sender(self) -> SenderProcess:
        sender = SenderProcess(self.database.url)
        self.addCleanup(sender.close)
        return sender

    def test_rolled_back_send_never_appears_on_replay(self):
        alice = self.visitor()
        sender = self.sender()
        sender.call("begin")
        sender.call("send", message="never", visitor=session_token(alice))
        sender.call("rollback")
        alice.press_button()

        stream = alice.listen(f"?lastEventId={alice.last_event_id()}")
        arrived = stream.next(timeout=5)

        self.assertEqual(arrived.json()["message"], "You pressed the button")
        self.assertEqual(session_seqs([arrived]), [1])
        self.assertEqual(stream.collect(wait=0.5), [])
        self.assertNotIn("never", bytes(stream.raw).decode())

    def test_reconnect_after_a_later_commit_still_gets_the_earlier_row(self):
        # Row A (a broadcast) takes the lower id but commits after row B (to
        # the session); a client that saw B must still be given A.
        alice = self.visitor()
        start = positions(alice.last_event_id())
        slow, fast = self.sender(), self.sender()
        slow.call("begin")
        row_a = slow.call("send", message="A commits last")
        row_b = fast.call(
            "send", message="B commits first", visitor=session_token(alice)
        )
        self.assertLess(row_a["id"], row_b["id"])

        first = alice.listen(f"?lastEventId={alice.last_event_id()}")
        got_b = first.next(timeout=5)
        self.assertEqual(first.collect(wait=0.5), [])
        first.close()
        slow.call("commit")
        second = alice.listen(headers={"Last-Event-ID": got_b.id})
        got_a = second.next(timeout=5)

        self.assertEqual(got_b.json()["message"], "B commits first")
        self.assertEqual(got_a.json()["message"], "A commits last")
        self.assertEqual(positions(got_a.id)["broadcast"], start["broadcast"] + 1)
        self.assertEqual(second.collect(wait=0.5), [])

    def test_second_sender_on_a_channel_waits_for_the_first_commit(self):
        alice = self.visitor()
        token = session_token(alice)
        first, second = self.sender(), self.sender()
        first.call("begin")
        row_1 = first.call("send", message="first", visitor=token)
        second.request("send", message="second", visitor=token)

        blocked = second.replies.empty() and not _arrives(second, 0.5)
        first.call("commit")
        row_2 = second.reply()
        stream = alice.listen(f"?lastEventId={alice.last_event_id()}")
        events = [stream.next(timeout=5), stream.next(timeout=5)]

        self.assertTrue(blocked)
        self.assertEqual((row_1["seq"], row_2["seq"]), (1, 2))
        self.assertEqual([e.json()["message"] for e in events], ["first", "second"])
        self.assertEqual(session_seqs(events), [1, 2])


def _arrives(sender: SenderProcess, wait: float) -> bool:
    """Whether the sender answers within `wait` seconds (the answer is kept)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not sender.replies.empty():
            return True
        time.sleep(0.02)
    return False
