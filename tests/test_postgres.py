"""The product on PostgreSQL: a Daphne child process on a database of its own."""

from __future__ import annotations

from django.test import SimpleTestCase

from .utils import DaphneServer, PostgresDatabase, Visitor, requires_postgres


@requires_postgres
class PostgresLiveTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.database = PostgresDatabase("live").create()
        cls.server = DaphneServer(env={"DATABASE_URL": cls.database.url}).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.database.drop()
        super().tearDownClass()

    def test_button_notification_arrives_and_is_stored_in_postgres(self):
        visitor = Visitor(self.server.url)
        self.addCleanup(visitor.close)
        visitor.open_page()
        stream = visitor.listen()
        stream.next("stream-open")

        visitor.press_button()

        data = stream.next("notification").json()
        self.assertEqual(data["message"], "You pressed the button")
        with self.database.connect() as conn:
            row = conn.execute(
                "SELECT message, seq FROM notifications_notification WHERE id = %s",
                [data["id"]],
            ).fetchone()
        self.assertEqual(row, ("You pressed the button", 1))
