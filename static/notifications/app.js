// The page: alerts, the inbox and its unread badge, the report's progress bar,
// the connection indicator and desktop notices. The live connection itself
// (one stream shared by all tabs) is in connection.js.
// Notification text is only ever set with textContent, never parsed as HTML.
(() => {
  "use strict";

  const script = document.currentScript;
  const config = script.dataset;
  const alerts = document.getElementById("alerts");
  const inbox = document.getElementById("inbox");
  const inboxEmpty = inbox.querySelector(".inbox-empty");
  const badge = document.getElementById("unread-count");
  const stateBadge = document.getElementById("connection-state");
  const csrfToken = document.querySelector("input[name=csrfmiddlewaretoken]").value;
  const baseTitle = document.title.replace(/^\(\d+\) /, "");

  const LEVELS = { info: "Info", success: "Success", warning: "Warning", danger: "Danger" };
  // Info and success go away by themselves; warnings and dangers wait for the
  // reader. The notification stays in the inbox either way until dismissed.
  // A site can set window.notifysiteOptions = { autoHideMs } before this script.
  const options = window.notifysiteOptions || {};
  const hideAfter = Number(options.autoHideMs) > 0 ? Number(options.autoHideMs) : 6000;
  const AUTO_HIDE_MS = { info: hideAfter, success: hideAfter };
  const MAX_ALERTS = 5;

  const seen = new Set(); // notification ids this page has shown or listed
  let unreadCount = Number(badge.textContent) || 0;

  inbox.querySelectorAll(".inbox-item[data-id]").forEach((item) => {
    seen.add(Number(item.dataset.id));
  });

  // --- the unread badge ------------------------------------------------
  function setUnread(count) {
    unreadCount = Math.max(0, count);
    badge.textContent = String(unreadCount);
    badge.setAttribute("aria-label", `${unreadCount} unread`);
    badge.classList.toggle("text-bg-primary", unreadCount > 0);
    badge.classList.toggle("text-bg-secondary", unreadCount === 0);
    document.title = unreadCount ? `(${unreadCount}) ${baseTitle}` : baseTitle;
    const listed = inbox.querySelector(".inbox-item") !== null;
    inboxEmpty.hidden = listed;
    const readAll = document.getElementById("read-all-button");
    if (readAll) readAll.disabled = !listed;
  }

  // --- the connection indicator ------------------------------------------
  const STATES = {
    connecting: ["Connecting…", "text-bg-secondary"],
    live: ["Live", "text-bg-success"],
    reconnecting: ["Reconnecting…", "text-bg-warning"],
    offline: ["Offline", "text-bg-danger"],
  };

  function showState(state) {
    const [label, style] = STATES[state] || STATES.connecting;
    stateBadge.dataset.state = state;
    stateBadge.classList.remove(...Object.values(STATES).map(([, name]) => name));
    stateBadge.classList.add(style);
    stateBadge.querySelector(".connection-label").textContent = label;
    stateBadge.title = `Live updates: ${label.replace("…", "").toLowerCase()}`;
  }

  // --- server calls ----------------------------------------------------
  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken, "X-Requested-With": "fetch" },
      credentials: "same-origin",
      body,
    });
    if (!response.ok) console.warn("POST %s answered %d", url, response.status);
    return response;
  }

  // An answer that carries the reader's unread count settles the badge.
  async function countFrom(response) {
    if (!response.ok || !response.headers.get("Content-Type")?.includes("json")) return null;
    const answer = await response.json();
    if (!Number.isInteger(answer.unread_count)) return null;
    setUnread(answer.unread_count);
    return answer.unread_count;
  }

  // Other tabs of this browser hear of a read at once; other devices through
  // the server's notification-read event.
  function shareRead(read) {
    connection?.share("notification-read", { data: read });
  }

  function readUrl(id) {
    return config.readUrl.replace(/\/0\/read\/$/, `/${Number(id)}/read/`);
  }

  function markRead(id) {
    // The page updates at once; the server's answer, and its event to the
    // other tabs and devices, bring the exact count.
    const wasListed = removeFromInbox(id);
    removeAlert(id);
    if (wasListed) setUnread(unreadCount - 1);
    post(readUrl(id))
      .then(countFrom)
      .then((count) => shareRead({ ids: [id], unread_count: count }))
      .catch((error) => console.warn("marking notification %d read failed", id, error));
  }

  // --- alerts ----------------------------------------------------------
  function findAlert(id) {
    return alerts.querySelector(`.alert[data-id="${Number(id)}"]`);
  }

  function closeAlert(alert) {
    // Bootstrap drops "show" when a close starts; closing twice (a click, then
    // the server's read event) would make it remove a disposed element.
    if (!alert.isConnected || !alert.classList.contains("show")) return;
    if (alert.contains(document.activeElement)) {
      // Keep keyboard focus on the page instead of losing it to <body>.
      const next = alert.nextElementSibling || alert.previousElementSibling;
      (next?.querySelector(".btn-close") || document.getElementById("main")).focus();
    }
    clearTimeout(alert._hideTimer);
    const bootstrapAlert = window.bootstrap?.Alert;
    if (bootstrapAlert) bootstrapAlert.getOrCreateInstance(alert).close();
    else alert.remove();
  }

  function removeAlert(id) {
    const alert = findAlert(id);
    if (alert) closeAlert(alert);
  }

  function scheduleHide(alert, level) {
    const delay = AUTO_HIDE_MS[level];
    if (!delay) return;
    const arm = () => {
      clearTimeout(alert._hideTimer);
      alert._hideTimer = setTimeout(() => closeAlert(alert), delay);
    };
    const hold = () => clearTimeout(alert._hideTimer);
    // Reading or reaching it with the keyboard holds it on screen.
    alert.addEventListener("mouseenter", hold);
    alert.addEventListener("focusin", hold);
    alert.addEventListener("mouseleave", arm);
    alert.addEventListener("focusout", arm);
    arm();
  }

  function showAlert(notification, missed) {
    const level = LEVELS[notification.type] ? notification.type : "info";
    const alert = document.createElement("div");
    alert.className = `alert alert-${level} alert-dismissible fade show notify-alert shadow-sm`;
    // The stack is a polite live region that reads each new alert once; a
    // danger interrupts instead. No role="status" inside: it would be read twice.
    if (level === "danger") alert.setAttribute("role", "alert");
    alert.dataset.id = String(notification.id);
    alert.dataset.level = level;

    const heading = document.createElement("strong");
    heading.className = "notify-level";
    heading.textContent = LEVELS[level];
    const text = document.createElement("span");
    text.className = "alert-text";
    text.textContent = notification.message;
    const body = document.createElement("div");
    body.className = "notify-body";
    body.append(heading, " ", text);
    if (missed) {
      const note = document.createElement("span");
      note.className = "notify-missed";
      note.textContent = "Sent while you were away";
      body.append(note);
    }
    alert.append(body);

    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn-close";
    close.setAttribute("aria-label", `Dismiss (mark read): ${LEVELS[level]}`);
    close.addEventListener("click", () => markRead(notification.id));
    alert.append(close);

    alerts.prepend(alert);
    // Newest on top; the oldest leave the stack but stay in the inbox.
    const stacked = alerts.querySelectorAll(".alert");
    for (let i = MAX_ALERTS; i < stacked.length; i += 1) stacked[i].remove();
    scheduleHide(alert, level);
  }

  // --- the inbox -------------------------------------------------------
  // Times in the reader's own zone and format; the server renders UTC for
  // pages without script.
  const timeFormat = new Intl.DateTimeFormat(undefined, {
    dateStyle: "medium",
    timeStyle: "short",
  });

  function localTime(element) {
    const when = new Date(element.dateTime);
    if (Number.isNaN(when.getTime())) return;
    element.textContent = timeFormat.format(when);
    element.title = when.toISOString();
  }

  inbox.querySelectorAll("time[datetime]").forEach(localTime);

  function inboxItem(notification) {
    const level = LEVELS[notification.type] ? notification.type : "info";
    const item = document.createElement("li");
    item.className = `list-group-item inbox-item level-${level} inbox-item-new`;
    item.dataset.id = String(notification.id);
    item.dataset.level = level;

    const levelBadge = document.createElement("span");
    levelBadge.className = `badge level-badge level-badge-${level}`;
    levelBadge.textContent = LEVELS[level];

    const body = document.createElement("div");
    body.className = "inbox-body";
    const message = document.createElement("div");
    message.className = "message";
    message.textContent = notification.message;
    const time = document.createElement("time");
    time.className = "small text-body-secondary";
    time.dateTime = notification.created || "";
    localTime(time);
    body.append(message, time);

    const close = document.createElement("button");
    close.type = "button";
    close.className = "btn-close";
    close.setAttribute("aria-label", "Mark read");
    item.append(levelBadge, body, close);
    return item;
  }

  function addToInbox(notification) {
    inbox.prepend(inboxItem(notification));
  }

  function removeFromInbox(id) {
    const item = inbox.querySelector(`.inbox-item[data-id="${Number(id)}"]`);
    if (!item) return false;
    item.remove();
    return true;
  }

  // Remove what is read, all of it or up to the newest id the reader saw.
  function clearInbox(upTo = Infinity) {
    let removed = 0;
    inbox.querySelectorAll(".inbox-item").forEach((item) => {
      if (Number(item.dataset.id) <= upTo) {
        item.remove();
        removed += 1;
      }
    });
    alerts.querySelectorAll(".alert").forEach((alert) => {
      if (Number(alert.dataset.id) <= upTo) closeAlert(alert);
    });
    return removed;
  }

  function newestShown() {
    return Math.max(0, ...seen);
  }

  // The inbox's own buttons: one handler for the list, with or without script.
  inbox.addEventListener("click", (event) => {
    const button = event.target.closest(".btn-close");
    const item = button?.closest(".inbox-item");
    if (!item) return;
    event.preventDefault();
    markRead(Number(item.dataset.id));
  });

  const readAllForm = document.getElementById("read-all-form");
  readAllForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const upTo = newestShown();
    readAllForm.elements.up_to.value = String(upTo);
    clearInbox(upTo);
    setUnread(inbox.querySelectorAll(".inbox-item").length);
    post(readAllForm.action, new FormData(readAllForm))
      .then(countFrom)
      .then((count) => shareRead({ all: true, up_to: upTo, unread_count: count }))
      .catch((error) => console.warn("mark all read failed", error));
  });

  // After a reset the page cannot know what it missed: load the inbox again.
  async function reloadInbox() {
    try {
      const response = await fetch(config.inboxUrl, {
        headers: { Accept: "application/json", "X-Requested-With": "fetch" },
        credentials: "same-origin",
      });
      if (!response.ok) throw new Error(`inbox answered ${response.status}`);
      const listing = await response.json();
      inbox.querySelectorAll(".inbox-item").forEach((item) => item.remove());
      // Newest first in the listing; append keeps that order.
      for (const notification of listing.notifications) {
        seen.add(notification.id);
        inbox.insertBefore(inboxItem(notification), inboxEmpty);
      }
      setUnread(listing.unread_count);
    } catch (error) {
      console.warn("reloading the inbox failed; reloading the page", error);
      window.location.reload();
    }
  }

  // --- the report's progress bars ----------------------------------------
  // One bar per job (the events' `data.job`), so two reports started together
  // do not pull one bar back and forth. Settled bars beyond the last few go.
  const progress = document.getElementById("report-progress");
  const jobTemplate = document.getElementById("report-job-template");
  const jobRows = new Map();
  const SETTLED_KEPT = 2;

  function jobRow(job) {
    const key = String(job ?? "");
    let row = jobRows.get(key);
    if (!row) {
      row = jobTemplate.content.firstElementChild.cloneNode(true);
      jobRows.set(key, row);
      progress.append(row);
      progress.hidden = false;
      const settled = [...jobRows].filter(([, each]) => each.dataset.settled);
      for (const [oldKey, oldRow] of settled.slice(0, -SETTLED_KEPT)) {
        oldRow.remove();
        jobRows.delete(oldKey);
      }
    }
    return row;
  }

  // `outcome` is "success" or "danger" once the bar stops moving, else "".
  function setBar(row, percent, step, outcome) {
    const bar = row.querySelector(".progress-bar");
    const track = row.querySelector(".progress");
    bar.style.width = `${percent}%`;
    bar.classList.remove("bg-success", "bg-danger");
    if (outcome) bar.classList.add(`bg-${outcome}`);
    bar.classList.toggle("progress-bar-animated", !outcome);
    bar.classList.toggle("progress-bar-striped", !outcome);
    track.setAttribute("aria-valuenow", String(percent));
    track.setAttribute("aria-valuetext", `${percent}%, ${step}`);
    row.querySelector(".report-percent").textContent = `${percent}%`;
    row.querySelector(".report-step").textContent = step;
  }

  function showProgress(update) {
    if (!progress || !jobTemplate || !update) return;
    const row = jobRow(update.job);
    if (row.dataset.settled) return; // a late step after the job's result
    const percent = Math.max(0, Math.min(100, Number(update.percent) || 0));
    setBar(row, percent, update.step || "Working", percent >= 100 ? "success" : "");
  }

  function finishProgress(notification) {
    // The job's last word is an ordinary notification; it also settles its bar.
    if (notification.type !== "success" && notification.type !== "danger") return;
    const job = notification.data?.job;
    const row = job == null ? undefined : jobRows.get(String(job));
    if (!row) return;
    const ok = notification.type === "success";
    const track = row.querySelector(".progress");
    const percent = ok ? 100 : Number(track.getAttribute("aria-valuenow"));
    row.dataset.settled = ok ? "done" : "failed";
    setBar(row, percent, ok ? "Done" : "Failed", notification.type);
  }

  const reportForm = document.getElementById("report-form");
  if (reportForm) {
    reportForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      // The job's bar appears with its "queued" event, sent as it is queued.
      try {
        await post(reportForm.action);
      } catch (error) {
        console.warn("starting the report failed", error);
      }
    });
  }

  // --- desktop notices ---------------------------------------------------
  // Asked for only when the visitor presses the button, never on load; shown
  // only while this tab is hidden. The tag lets the system show one notice
  // when several hidden tabs of the visitor raise the same notification.
  const DESKTOP_KEY = "notifysite:desktop-notices";
  const desktopButton = document.getElementById("desktop-notices");
  const canNotify = typeof window.Notification === "function";

  // Storage can be refused (privacy settings); notices are then simply off.
  function stored(change) {
    try {
      if (change === true) window.localStorage.setItem(DESKTOP_KEY, "on");
      else if (change === false) window.localStorage.removeItem(DESKTOP_KEY);
      return window.localStorage.getItem(DESKTOP_KEY) === "on";
    } catch (error) {
      return false;
    }
  }

  function desktopEnabled() {
    return canNotify && Notification.permission === "granted" && stored();
  }

  function showDesktopButton() {
    if (!desktopButton || !canNotify) return;
    desktopButton.hidden = false;
    const on = desktopEnabled();
    desktopButton.setAttribute("aria-pressed", String(on));
    desktopButton.classList.toggle("btn-secondary", on);
    desktopButton.classList.toggle("btn-outline-secondary", !on);
    desktopButton.disabled = Notification.permission === "denied";
    desktopButton.title =
      Notification.permission === "denied"
        ? "Desktop notices are blocked in this browser's site settings"
        : on
          ? "Desktop notices are on while this tab is hidden; press to turn off"
          : "Show a desktop notice when a notification arrives while this tab is hidden";
  }

  if (desktopButton && canNotify) {
    desktopButton.addEventListener("click", async () => {
      if (desktopEnabled()) {
        stored(false);
      } else {
        const answer =
          Notification.permission === "default"
            ? await Notification.requestPermission()
            : Notification.permission;
        if (answer === "granted") stored(true);
      }
      showDesktopButton();
    });
    showDesktopButton();
  }

  // Ids of notifications that a visible tab of this visitor has shown: no
  // desktop notice for those, the visitor is looking at one of the tabs.
  const seenElsewhere = new Set();
  const SEEN_GRACE_MS = 300;

  function desktopNotice(notification) {
    if (document.visibilityState !== "hidden" || !desktopEnabled()) return;
    setTimeout(() => {
      if (!seenElsewhere.has(notification.id)) raiseNotice(notification);
    }, SEEN_GRACE_MS);
  }

  function raiseNotice(notification) {
    try {
      const notice = new Notification(`notifysite: ${LEVELS[notification.type] || "Info"}`, {
        body: notification.message,
        tag: `notifysite-${notification.id}`,
      });
      notice.addEventListener("click", () => {
        window.focus();
        notice.close();
      });
    } catch (error) {
      console.warn("desktop notice failed", error);
    }
  }

  // --- events ------------------------------------------------------------
  // Each event type has its own listener and behaviour.
  const handlers = {
    notification(notification, meta) {
      if (!notification || seen.has(notification.id)) return; // listed or replayed
      seen.add(notification.id);
      showAlert(notification, meta.missed);
      addToInbox(notification);
      setUnread(unreadCount + 1);
      finishProgress(notification);
      if (document.visibilityState === "visible") {
        connection?.share("notification-seen", { id: notification.id });
      }
      desktopNotice(notification);
    },
    "notification-read"(event) {
      const read = event?.data || {};
      let removed = 0;
      if (read.all) {
        removed = clearInbox(Number.isInteger(read.up_to) ? read.up_to : Infinity);
      } else if (Array.isArray(read.ids)) {
        for (const id of read.ids) {
          if (removeFromInbox(id)) removed += 1;
          removeAlert(id);
        }
      }
      if (Number.isInteger(read.unread_count)) setUnread(read.unread_count);
      else setUnread(unreadCount - removed);
    },
    progress(event) {
      showProgress(event?.data);
    },
    "session-changed"() {
      // A login or logout in this browser: the server ended this stream, whose
      // channels are stale; a reload shows the inbox of the session as it is.
      setTimeout(() => window.location.reload(), 200 + Math.random() * 800);
    },
    "stream-reset"() {
      // Jitter: every page of a reset server would otherwise ask at once.
      setTimeout(reloadInbox, Math.random() * 500);
    },
    "stream-error"(error) {
      if (error?.condition === "no-session") {
        // The session ended; a fresh page load gives this browser a new one.
        setTimeout(() => window.location.reload(), 1000 + Math.random() * 1000);
      }
    },
  };

  // Messages between this visitor's tabs only, never on the stream.
  const tabHandlers = {
    "notification-seen"(seen) {
      if (Number.isInteger(seen?.id)) seenElsewhere.add(seen.id);
    },
  };

  const position = JSON.parse(document.getElementById("last-event-id").textContent);

  let connection = null;
  if (typeof window.EventSource === "function") {
    connection = window.notifysiteConnection.start({
      streamUrl: config.streamUrl,
      position,
      eventTypes: Object.keys(handlers),
      onEvent: (type, data, meta) => (handlers[type] || tabHandlers[type])?.(data, meta),
      onState: showState,
    });
  } else {
    // No EventSource at all: poll the inbox now and then instead.
    showState("offline");
    const poll = async () => {
      try {
        const response = await fetch(config.inboxUrl, { credentials: "same-origin" });
        if (response.ok) {
          const listing = await response.json();
          for (const notification of [...listing.notifications].reverse()) {
            if (!seen.has(notification.id)) handlers.notification(notification, {});
          }
          setUnread(listing.unread_count);
        }
      } finally {
        setTimeout(poll, 20000 + Math.random() * 10000);
      }
    };
    setTimeout(poll, Math.random() * 5000);
  }

  // The buttons post with the CSRF token and stay on the page; without
  // JavaScript the same forms post normally and the server redirects back.
  const form = document.getElementById("button-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await post(form.action);
    } catch (error) {
      console.warn("the button press failed", error);
    }
  });

  setUnread(unreadCount);
})();
