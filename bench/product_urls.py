"""The product's routes plus `/bench/send/`, which the load tool drives.

The endpoint sends through `notification_send`, the product's one way to send,
from inside the server process, so a broadcast or a burst exercises the same
publish path as a view or the admin. It exists only in
`bench.product_settings`, served on loopback by the benchmark.
"""

from __future__ import annotations

import threading
import time

from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from notifications.selectors import visitor_for_request
from notifications.services import notification_send
from notifications.storage import release_connection

MAX_BURST = 5000
MAX_BURST_SECONDS = 10.0


def _send(visitor, marker: str) -> None:  # type: ignore[no-untyped-def]
    payload = {"bench": marker, "t": time.time()}
    if visitor is None:
        notification_send(broadcast=True, message="bench", payload=payload)
    else:
        notification_send(visitor=visitor, message="bench", payload=payload)


def _burst(visitor, prefix: str, count: int, seconds: float) -> None:  # type: ignore[no-untyped-def]
    try:
        start = time.monotonic()
        for index in range(count):
            due = start + seconds * index / count
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            _send(visitor, f"{prefix}{index}")
    finally:
        close_old_connections()
        release_connection()


@csrf_exempt
@require_POST
def send(request: HttpRequest) -> HttpResponse:
    """Send one notification (or a background burst) to the session or to all."""
    marker = request.GET.get("marker", "")
    if not marker:
        return HttpResponseBadRequest("marker is required")
    visitor = None
    if request.GET.get("to") != "all":
        visitor = visitor_for_request(request)
        if visitor is None:
            return HttpResponseBadRequest("no session")
    count = min(int(request.GET.get("count", "1")), MAX_BURST)
    if count == 1:
        _send(visitor, marker)
    else:
        seconds = min(float(request.GET.get("seconds", "1")), MAX_BURST_SECONDS)
        threading.Thread(
            target=_burst, args=(visitor, marker, count, seconds), daemon=True
        ).start()
    return HttpResponse(status=204)


urlpatterns = [
    path("bench/send/", send),
    path("", include("notifysite.urls")),
]
