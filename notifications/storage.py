"""django-eventstream storage backed by the Notification table.

django-eventstream asks its storage for a channel's current id and for the
events after an id. Answering from the Notification table (instead of the
library's own event table) keeps one copy of every notification, and replay on
reconnect reads exactly what was sent.
"""

from __future__ import annotations

from django.db import connection
from django_eventstream.event import Event
from django_eventstream.storage import EventDoesNotExist, StorageBase

from . import transport
from .models import Notification
from .selectors import current_seqs, visitor_current_seqs
from .transport import to_event


def release_connection() -> None:
    """Close this thread's connection unless a transaction is using it.

    A stream reads from its own thread and then waits for minutes; returning
    the connection after each read keeps idle streams from pinning one each.
    """
    if not connection.in_atomic_block:
        connection.close()


class NotificationStorage(StorageBase):
    def append_event(self, channel: str, event_type: str, data: str) -> Event:
        raise NotImplementedError(
            "Notifications are stored by notifications.services.notification_send; "
            "django_eventstream.send_event cannot write to this storage."
        )

    def get_current_id(self, channel: str) -> int:
        return self.get_current_ids([channel])[channel]

    def get_current_ids(self, channels: list[str]) -> dict[str, int]:
        """Return where a stream of these channels starts: one query for all."""
        generation = transport.scan_generation()
        try:
            current = current_seqs(channels)
        finally:
            release_connection()
        return {
            channel: self._reach(channel, current[channel], generation)
            for channel in channels
        }

    def get_start_ids(self, token: str, channels: list[str]) -> dict[str, int] | None:
        """Like `get_current_ids`, or None when the session's Visitor is gone."""
        generation = transport.scan_generation()
        try:
            current = visitor_current_seqs(token, channels)
        finally:
            release_connection()
        if current is None:
            return None
        return {
            channel: self._reach(channel, current[channel], generation)
            for channel in channels
        }

    @staticmethod
    def _reach(channel: str, current: int, generation: int) -> int:
        # With a listener in this process, a read stops at the channel's mark:
        # rows above it reach the stream from the listener, once.
        if not transport.listener_active():
            return current
        return transport.mark_for_read(channel, current, generation)

    def get_events(self, channel: str, last_id: int, limit: int = 100) -> list[Event]:
        """Return the events after `last_id`, in order, or raise EventDoesNotExist.

        Numbers on a channel have no gaps (a rolled-back send gives its number
        back), so any hole between `last_id` and the channel's current number
        means rows the client never saw are gone: trimmed, deleted, or the id
        came from another database. The caller then sends a reset instead of
        a partial list.
        """
        generation = transport.scan_generation()
        try:
            current = current_seqs([channel])[channel]
            if last_id < 0 or last_id > current:
                raise EventDoesNotExist(f"No event {last_id} on this channel", current)
        finally:
            release_connection()
        reach = self._reach(channel, current, generation)
        if last_id > reach:
            # The client already has rows this process has not delivered yet
            # (its page was rendered from the table): move the mark up to it.
            transport.catch_up_channel(channel, upto=last_id)
            return []
        if last_id == reach:
            return []
        seqs_wanted = min(limit, reach - last_id)
        try:
            rows = list(
                Notification.objects.filter(
                    channel=channel, seq__gt=last_id, seq__lte=last_id + seqs_wanted
                ).order_by("seq")
            )
        finally:
            release_connection()
        # Every number in the window must be there, once, in order.
        if [row.seq for row in rows] != list(
            range(last_id + 1, last_id + seqs_wanted + 1)
        ):
            raise EventDoesNotExist(f"Events after {last_id} were removed", reach)
        return [to_event(row) for row in rows]
