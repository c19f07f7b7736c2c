"""The page as a person sees it: Debian's Chromium, driven by Playwright.

Each class runs one Daphne child process on the test database and one headless
Chromium; each test opens its own browser contexts (a context is a visitor:
its own cookies, so its own session). Screenshots go to `artifacts/`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from unittest import mock

from django.contrib.auth import get_user_model
from django.test import TransactionTestCase
from django.urls import NoReverseMatch, reverse

from notifications.models import Notification
from notifications.models import Visitor as VisitorRow
from notifications.services import notification_send

from .utils import BASE_DIR, DaphneServer, Visitor, skip_unless_service

CHROMIUM = os.environ.get("NOTIFICATIONS_TEST_CHROMIUM") or shutil.which("chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = BASE_DIR / "artifacts"
STREAM_URL = re.compile(r"^https?://[^/]+/notifications/(\?.*)?$")
# Generous bounds for a loaded 2-core machine; each wait ends as soon as the
# page is in the expected state.
WAIT_MS = 10_000

# A stand-in for the Notification API that records what the page asks and
# shows, and a visibility the test can set: headless Chromium has neither a
# permission prompt nor hidden tabs.
FAKE_NOTIFICATIONS = """
window.__asked = 0; window.__notices = [];
window.__hidden = false;
Object.defineProperty(document, "visibilityState", {
  get: () => (window.__hidden ? "hidden" : "visible"),
});
class FakeNotification {
  static permission = "default";
  static async requestPermission() {
    window.__asked += 1;
    FakeNotification.permission = "granted";
    return "granted";
  }
  constructor(title, options) {
    window.__notices.push({ title, body: options.body, tag: options.tag });
  }
  addEventListener() {}
  close() {}
}
window.Notification = FakeNotification;
"""

# WCAG contrast ratio of text against its background, for each alert, level
# badge and the connection indicator on the page.
CONTRASTS = """() => {
  const rgb = (value) => value.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const luminance = (value) => {
    const [r, g, b] = rgb(value).map((c) => {
      c /= 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const ratios = {};
  const selectors = "#alerts .alert, .level-badge, #connection-state, #unread-count";
  document.querySelectorAll(selectors).forEach((element, index) => {
    const style = getComputedStyle(element);
    const [a, b] = [luminance(style.color), luminance(style.backgroundColor)];
    const key = `${index} ${element.className}`;
    ratios[key] = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  });
  return ratios;
}"""

requires_chromium = skip_unless_service(
    bool(CHROMIUM) and Path(CHROMIUM).exists(),
    "Chromium is not installed (Debian package `chromium`; .ci/run installs it)",
)


def endpoint_exists(name: str, *args) -> bool:
    try:
        reverse(name, args=args)
    except NoReverseMatch:
        return False
    return True


class BrowserTestCase(TransactionTestCase):
    """One Daphne server and one Chromium per class; fresh visitors per test."""

    server_env: dict[str, str] = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Playwright's sync API keeps an event loop running in this thread, so
        # Django takes the test's own ORM calls (plain synchronous code between
        # Playwright calls) for calls from async code. Allowed for this class
        # only; the patch is undone after tearDownClass.
        cls.enterClassContext(
            mock.patch.dict(os.environ, {"DJANGO_ALLOW_ASYNC_UNSAFE": "true"})
        )
        from playwright.sync_api import sync_playwright

        # Class cleanups run even when a later step of this setup fails.
        cls.server = DaphneServer(env=cls.server_env).start()
        cls.addClassCleanup(cls.server.stop)
        cls.playwright = sync_playwright().start()
        cls.addClassCleanup(cls.playwright.stop)
        cls.browser = cls.playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        cls.addClassCleanup(cls.browser.close)

    def new_visitor(self, **options):
        """Return a new browser context: a visitor with cookies of its own."""
        context = self.browser.new_context(base_url=self.server.url, **options)
        context.set_default_timeout(WAIT_MS)
        self.addCleanup(context.close)
        return context

    def open_page(self, context, *, wait_live: bool = True):
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        self.addCleanup(lambda: self.assertEqual(errors, [], "script errors"))
        page.goto("/")
        if wait_live:
            self.wait_state(page, "live")
        return page

    def wait_state(self, page, state: str, timeout: int = WAIT_MS) -> None:
        page.wait_for_selector(
            f'#connection-state[data-state="{state}"]',
            state="attached",
            timeout=timeout,
        )

    def alert(self, page, text: str):
        return page.locator("#alerts .alert", has_text=text)

    def unread(self, page) -> int:
        return int(page.locator("#unread-count").text_content())

    def visitor_row(self, page) -> VisitorRow:
        """Return the Visitor row of a page, found by the token in its position."""
        position = page.locator("#last-event-id").text_content()
        token = re.search(r"session-([0-9a-f]{32})", position).group(1)
        return VisitorRow.objects.get(token=token)

    def hold_streams(self, context) -> list:
        """Hold every stream request of a context until `release` is called.

        Whatever the test sends meanwhile is committed after the page rendered
        its position and before its stream connected, so it arrives through
        the stream's replay from the table, as in a real page-load gap.
        """
        held = []
        context.route(STREAM_URL, lambda route: held.append(route))
        return held

    def wait_held(self, held: list, page) -> None:
        for _ in range(200):  # the request starts once the script runs
            if held:
                return
            page.wait_for_timeout(50)
        self.fail("the page never asked for its stream")

    def release(self, context, held: list, page) -> None:
        self.wait_held(held, page)
        for route in held:
            route.continue_()
        context.unroute(STREAM_URL)

    def count_streams(self, context) -> list[str]:
        """Return a list that collects every stream request of the context."""
        streams: list[str] = []

        def record(request):
            if STREAM_URL.match(request.url):
                streams.append(request.url)

        context.on("request", record)
        return streams

    def screenshot(self, page, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@requires_chromium
class BrowserPageTests(BrowserTestCase):
    def test_button_shows_an_info_alert_and_counts_it_unread(self):
        page = self.open_page(self.new_visitor())

        page.click("#press-button")

        alert = self.alert(page, "You pressed the button")
        alert.wait_for()
        self.assertIn("alert-info", alert.get_attribute("class"))
        self.assertIsNone(alert.get_attribute("role"))  # the region announces it
        self.assertEqual(page.locator("#alerts").get_attribute("aria-live"), "polite")
        self.assertEqual(self.unread(page), 1)
        self.assertEqual(
            page.locator("#inbox .inbox-item .message").all_text_contents(),
            ["You pressed the button"],
        )

    def test_markup_in_a_message_shows_as_text_and_runs_nothing(self):
        context = self.new_visitor()
        held = self.hold_streams(context)
        page = self.open_page(context, wait_live=False)
        hostile = '<img src=x onerror="window.__pwned = 1"><b>bold?</b>'
        notification_send(
            visitor=self.visitor_row(page), message=hostile, level="danger"
        )

        self.release(context, held, page)

        alert = self.alert(page, "bold?")
        alert.wait_for()
        self.assertEqual(alert.locator(".alert-text").text_content(), hostile)
        self.assertIn("alert-danger", alert.get_attribute("class"))
        self.assertEqual(alert.get_attribute("role"), "alert")
        self.assertEqual(page.locator("#alerts img, #inbox img, #alerts b").count(), 0)
        # Rendered by the server on reload, it is escaped text too.
        page.reload()
        self.wait_state(page, "live")
        self.assertEqual(page.locator("#inbox .message").first.text_content(), hostile)
        self.assertEqual(page.locator("#inbox img").count(), 0)
        self.assertIsNone(page.evaluate("window.__pwned"))

    def test_reset_reloads_the_inbox_with_what_the_stream_could_not_replay(self):
        context = self.new_visitor()
        held = self.hold_streams(context)
        page = self.open_page(context, wait_live=False)
        page.evaluate("window.__sameDocument = true")
        notification_send(
            visitor=self.visitor_row(page), message="Lost in a gap", level="warning"
        )
        self.wait_held(held, page)

        # A position the server cannot resume from: it answers with a reset.
        held[0].continue_(url=f"{self.server.url}/notifications/?lastEventId=garbage")
        context.unroute(STREAM_URL)

        page.wait_for_selector("#inbox .inbox-item >> text=Lost in a gap")
        self.wait_state(page, "live")
        self.assertEqual(self.unread(page), 1)
        self.assertEqual(self.alert(page, "Lost in a gap").count(), 0)
        if endpoint_exists("notifications:unread"):
            # Reloaded from the inbox's JSON, not by reloading the page.
            self.assertTrue(page.evaluate("window.__sameDocument"))

    def test_network_loss_shows_offline_then_live_again(self):
        context = self.new_visitor()
        page = self.open_page(context)

        context.set_offline(True)
        self.wait_state(page, "offline")
        self.assertEqual(
            page.locator("#connection-state .connection-label").text_content(),
            "Offline",
        )
        context.set_offline(False)

        self.wait_state(page, "live")
        page.click("#press-button")
        self.alert(page, "You pressed the button").wait_for()

    def test_reconnect_delays_are_jittered_and_bounded(self):
        page = self.open_page(self.new_visitor(), wait_live=False)

        delays = page.evaluate(
            """() => [0, 1, 2, 10].map((attempt) =>
                 Array.from({length: 200}, () =>
                   window.notifysiteConnection.backoff(attempt)))"""
        )

        for values, ceiling in zip(delays, (1000, 2000, 4000, 20000), strict=True):
            self.assertGreaterEqual(min(values), ceiling / 2)
            self.assertLessEqual(max(values), ceiling)
            # Spread over the window, so pages do not return together.
            self.assertGreater(max(values) - min(values), ceiling / 4)

    def test_info_alert_hides_by_itself_but_a_warning_stays(self):
        context = self.new_visitor()
        # A page option: a shorter auto-hide, so the test does not wait 6 s.
        context.add_init_script("window.notifysiteOptions = {autoHideMs: 300}")
        held = self.hold_streams(context)
        page = self.open_page(context, wait_live=False)
        row = self.visitor_row(page)
        notification_send(visitor=row, message="fleeting info", level="info")
        notification_send(visitor=row, message="lasting warning", level="warning")

        self.release(context, held, page)

        self.alert(page, "lasting warning").wait_for()
        self.alert(page, "fleeting info").wait_for(state="detached", timeout=WAIT_MS)
        page.wait_for_timeout(500)
        self.assertEqual(self.alert(page, "lasting warning").count(), 1)
        # Hidden, not read: both stay in the inbox.
        self.assertEqual(self.unread(page), 2)

    def test_session_changed_reloads_the_page_and_nothing_after_it_shows(self):
        from django.db import transaction

        from notifications.services import visitor_session_changed

        page = self.open_page(self.new_visitor())
        row = self.visitor_row(page)
        # Alerts shown live, kept across the reload in this tab's storage.
        page.evaluate(
            """() => new MutationObserver(() => {
                 const shown = [...document.querySelectorAll("#alerts .alert")]
                   .map((alert) => alert.textContent);
                 sessionStorage.setItem("shown", JSON.stringify(shown));
               }).observe(document.getElementById("alerts"), { childList: true })"""
        )

        page.click("#press-button")
        self.alert(page, "You pressed the button").wait_for(timeout=WAIT_MS)

        with page.expect_navigation(timeout=WAIT_MS), transaction.atomic():
            visitor_session_changed(row, user=None, reason="login")
            notification_send(visitor=row, message="sent after the change")

        shown = " | ".join(
            page.evaluate("JSON.parse(sessionStorage.getItem('shown') || '[]')")
        )
        self.assertIn("You pressed the button", shown)  # the record works
        self.assertNotIn("sent after the change", shown)

    def test_progress_event_moves_the_bar_instead_of_stacking_alerts(self):
        context = self.new_visitor()
        held = self.hold_streams(context)
        page = self.open_page(context, wait_live=False)
        row = self.visitor_row(page)
        for percent, step in ((10, "Collecting"), (60, "Crunching numbers")):
            notification_send(
                visitor=row,
                message=f"Report {percent}%",
                event_type="progress",
                payload={"job": "job-1", "percent": percent, "step": step},
            )

        self.release(context, held, page)

        page.wait_for_selector('#report-progress .progress[aria-valuenow="60"]')
        self.assertEqual(
            page.locator("#report-progress .report-step").text_content(),
            "Crunching numbers",
        )
        self.assertEqual(
            page.locator("#report-progress .progress-bar").get_attribute("style"),
            "width: 60%;",
        )
        self.assertEqual(page.locator("#alerts .alert").count(), 0)
        self.assertEqual(self.unread(page), 0)
        self.screenshot(page, "page-progress-desktop")

    def test_two_reports_at_once_get_a_bar_each_and_settle_each_their_own(self):
        context = self.new_visitor()
        page = self.open_page(context)
        row = self.visitor_row(page)

        def step(job, percent, name):
            notification_send(
                visitor=row,
                message=f"Report: {name} ({percent}%)",
                event_type="progress",
                payload={"job": job, "percent": percent, "step": name},
            )

        step("job-a", 0, "queued")
        step("job-b", 0, "queued")
        step("job-a", 50, "Counting")
        step("job-b", 25, "Grouping")
        notification_send(
            visitor=row,
            message="Your report is ready: 3 notifications, 1 unread.",
            level="success",
            payload={"job": "job-a", "total": 3, "unread": 1},
        )

        self.alert(page, "Your report is ready").wait_for(timeout=WAIT_MS)
        jobs = page.locator("#report-progress .report-job")
        self.assertEqual(jobs.count(), 2)
        first, second = jobs.nth(0), jobs.nth(1)
        self.assertEqual(first.locator(".report-step").text_content(), "Done")
        self.assertIn(
            "bg-success", first.locator(".progress-bar").get_attribute("class")
        )
        self.assertEqual(second.locator(".report-step").text_content(), "Grouping")
        self.assertEqual(
            second.locator(".progress").get_attribute("aria-valuenow"), "25"
        )
        self.assertNotIn(
            "bg-success", second.locator(".progress-bar").get_attribute("class")
        )
        page.wait_for_timeout(700)  # the bars' width transitions end
        self.screenshot(page, "page-two-reports-desktop")

    def test_desktop_notice_is_asked_only_on_the_button_and_shown_when_hidden(self):
        context = self.new_visitor()
        context.add_init_script(FAKE_NOTIFICATIONS)
        page = self.open_page(context)
        self.assertEqual(page.evaluate("window.__asked"), 0)
        page.click("#press-button")
        self.alert(page, "You pressed the button").wait_for()
        self.assertEqual(page.evaluate("window.__notices"), [])

        page.click("#desktop-notices")
        page.wait_for_selector('#desktop-notices[aria-pressed="true"]')
        page.evaluate("window.__hidden = true")
        page.click("#press-button")

        page.wait_for_function("window.__notices.length === 1")
        notice = page.evaluate("window.__notices[0]")
        self.assertEqual(page.evaluate("window.__asked"), 1)
        self.assertEqual(notice["body"], "You pressed the button")
        self.assertRegex(notice["tag"], r"^notifysite-\d+$")

    def test_no_desktop_notice_while_another_tab_of_the_visitor_is_visible(self):
        context = self.new_visitor()
        context.add_init_script(FAKE_NOTIFICATIONS)
        hidden, visible = self.open_page(context), self.open_page(context)
        hidden.click("#desktop-notices")
        hidden.wait_for_selector('#desktop-notices[aria-pressed="true"]')
        hidden.evaluate("window.__hidden = true")

        visible.click("#press-button")
        self.alert(hidden, "You pressed the button").wait_for(state="attached")
        hidden.wait_for_timeout(1000)  # past the tabs' 300 ms grace
        self.assertEqual(hidden.evaluate("window.__notices"), [])

        visible.evaluate("window.__hidden = true")
        visible.click("#press-button")
        hidden.wait_for_function("window.__notices.length === 1")

    def test_keyboard_alone_presses_the_button_and_dismisses_the_alert(self):
        page = self.open_page(self.new_visitor())

        def tab_to(selector):
            for _ in range(30):
                page.keyboard.press("Tab")
                if page.evaluate(f"document.activeElement.matches({selector!r})"):
                    return
            self.fail(f"Tab never reached {selector}")

        tab_to("#press-button")
        page.keyboard.press("Enter")
        self.alert(page, "You pressed the button").wait_for()
        tab_to("#alerts .alert .btn-close")
        page.keyboard.press("Enter")

        self.alert(page, "You pressed the button").wait_for(state="detached")
        page.wait_for_selector("#unread-count:text-is('0')")
        # Focus stays on the page rather than falling back to <body>.
        self.assertNotEqual(page.evaluate("document.activeElement.tagName"), "BODY")

    def test_screenshots_of_all_four_levels_at_three_widths(self):
        sizes = {"desktop": (1280, 800), "tablet": (768, 1024), "phone": (390, 844)}
        for name, (width, height) in sizes.items():
            context = self.new_visitor(viewport={"width": width, "height": height})
            held = self.hold_streams(context)
            page = self.open_page(context, wait_live=False)
            row = self.visitor_row(page)
            messages = {
                "info": "Your export has started.",
                "success": "Your report is ready: 1,204 rows, 3 sheets.",
                "warning": "Maintenance at noon: the site may be slow for ten minutes.",
                "danger": "The report failed: the data source did not answer.",
            }
            for level, message in messages.items():
                notification_send(visitor=row, message=message, level=level)

            self.release(context, held, page)

            for level, message in messages.items():
                alert = self.alert(page, message)
                alert.wait_for(state="attached")
                self.assertIn(f"alert-{level}", alert.get_attribute("class"))
            # Newest on top; a phone shows only the two newest over the page.
            visible = page.locator("#alerts .alert:visible .alert-text")
            newest_first = list(reversed(messages.values()))
            shown = 2 if name == "phone" else 4
            self.assertEqual(visible.all_text_contents(), newest_first[:shown])
            page.wait_for_timeout(400)  # the slide-in animation ends
            ratios = page.evaluate(CONTRASTS)
            self.assertGreaterEqual(len(ratios), 10)  # 4 alerts, 4 badges, 2 more
            for selector, ratio in ratios.items():
                self.assertGreaterEqual(ratio, 4.5, f"{selector} at {name} width")
            path = self.screenshot(page, f"page-alerts-{name}")
            self.assertGreater(path.stat().st_size, 10_000)
            self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")


@requires_chromium
class BrowserReadTests(BrowserTestCase):
    def setUp(self):
        if not endpoint_exists("notifications:mark_read", 1):
            self.skipTest("the inbox's mark-read endpoint is missing")

    def test_dismiss_marks_read_and_the_badge_counts_down(self):
        page = self.open_page(self.new_visitor())
        page.click("#press-button")
        self.alert(page, "You pressed the button").wait_for()
        page.click("#press-button")
        page.wait_for_function(
            "document.querySelectorAll('#alerts .alert').length === 2"
        )
        self.assertEqual(self.unread(page), 2)

        page.locator("#alerts .alert .btn-close").first.click()

        page.wait_for_selector("#unread-count:text-is('1')")
        page.wait_for_function(
            "document.querySelectorAll('#inbox .inbox-item').length === 1"
        )
        page.reload()
        self.wait_state(page, "live")
        self.assertEqual(self.unread(page), 1)
        self.assertEqual(page.locator("#inbox .inbox-item").count(), 1)
        self.assertEqual(
            Notification.objects.filter(
                read_at__isnull=True, event_type="notification"
            ).count(),
            1,
        )

    def test_mark_all_read_empties_the_inbox_for_good(self):
        page = self.open_page(self.new_visitor())
        for _ in range(2):
            page.click("#press-button")
        page.wait_for_selector("#unread-count:text-is('2')")

        page.click("#read-all-button")

        page.wait_for_selector("#unread-count:text-is('0')")
        self.assertTrue(page.locator("#read-all-button").is_disabled())
        page.reload()
        self.wait_state(page, "live")
        self.assertEqual(self.unread(page), 0)
        self.assertTrue(page.locator(".inbox-empty").is_visible())

    def test_read_in_one_tab_is_read_in_the_other(self):
        context = self.new_visitor()
        first = self.open_page(context)
        second = self.open_page(context)
        first.click("#press-button")
        for page in (first, second):
            self.alert(page, "You pressed the button").wait_for()

        second.locator("#inbox .inbox-item .btn-close").first.click()

        first.wait_for_selector("#unread-count:text-is('0')")
        first.wait_for_selector("#inbox .inbox-item", state="detached")
        self.alert(first, "You pressed the button").wait_for(state="detached")


@requires_chromium
class BrowserAdminTests(BrowserTestCase):
    """Staff broadcast from the admin (one test: the admin caches content types)."""

    def test_admin_broadcast_reaches_two_visitors_and_a_session_notice_only_its_own(
        self,
    ):
        get_user_model().objects.create_superuser(
            "admin", "admin@example.com", "pw-for-tests"
        )
        pages = [self.open_page(self.new_visitor()) for _ in range(3)]
        alice, bob, carol = pages
        staff = Visitor(self.server.url)
        self.addCleanup(staff.close)
        staff.login("admin", "pw-for-tests")
        staff.client.get("/admin/notifications/notification/add/")

        def send(**fields):
            response = staff.post(
                "/admin/notifications/notification/add/",
                data={
                    "event_type": "notification",
                    "csrfmiddlewaretoken": staff.csrf_token,
                    **fields,
                },
                csrf=False,
            )
            self.assertEqual(response.status_code, 302, response.text[:2000])

        send(
            audience="session",
            visitor=self.visitor_row(carol).pk,
            level="success",
            message="Only for Carol",
        )
        send(audience="broadcast", level="warning", message="Maintenance at noon")

        for page in pages:
            alert = self.alert(page, "Maintenance at noon")
            alert.wait_for()
            self.assertIn("alert-warning", alert.get_attribute("class"))
        self.alert(carol, "Only for Carol").wait_for()
        for page in (alice, bob):
            self.assertEqual(self.alert(page, "Only for Carol").count(), 0)
            self.assertEqual(
                page.locator("#inbox", has_text="Only for Carol").count(), 0
            )
            self.assertEqual(self.unread(page), 1)
        self.assertEqual(self.unread(carol), 2)


@requires_chromium
class BrowserTabsTests(BrowserTestCase):
    def test_seven_tabs_of_one_visitor_all_receive_a_notification(self):
        context = self.new_visitor()
        streams = self.count_streams(context)
        tabs = [self.open_page(context) for _ in range(7)]

        tabs[-1].click("#press-button")

        for tab in tabs:
            self.alert(tab, "You pressed the button").wait_for()
            self.assertEqual(self.unread(tab), 1)
        # One tab holds the stream for all seven.
        self.assertEqual(len(streams), 1, streams)

    def test_without_web_locks_each_tab_keeps_its_own_stream(self):
        context = self.new_visitor()
        context.add_init_script("delete Navigator.prototype.locks")
        streams = self.count_streams(context)
        tabs = [self.open_page(context) for _ in range(2)]

        tabs[0].click("#press-button")

        for tab in tabs:
            self.alert(tab, "You pressed the button").wait_for()
        self.assertEqual(len(streams), 2, streams)

    def test_closing_the_tab_that_holds_the_stream_hands_it_to_another(self):
        context = self.new_visitor()
        first, second = self.open_page(context), self.open_page(context)

        first.close()
        second.click("#press-button")

        self.alert(second, "You pressed the button").wait_for()
        self.wait_state(second, "live")


@requires_chromium
class BrowserRestartTests(BrowserTestCase):
    def test_server_restart_shows_reconnecting_then_live_and_what_was_missed(self):
        page = self.open_page(self.new_visitor())
        row = self.visitor_row(page)

        self.server.kill()
        self.wait_state(page, "reconnecting")
        # Sent while the server is down: committed to the shared database,
        # then replayed by the restarted server from the page's position.
        notification_send(
            visitor=row, message="Sent during the outage", level="warning"
        )
        self.server.start()

        self.wait_state(page, "live", timeout=30_000)
        alert = self.alert(page, "Sent during the outage")
        alert.wait_for()
        self.assertEqual(alert.locator(".notify-missed").count(), 1)
        self.assertEqual(self.unread(page), 1)
        # The page was not reloaded: the same document still runs.
        page.click("#press-button")
        self.alert(page, "You pressed the button").wait_for()


@requires_chromium
class BrowserReportTests(BrowserTestCase):
    """The report job in a real worker process, followed on the page."""

    # The worker is another process: its rows reach this server through the
    # database transport, polled often so that the test stays quick.
    server_env = {
        "NOTIFICATIONS_TRANSPORT": "database",
        "NOTIFICATIONS_POLL_INTERVAL": "0.2",
    }

    def setUp(self):
        if not endpoint_exists("notifications:report_start"):
            self.skipTest("the report job's endpoint is missing")

    def test_report_progress_moves_one_bar_then_a_success_alert(self):
        from .processes import db_worker

        page = self.open_page(self.new_visitor())
        # Record every value the bar takes, as a person would see it move.
        page.evaluate(
            """() => {
              window.__percents = [];
              const bars = document.querySelector("#report-progress");
              new MutationObserver((changes) => {
                for (const change of changes) {
                  window.__percents.push(Number(change.target.getAttribute("aria-valuenow")));
                }
              }).observe(bars, {
                subtree: true, attributes: true, attributeFilter: ["aria-valuenow"],
              });
            }"""
        )
        worker = db_worker(env={"NOTIFICATIONS_REPORT_STEP_SECONDS": "0.3"})
        self.addCleanup(worker.stop)

        page.click("#report-button")

        alert = self.alert(page, "Your report is ready")
        alert.wait_for(timeout=30_000)
        self.assertIn("alert-success", alert.get_attribute("class"))
        page.wait_for_selector("#report-progress .progress-bar.bg-success")
        self.assertEqual(
            page.locator("#report-progress .report-step").text_content(), "Done"
        )
        percents = page.evaluate("window.__percents")
        self.assertEqual(percents, sorted(percents))
        self.assertEqual(percents[-1], 100)
        self.assertTrue(any(0 < value < 100 for value in percents), percents)
        # Progress moved the bar; only the job's result became an alert.
        self.assertEqual(page.locator("#alerts .alert").count(), 1)
        page.wait_for_timeout(700)  # the bar's width transition ends
        self.screenshot(page, "page-report-done-desktop")
