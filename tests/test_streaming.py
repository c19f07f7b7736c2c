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
        if self._loop.is_closed():
            return  # the stream ended by itself
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

    def test_a_read_stops_at_session_changed_and_sends_nothing_after_it(self):
        from notifications.services import visitor_session_changed

        self.send_unpushed("before")
        with mock.patch.object(transport, "publish"):
            visitor_session_changed(self.visitor, user=None, reason="login")
        self.send_unpushed("after")

        reader = self.reader(positions={"broadcast": 0, self.visitor.channel: 0})
        events = []
        deadline = time.monotonic() + 5
        while "session-changed" not in events and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                events.append(reader.frames.get(timeout=0.1)["event"])
        later = reader.quiet(wait=0.5)

        self.assertEqual(events, ["stream-open", "notification", "session-changed"])
        self.assertEqual(later, [])

    def test_resume_across_a_trimmed_row_resets_that_channel(self):
        self.send_unpushed("a", "b", "c")
        Notification.objects.filter(seq=2).delete()

        reader = self.reader(positions={"broadcast": 0, self.visitor.channel: 1})
        reset = reader.frames.get(timeout=5)
        if reset["event"] == "stream-open":
            reset = reader.frames.get(timeout=5)

        self.assertEqual(reset["event"], "stream-reset")
        self.assertEqual(
            json.loads(reset["data"]),
            {"channels": [self.visitor.channel], "reason": "rows-gone"},
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


class Pages:
    """Open event streams as StreamHandler serves them, with the page's `send` known.

    Frames the stream loop yields and frames the fan-out writes itself are kept
    apart, per page, in the order they were sent.
    """

    def __init__(self, visitors, *, send_delay=0.0):
        self.send_delay = send_delay
        self.written = {visitor.token: [] for visitor in visitors}  # by the fan-out
        self.yielded = {visitor.token: [] for visitor in visitors}  # by the loop
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(visitors),))
        self._thread.start()
        assert self._ready.wait(10), "the pages did not open"

    async def _run(self, visitors):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._opened = asyncio.Event()
        self._waiting = len(visitors)
        tasks = [asyncio.create_task(self._page(visitor)) for visitor in visitors]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._opened.wait(), 10)
            self._ready.set()
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _page(self, visitor):
        response = streaming.EventStreamResponse(
            channels=["broadcast", visitor.channel], token=visitor.token, positions=None
        )

        async def send(message):
            if self.send_delay:
                await asyncio.sleep(self.send_delay)
            self.written[visitor.token].append(message["body"].decode())

        response.page.send = send
        async for part in response:
            if not self.yielded[visitor.token]:
                self._waiting -= 1
                if not self._waiting:
                    self._opened.set()
            self.yielded[visitor.token].append(part.decode())

    def messages(self, token, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [
                json.loads(line[6:])["message"]
                for frame in self.written[token] + self.yielded[token]
                for line in frame.split("\n")
                if line.startswith("data: {")
            ]
            if len(found) >= count:
                return found
            time.sleep(0.02)
        return found

    def close(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class FanOutTests(TransactionTestCase):
    def pages(self, count, **kwargs):
        visitors = [Visitor.objects.create() for _ in range(count)]
        pages = Pages(visitors, **kwargs)
        self.addCleanup(pages.close)
        return visitors, pages

    def test_a_waiting_page_is_written_to_without_waking_its_loop(self):
        [visitor], pages = self.pages(1)

        notification_send(message="direct", visitor=visitor)

        self.assertEqual(pages.messages(visitor.token, 1), ["direct"])
        [frame] = pages.written[visitor.token]
        self.assertIn(f"id: broadcast:0,{visitor.channel}:1\n", frame)
        self.assertEqual(len(pages.yielded[visitor.token]), 1)  # the opening only

    def test_a_broadcast_in_steps_reaches_every_page_in_order(self):
        with mock.patch.object(streaming, "FAN_OUT_STEP", 2):
            visitors, pages = self.pages(7)
            for i in range(3):
                notification_send(message=f"b{i}", broadcast=True)

            for visitor in visitors:
                self.assertEqual(pages.messages(visitor.token, 3), ["b0", "b1", "b2"])
        ids = [
            line
            for frame in pages.written[visitors[0].token]
            for line in frame.split("\n")
            if line.startswith("id: ")
        ]
        self.assertEqual(
            ids, [f"id: broadcast:{n},{visitors[0].channel}:0" for n in (1, 2, 3)]
        )

    def test_a_send_that_waits_keeps_order_and_loses_nothing(self):
        [visitor], pages = self.pages(1, send_delay=0.05)

        for i in range(20):
            notification_send(message=f"n{i}", visitor=visitor)

        self.assertEqual(
            pages.messages(visitor.token, 20), [f"n{i}" for i in range(20)]
        )
        time.sleep(0.3)
        self.assertEqual(len(pages.messages(visitor.token, 21, timeout=0.1)), 20)

    def test_only_a_waiting_page_at_the_previous_number_is_written_to(self):
        async def check():
            loop = asyncio.get_running_loop()
            written = []

            async def send(message):
                written.append(message["body"])

            def page(**state):
                listener = streaming._listener_class()()
                listener.loop, listener.page = loop, streaming.Page()
                listener.page.send = send
                listener.idle, listener.positions = True, {"broadcast": 4}
                for name, value in state.items():
                    setattr(listener, name, value)
                return listener

            event = transport.to_event(Notification(channel="broadcast", seq=5))
            cases = {
                "next number, waiting": (page(), 1),
                "behind (a hole)": (page(positions={"broadcast": 3}), 0),
                "already sent": (page(positions={"broadcast": 5}), 0),
                "busy": (page(idle=False), 0),
                "woken, not yet run": (page(), 0),
            }
            cases["woken, not yet run"][0].aevent.set()
            for name, (listener, writes) in cases.items():
                written.clear()
                streaming._give(listener, "broadcast", event, loop, loop.time())
                with self.subTest(name):
                    self.assertEqual(len(written), writes)
                    queued = listener.channel_items.get("broadcast", [])
                    self.assertEqual(queued, [] if writes else [event])
                    self.assertEqual(listener.aevent.is_set(), not writes)

        asyncio.run(check())


class PreparedStreamTests(TransactionTestCase):
    """A response made where StreamHandler serves it registers its page at once."""

    def setUp(self):
        self.visitor = Visitor.objects.create()
        self.channels = ["broadcast", self.visitor.channel]
        self.loop = asyncio.new_event_loop()
        self.addCleanup(self.loop.close)
        token = streaming._handler_loop.set(self.loop)
        self.addCleanup(streaming._handler_loop.reset, token)

    def listening(self):
        manager = streaming.get_listener_manager()
        with manager.lock:
            return self.visitor.channel in manager.listeners_by_channel

    def response(self):
        return streaming.EventStreamResponse(
            channels=self.channels, token=self.visitor.token, positions=None
        )

    def test_the_page_listens_from_the_view_on(self):
        response = self.response()
        self.addCleanup(response.close)

        self.assertTrue(self.listening())

    def test_a_response_closed_before_its_stream_started_stops_listening(self):
        response = self.response()

        response.close()
        response.close()

        self.assertFalse(self.listening())

    def test_a_response_dropped_without_closing_stops_listening(self):
        response = self.response()
        self.assertTrue(self.listening())

        del response

        self.assertFalse(self.listening())
