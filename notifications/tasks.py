"""Background jobs, run by Django's tasks framework in a worker process.

With the `django_tasks_db` backend, `manage.py db_worker` runs them; each job
tells the browser session that started it how it goes, through
`notification_send`, so its progress reaches the page from whichever process
runs it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db.models import Count
from django.tasks import TaskContext, task

from .channels import BROADCAST
from .conf import conf
from .models import Notification, Visitor
from .services import notification_send

logger = logging.getLogger(__name__)

PROGRESS_EVENT_TYPE = Notification.PROGRESS_EVENT_TYPE


def report_steps(visitor: Visitor) -> list[tuple[str, Any]]:
    """Return the report's steps: a label, and the work that gives its figure."""
    # What the visitor was told: its own rows, without the page-steering ones
    # (this job's progress, read receipts), which are not notifications.
    mine = Notification.objects.filter(visitor=visitor).exclude(
        event_type__in=Notification.SIGNAL_EVENT_TYPES
    )
    return [
        ("Counting your notifications", mine.count),
        ("Counting unread ones", lambda: mine.filter(read_at__isnull=True).count()),
        (
            "Grouping them by level",
            lambda: dict(mine.values_list("level").annotate(n=Count("id")).order_by()),
        ),
        (
            "Counting broadcasts",
            lambda: (
                Notification.objects.filter(channel=BROADCAST)
                .exclude(event_type__in=Notification.SIGNAL_EVENT_TYPES)
                .count()
            ),
        ),
    ]


def progress_send(visitor: Visitor, job: str, percent: int, step: str) -> None:
    """Tell the session how far its job has got, as a `progress` event."""
    notification_send(
        visitor=visitor,
        message=f"Report: {step} ({percent}%)",
        level=Notification.Level.INFO,
        event_type=PROGRESS_EVENT_TYPE,
        payload={"job": job, "percent": percent, "step": step},
    )


@task(takes_context=True)
def report_build(context: TaskContext, *, visitor_id: int) -> dict[str, Any]:
    """Build a small report for a browser session, telling it each step.

    Sends `progress` events (0 to 100 percent), then a `success` notification
    with the result, or a `danger` one saying what went wrong.
    """
    job = str(context.task_result.id)
    visitor = Visitor.objects.filter(pk=visitor_id).first()
    if visitor is None:
        # The session ended before the job ran: nobody is left to tell.
        logger.info("report job %s: its browser session is gone", job)
        return {}
    steps = report_steps(visitor)
    figures: dict[str, Any] = {}
    step = "starting"
    try:
        for index, (step, work) in enumerate(steps):
            if not Visitor.objects.filter(pk=visitor.pk).exists():
                # Logged out or ended meanwhile: its rows are gone, and nobody
                # is left to tell.
                logger.info("report job %s: its browser session ended", job)
                return {}
            progress_send(visitor, job, index * 100 // len(steps), step)
            figures[step] = work()
            # A pause per step so that the progress can be followed.
            time.sleep(float(conf.REPORT_STEP_SECONDS))
        progress_send(visitor, job, 100, "done")
    except Exception as exc:
        logger.exception("report job %s failed at %r", job, step)
        notification_send(
            visitor=visitor,
            message=f"The report failed while {step.lower()}: {type(exc).__name__}.",
            level=Notification.Level.DANGER,
            payload={"job": job, "step": step},
        )
        raise
    total = figures[steps[0][0]]
    unread = figures[steps[1][0]]
    noun = "notification" if total == 1 else "notifications"
    notification_send(
        visitor=visitor,
        message=f"Your report is ready: {total} {noun}, {unread} unread.",
        level=Notification.Level.SUCCESS,
        payload={"job": job, "total": total, "unread": unread},
    )
    return {"total": total, "unread": unread}
