// The operator dashboard: a live view of the fleet from /ws/status/.
//
// The page shows one view of the fleet (docs/protocol.md, "Views"): a page of the machines
// matching the state filter and the name search, chosen in the socket's URL and with a
// status.view frame when the operator changes it. The server sends that view's snapshot, then
// every second an update with the counters, the service panel and only the rows of this page
// that changed. A snapshot replaces the page; an update replaces the rows it carries and drops
// the names it lists as removed. An update from another epoch, or one whose seq is not exactly
// the next, means something was missed: the page asks for a fresh snapshot. A status.resync
// from the server says it dropped updates because this page fell behind; its snapshot follows
// by itself. No update for more than 3 s shows a stale warning; a stream silent for 10 s is
// reconnected. The view is kept in the address (#page=2&state=failed&search=db).
//
// window.fleetDashboard.stats counts what the page did (frames applied, time to render them,
// resyncs, the first paint after the socket opened): the browser tests read it.

import { LineChart } from "./chart.js";
import { Connection, showConnectionState } from "./connection.js";

const STATES = ["pending", "provisioning", "ready", "failed", "offline"];
const COLORS = { pending: "#8a8f98", provisioning: "#2f7dd1", ready: "#2e9d5b", failed: "#d1463b", offline: "#b27c12" };
const STALE_AFTER_MS = 3000;
const RECONNECT_AFTER_MS = 10000;
const SEARCH_RE = /^[A-Za-z0-9_.-]{0,40}$/; // the names' alphabet (protocol.STATUS_SEARCH_RE)
const SEARCH_DELAY_MS = 250; // typing: one view per pause, not one per key
const RENDER_SAMPLES = 600;

const grid = document.getElementById("machines");
const emptyNote = document.getElementById("machines-empty");
const stateFilter = document.getElementById("filter-state");
const nameFilter = document.getElementById("filter-name");
const pagePrev = document.getElementById("page-prev");
const pageNext = document.getElementById("page-next");
const pageLabel = document.getElementById("page-label");
const staleWarning = document.getElementById("stale-warning");
const lastUpdate = document.getElementById("last-update");
const indicator = document.querySelector("[data-connection-indicator]");

const rows = new Map(); // name -> [name, state, progress, last_report, [[package, state, percent], ...]]
const cards = new Map(); // name -> element
let view = viewFromAddress();
let shown = { total: 0, pageSize: 100 };
let epoch = null;
let seq = null;
let lastFrameAt = null; // when the last update (not snapshot) arrived
let lastRestartAt = 0;
let awaitingSnapshot = true;
let openedAt = null;
let searchTimer = null;

const stats = { snapshots: 0, updates: 0, resyncs: 0, serverResyncs: 0, firstPaintMs: null, renderMs: [] };
window.fleetDashboard = { stats };

const stateChart = new LineChart(
  document.getElementById("chart-states"),
  STATES.map((state) => ({ key: state, label: state, color: COLORS[state] })),
);
const progressChart = new LineChart(
  document.getElementById("chart-progress"),
  [{ key: "progress", label: "overall progress", color: "#6b4fd8" }],
  { max: 100 },
);

function setText(id, value) {
  const element = document.getElementById(id);
  if (element) element.textContent = value;
}

function formatNumber(value, unit = "") {
  return value === null || value === undefined ? "—" : `${Math.round(value * 10) / 10}${unit}`;
}

function progressBar(label) {
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", label);
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  const fill = document.createElement("span");
  fill.className = "fill";
  bar.append(fill);
  return bar;
}

function setBar(bar, percent, state) {
  bar.setAttribute("aria-valuenow", String(Math.round(percent)));
  bar.dataset.state = state;
  bar.firstChild.style.width = `${Math.max(0, Math.min(100, percent))}%`;
}

// A card's elements for a machine with these packages; fillCard() puts the figures in.
function buildCard(name, software) {
  const card = document.createElement("article");
  card.className = "machine";
  card.dataset.name = name;
  const header = document.createElement("header");
  const title = document.createElement("h3");
  title.textContent = name;
  const badge = document.createElement("span");
  badge.className = "badge";
  header.append(title, badge);
  const packages = document.createElement("ul");
  packages.className = "software";
  for (const [packageName] of software) {
    const item = document.createElement("li");
    item.dataset.software = packageName;
    const label = document.createElement("span");
    label.className = "software-name";
    label.textContent = packageName;
    const figure = document.createElement("span");
    figure.className = "software-percent";
    item.append(label, figure, progressBar(`${name} ${packageName}`));
    packages.append(item);
  }
  card.append(header, progressBar(`${name} overall`), packages);
  return card;
}

