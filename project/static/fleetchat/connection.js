// One WebSocket connection that comes back by itself.
//
// Reconnects with exponential backoff and full jitter (a restart of the server must not
// be met by every browser at the same instant), retries at once when the network comes
// back or the tab becomes visible again (a laptop waking up), and reports its state so
// that pages can show it. What to do after a reconnect (resume, resync) is the page's
// business: it gets `onOpen(isReconnect)`.
//
// One close does not reconnect: 4001, the login session this socket was opened with has ended
// (logout, expiry, a password change). Coming back would be refused, so the connection stops in
// state "ended" and the page offers to log in again.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;
const SESSION_ENDED = 4001;
// 4029: over the user's share of sockets or handshakes (docs/protocol.md "Fair shares"). The share
// frees up in seconds, not at once: every tab of the user retrying at full speed would keep it full.
const TOO_MANY = 4029;
const TOO_MANY_MIN_DELAY_MS = 5000;

export function backoffDelayMs(attempt, random = Math.random) {
  const ceiling = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** attempt);
  return Math.round(MIN_DELAY_MS / 2 + random() * (ceiling - MIN_DELAY_MS / 2));
}

export class Connection {
  // `path` is a string, or a function giving the path for each (re)connect.
  constructor(path, { onOpen = () => {}, onFrame = () => {}, onState = () => {} } = {}) {
    this.path = path;
    this.onOpen = onOpen;
    this.onFrame = onFrame;
    this.onState = onState;
    this.attempt = 0;
    this.opened = false;
    this.socket = null;
    this.retryTimer = null;
    this.stopped = false;
    window.addEventListener("online", () => this.retryNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.retryNow();
    });
  }

  start() {
    this.stopped = false;
    this.connect();
    return this;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.setState("connecting");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const path = typeof this.path === "function" ? this.path() : this.path;
    const socket = new WebSocket(`${scheme}//${location.host}${path}`);
    this.socket = socket;
    socket.addEventListener("open", () => {
      const isReconnect = this.opened;
      this.opened = true;
      this.attempt = 0;
      this.setState("open");
      this.onOpen(isReconnect);
    });
    socket.addEventListener("message", (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    });
    socket.addEventListener("close", (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (event.code === SESSION_ENDED) {
        this.stopped = true;
        this.setState("ended");
      } else if (event.code === TOO_MANY && !this.stopped) {
        this.attempt = Math.max(this.attempt, 3); // the open before this close reset it
        this.scheduleRetry(TOO_MANY_MIN_DELAY_MS);
      } else if (!this.stopped) this.scheduleRetry();
    });
  }

  scheduleRetry(minDelayMs = 0) {
    const delayMs = Math.max(minDelayMs, backoffDelayMs(this.attempt));
    this.attempt += 1;
    this.setState("reconnecting", { delayMs });
    this.retryTimer = setTimeout(() => this.connect(), delayMs);
  }

  retryNow() {
    if (this.retryTimer !== null && !this.stopped) this.connect();
  }

  // Drop the current socket and connect again (e.g. when a stream has gone silent).
  restart() {
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close();
    }
    if (!this.stopped) this.connect();
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(frame) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  setState(state, detail = {}) {
    this.state = state;
    this.onState(state, detail);
  }
}

// Shows a connection's state in an element with `data-connection-indicator`.
export function showConnectionState(element, state, { delayMs } = {}) {
  const labels = {
    connecting: "Connecting…",
    open: "Live",
    reconnecting: `Reconnecting in ${Math.ceil((delayMs || 0) / 1000)} s…`,
    ended: "Your session has ended.",
  };
  element.textContent = labels[state] || state;
  element.dataset.state = state;
  if (state === "ended") {
    // This page again: logged out, the server sends the visitor to the login form and back here.
    const again = document.createElement("a");
    again.href = location.pathname + location.search;
    again.textContent = "Log in again";
    element.append(" ", again);
  }
}
