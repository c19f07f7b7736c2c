"""Open streams share a few server threads (notifications.streaming)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.test import TransactionTestCase

from .utils import DaphneServer, Visitor

# Presses at once, from several clients: more than django-eventstream queues
# for one page (10), so the stream goes back to the store for the rest.
PRESSES = 40
PRESSERS = 8

# Streams opened on top of the first few; with a thread per stream the server
# would grow by this many threads.
MORE_STREAMS = 24


def session_seq(event_id: str) -> int:
    positions = dict(part.rsplit(":", 1) for part in event_id.split(","))
    [seq] = [v for k, v in positions.items() if k.startswith("session-")]
    return int(seq)


def server_threads(server: DaphneServer) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line in /proc/<pid>/status")


class SharedStreamThreadsTests(TransactionTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = DaphneServer(env={"NOTIFICATIONS_LOG_LEVEL": "WARNING"}).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        super().tearDownClass()

    def open_streams(self, count: int) -> list:
        streams = []
        for _ in range(count):
            visitor = Visitor(self.server.url)
            self.addCleanup(visitor.close)
            visitor.open_page()
            stream = visitor.listen()
            stream.next("stream-open", timeout=5)
            streams.append((visitor, stream))
        return streams

    def test_thread_count_does_not_grow_with_open_streams(self):
        # Enough streams to start every shared thread (and Daphne's own).
        first = self.open_streams(6)
        threads_few = server_threads(self.server)

        more = self.open_streams(MORE_STREAMS)
        threads_many = server_threads(self.server)

        self.assertLess(threads_many - threads_few, 4, (threads_few, threads_many))
        # The streams still deliver: the oldest and the newest hear their button.
        for visitor, stream in (first[0], more[-1]):
            self.assertEqual(visitor.press_button().status_code, 204)
            data = stream.next("notification", timeout=5).json()
            self.assertEqual(data["message"], "You pressed the button")

    def test_burst_arrives_once_each_in_order(self):
        [(visitor, stream)] = self.open_streams(1)
        clients = [Visitor(self.server.url) for _ in range(PRESSERS)]
        for client in clients:
            self.addCleanup(client.close)
            # The same browser session: every press goes to this one page.
            client.client.cookies = visitor.client.cookies

        with ThreadPoolExecutor(PRESSERS) as pool:
            statuses = list(
                pool.map(
                    lambda k: clients[k % PRESSERS].press_button().status_code,
                    range(PRESSES),
                )
            )

        self.assertEqual(statuses, [204] * PRESSES)
        events = [stream.next("notification", timeout=10) for _ in range(PRESSES)]
        seqs = [session_seq(event.id) for event in events]
        self.assertEqual(seqs, list(range(1, PRESSES + 1)))
        self.assertEqual(stream.collect("notification", wait=0.5), [])