function fillCard(card, [, state, progress, , software]) {
  const [header, overall, packages] = card.children;
  card.dataset.state = state;
  header.lastChild.dataset.state = state;
  header.lastChild.textContent = state;
  setBar(overall, progress, state);
  software.forEach(([, packageState, percent], index) => {
    const [, figure, bar] = packages.children[index].children;
    figure.textContent = `${Math.round(percent)}% ${packageState}`;
    setBar(bar, percent, packageState);
  });
}

function samePackages(card, software) {
  const items = card.lastChild.children;
  return items.length === software.length && software.every(([name], index) => items[index].dataset.software === name);
}

// The card of `row`: the one shown, its figures changed in place, or a new one.
function cardFor(row) {
  let card = cards.get(row[0]);
  if (card === undefined || !samePackages(card, row[4])) card = buildCard(row[0], row[4]);
  fillCard(card, row);
  return card;
}

function placeCard(name) {
  const row = rows.get(name);
  const old = cards.get(name);
  if (!row) {
    if (old) old.remove();
    cards.delete(name);
    return;
  }
  const card = cardFor(row);
  cards.set(name, card);
  if (old === card) return;
  if (old) {
    old.replaceWith(card);
    return;
  }
  // Keep the grid in name order (a page holds at most a hundred cards).
  let next = null;
  for (const other of cards.keys()) {
    if (other > name && cards.get(other).isConnected && (next === null || other < next)) next = other;
  }
  grid.insertBefore(card, next === null ? null : cards.get(next));
}

function renderPager() {
  const pages = Math.max(1, Math.ceil(shown.total / shown.pageSize));
  const noun = shown.total === 1 ? "machine" : "machines";
  pageLabel.textContent = `Page ${view.page} of ${pages} · ${shown.total} ${noun}`;
  pagePrev.disabled = view.page <= 1;
  pageNext.disabled = view.page >= pages;
  emptyNote.hidden = rows.size > 0 || awaitingSnapshot;
}

function renderSummary(summary) {
  for (const state of STATES) setText(`count-${state}`, summary.states?.[state] ?? 0);
  setText("count-total", summary.machines ?? 0);
  setText("overall-progress-label", formatNumber(summary.progress, "%"));
  const overall = document.getElementById("overall-progress");
  overall.setAttribute("aria-valuenow", String(Math.round(summary.progress || 0)));
  overall.querySelector(".fill").style.width = `${summary.progress || 0}%`;
}

function renderSystem(system = {}) {
  setText("system-connections", formatNumber(system.connections));
  setText("system-worker", system.worker ? `${formatNumber(system.worker.messages_per_s)} msg/s` : "—");
  setText("system-status-workers", formatNumber(system.worker?.status_instances));
  setText("system-scheduler-leader", system.scheduler?.leader ?? "none");
  setText("system-schedulers", formatNumber(system.scheduler?.instances));
  setText("system-tick-lag", formatNumber(system.scheduler?.tick_lag_ms, " ms"));
  setText("system-redis", formatNumber(system.redis?.rtt_ms, " ms"));
}

function record(summary) {
  stateChart.push({ ...summary.states });
  progressChart.push({ progress: summary.progress });
  stateChart.draw();
  progressChart.draw();
}

// --- the view --------------------------------------------------------------------------------

function viewFromAddress() {
  const params = new URLSearchParams(location.hash.slice(1));
  const page = Number.parseInt(params.get("page") || "1", 10);
  const state = STATES.includes(params.get("state")) ? params.get("state") : null;
  const search = SEARCH_RE.test(params.get("search") || "") ? params.get("search") || null : null;
  return { page: Number.isInteger(page) && page >= 1 ? page : 1, state, search };
}

function viewQuery() {
  const params = new URLSearchParams({ page: String(view.page) });
  if (view.state) params.set("state", view.state);
  if (view.search) params.set("search", view.search);
  return params.toString();
}

function isShown(frameView) {
  return (
    frameView !== undefined &&
    frameView.page === view.page &&
    frameView.state === view.state &&
    frameView.search === (view.search ? view.search.toLowerCase() : null)
  );
}

function choose(changes) {
  view = { ...view, ...changes };
  history.replaceState(null, "", `#${viewQuery()}`);
  awaitingSnapshot = true;
  renderPager();
  connection.send({ type: "status.view", page: view.page, state: view.state, search: view.search });
}

// --- frames -----------------------------------------------------------------------------------

// Once the browser has painted what the page just changed: a task queued from the next
// animation frame runs after that frame's style, layout and paint.
function afterPaint(callback) {
  requestAnimationFrame(() => setTimeout(callback));
}

