"""A sender in a child process: one database connection, driven line by line.

Two of these are two concurrent transactions on a database the test process
does not use (PostgreSQL). Each stdin line is a JSON command, answered by one
JSON line on stdout:

    {"op": "begin"}                      open a transaction
    {"op": "send", "message": "...", "visitor": "<token>"}   (or "broadcast": true)
    {"op": "commit"} / {"op": "rollback"}
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifysite.settings")
    import django

    django.setup()
    from django.db import transaction

    from notifications.models import Visitor
    from notifications.services import notification_send

    atomic = None
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        reply: dict = {"ok": True}
        try:
            if op == "begin":
                atomic = transaction.atomic()
                atomic.__enter__()
            elif op == "send":
                token = command.get("visitor")
                visitor = Visitor.objects.get(token=token) if token else None
                notification = notification_send(
                    message=command["message"],
                    visitor=visitor,
                    broadcast=visitor is None,
                )
                reply.update(
                    id=notification.pk,
                    seq=notification.seq,
                    channel=notification.channel,
                )
            elif op in ("commit", "rollback"):
                if op == "rollback":
                    transaction.set_rollback(True)
                atomic.__exit__(None, None, None)
                atomic = None
            elif op == "quit":
                break
        except Exception as exc:
            reply = {"ok": False, "error": repr(exc)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
