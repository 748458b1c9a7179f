// The chat page: one room's messages, a composer, history paging and resume.
//
// Messages are kept by id, so a message that arrives twice (in the join history and
// live, or again after a resume) is shown once. Every message is sent with a client_id
// and kept as pending until the server echoes it; after a reconnect the page resumes
// from the highest id it has seen and resends what is still pending with the same
// client_id, which the server stores at most once. Text is only ever set with
// textContent: nothing a user typed is parsed as HTML.

import { Connection, showConnectionState } from "./connection.js";

const config = JSON.parse(document.getElementById("chat-config").textContent);
const list = document.getElementById("messages");
const scroller = document.getElementById("message-scroller");
const form = document.getElementById("composer");
const input = document.getElementById("composer-input");
const errorBox = document.getElementById("composer-error");
const olderButton = document.getElementById("load-older");
const indicator = document.querySelector("[data-connection-indicator]");

const shown = new Map(); // id -> <li>
const pending = new Map(); // client_id -> {message, element}
let highestId = 0;
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
  return item;
}

function insertInOrder(item, id) {
  // Messages usually arrive in order; walk back from the end for the rare one that doesn't.
  let next = null;
  for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
    if (!node.dataset.id) continue; // pending ones stay at the bottom
    if (Number(node.dataset.id) < id) break;
    next = node;
  }
  const firstPending = list.querySelector(".message.pending");
  list.insertBefore(item, next || firstPending);
}

function showMessage(message) {
  if (shown.has(message.id)) return;
  const ownPending = message.client_id && pending.get(message.client_id);
  if (ownPending && message.user === config.user) {
    ownPending.element.remove();
    pending.delete(message.client_id);
  }
  const item = messageElement(message);
  shown.set(message.id, item);
  insertInOrder(item, message.id);
  highestId = Math.max(highestId, message.id);
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
  server_busy: () => "The server is busy. Your message was not sent; try again shortly.",
};

function onError(frame) {
  const own = frame.client_id && pending.get(frame.client_id);
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
  keepingScroll(() => frame.messages.forEach(showMessage));
  if (frame.kind === "join" && shown.size === frame.messages.length) olderButton.hidden = !frame.truncated;
  if (frame.kind === "resume" && frame.truncated) {
    connection.send({ type: "chat.resume", after_id: highestId });
  }
}

const connection = new Connection(`/ws/chat/${encodeURIComponent(config.room)}/`, {
  onState: (state, detail) => showConnectionState(indicator, state, detail),
  onOpen: (isReconnect) => {
    if (isReconnect && highestId > 0) connection.send({ type: "chat.resume", after_id: highestId });
    for (const [clientId, { message }] of pending) {
      connection.send({ type: "chat.message", message, client_id: clientId });
    }
  },
  onFrame: (frame) => {
    if (frame.type === "chat.message") keepingScroll(() => showMessage(frame));
    else if (frame.type === "chat.history") onHistory(frame);
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
  pending.set(clientId, { message, element });
  keepingScroll(() => list.append(element));
  scroller.scrollTop = scroller.scrollHeight;
  input.value = "";
  errorBox.hidden = true;
  connection.send({ type: "chat.message", message, client_id: clientId }); // or on reconnect
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
