// The chat page: one room's messages, a composer, history paging and resume.
//
// Every message has an offset, 1, 2, 3… in its room. The page shows the room in offset
// order and knows the last offset it has without a hole: a message further ahead waits
// briefly (two workers may broadcast out of order), then the page resumes from that offset.
// So does a chat.position frame naming an offset the page has not got (a message stored but
// never delivered live), and every reconnect (?after_offset= on the socket's URL). Messages are kept by id, so one that arrives
// twice is shown once. Every message is sent with a client_id and kept as pending until the
// server echoes it; one not echoed within a few seconds is sent again on the open socket
// (and after every reconnect) with the same client_id, which the server stores at most once.
// Text is only ever set with textContent: nothing a user typed is parsed as HTML.

import { Connection, showConnectionState } from "./connection.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const list = document.getElementById("messages");
const scroller = document.getElementById("message-scroller");
const form = document.getElementById("composer");
const input = document.getElementById("composer-input");
const errorBox = document.getElementById("composer-error");
const olderButton = document.getElementById("load-older");
const indicator = document.querySelector("[data-connection-indicator]");

// How long a message ahead of a hole waits for the hole to fill before the page resumes.
const GAP_WAIT_MS = 500;
// A message not echoed this long is sent again; after SLOW_AFTER attempts the page says so.
const RESEND_AFTER_MS = 3000;
const RESEND_MAX_MS = 10000;
const SLOW_AFTER = 3;

const shown = new Map(); // id -> <li>
const pending = new Map(); // client_id -> {message, element, sentAt, attempts}
const early = new Map(); // offset -> message that arrived ahead of a hole
let lastOffset = 0; // every offset up to this one is shown
let joined = false;
let gapTimer = null;
let errorTimer = null;

function newClientId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

function nearBottom() {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
}

function keepingScroll(render) {
  const stick = nearBottom();
  render();
  if (stick) scroller.scrollTop = scroller.scrollHeight;
}

function messageElement(message, { isPending = false } = {}) {
  const item = document.createElement("li");
  item.className = "message";
  if (message.user === config.user) item.classList.add("mine");
  if (isPending) item.classList.add("pending");
  const meta = document.createElement("div");
  meta.className = "meta";
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = message.user;
  const time = document.createElement("time");
  if (message.ts) {
    time.dateTime = message.ts;
    time.textContent = new Date(message.ts).toLocaleTimeString();
  } else {
    time.textContent = "sending…";
  }
  meta.append(author, " ", time);
  const body = document.createElement("p");
  body.className = "body";
  body.textContent = message.message;
  item.append(meta, body);
  if (message.id) item.dataset.id = message.id;
  if (message.offset) item.dataset.offset = message.offset;
  return item;
}

function insertInOrder(item, offset) {
  // Messages usually arrive in order; walk back from the end for the rare one that doesn't.
  let next = null;
  for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
    if (!node.dataset.offset) continue; // pending ones stay at the bottom
    if (Number(node.dataset.offset) < offset) break;
    next = node;
  }
  const firstPending = list.querySelector(".message.pending");
  list.insertBefore(item, next || firstPending);
}

function showMessage(message) {
  const ownPending = message.client_id && pending.get(message.client_id);
  if (ownPending && message.user === config.user) {
    ownPending.element.remove();
    pending.delete(message.client_id);
  }
  if (shown.has(message.id)) return;
  const item = messageElement(message);
  shown.set(message.id, item);
  insertInOrder(item, message.offset);
}

function resume() {
  clearTimeout(gapTimer);
  gapTimer = null;
  connection.send({ type: "chat.resume", after_offset: lastOffset });
}

// The room has something past lastOffset that this page has not shown: give it a moment
// to arrive on its own, then ask for it.
function expectMore() {
  if (gapTimer === null) gapTimer = setTimeout(resume, GAP_WAIT_MS);
}

// A message of this room, live or from a history page, in whatever order they come.
function receive(message) {
  if (message.offset <= lastOffset) {
    showMessage(message); // a repeat, or an echo of our own
    return;
  }
  if (message.offset > lastOffset + 1) {
    early.set(message.offset, message);
    expectMore();
    return;
  }
  showMessage(message);
  lastOffset = message.offset;
  while (early.has(lastOffset + 1)) {
    showMessage(early.get(lastOffset + 1));
    early.delete(lastOffset + 1);
    lastOffset += 1;
  }
  for (const offset of early.keys()) if (offset <= lastOffset) early.delete(offset);
  if (early.size === 0) {
    clearTimeout(gapTimer);
    gapTimer = null;
  }
}

