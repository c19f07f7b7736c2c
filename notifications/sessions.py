"""Django's database session store, with each session read in one plain query.

Every stream connect loads its session, and the ORM's part of a load (building
the queryset, compiling it, making a `Session` instance) was the largest single
cost of a connect. This store reads the same row of the same table with the
same condition (the key, not expired) as one parameterised SELECT; writing and
expiring sessions stay Django's own.

Deleting a session ends its browser session (`Visitor`) too, and so its open
streams, unless the data lives on under a new key: `cycle_key` (a login)
deletes the old row after copying the data; `flush` (a logout, or a login as
someone else over a signed-in session) and a direct `delete` end it.
"""

from __future__ import annotations

from typing import Any

from django.contrib.sessions.backends import db
from django.db import connections, router
from django.utils import timezone

from .models import Visitor
from .selectors import SESSION_TOKEN_KEY


class SessionStore(db.SessionStore):
    def load(self) -> dict[str, Any]:
        model = self.model
        connection = connections[router.db_for_read(model)]
        table = connection.ops.quote_name(model._meta.db_table)
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT session_data FROM {table} "
                "WHERE session_key = %s AND expire_date > %s",
                [self.session_key, now],
            )
            row = cursor.fetchone()
        if row is None:
            # As Django's store does: a missing or expired session gets a new key.
            self._session_key = None
            return {}
        return self.decode(row[0])

    def delete(self, session_key: str | None = None) -> None:
        key = session_key if session_key is not None else self.session_key
        ended = self._token_of(key) if key else None
        super().delete(session_key)
        kept = (getattr(self, "_session_cache", None) or {}).get(SESSION_TOKEN_KEY)
        if ended and ended != kept:
            # Deleting the Visitor closes its streams (signals.py).
            Visitor.objects.filter(token=ended).delete()

    def _token_of(self, session_key: str) -> str | None:
        data = (
            self.model.objects.filter(session_key=session_key)
            .values_list("session_data", flat=True)
            .first()
        )
        # decode() gives {} for data that does not verify.
        return self.decode(data).get(SESSION_TOKEN_KEY) if data is not None else None
