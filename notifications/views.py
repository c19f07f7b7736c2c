from __future__ import annotations

import logging
import re
from urllib.parse import unquote

from django.contrib.auth.base_user import AbstractBaseUser
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST
from django_eventstream.utils import (
    add_default_headers,
    make_id,
)

from .conf import conf
from .models import Notification
from .models import Visitor as VisitorRow
from .selectors import (
    channels_for,
    current_seqs,
    notification_for_reader,
    notifications_unread,
    request_user,
    visitor_for_request,
    visitor_token,
)
from .services import (
    ReportLimitReached,
    notification_mark_read,
    notification_send,
    notifications_mark_all_read,
    report_job_enqueue,
    visitor_ensure,
)
from .storage import release_connection
from .streaming import NO_SESSION_FRAMES, EventStreamResponse

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
    unread = notifications_unread(visitor=visitor, user=user, limit=0)
    listed = list(unread[: conf.INBOX_LIMIT])
    return render(
        request,
        "notifications/index.html",
        {
            "unread": listed,
            "unread_count": unread.count(),
            "newest_id": max((row.pk for row in listed), default=""),
            "last_event_id": last_event_id,
        },
    )


@require_GET
def unread(request: HttpRequest) -> JsonResponse:
    """List this reader's unread notifications as JSON, newest first.

    For clients that cannot keep a stream open (they poll this), and for the
    page after a stream reset. `last_event_id`, read before the list, is where
    a stream may resume without missing anything listed or sent since.
    """
    visitor = visitor_ensure(request)
    user = request_user(request)
    last_event_id = make_id(current_seqs(channels_for(visitor=visitor, user=user)))
    rows = notifications_unread(visitor=visitor, user=user, limit=0)
    response = JsonResponse(
        {
            "unread_count": rows.count(),
            "notifications": [row.event_data() for row in rows[: conf.INBOX_LIMIT]],
            "last_event_id": last_event_id,
        }
    )
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def mark_read(request: HttpRequest, pk: int) -> HttpResponse:
    """Mark one of this reader's notifications read; 404 for anyone else's."""
    visitor = visitor_for_request(request)
    user = request_user(request)
    notification = notification_for_reader(pk=pk, visitor=visitor, user=user)
    if notification is None:
        raise Http404("No such notification.")
    notification_mark_read(notification=notification, visitor=visitor, user=user)
    return _inbox_changed(request, visitor=visitor, user=user)


@require_POST
def mark_all_read(request: HttpRequest) -> HttpResponse:
    """Mark all of this reader's unread notifications read.

    An optional `up_to` (the newest notification id the page shows) leaves
    anything newer unread.
    """
    visitor = visitor_for_request(request)
    user = request_user(request)
    raw_up_to = request.POST.get("up_to", "")
    if raw_up_to and not (raw_up_to.isascii() and raw_up_to.isdigit()):
        return HttpResponseBadRequest("up_to must be a notification id.")
    if visitor is not None or user is not None:
        notifications_mark_all_read(
            visitor=visitor, user=user, up_to=int(raw_up_to) if raw_up_to else None
        )
    return _inbox_changed(request, visitor=visitor, user=user)


def _inbox_changed(
    request: HttpRequest, *, visitor: VisitorRow | None, user: AbstractBaseUser | None
) -> HttpResponse:
    if request.headers.get("X-Requested-With"):
        count = (
            notifications_unread(visitor=visitor, user=user, limit=0).count()
            if visitor is not None or user is not None
            else 0
        )
        return JsonResponse({"unread_count": count})
    return redirect("notifications:index")


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
    """Queue the report job for the requester's session, which it keeps informed.

    Past the session's limit of reports a minute: 429, and the session is told
    why in a warning notification.
    """
    visitor = visitor_ensure(request)
    try:
        report_job_enqueue(visitor)
    except ReportLimitReached as refused:
        if not request.headers.get("X-Requested-With"):
            # A plain form post goes back to the page, which lists the warning.
            return redirect("notifications:index")
        response = HttpResponse(status=429)
        response["Retry-After"] = str(refused.retry_after)
        return response
    return _done(request)


def _done(request: HttpRequest) -> HttpResponse:
    # The page's script asks with X-Requested-With and needs no body; a plain
    # form post (no script) goes back to the page.
    if request.headers.get("X-Requested-With"):
        return HttpResponse(status=204)
    return redirect("notifications:index")


@require_GET
def stream(request: HttpRequest) -> HttpResponse:
    """Serve the page's event stream: its session's, user's and broadcast channels.

    Only the resume position (`Last-Event-ID`, or `lastEventId` for a page's
    first connection) is taken from the client; every other query parameter
    (`channel`, `es-meta`, `recover`...) is ignored. A position that cannot be
    used gets a `stream-reset` event and a start from the current rows.
    """
    token = visitor_token(request)
    if token is None:
        return no_session_response(request)

    raw_id = request.META.get("HTTP_LAST_EVENT_ID", "") or _last_non_empty(
        request.GET.getlist("lastEventId")
    )
    channels = channels_for(token=token, user=request_user(request))
    positions = None
    reset_reason = ""
    if raw_id:
        reset_reason = last_event_id_problem(raw_id, channels)
        if not reset_reason:
            positions = {
                unquote(channel): int(number)
                for channel, _, number in (
                    part.rpartition(":") for part in raw_id.split(",")
                )
            }
    # The stream itself checks that the session's Visitor still exists, in
    # the same query that reads where its channels stand.
    response = EventStreamResponse(
        channels=channels,
        token=token,
        positions=positions,
        reset_reason=reset_reason,
        expires=getattr(request.session, "loaded_expiry", None),
    )
    add_default_headers(response, request=request)
    release_connection()
    return response


def no_session_response(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(NO_SESSION_FRAMES, content_type="text/event-stream")
    add_default_headers(response, request=request)
    release_connection()
    return response


def last_event_id_problem(raw_id: str, channels: list[str]) -> str:
    """Return why a stream cannot resume from `raw_id`, or "" when it can.

    A position must be well formed and name exactly the stream's channels: an
    id that lacks one of them (the page logged in since) or names another (a
    session that ended) cannot say what the client missed on each channel, so
    the client starts afresh with a reset instead of a silent gap.
    """
    if len(raw_id) > LAST_EVENT_ID_MAX or not LAST_EVENT_ID_RE.fullmatch(raw_id):
        return "invalid-last-event-id"
    named = [unquote(part.rpartition(":")[0]) for part in raw_id.split(",")]
    if len(set(named)) != len(named):
        return "invalid-last-event-id"
    if set(named) != set(channels):
        return "other-channels"
    return ""


def _last_non_empty(values: list[str]) -> str:
    for value in reversed(values):
        if value:
            return value
    return ""
