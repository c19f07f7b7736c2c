"""Delivery of committed notifications to the streams of server processes.

`publish` runs after the sending transaction commits. It always hands the
event to this process's django-eventstream listeners at once; other processes
learn of the row through the configured cross-process transport, which only
wakes them up: the row in the database stays the truth.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from django.core.serializers.json import DjangoJSONEncoder
from django_eventstream.event import Event

if TYPE_CHECKING:
    from .models import Notification

logger = logging.getLogger(__name__)


def to_event(notification: Notification) -> Event:
    """Build the django-eventstream event of a row, encoded once for all pages."""
    data = json.dumps(notification.event_data(), cls=DjangoJSONEncoder)
    return Event(
        notification.channel, notification.event_type, data, id=notification.seq
    )


def publish(notification: Notification) -> None:
    """Deliver a committed notification to the open streams of its channel."""
    from .streaming import queue_for_streams  # streaming imports this module

    try:
        queue_for_streams(notification.channel, to_event(notification))
    except Exception:
        # The row is committed; a page that missed the push replays it on
        # reconnect, so a failed publish must not fail the sender.
        logger.exception("publishing notification %s failed", notification.pk)
