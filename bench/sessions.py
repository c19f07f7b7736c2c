"""Make N browser sessions as the product would, and print their keys.

Run by the benchmark in a child process (`python -m bench.sessions N`) against
its own database: each session holds a Visitor's token in signed session data,
exactly what `visitor_ensure` stores when a page is first loaded.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notifysite.settings")
    import django

    django.setup()
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone
    from django.utils.crypto import get_random_string

    from notifications.models import Visitor
    from notifications.selectors import SESSION_TOKEN_KEY

    count = int(sys.argv[1])
    visitors = Visitor.objects.bulk_create(
        [Visitor() for _ in range(count)], batch_size=1000
    )
    store = SessionStore()
    expires = timezone.now() + timedelta(days=1)
    sessions = [
        Session(
            session_key=get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789"),
            session_data=store.encode({SESSION_TOKEN_KEY: visitor.token}),
            expire_date=expires,
        )
        for visitor in visitors
    ]
    Session.objects.bulk_create(sessions, batch_size=1000)
    sys.stdout.write("\n".join(s.session_key for s in sessions) + "\n")


if __name__ == "__main__":
    main()