// Apply a frame, and count the time until it is on the screen.
function timed(apply) {
  const started = performance.now();
  apply();
  afterPaint(() => {
    stats.renderMs.push(performance.now() - started);
    if (stats.renderMs.length > RENDER_SAMPLES) stats.renderMs.shift();
  });
}

function onSnapshot(frame) {
  if (!isShown(frame.view)) return; // for a view the operator has since left
  timed(() => {
    epoch = frame.epoch;
    seq = frame.seq;
    awaitingSnapshot = false;
    if (lastFrameAt === null) lastFrameAt = Date.now();
    rows.clear();
    const shownCards = frame.rows.map((row) => [row[0], cardFor(row)]);
    cards.clear();
    for (const [name, card] of shownCards) cards.set(name, card);
    for (const row of frame.rows) rows.set(row[0], row);
    grid.replaceChildren(...cards.values());
    shown = { total: frame.view.total, pageSize: frame.view.page_size };
    renderPager();
    renderSummary(frame.summary);
    renderSystem(frame.system);
  });
  stats.snapshots += 1;
  const opened = openedAt;
  afterPaint(() => {
    if (stats.firstPaintMs === null && opened !== null) stats.firstPaintMs = performance.now() - opened;
  });
}

function resync() {
  awaitingSnapshot = true;
  stats.resyncs += 1;
  connection.send({ type: "status.resync" });
}

function onUpdate(frame) {
  if (awaitingSnapshot || !isShown(frame.view)) return;
  if (frame.epoch === epoch && frame.seq <= seq) return; // the snapshot already has it
  lastFrameAt = Date.now();
  if (frame.epoch !== epoch || frame.seq !== seq + 1) {
    resync();
    return;
  }
  timed(() => {
    seq = frame.seq;
    for (const row of frame.rows) {
      rows.set(row[0], row);
      placeCard(row[0]);
    }
    for (const name of frame.removed) {
      rows.delete(name);
      placeCard(name);
    }
    shown = { total: frame.view.total, pageSize: frame.view.page_size };
    renderPager();
    renderSummary(frame.summary);
    renderSystem(frame.system);
    record(frame.summary);
  });
  stats.updates += 1;
}

const connection = new Connection(() => `/ws/status/?${viewQuery()}`, {
  onState: (state, detail) => showConnectionState(indicator, state, detail),
  onOpen: () => {
    awaitingSnapshot = true; // the server sends one on every connect
    openedAt = performance.now();
  },
  onFrame: (frame) => {
    if (frame.type === "status.snapshot") onSnapshot(frame);
    else if (frame.type === "status.update") onUpdate(frame);
    else if (frame.type === "status.resync") {
      awaitingSnapshot = true; // the server sends it
      stats.serverResyncs += 1;
    }
  },
}).start();

function tickClock() {
  if (lastFrameAt === null) {
    lastUpdate.textContent = "waiting for the first update…";
  } else {
    const ageMs = Date.now() - lastFrameAt;
    lastUpdate.textContent = `last update ${Math.floor(ageMs / 1000)} s ago`;
    staleWarning.hidden = ageMs <= STALE_AFTER_MS;
    // A silent stream may be a dead socket (a laptop that slept): try a fresh one.
    if (ageMs > RECONNECT_AFTER_MS && Date.now() - lastRestartAt > RECONNECT_AFTER_MS && connection.isOpen) {
      lastRestartAt = Date.now();
      connection.restart();
    }
  }
}

function onSearch() {
  clearTimeout(searchTimer);
  const search = nameFilter.value.trim();
  nameFilter.setCustomValidity(SEARCH_RE.test(search) ? "" : "letters, digits, _ . - only");
  if (!SEARCH_RE.test(search)) return;
  searchTimer = setTimeout(() => {
    if ((search || null) !== view.search) choose({ page: 1, search: search || null });
  }, SEARCH_DELAY_MS);
}

stateFilter.value = view.state ?? "";
nameFilter.value = view.search ?? "";
stateFilter.addEventListener("change", () => choose({ page: 1, state: stateFilter.value || null }));
nameFilter.addEventListener("input", onSearch);
pagePrev.addEventListener("click", () => choose({ page: Math.max(1, view.page - 1) }));
pageNext.addEventListener("click", () => choose({ page: view.page + 1 }));
renderPager();
setInterval(tickClock, 250);
window.addEventListener("resize", () => {
  for (const chart of [stateChart, progressChart]) {
    chart.measure();
    chart.draw();
  }
});
