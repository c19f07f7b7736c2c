"""Delete expired notifications: run it daily, beside `clearsessions`."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.conf import conf
from notifications.services import notifications_trim


class Command(BaseCommand):
    help = (
        "Delete notifications older than NOTIFICATIONS_RETENTION_DAYS and read ones "
        "older than NOTIFICATIONS_READ_RETENTION_DAYS, in batches."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Rows deleted per batch (default 1000).",
        )

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        deleted = notifications_trim(batch_size=batch_size)
        self.stdout.write(
            f"Deleted {deleted} notifications (kept {conf.RETENTION_DAYS} days, "
            f"read ones {conf.READ_RETENTION_DAYS} days)."
        )
