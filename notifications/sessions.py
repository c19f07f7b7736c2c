"""Django's database session store, with each session read in one plain query.

Every stream connect loads its session, and the ORM's part of a load (building
the queryset, compiling it, making a `Session` instance) was the largest single
cost of a connect. This store reads the same row of the same table with the
same condition (the key, not expired) as one parameterised SELECT, and keeps
the row's expiry, at which a stream of the session ends; writing and expiring
sessions stay Django's own.

Deleting a session row ends its browser session (`Visitor`) too, and so its
open streams (signals.py), however it is deleted (`flush` at a logout or at a
login as someone else, `SessionStore.delete`, a queryset or the admin,
`clearsessions`), except for the old row of `cycle_key` (a login), whose data
lives on under the new key.
"""

from __future__ import annotations

import contextvars
from datetime import UTC, datetime
from typing import Any

from django.contrib.sessions.backends import db
from django.db import connections, router
from django.utils import timezone

_cycling: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "notifications_session_cycling", default=False
)


class SessionStore(db.SessionStore):
    # When the row read by `load` expires (a stream ends then, see streaming).
    loaded_expiry: datetime | None = None

    def load(self) -> dict[str, Any]:
        model = self.model
        connection = connections[router.db_for_read(model)]
        table = connection.ops.quote_name(model._meta.db_table)
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT session_data, expire_date FROM {table} "
                "WHERE session_key = %s AND expire_date > %s",
                [self.session_key, now],
            )
            row = cursor.fetchone()
        if row is None:
            # As Django's store does: a missing or expired session gets a new key.
            self._session_key = None
            return {}
        self.loaded_expiry = _aware(row[1])
        return self.decode(row[0])

    def cycle_key(self) -> None:
        # Django copies the data under a new key and deletes the old row: the
        # browser session lives on, so that deletion must not end it.
        token = _cycling.set(True)
        try:
            super().cycle_key()
        finally:
            _cycling.reset(token)


def _aware(value: datetime) -> datetime:
    # SQLite gives the stored (naive, UTC) value back as it is; PostgreSQL an
    # aware one.
    return value if timezone.is_aware(value) else value.replace(tzinfo=UTC)


def session_cycling() -> bool:
    """Whether the Session row being deleted now is a key cycle's old row."""
    return _cycling.get()
