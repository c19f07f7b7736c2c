// One live connection for all of a visitor's tabs.
//
// Browsers open at most six HTTP/1.1 connections per host, so a seventh tab
// with its own EventSource would hang. Tabs of one visitor elect a leader with
// a Web Lock; the leader alone holds the EventSource and passes every event to
// the other tabs over a BroadcastChannel. When the leader closes, the lock
// passes to a waiting tab, which resumes from the last position it heard of.
// Without Web Locks or BroadcastChannel (an old browser, or a page served over
// plain HTTP from a non-local host) each tab keeps a stream of its own.
//
// window.notifysiteConnection.start(options) -> { mode, reconnectNow(), share() }
//   options.streamUrl    the SSE endpoint
//   options.position     the stream position the page was rendered at
//   options.eventTypes   event names to listen for
//   options.onEvent(type, data, meta)   meta: { id, missed }
//   options.onState(state)              "connecting" | "live" | "reconnecting" | "offline"
(() => {
  "use strict";

  const BASE_DELAY_MS = 1000;
  const MAX_DELAY_MS = 20000;
  // Consecutive failed attempts after which the indicator says "offline".
  const OFFLINE_AFTER = 4;
  // Events that arrive this soon after a reconnect are the replay of what
  // the page missed while it was away.
  const CATCH_UP_MS = 1500;
  const BUFFER_SIZE = 100;
  // The server sends a keep-alive every 20 s; a stream silent for longer than
  // this is taken for dead (a network that dropped without closing it).
  const SILENCE_MS = 45000;

  // "broadcast:3,session-…:7" <-> {broadcast: 3, "session-…": 7}
  function parsePosition(id) {
    const position = {};
    if (!id) return position;
    for (const part of id.split(",")) {
      const cut = part.lastIndexOf(":");
      const seq = Number(part.slice(cut + 1));
      if (cut > 0 && Number.isInteger(seq)) position[part.slice(0, cut)] = seq;
    }
    return position;
  }

  function formatPosition(position) {
    return Object.entries(position)
      .map(([channel, seq]) => `${channel}:${seq}`)
      .join(",");
  }

  // The channels that moved forward from one position to the next.
  function advanced(before, after) {
    const moved = {};
    for (const [channel, seq] of Object.entries(after)) {
      if (seq > (before[channel] || 0)) moved[channel] = seq;
    }
    return moved;
  }

  function isNewer(moved, position) {
    return Object.entries(moved).some(([channel, seq]) => seq > (position[channel] || 0));
  }

  // Exponential backoff with jitter: after a server restart, pages spread
  // their returns over a window instead of arriving in one burst.
  function backoff(attempt) {
    const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** attempt);
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  function start(options) {
    const { streamUrl, eventTypes, onEvent, onState } = options;
    let position = parsePosition(options.position);

    // The channels a page hears name its group: after signing in, a tab
    // hears another set and must not share a stream with tabs that do not.
    const group = Object.keys(position).sort().join(",") || "anonymous";
    const shared = "locks" in navigator && typeof BroadcastChannel === "function";
    const bus = shared ? new BroadcastChannel(`notifysite:${group}`) : null;
    let leader = !shared;
    let state = "connecting";

    function setState(next) {
      state = next;
      onState(next);
      if (leader && bus) bus.postMessage({ kind: "state", state: next });
    }

    // Set by session-changed, in the leader and in the tabs it tells: the
    // stream's channels are stale and the page reloads. Nothing after it is
    // for this page, and reconnecting with the old position would be refused.
    let ended = false;

    function deliver(type, data, meta) {
      if (ended) return;
      if (type === "session-changed") ended = true;
      try {
        onEvent(type, data, meta);
      } catch (error) {
        console.error("handling a %s event failed", type, error);
      }
    }

    // --- the stream (leader, or every tab in fallback mode) --------------
    let source = null;
    let attempt = 0;
    let retryTimer = null;
    let catchUpUntil = 0;
    let everOpened = false;
    const recent = []; // the leader's last events, for tabs that join late

    function remember(entry) {
      recent.push(entry);
      if (recent.length > BUFFER_SIZE) recent.shift();
    }

    function handle(type, event) {
      let data = null;
      if (event.data) {
        try {
          data = JSON.parse(event.data);
        } catch (error) {
          console.warn("ignoring a %s event whose data is not JSON", type, error);
          return;
        }
      }
      let moved = {};
      if (event.lastEventId) {
        const next = parsePosition(event.lastEventId);
        moved = advanced(position, next);
        // A reset gives a new starting point; anything else only moves forward.
        position = type === "stream-reset" ? next : { ...position, ...moved };
      }
      const meta = { id: event.lastEventId || "", missed: performance.now() < catchUpUntil };
      if (type === "session-changed") {
        closeSource();
        clearTimeout(retryTimer);
      } else if (type === "stream-error") {
        closeSource();
        scheduleRetry();
      }
      deliver(type, data, meta);
      if (bus) {
        const entry = { kind: "event", type, data, meta, moved, position: formatPosition(position) };
        remember(entry);
        bus.postMessage(entry);
      }
    }

    function closeSource() {
      clearTimeout(watchdog);
      if (source) {
        source.close();
        source = null;
      }
    }

    let watchdog = null;
    function heardFrom(current) {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        if (source !== current) return;
        console.warn("the stream went silent; reconnecting");
        closeSource();
        scheduleRetry();
      }, SILENCE_MS);
    }

    function connect() {
      clearTimeout(retryTimer);
      retryTimer = null;
      if (ended) return;
      closeSource();
      const from = formatPosition(position);
      // A new EventSource sends no Last-Event-ID header; the view takes the
      // same value from this query parameter.
      const url = from ? `${streamUrl}?lastEventId=${encodeURIComponent(from)}` : streamUrl;
      const current = new EventSource(url);
      source = current;
      heardFrom(current); // a connection that never opens is retried too
      if (state !== "reconnecting" && state !== "offline") setState("connecting");

      current.addEventListener("open", () => {
        heardFrom(current);
        if (everOpened) catchUpUntil = performance.now() + CATCH_UP_MS;
        everOpened = true;
        attempt = 0;
        setState("live");
      });
      current.addEventListener("error", () => {
        if (source !== current) return;
        // Close instead of letting the browser retry on its fixed delay: the
        // retry below is jittered and resumes from the latest position.
        closeSource();
        scheduleRetry();
      });
      for (const type of eventTypes) {
        current.addEventListener(type, (event) => {
          if (source !== current) return;
          heardFrom(current);
          handle(type, event);
        });
      }
      current.addEventListener("keep-alive", () => {
        if (source === current) heardFrom(current);
      });
    }

    function scheduleRetry() {
      if (retryTimer !== null || ended) return;
      attempt += 1;
      setState(attempt >= OFFLINE_AFTER || navigator.onLine === false ? "offline" : "reconnecting");
      retryTimer = setTimeout(connect, backoff(attempt - 1));
    }

    function reconnectNow() {
      if (!leader) return;
      attempt = 0;
      clearTimeout(retryTimer);
      retryTimer = null;
      // A small random delay still spreads pages that all came back online.
      retryTimer = setTimeout(connect, Math.random() * 1000);
    }

    window.addEventListener("online", () => {
      // A connection from before the network dropped may be dead without
      // knowing it: start afresh from the last position.
      if (!leader) return;
      closeSource();
      reconnectNow();
    });
    window.addEventListener("offline", () => {
      if (leader) setState("offline");
    });

    // Tell this visitor's other tabs of something that happened here (a
    // notification read), at once, without a round trip through the server.
    function share(type, data) {
      if (bus) bus.postMessage({ kind: "local", type, data });
    }

    if (!shared) {
      connect();
      return { mode: "per-tab", reconnectNow, share };
    }

    // --- followers: events and state from the leader --------------------
    bus.addEventListener("message", ({ data: message }) => {
      if (!message || typeof message !== "object") return;
      if (message.kind === "local") {
        deliver(message.type, message.data, { id: "", missed: false });
      } else if (message.kind === "state" && !leader) {
        state = message.state;
        onState(message.state);
      } else if (message.kind === "event" && !leader) {
        receive(message);
      } else if (message.kind === "hello" && leader) {
        // A tab that just opened: tell it the state, and pass on what it may
        // have missed between its render and now.
        const since = parsePosition(message.position);
        bus.postMessage({ kind: "state", state });
        for (const entry of recent) {
          if (isNewer(entry.moved, since)) bus.postMessage({ ...entry, to: message.from });
        }
      }
    });

    const tabId = Math.random().toString(36).slice(2);

    function receive(message) {
      if (message.to && message.to !== tabId) return;
      const next = parsePosition(message.position);
      if (message.type === "stream-reset") {
        position = next;
      } else {
        // Ids this tab already holds (it rendered later than the leader) stay.
        for (const [channel, seq] of Object.entries(next)) {
          if (seq > (position[channel] || 0)) position[channel] = seq;
        }
      }
      deliver(message.type, message.data, message.meta);
    }

    bus.postMessage({ kind: "hello", from: tabId, position: formatPosition(position) });
    onState("connecting");

    // The lock is held for the life of the tab (the promise never settles);
    // closing the tab releases it and the next waiting tab takes over.
    navigator.locks
      .request(`notifysite-stream:${group}`, () => {
        leader = true;
        connect();
        return new Promise(() => {});
      })
      .catch((error) => {
        // Locks refused (for example in a sandboxed frame): stream on our own.
        console.warn("no Web Lock; this tab keeps its own stream", error);
        leader = true;
        connect();
      });

    return {
      get mode() {
        return leader ? "leader" : "follower";
      },
      reconnectNow,
      share,
    };
  }

  window.notifysiteConnection = { start, parsePosition, formatPosition, backoff };
})();
