// The operator dashboard: a live view of the fleet from /ws/status/.
//
// A snapshot replaces everything; each update replaces the machines it carries (they
// come whole) and drops the removed ones. An update from another epoch, or one whose
// seq is not exactly the next, means something was missed: the page asks for a fresh
// snapshot. A status.resync from the server says it dropped updates because this page
// fell behind; its snapshot follows by itself. No update for more than 3 s shows a stale
// warning; a stream silent for 10 s is reconnected.

import { LineChart } from "./chart.js";
import { Connection, showConnectionState } from "./connection.js";

const STATES = ["pending", "provisioning", "ready", "failed", "offline"];
const COLORS = { pending: "#8a8f98", provisioning: "#2f7dd1", ready: "#2e9d5b", failed: "#d1463b", offline: "#b27c12" };
const STALE_AFTER_MS = 3000;
const RECONNECT_AFTER_MS = 10000;

const grid = document.getElementById("machines");
const emptyNote = document.getElementById("machines-empty");
const stateFilter = document.getElementById("filter-state");
const nameFilter = document.getElementById("filter-name");
const staleWarning = document.getElementById("stale-warning");
const lastUpdate = document.getElementById("last-update");
const indicator = document.querySelector("[data-connection-indicator]");

const machines = new Map(); // name -> machine
const cards = new Map(); // name -> element
let epoch = null;
let seq = null;
let lastFrameAt = null; // when the last update (not snapshot) arrived
let lastRestartAt = 0;
let awaitingSnapshot = true;

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

function progressBar(label, percent, state) {
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", label);
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", String(Math.round(percent)));
  if (state) bar.dataset.state = state;
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  bar.append(fill);
  return bar;
}

function renderCard(machine) {
  const card = document.createElement("article");
  card.className = "machine";
  card.dataset.name = machine.name;
  card.dataset.state = machine.state;
  const header = document.createElement("header");
  const title = document.createElement("h3");
  title.textContent = machine.name;
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.dataset.state = machine.state;
  badge.textContent = machine.state;
  header.append(title, badge);
  card.append(header, progressBar(`${machine.name} overall`, machine.progress, machine.state));
  const packages = document.createElement("ul");
  packages.className = "software";
  for (const software of machine.software) {
    const row = document.createElement("li");
    row.dataset.software = software.name;
    const name = document.createElement("span");
    name.className = "software-name";
    name.textContent = software.name;
    const figure = document.createElement("span");
    figure.className = "software-percent";
    figure.textContent = `${Math.round(software.percent)}% ${software.state}`;
    row.append(name, figure, progressBar(`${machine.name} ${software.name}`, software.percent, software.state));
    packages.append(row);
  }
  card.append(packages);
  return card;
}

function matchesFilter(machine) {
  const state = stateFilter.value;
  const name = nameFilter.value.trim().toLowerCase();
  return (!state || machine.state === state) && (!name || machine.name.toLowerCase().includes(name));
}

function placeCard(name) {
  const machine = machines.get(name);
  const old = cards.get(name);
  if (!machine) {
    if (old) old.remove();
    cards.delete(name);
    return;
  }
  const card = renderCard(machine);
  card.hidden = !matchesFilter(machine);
  cards.set(name, card);
  if (old) {
    old.replaceWith(card);
    return;
  }
  // Keep the grid in name order.
  const next = [...cards.keys()].filter((other) => other > name && cards.get(other).isConnected).sort()[0];
  grid.insertBefore(card, next ? cards.get(next) : null);
}

function applyFilter() {
  let visible = 0;
  for (const [name, card] of cards) {
    card.hidden = !matchesFilter(machines.get(name));
    if (!card.hidden) visible += 1;
  }
  emptyNote.hidden = visible > 0;
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

function onSnapshot(frame) {
  epoch = frame.epoch;
  seq = frame.seq;
  awaitingSnapshot = false;
  if (lastFrameAt === null) lastFrameAt = Date.now();
  machines.clear();
  for (const card of cards.values()) card.remove();
  cards.clear();
  for (const machine of frame.machines) machines.set(machine.name, machine);
  [...machines.keys()].sort().forEach(placeCard);
  renderSummary(frame.summary);
  renderSystem(frame.system);
  applyFilter();
}

function resync() {
  awaitingSnapshot = true;
  connection.send({ type: "status.resync" });
}

function onUpdate(frame) {
  if (awaitingSnapshot) return;
  if (frame.epoch === epoch && frame.seq <= seq) return; // the snapshot already has it
  lastFrameAt = Date.now();
  if (frame.epoch !== epoch || frame.seq !== seq + 1) {
    resync();
    return;
  }
  seq = frame.seq;
  for (const machine of frame.machines) {
    machines.set(machine.name, machine);
    placeCard(machine.name);
  }
  for (const name of frame.removed) {
    machines.delete(name);
    placeCard(name);
  }
  renderSummary(frame.summary);
  renderSystem(frame.system);
  record(frame.summary);
  applyFilter();
}

const connection = new Connection("/ws/status/", {
  onState: (state, detail) => showConnectionState(indicator, state, detail),
  onOpen: () => {
    awaitingSnapshot = true; // the server sends one on every connect
  },
  onFrame: (frame) => {
    if (frame.type === "status.snapshot") onSnapshot(frame);
    else if (frame.type === "status.update") onUpdate(frame);
    else if (frame.type === "status.resync") awaitingSnapshot = true; // the server sends it
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

stateFilter.addEventListener("change", applyFilter);
nameFilter.addEventListener("input", applyFilter);
setInterval(tickClock, 250);
window.addEventListener("resize", () => {
  stateChart.draw();
  progressChart.draw();
});
