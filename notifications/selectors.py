"""Reads: who a request is, which channels it may hear, what it has not read."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest

from .channels import BROADCAST, session_channel, user_channel
from .conf import conf
from .models import BroadcastReceipt, ChannelSequence, Notification, Visitor

# The key in the session's data that holds the Visitor token.
SESSION_TOKEN_KEY = "_notifications_token"


# By channel, not by empty audience columns: the closing event of an ended
# session or user has neither, and is nobody's to read.
BROADCASTS = Q(channel=BROADCAST)


def visitor_token(request: HttpRequest) -> str | None:
    """Return the Visitor token that the request's session holds, or None."""
    session = getattr(request, "session", None)
    if session is None:
        return None
    # The user first: resolving it can end the session (a password changed
    # elsewhere fails its hash check and Django flushes it, visitor and all),
    # and the token read before that would name a visitor that is gone.
    user = getattr(request, "user", None)
    if user is not None:
        user.is_authenticated  # noqa: B018  (evaluates the lazy user)
    token = session.get(SESSION_TOKEN_KEY)
    if not isinstance(token, str) or not token:
        return None
    return token


def visitor_for_request(request: HttpRequest) -> Visitor | None:
    """Return the Visitor named by the request's session, or None."""
    token = visitor_token(request)
    if token is None:
        return None
    return Visitor.objects.select_related("user").filter(token=token).first()


def request_user(request: HttpRequest) -> AbstractBaseUser | None:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return user
    return None


def channels_for(
    *,
    visitor: Visitor | None = None,
    user: AbstractBaseUser | None,
    token: str | None = None,
) -> list[str]:
    """Return the channels a page of this visitor and user hears, and nothing else.

    The session's channel comes from the `visitor`, or from its `token`.
    """
    channels = [BROADCAST]
    if visitor is not None:
        channels.append(visitor.channel)
    elif token is not None:
        channels.append(session_channel(token))
    if user is not None:
        channels.append(user_channel(user.pk))
    return channels


def current_seqs(channels: list[str]) -> dict[str, int]:
    """Return the last committed `seq` of each channel (0 for a channel never used)."""
    found = dict(
        ChannelSequence.objects.filter(channel__in=channels).values_list(
            "channel", "last_seq"
        )
    )
    return {channel: found.get(channel, 0) for channel in channels}


def visitor_current_seqs(token: str, channels: list[str]) -> dict[str, int] | None:
    """Return `current_seqs(channels)`, or None when no Visitor has this token.

    A stream checks that its session's Visitor still exists and reads where
    its channels stand when it connects. This is one hand-written query where
    the ORM took two, each costing more to build than to run: on this hot
    path that was about a millisecond per connect.
    """
    quote = connection.ops.quote_name
    placeholders = ", ".join(["%s"] * len(channels))
    sql = (
        f"SELECT s.{quote('channel')}, s.{quote('last_seq')}"
        f" FROM {quote(Visitor._meta.db_table)} v"
        f" LEFT JOIN {quote(ChannelSequence._meta.db_table)} s"
        f" ON s.{quote('channel')} IN ({placeholders})"
        f" WHERE v.{quote('token')} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*channels, token])
        rows = cursor.fetchall()
    if not rows:
        return None
    found = {channel: seq for channel, seq in rows if channel is not None}
    return {channel: found.get(channel, 0) for channel in channels}


def notifications_unread(
    *, visitor: Visitor | None, user: AbstractBaseUser | None, limit: int | None = None
) -> QuerySet[Notification]:
    """Return the unread notifications for a page, newest first.

    `limit` defaults to NOTIFICATIONS_INBOX_LIMIT; 0 returns them all.

    A page sees its session's and its user's rows, and broadcasts sent since
    the session (or the user) first appeared that this reader has not dismissed.
    """
    audience = BROADCASTS
    since = visitor.first_seen if visitor is not None else None
    if user is not None and getattr(user, "date_joined", None):
        since = min(since, user.date_joined) if since else user.date_joined
    if since is not None:
        audience &= Q(created_at__gte=since)
    receipts = BroadcastReceipt.objects.filter(notification=OuterRef("pk"))
    if user is not None:
        receipts = receipts.filter(user=user)
    elif visitor is not None:
        receipts = receipts.filter(visitor=visitor)
    else:
        return Notification.objects.none()
    audience &= ~Exists(receipts)
    mine = Q(read_at__isnull=True) & (
        Q(visitor=visitor) if visitor is not None else Q(pk__in=[])
    )
    if user is not None:
        mine |= Q(read_at__isnull=True, user=user)
    queryset = (
        Notification.objects.filter(audience | mine)
        .exclude(event_type__in=Notification.SIGNAL_EVENT_TYPES)
        .order_by("-created_at", "-id")
    )
    if limit == 0:
        return queryset
    return queryset[: limit or conf.INBOX_LIMIT]


def notification_for_reader(
    *, pk: int, visitor: Visitor | None, user: AbstractBaseUser | None
) -> Notification | None:
    """Return notification `pk` if this reader is its audience, else None.

    A reader owns its session's rows, its user's rows and broadcasts; another
    session's or user's row is treated as if it did not exist.
    """
    audience = BROADCASTS
    if visitor is not None:
        audience |= Q(visitor=visitor)
    if user is not None:
        audience |= Q(user=user)
    if visitor is None and user is None:
        return None
    return Notification.objects.filter(audience, pk=pk).first()
