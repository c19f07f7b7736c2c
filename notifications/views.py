from __future__ import annotations

import logging
import re

from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST
from django_eventstream.utils import (
    add_default_headers,
    make_id,
    sse_encode_event,
    sse_error_response,
)

from .conf import conf
from .listener import with_listener
from .models import Notification
from .selectors import (
    channels_for,
    current_seqs,
    notifications_unread,
    request_user,
    visitor_for_request,
)
from .services import notification_send, report_job_enqueue, visitor_ensure
from .storage import release_connection
from .streaming import stream_response

logger = logging.getLogger(__name__)

# "channel:seq" pairs joined by commas, as django-eventstream writes them. The
# bounds keep a hostile header from costing more than a regex match.
_ID_PART = r"[a-z0-9%-]{1,80}:[0-9]{1,18}"
LAST_EVENT_ID_RE = re.compile(rf"{_ID_PART}(,{_ID_PART}){{0,9}}")
LAST_EVENT_ID_MAX = 1000


@require_GET
@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    """Render the page with the visitor's unread notifications.

    The ids of the newest rendered events go into the page, and its stream
    resumes from them, so nothing sent between render and connect is lost.
    """
    visitor = visitor_ensure(request)
    user = request_user(request)
    channels = channels_for(visitor=visitor, user=user)
    # Read the positions before the inbox: a row committed in between then
    # shows up twice (the page drops the copy) rather than not at all.
    last_event_id = make_id(current_seqs(channels))
    unread = notifications_unread(visitor=visitor, user=user)
    return render(
        request,
        "notifications/index.html",
        {
            "unread": list(unread[: conf.INBOX_LIMIT]),
            "unread_count": unread.count(),
            "last_event_id": last_event_id,
        },
    )


@require_POST
def button_pressed(request: HttpRequest) -> HttpResponse:
    """Send "You pressed the button" to the presser's session only."""
    visitor = visitor_ensure(request)
    notification_send(
        visitor=visitor, message="You pressed the button", level=Notification.Level.INFO
    )
    return _done(request)


@require_POST
def report_start(request: HttpRequest) -> HttpResponse:
    """Queue the report job for the requester's session, which it keeps informed."""
    visitor = visitor_ensure(request)
    report_job_enqueue(visitor)
    return _done(request)


def _done(request: HttpRequest) -> HttpResponse:
    # The page's script asks with X-Requested-With and needs no body; a plain
    # form post (no script) goes back to the page.
    if request.headers.get("X-Requested-With"):
        return HttpResponse(status=204)
    return redirect("notifications:index")


@require_GET
def stream(request: HttpRequest) -> HttpResponse:
    """Serve the page's event stream through django-eventstream.

    Only the resume position is taken from the client; every other query
    parameter (`channel`, `es-meta`, `recover`, `link`...) is dropped before
    django-eventstream sees the request.
    """
    visitor = visitor_for_request(request)
    if visitor is None:
        response = sse_error_response(
            "no-session", "This page has no session. Load the page again to get one."
        )
        add_default_headers(response, request=request)
        release_connection()
        return response
    request.notifications_visitor = visitor

    raw_id = request.META.pop("HTTP_LAST_EVENT_ID", "") or _last_non_empty(
        request.GET.getlist("lastEventId")
    )
    clean = QueryDict(mutable=True)
    reset_reason = ""
    if raw_id:
        if len(raw_id) <= LAST_EVENT_ID_MAX and LAST_EVENT_ID_RE.fullmatch(raw_id):
            clean["lastEventId"] = raw_id
        else:
            reset_reason = "invalid-last-event-id"
            logger.warning(
                "stream for browser session %s: malformed Last-Event-ID", visitor.pk
            )
    request.GET = clean

    response = stream_response(request)
    if reset_reason and isinstance(response, StreamingHttpResponse):
        channels = channels_for(visitor=visitor, user=request_user(request))
        reset = sse_encode_event(
            "stream-reset",
            {"reason": reset_reason, "channels": channels},
            event_id=make_id(current_seqs(channels)),
            json_encode=True,
        )
        response.streaming_content = _prepend(reset, response.streaming_content)
    if isinstance(response, StreamingHttpResponse):
        # This process's cross-process listener starts with its first stream.
        response.streaming_content = with_listener(response.streaming_content)
    release_connection()
    return response


def _last_non_empty(values: list[str]) -> str:
    for value in reversed(values):
        if value:
            return value
    return ""


async def _prepend(first: str, rest):  # type: ignore[no-untyped-def]
    yield first.encode()
    async for chunk in rest:
        yield chunk
