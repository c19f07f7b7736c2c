"""The django-eventstream channel manager: a stream hears only its own channels.

The stock manager reads channels from the URL or `?channel=`, which would let
any client read any channel. This one takes them from the request's session
and user alone.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.http import HttpRequest
from django_eventstream.channelmanager import ChannelManagerBase

from .channels import BROADCAST, SESSION_PREFIX, USER_PREFIX, is_valid_channel
from .selectors import channels_for, request_user, visitor_for_request


class NotificationChannelManager(ChannelManagerBase):
    def get_channels_for_request(
        self, request: HttpRequest, view_kwargs: dict[str, Any]
    ) -> set[str]:
        """Return the session's, the user's and the broadcast channel; ignore the URL."""
        visitor = visitor_for_request(request)
        return set(channels_for(visitor=visitor, user=request_user(request)))

    def can_read_channel(self, user: AbstractBaseUser | None, channel: str) -> bool:
        if not is_valid_channel(channel):
            return False
        if channel == BROADCAST or channel.startswith(SESSION_PREFIX):
            # Session channels only ever come from the request's own session.
            return True
        if channel.startswith(USER_PREFIX):
            return user is not None and channel == f"{USER_PREFIX}{user.pk}"
        return False

    def is_channel_reliable(self, channel: str) -> bool:
        return True
