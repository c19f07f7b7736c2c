"""What happens to a browser session's streams and rows when it logs in or out.

Login keeps the session's token (Django cycles the key but keeps the data), so
the visitor keeps its notifications and gains the user's channel. Logout
flushes the session, token included. Either way the session's open streams
are told with a `session-changed` event, on which they close (any process
holding one hears it through the transport) and the page reloads.

A session that ends (logout, a login as someone else over it, its row deleted
in any way, clearsessions) takes its visitor and its notifications with it,
and one event left on its channel closes its streams; only a login's key
cycle deletes a row whose session lives on (notifications.sessions).
`notifications_trim` removes visitors unseen for longer than
SESSION_COOKIE_AGE, whatever the session backend. A token is random and never
reused, so no later visitor can receive a row of an ended session.

A user can also leave sessions that never logged out: a new password fails
their session hash check at their next request, and an inactive or deleted
user is nobody. Each of these closes the streams of all the user's sessions,
which reconnect as whoever their session now holds.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.contrib.sessions.models import Session
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from .models import Visitor
from .selectors import SESSION_TOKEN_KEY, visitor_for_request
from .services import user_streams_close, visitor_session_changed, visitor_streams_close
from .sessions import session_cycling

# The user fields whose change can take a user away from sessions that did
# not log out: a new password fails the other sessions' hash check, and an
# inactive user is nobody to the authentication backend.
_SIGN_IN_FIELDS = {"password", "is_active"}


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
def forget_visitor_of_ended_session(
    sender: Any, instance: Session, **kwargs: Any
) -> None:
    # Any deleted session ends its browser session, but the old row of a key
    # cycle (a login), whose data, token included, lives on under the new key.
    if session_cycling():
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


@receiver(
    pre_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="notifications_user_saving"
)
def note_sign_in_change(
    sender: Any,
    instance: Any,
    raw: bool = False,
    update_fields: Any = None,
    **kwargs: Any,
) -> None:
    # Compared before the save, sent after it: a stream that reconnects on
    # the event must find the new password or state in the database.
    instance._notifications_sign_in_change = None
    if raw or instance.pk is None:
        return
    if update_fields is not None and not _SIGN_IN_FIELDS & set(update_fields):
        return  # e.g. the last_login update of every login: no query
    before = (
        sender._default_manager.filter(pk=instance.pk)
        .values_list("password", "is_active")
        .first()
    )
    if before is None:
        return
    password, was_active = before
    if password != instance.password:
        instance._notifications_sign_in_change = "password-changed"
    elif was_active and not getattr(instance, "is_active", True):
        instance._notifications_sign_in_change = "deactivated"


@receiver(
    post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="notifications_user_saved"
)
def close_streams_on_sign_in_change(sender: Any, instance: Any, **kwargs: Any) -> None:
    reason = getattr(instance, "_notifications_sign_in_change", None)
    if reason:
        instance._notifications_sign_in_change = None
        user_streams_close(instance.pk, reason=reason)


@receiver(
    post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="notifications_user_gone"
)
def close_streams_of_deleted_user(sender: Any, instance: Any, **kwargs: Any) -> None:
    user_streams_close(instance.pk, reason="user-deleted")
