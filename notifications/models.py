from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .channels import (
    BROADCAST,
    SESSION_PREFIX,
    USER_PREFIX,
    session_channel,
    user_channel,
)


def new_token() -> str:
    return secrets.token_hex(16)


class Visitor(models.Model):
    """A browser session, named by a random token stored in the session's data.

    The token survives login (which cycles the session key) and is the only
    name of a session that leaves the server: the session key never does.
    """

    token = models.CharField(
        max_length=32, unique=True, default=new_token, editable=False
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="notification_visitors",
    )
    first_seen = models.DateTimeField(default=timezone.now, editable=False)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = "browser session"
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        who = self.user.get_username() if self.user_id else "anonymous"
        return f"{self.token[:8]}… ({who}, last seen {self.last_seen:%Y-%m-%d %H:%M})"

    @property
    def channel(self) -> str:
        return session_channel(self.token)


class Notification(models.Model):
    """One notification, addressed to exactly one audience.

    The audience is a browser session (`visitor`), a user (every session of
    theirs), or everyone when neither is set. `channel` and `seq` place the row
    in its channel's stream: `seq` counts 1, 2, 3... per channel in commit
    order, which is what lets a reconnecting client resume without gaps.
    """

    class Level(models.TextChoices):
        INFO = "info", "Info"
        SUCCESS = "success", "Success"
        WARNING = "warning", "Warning"
        DANGER = "danger", "Danger"

    DEFAULT_EVENT_TYPE = "notification"
    # Event types that steer the page (a job's progress, read state, a session
    # that logged in or out) rather than tell the reader something: they are
    # streamed and replayed like any row, but never listed in the inbox.
    PROGRESS_EVENT_TYPE = "progress"
    READ_EVENT_TYPE = "notification-read"
    SESSION_CHANGED_EVENT_TYPE = "session-changed"
    SIGNAL_EVENT_TYPES = (
        PROGRESS_EVENT_TYPE,
        READ_EVENT_TYPE,
        SESSION_CHANGED_EVENT_TYPE,
    )

    level = models.CharField(max_length=10, choices=Level.choices, default=Level.INFO)
    message = models.TextField()
    event_type = models.CharField(max_length=64, default=DEFAULT_EVENT_TYPE)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    visitor = models.ForeignKey(
        Visitor,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
        verbose_name="browser session",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
    )
    channel = models.CharField(max_length=64, editable=False)
    seq = models.PositiveBigIntegerField(editable=False)
    read_at = models.DateTimeField(null=True, blank=True)
    # Structured data for the page's script (a job's progress, read ids...).
    payload = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "seq"], name="notification_channel_seq"
            ),
            models.CheckConstraint(
                condition=Q(visitor__isnull=True) | Q(user__isnull=True),
                name="notification_one_audience",
            ),
        ]

    def __str__(self) -> str:
        return f"[{self.level}] {self.message[:60]}"

    @property
    def audience(self) -> str:
        # By channel: a closing event of a deleted session has no Visitor row
        # left, yet it is that session's.
        if self.channel.startswith(SESSION_PREFIX):
            return "session"
        if self.channel.startswith(USER_PREFIX):
            return "user"
        return "broadcast"

    def event_data(self) -> dict[str, Any]:
        """Return the JSON body of this notification's SSE event."""
        return {
            "id": self.pk,
            "type": self.level,
            "message": self.message,
            "created": self.created_at.isoformat(),
            "audience": self.audience,
            "event_type": self.event_type,
            "data": self.payload,
        }


def channel_for(*, visitor: Visitor | None, user_pk: int | None) -> str:
    if visitor is not None:
        return visitor.channel
    if user_pk is not None:
        return user_channel(user_pk)
    return BROADCAST


class ChannelSequence(models.Model):
    """The last `seq` handed out on a channel.

    Incrementing it inside the sending transaction locks the row until commit,
    so two senders on one channel commit in the order of their numbers.
    """

    channel = models.CharField(max_length=64, primary_key=True)
    last_seq = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.channel}: {self.last_seq}"


class BroadcastReceipt(models.Model):
    """A reader's dismissal of a broadcast, which is one row shared by all."""

    notification = models.ForeignKey(
        Notification, on_delete=models.CASCADE, related_name="receipts"
    )
    visitor = models.ForeignKey(
        Visitor, on_delete=models.CASCADE, null=True, blank=True
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True
    )
    read_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["notification", "visitor"], name="receipt_once_per_visitor"
            ),
            models.UniqueConstraint(
                fields=["notification", "user"], name="receipt_once_per_user"
            ),
            models.CheckConstraint(
                condition=Q(visitor__isnull=True, user__isnull=False)
                | Q(visitor__isnull=False, user__isnull=True),
                name="receipt_one_reader",
            ),
        ]

    def __str__(self) -> str:
        return f"receipt for notification {self.notification_id}"
