"""The stream loop on its own: pushes out of order, missing, repeated, and bursts.

The loop runs on an event loop in a thread of the test process, as it runs in
Daphne, while the test sends from the main thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
import time
from unittest import mock

from django.test import TransactionTestCase

from notifications import streaming, transport
from notifications.models import Notification, Visitor
from notifications.services import notification_send
from notifications.streaming import event_stream


class StreamReader:
    """Run `event_stream` on its own event loop and parse the frames it yields."""

    def __init__(self, *, channels, token, positions=None, pause=0.001):
        self.frames: queue.Queue[dict] = queue.Queue()
        self.pause = pause  # a page that reads at a normal pace, not instantly
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(channels, token, positions), daemon=True
        )
        self._thread.start()
        assert self._opened.wait(5), "the stream did not open"

    def _main(self, channels, token, positions):
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._run(channels, token, positions))

    async def _run(self, channels, token, positions):
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        stream = event_stream(channels=channels, token=token, positions=positions)
        buffer = ""
        try:
            async for chunk in stream:
                # Frames shared by every page are encoded once, as bytes.
                buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
                while "\n\n" in buffer:
                    frame, buffer = buffer.split("\n\n", 1)
                    parsed = self._parse(frame)
                    if parsed is not None:
                        if parsed["event"] == "stream-open":
                            self._opened.set()
                        self.frames.put(parsed)
                if self._stop.is_set():
                    break
                await asyncio.sleep(self.pause)
        finally:
            await stream.aclose()

    @staticmethod
    def _parse(frame):
        fields = {"event": "message", "data": "", "id": None}
        for line in frame.split("\n"):
            key, _, value = line.partition(": ")
            if key in fields:
                fields[key] = value
        return None if frame.startswith(":") else fields

    def notifications(self, count, timeout=20.0):
        found, deadline = [], time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            try:
                frame = self.frames.get(timeout=0.1)
            except queue.Empty:
                continue
            if frame["event"] == "notification":
                found.append(frame)
        return found

    def quiet(self, wait=0.3):
        """Return the notification frames that arrive within `wait` seconds."""
        return self.notifications(10**6, timeout=wait)

    def close(self):
        # Like a client going away: the server cancels the response's task.
        if self._stop.is_set():
            return
        self._stop.set()
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(5)


def messages(frames):
    return [json.loads(frame["data"])["message"] for frame in frames]


class EventStreamTests(TransactionTestCase):
    def setUp(self):
        self.visitor = Visitor.objects.create()
        self.channels = ["broadcast", self.visitor.channel]

    def reader(self, **kwargs):
        reader = StreamReader(
            channels=self.channels, token=self.visitor.token, **kwargs
        )
        self.addCleanup(reader.close)
        return reader

    def send_unpushed(self, *messages_):
        with mock.patch.object(transport, "publish"):
            return [
                notification_send(message=m, visitor=self.visitor) for m in messages_
            ]

    def test_pushes_that_overtake_each_other_are_sent_in_number_order(self):
        reader = self.reader()
        first, second = self.send_unpushed("first", "second")

        transport.publish(second)
        transport.publish(first)

        frames = reader.notifications(2)
        self.assertEqual(messages(frames), ["first", "second"])
        self.assertEqual(
            [frame["id"] for frame in frames],
            [f"broadcast:0,{self.visitor.channel}:{n}" for n in (1, 2)],
        )
        self.assertEqual(reader.quiet(), [])

    def test_a_push_that_never_came_is_read_from_the_table(self):
        reader = self.reader()
        self.send_unpushed("sent by another process")

        notification_send(message="pushed here", visitor=self.visitor)

        self.assertEqual(
            messages(reader.notifications(2)),
            ["sent by another process", "pushed here"],
        )

    def test_repeated_push_is_sent_once(self):
        reader = self.reader()
        notification = notification_send(message="once", visitor=self.visitor)
        transport.publish(notification)
        transport.publish(notification)

        self.assertEqual(messages(reader.notifications(1)), ["once"])
        self.assertEqual(reader.quiet(), [])

    def test_resume_replays_then_follows_live(self):
        self.send_unpushed("missed 1", "missed 2")

        reader = self.reader(positions={"broadcast": 0, self.visitor.channel: 0})
        notification_send(message="live", visitor=self.visitor)

        self.assertEqual(
            messages(reader.notifications(3)), ["missed 1", "missed 2", "live"]
        )
        self.assertEqual(reader.quiet(), [])

    def test_resume_across_a_trimmed_row_resets_that_channel(self):
        self.send_unpushed("a", "b", "c")
        Notification.objects.filter(seq=2).delete()

        reader = self.reader(positions={"broadcast": 0, self.visitor.channel: 1})
        reset = reader.frames.get(timeout=5)
        if reset["event"] == "stream-open":
            reset = reader.frames.get(timeout=5)

        self.assertEqual(reset["event"], "stream-reset")
        self.assertEqual(
            json.loads(reset["data"]), {"channels": [self.visitor.channel]}
        )
        self.assertEqual(reset["id"], f"broadcast:0,{self.visitor.channel}:3")

    def test_burst_of_a_thousand_arrives_whole_and_in_order(self):
        reader = self.reader()
        count = 1000

        for i in range(count):
            notification_send(message=f"n{i}", visitor=self.visitor)
        frames = reader.notifications(count, timeout=30)

        self.assertEqual(messages(frames), [f"n{i}" for i in range(count)])
        seqs = [int(frame["id"].rpartition(":")[2]) for frame in frames]
        self.assertEqual(seqs, list(range(1, count + 1)))
        self.assertEqual(reader.quiet(), [])


class KeepAliveTests(TransactionTestCase):
    def setUp(self):
        self.visitor = Visitor.objects.create()
        patches = [
            mock.patch.object(streaming, "KEEP_ALIVE_SECONDS", 0.4),
            mock.patch.object(streaming, "KEEP_ALIVE_CHECK_SECONDS", 0.1),
        ]
        for patch in patches:
            patch.start()
            self.addCleanup(patch.stop)

    def reader(self):
        reader = StreamReader(
            channels=["broadcast", self.visitor.channel], token=self.visitor.token
        )
        self.addCleanup(reader.close)
        return reader

    def events_within(self, reader, seconds):
        events, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                events.append(reader.frames.get(timeout=0.05)["event"])
            except queue.Empty:
                continue
        return events

    def test_an_idle_stream_gets_keep_alives(self):
        reader = self.reader()

        events = self.events_within(reader, 1.5)

        self.assertEqual(events[0], "stream-open")
        # One every 0.4-0.5 s: after 1.5 s, two or three, and nothing else.
        self.assertIn(events[1:].count("keep-alive"), (2, 3))
        self.assertEqual(set(events[1:]), {"keep-alive"})

    def test_a_stream_that_writes_gets_none(self):
        reader = self.reader()
        events = []
        for i in range(8):
            notification_send(message=f"n{i}", visitor=self.visitor)
            events += self.events_within(reader, 0.2)

        self.assertNotIn("keep-alive", events)
        self.assertEqual(events.count("notification"), 8)

    def test_the_sweeper_ends_with_the_last_stream(self):
        reader = self.reader()
        loop = reader._loop
        self.assertIn(loop, streaming._open_pages)

        reader.close()

        self.assertNotIn(loop, streaming._open_pages)
