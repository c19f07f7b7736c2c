"""Clean-up when a session ends: its notifications go with it.

A Visitor's token is never reused, so nobody could receive these rows anyway;
deleting them keeps the table honest and the admin's session list short.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.contrib.sessions.models import Session
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import ChannelSequence, Visitor
from .selectors import SESSION_TOKEN_KEY

logger = logging.getLogger(__name__)


@receiver(user_logged_out, dispatch_uid="notifications_logout")
def forget_visitor_on_logout(
    sender: Any, request: Any, user: Any, **kwargs: Any
) -> None:
    # Sent before logout() flushes the session, so the token is still there.
    session = getattr(request, "session", None)
    token = session.get(SESSION_TOKEN_KEY) if session is not None else None
    if token:
        deleted, _ = Visitor.objects.filter(token=token).delete()
        logger.info("logout ended a browser session (%s rows removed)", deleted)


@receiver(post_delete, sender=Session, dispatch_uid="notifications_session_deleted")
def forget_visitor_of_deleted_session(
    sender: Any, instance: Session, **kwargs: Any
) -> None:
    # clearsessions and session.delete() on the database backend end here.
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
    # The rows went with the Visitor (CASCADE); its counter row goes too, so
    # nothing of the ended session is left to replay.
    ChannelSequence.objects.filter(channel=instance.channel).delete()
