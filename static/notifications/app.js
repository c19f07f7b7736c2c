// The page's side of live notifications: one EventSource on the stream, an
// alert per notification, and the button that asks the server for one.
// Notification text is only ever set with textContent, never parsed as HTML.
(() => {
  "use strict";

  const script = document.currentScript;
  const streamUrl = script.dataset.streamUrl;
  const alerts = document.getElementById("alerts");
  const stateLabel = document.getElementById("connection-state");
  const seen = new Set(); // notification ids already shown on this page

  document.querySelectorAll("#inbox [data-id]").forEach((item) => {
    seen.add(Number(item.dataset.id));
  });

  function setState(state, text) {
    stateLabel.dataset.state = state;
    stateLabel.textContent = text;
  }

  function showAlert(notification) {
    if (seen.has(notification.id)) return; // the inbox or a replay had it already
    seen.add(notification.id);

    const alert = document.createElement("div");
    alert.className = `alert alert-${notification.type}`;
    alert.setAttribute("role", notification.type === "danger" ? "alert" : "status");
    alert.dataset.id = String(notification.id);

    const text = document.createElement("span");
    text.className = "alert-text";
    text.textContent = notification.message;
    alert.append(text);

    const close = document.createElement("button");
    close.type = "button";
    close.className = "alert-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => alert.remove());
    alert.append(close);

    alerts.prepend(alert);
  }

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch (error) {
      console.warn("ignoring an event whose data is not JSON", error);
      return null;
    }
  }

  // Resume from the newest event the server rendered into the page, so that a
  // notification sent while the page was loading still arrives.
  const lastEventId = JSON.parse(document.getElementById("last-event-id").textContent);
  let source = null;

  function connect(resumeFrom) {
    const url = resumeFrom ? `${streamUrl}?lastEventId=${encodeURIComponent(resumeFrom)}` : streamUrl;
    source = new EventSource(url);
    setState("connecting", "connecting…");

    source.addEventListener("open", () => setState("live", "live"));
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        setState("offline", "offline");
        retryLater();
      } else {
        setState("reconnecting", "reconnecting…");
      }
    });

    // Each event type gets its own listener. "notification" shows an alert;
    // another type, say "progress", would be added the same way with its own
    // behaviour, e.g. source.addEventListener("progress", updateProgressBar).
    source.addEventListener("notification", (event) => {
      const notification = parse(event);
      if (notification) showAlert(notification);
    });

    source.addEventListener("stream-reset", () => {
      // The server could not resume from our position: what we missed is in
      // the inbox, so load the page's state again instead of showing a gap.
      window.location.reload();
    });

    source.addEventListener("stream-error", (event) => {
      const error = parse(event) || {};
      source.close();
      setState("offline", "offline");
      if (error.condition === "no-session") {
        // The session ended; a fresh page load gives this browser a new one.
        setTimeout(() => window.location.reload(), jitter(1000));
      } else {
        retryLater();
      }
    });
  }

  let retries = 0;
  function jitter(base) {
    return base + Math.random() * base;
  }
  function retryLater() {
    retries = Math.min(retries + 1, 6);
    setTimeout(() => connect(null), jitter(500 * 2 ** retries));
  }

  connect(lastEventId);

  // The button posts with the CSRF token and stays on the page; without
  // JavaScript the same form posts normally and the server redirects back.
  const form = document.getElementById("button-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    const response = await fetch(form.action, {
      method: "POST",
      headers: { "X-CSRFToken": token, "X-Requested-With": "fetch" },
      credentials: "same-origin",
    });
    if (!response.ok) console.warn("the button press failed", response.status);
  });
})();