function showError(text) {
  errorBox.textContent = text;
  errorBox.hidden = false;
  clearTimeout(errorTimer);
  errorTimer = setTimeout(() => {
    errorBox.hidden = true;
  }, 8000);
}

const errorTexts = {
  rate_limited: (frame) => `You are sending too fast. Try again in ${Math.ceil(frame.retry_after)} s.`,
  message_too_long: () => `That message is too long (at most ${config.max_chars} characters).`,
  invalid_message: (frame) => frame.detail,
  server_busy: () => "The server is busy; your message will be sent again shortly.",
};

function onError(frame) {
  const own = frame.client_id && pending.get(frame.client_id);
  if (own && frame.code === "server_busy") {
    own.sentAt = 0; // not stored: the resend loop tries again
    showError(errorTexts.server_busy());
    return;
  }
  if (own) {
    own.element.remove();
    pending.delete(frame.client_id);
    if (!input.value.trim()) input.value = own.message;
  }
  const describe = errorTexts[frame.code];
  showError(describe ? describe(frame) : `Error: ${frame.detail}`);
}

function onHistory(frame) {
  if (frame.kind === "before") {
    const before = scroller.scrollHeight;
    frame.messages.forEach(showMessage);
    scroller.scrollTop += scroller.scrollHeight - before; // keep the reader's place
    olderButton.hidden = !frame.truncated;
    return;
  }
  if (frame.kind === "join" && !joined) {
    // The page starts at the join page; older messages come with "load older".
    joined = true;
    lastOffset = frame.messages.length ? frame.messages[0].offset - 1 : 0;
    olderButton.hidden = !frame.truncated;
  }
  keepingScroll(() => frame.messages.forEach(receive));
  if (frame.kind === "resume" && (frame.truncated || early.size)) resume();
}

function sendPending(clientId, entry) {
  entry.sentAt = Date.now();
  entry.attempts += 1;
  connection.send({ type: "chat.message", message: entry.message, client_id: clientId });
}

// Sends again, on the open socket, whatever the server has not echoed (a worker may have
// died holding it); backs off, and tells the writer once it is taking long.
function resendOverdue() {
  if (!connection.isOpen) return;
  const now = Date.now();
  for (const [clientId, entry] of pending) {
    const wait = Math.min(RESEND_MAX_MS, RESEND_AFTER_MS * 2 ** Math.max(0, entry.attempts - 1));
    if (now - entry.sentAt < wait) continue;
    sendPending(clientId, entry);
    if (entry.attempts > SLOW_AFTER) {
      entry.element.classList.add("failing");
      entry.element.querySelector("time").textContent = "not delivered yet, retrying…";
      showError("A message has not been delivered yet; it is being sent again.");
    }
  }
}
setInterval(resendOverdue, 1000);

// Coming back, the page says where it was and is sent what it missed instead of the last page.
const roomPath = () =>
  `/ws/chat/${encodeURIComponent(config.room)}/` + (joined ? `?after_offset=${lastOffset}` : "");

const connection = new Connection(roomPath, {
  onState: (state, detail) => {
    showConnectionState(indicator, state, detail);
    if (state === "ended") input.disabled = true; // logged out: nothing typed here could be sent
  },
  onOpen: () => {
    for (const [clientId, entry] of pending) sendPending(clientId, entry);
  },
  onFrame: (frame) => {
    if (frame.type === "chat.message") keepingScroll(() => receive(frame));
    else if (frame.type === "chat.history") onHistory(frame);
    else if (frame.type === "chat.position" && frame.offset > lastOffset) expectMore();
    else if (frame.type === "error") onError(frame);
  },
}).start();

function send() {
  const message = input.value.trim();
  if (!message) return;
  if (message.length > config.max_chars) {
    showError(errorTexts.message_too_long());
    return;
  }
  const clientId = newClientId();
  const element = messageElement({ user: config.user, message }, { isPending: true });
  const entry = { message, element, sentAt: 0, attempts: 0 };
  pending.set(clientId, entry);
  keepingScroll(() => list.append(element));
  scroller.scrollTop = scroller.scrollHeight;
  input.value = "";
  errorBox.hidden = true;
  sendPending(clientId, entry); // if the socket is down: on reconnect, or by resendOverdue
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});

olderButton.addEventListener("click", () => {
  const ids = [...shown.keys()];
  if (ids.length) connection.send({ type: "chat.history", before_id: Math.min(...ids), limit: 50 });
});
