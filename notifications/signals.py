"""What happens to a browser session's streams and rows when it logs in or out.

Login keeps the session's token (Django cycles the key but keeps the data), so
the visitor keeps its notifications and gains the user's channel. Logout
flushes the session, token included. Either way the session's open streams
are told with a `session-changed` event, on which they close (any process
holding one hears it through the transport) and the page reloads.

Nothing here deletes rows when a session row is deleted: login deletes the old
session row too while its data lives on. A Visitor outlives its session only
until `trim_notifications` removes visitors unseen for SESSION_COOKIE_AGE, and
its random token is never reused, so nobody else can receive its rows.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import ChannelSequence, Visitor
from .selectors import visitor_for_request
from .services import visitor_session_changed


@receiver(user_logged_in, dispatch_uid="notifications_login")
def attach_user_on_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    visitor = visitor_for_request(request)
    if visitor is not None:
        visitor_session_changed(visitor, user=user, reason="login")


@receiver(user_logged_out, dispatch_uid="notifications_logout")
def detach_user_on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    # Sent before logout() flushes the session, so the token is still there.
    visitor = visitor_for_request(request)
    if visitor is not None:
        visitor_session_changed(visitor, user=None, reason="logout")


@receiver(post_delete, sender=Visitor, dispatch_uid="notifications_visitor_deleted")
def forget_channel_of_deleted_visitor(
    sender: Any, instance: Visitor, **kwargs: Any
) -> None:
    # The rows went with the Visitor (CASCADE); its counter row goes too, so
    # nothing of the ended session is left to replay.
    ChannelSequence.objects.filter(channel=instance.channel).delete()
