"""Routes of the bare app: the library's stream and an in-process sender.

A stream at `/events/<name>/` hears `broadcast` and `c-<name>` (the stock
channel manager); `/send/` publishes with django-eventstream's `send_event`,
as the library's documentation shows. Loopback benchmark only.
"""

from __future__ import annotations

import threading
import time

import django_eventstream
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_eventstream import send_event

# A burst spreads its sends over at most this many seconds, and sends at most
# this many events, so one request cannot keep a thread busy for long.
MAX_BURST = 5000
MAX_BURST_SECONDS = 10.0


def _send(channel: str, marker: str) -> None:
    send_event(channel, "message", {"bench": marker, "t": time.time()})


def _burst(channel: str, prefix: str, count: int, seconds: float) -> None:
    start = time.monotonic()
    for index in range(count):
        due = start + seconds * index / count
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        _send(channel, f"{prefix}{index}")


@csrf_exempt
@require_POST
def send(request: HttpRequest) -> HttpResponse:
    """Send one event, or a burst of events in the background, to `channel`."""
    channel = request.GET.get("channel", "")
    marker = request.GET.get("marker", "")
    if not channel or not marker:
        return HttpResponseBadRequest("channel and marker are required")
    count = min(int(request.GET.get("count", "1")), MAX_BURST)
    if count == 1:
        _send(channel, marker)
    else:
        seconds = min(float(request.GET.get("seconds", "1")), MAX_BURST_SECONDS)
        threading.Thread(
            target=_burst, args=(channel, marker, count, seconds), daemon=True
        ).start()
    return HttpResponse(status=204)


urlpatterns = [
    path(
        "events/<slug:name>/",
        include(django_eventstream.urls),
        {"format-channels": ["broadcast", "c-{name}"]},
    ),
    path("send/", send),
]
