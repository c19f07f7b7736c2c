"""What happens to a browser session's streams and rows when it logs in or out.

Login keeps the session's token (Django cycles the key but keeps the data), so
the visitor keeps its notifications and gains the user's channel. Logout
flushes the session, token included. Either way the session's open streams
are told with a `session-changed` event, on which they close (any process
holding one hears it through the transport) and the page reloads.

Logout deletes the session's notifications at once (all but the
session-changed event, which other processes still have to read). clearsessions
takes the visitors of the expired sessions with it, and `notifications_trim`
removes visitors unseen for longer than SESSION_COOKIE_AGE, whatever the
session backend. A token is random and never reused, so no later visitor can
receive a row of an ended session in the meantime.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.contrib.sessions.models import Session
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from .models import Visitor
from .selectors import SESSION_TOKEN_KEY, visitor_for_request
from .services import visitor_session_changed, visitor_streams_close


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


@receiver(post_delete, sender=Session, dispatch_uid="notifications_session_deleted")
def forget_visitor_of_expired_session(
    sender: Any, instance: Session, **kwargs: Any
) -> None:
    # clearsessions deletes expired sessions; their visitors go with them. A
    # session deleted before it expired is a login cycling its key (the data,
    # token included, lives on under the new key) or a logout (handled above).
    if instance.expire_date >= timezone.now():
        return
    try:
        token = instance.get_decoded().get(SESSION_TOKEN_KEY)
    except Exception:  # a corrupt session decodes to nothing worth keeping
        return
    if token:
        Visitor.objects.filter(token=token).delete()


@receiver(post_delete, sender=Visitor, dispatch_uid="notifications_visitor_deleted")
def forget_channel_of_deleted_visitor(
    sender: Any, instance: Visitor, **kwargs: Any
) -> None:
    # The rows went with the Visitor (CASCADE). A page may still be listening
    # on its channel: one closing event there ends those streams.
    visitor_streams_close(instance)
