// The page's side of live notifications: one EventSource on the stream, an
// alert and an inbox entry per notification, and the buttons that ask the
// server for one or mark them read.
// Notification text is only ever set with textContent, never parsed as HTML.
(() => {
  "use strict";

  const script = document.currentScript;
  const streamUrl = script.dataset.streamUrl;
  const alerts = document.getElementById("alerts");
  const stateLabel = document.getElementById("connection-state");
  const inbox = document.getElementById("inbox");
  const countLabel = document.getElementById("unread-count");
  const readAllForm = document.getElementById("read-all-form");
  const seen = new Set(); // notification ids already shown on this page
  let unreadCount = Number(countLabel.textContent) || 0;
  let newestId = 0;

  function csrfToken() {
    return document.querySelector("input[name=csrfmiddlewaretoken]").value;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken(), "X-Requested-With": "fetch" },
      credentials: "same-origin",
      body,
    });
  }

  function setState(state, text) {
    stateLabel.dataset.state = state;
    stateLabel.textContent = text;
  }

  function setCount(count) {
    unreadCount = Math.max(0, count);
    countLabel.textContent = String(unreadCount);
  }

  function noteNewest(id) {
    newestId = Math.max(newestId, id);
    readAllForm.querySelector("input[name=up_to]").value = String(newestId);
  }

  function readUrl(id) {
    return inbox.dataset.readUrl.replace(/\/0\/read\/$/, `/${id}/read/`);
  }

  // Other tabs of this browser share the session: tell them what was read so
  // their lists and counts follow without a reload.
  const tabs = "BroadcastChannel" in window ? new BroadcastChannel("notifications") : null;

  function forget(id) {
    inbox.querySelector(`[data-id="${id}"]`)?.remove();
    alerts.querySelector(`[data-id="${id}"]`)?.remove();
  }

  function forgetUpTo(upTo) {
    document.querySelectorAll("#inbox [data-id], #alerts [data-id]").forEach((item) => {
      if (Number(item.dataset.id) <= upTo) item.remove();
    });
  }

  tabs?.addEventListener("message", (event) => {
    const news = event.data || {};
    if (news.kind === "read") forget(news.id);
    if (news.kind === "read-all") forgetUpTo(news.upTo);
    if (typeof news.count === "number") setCount(news.count);
  });

  // Dismissing marks the notification read on the server, for every page of
  // this session; the answer carries the new unread count.
  async function markRead(id) {
    forget(id);
    const response = await post(readUrl(id));
    if (response.ok) {
      const count = (await response.json()).unread_count;
      setCount(count);
      tabs?.postMessage({ kind: "read", id, count });
    } else {
      console.warn("marking a notification read failed", response.status);
    }
  }

  function watchReadForm(form, id) {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      markRead(id);
    });
  }

  function inboxItem(notification) {
    const item = document.createElement("li");
    item.className = `inbox-item level-${notification.type}`;
    item.dataset.id = String(notification.id);
    const level = document.createElement("span");
    level.className = "level";
    level.textContent = notification.type.charAt(0).toUpperCase() + notification.type.slice(1);
    const message = document.createElement("span");
    message.className = "message";
    message.textContent = notification.message;
    const time = document.createElement("time");
    time.dateTime = notification.created;
    time.textContent = notification.created.slice(0, 19).replace("T", " ");
    const form = document.createElement("form");
    form.method = "post";
    form.className = "inline read-form";
    form.action = readUrl(notification.id);
    const button = document.createElement("button");
    button.type = "submit";
    button.className = "link";
    button.textContent = "Mark read";
    form.append(button);
    watchReadForm(form, notification.id);
    item.append(level, message, time, form);
    return item;
  }

  function showAlert(notification) {
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
    close.addEventListener("click", () => markRead(notification.id));
    alert.append(close);

    alerts.prepend(alert);
  }

  let reloading = null; // notifications that arrive while the inbox reloads
  function receive(notification) {
    if (seen.has(notification.id)) return; // the inbox or a replay had it already
    seen.add(notification.id);
    noteNewest(notification.id);
    if (reloading) reloading.push(notification);
    showAlert(notification);
    inbox.querySelector(".empty")?.remove();
    inbox.prepend(inboxItem(notification));
    setCount(unreadCount + 1);
  }

  // After a stream reset the page's list may have a hole: load it again.
  async function reloadInbox() {
    if (reloading) return;
    reloading = [];
    try {
      const response = await fetch(inbox.dataset.unreadUrl, { credentials: "same-origin" });
      if (!response.ok) throw new Error(`inbox answered ${response.status}`);
      const state = await response.json();
      const listed = new Set(state.notifications.map((n) => n.id));
      const late = reloading.filter((n) => !listed.has(n.id));
      inbox.replaceChildren(...state.notifications.map(inboxItem));
      late.forEach((n) => inbox.prepend(inboxItem(n)));
      state.notifications.forEach((n) => {
        seen.add(n.id);
        noteNewest(n.id);
      });
      setCount(state.unread_count + late.length);
      if (!inbox.children.length) {
        const empty = document.createElement("li");
        empty.className = "empty";
        empty.textContent = "Nothing unread.";
        inbox.append(empty);
      }
    } catch (error) {
      console.warn("reloading the inbox failed", error);
    } finally {
      reloading = null;
    }
  }

  inbox.querySelectorAll("[data-id]").forEach((item) => {
    const id = Number(item.dataset.id);
    seen.add(id);
    noteNewest(id);
    const form = item.querySelector(".read-form");
    if (form) watchReadForm(form, id);
  });

  readAllForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const upTo = newestId; // what this page has shown; the form sends the same
    const response = await post(readAllForm.action, new FormData(readAllForm));
    if (!response.ok) {
      console.warn("marking all read failed", response.status);
      return;
    }
    forgetUpTo(upTo);
    const count = (await response.json()).unread_count;
    setCount(count);
    tabs?.postMessage({ kind: "read-all", upTo, count });
  });

  function parse(event) {
    try {
      return JSON.parse(event.data);
    } catch (error) {
      console.warn("ignoring an event whose data is not JSON", error);
      return null;
    }
  }

  // Resume from the newest event the server rendered into the page, so that a
  // notification sent while the page was loading still arrives; later, from
  // the newest event received, so that a new connection misses nothing.
  let position = JSON.parse(document.getElementById("last-event-id").textContent);
  let source = null;

  function track(event) {
    if (event.lastEventId) position = event.lastEventId;
  }

  function connect(resumeFrom) {
    const url = resumeFrom ? `${streamUrl}?lastEventId=${encodeURIComponent(resumeFrom)}` : streamUrl;
    source = new EventSource(url);
    setState("connecting", "connecting…");

    source.addEventListener("open", () => {
      retries = 0;
      setState("live", "live");
    });
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
      track(event);
      const notification = parse(event);
      if (notification) receive(notification);
    });

    source.addEventListener("stream-reset", (event) => {
      // The server could not resume from our position; the stream goes on
      // from now, and what was missed is in the inbox.
      track(event);
      reloadInbox();
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
    setTimeout(() => connect(position), jitter(500 * 2 ** retries));
  }

  connect(position);

  // The button posts with the CSRF token and stays on the page; without
  // JavaScript the same form posts normally and the server redirects back.
  const form = document.getElementById("button-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await post(form.action);
    if (!response.ok) console.warn("the button press failed", response.status);
  });
})();
