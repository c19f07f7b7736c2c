"""`manage.py notify`: send a notification from the shell, a cron job or a script."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications.models import Notification, Visitor
from notifications.services import notification_send


class Command(BaseCommand):
    help = "Send a notification to everyone, one browser session or one user."

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument(
            "--broadcast", action="store_true", help="Send to everyone."
        )
        target.add_argument(
            "--session",
            metavar="TOKEN",
            help="Send to the browser session with this token (see the admin).",
        )
        target.add_argument(
            "--user", metavar="USERNAME", help="Send to every session of this user."
        )
        parser.add_argument(
            "--level",
            default=Notification.Level.INFO,
            choices=Notification.Level.values,
            help="How the notification looks (default: %(default)s).",
        )
        parser.add_argument(
            "--event-type",
            default=Notification.DEFAULT_EVENT_TYPE,
            help="The SSE event name (default: %(default)s).",
        )
        parser.add_argument("message", help="The text to send.")

    def handle(self, *args: Any, **options: Any) -> None:
        audience: dict[str, Any] = {}
        if options["broadcast"]:
            audience["broadcast"] = True
            described = "everyone"
        elif options["session"] is not None:
            visitor = Visitor.objects.filter(token=options["session"]).first()
            if visitor is None:
                raise CommandError("No browser session has that token.")
            audience["visitor"] = visitor
            described = f"browser session {visitor.token[:8]}…"
        else:
            model = get_user_model()
            try:
                user = model._default_manager.get_by_natural_key(options["user"])
            except model.DoesNotExist:
                raise CommandError(f"No user is named {options['user']!r}.") from None
            audience["user"] = user
            described = f"user {user.get_username()}"
        try:
            sent = notification_send(
                message=options["message"],
                level=options["level"],
                event_type=options["event_type"],
                **audience,
            )
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(f"Sent notification {sent.pk} to {described}.")
