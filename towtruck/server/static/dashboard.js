// towtruck dashboard: reads dashboard/data once, then dashboard/events, and draws them.
//
// The event stream is read with fetch() and a stream reader, not EventSource: the
// cluster key travels in a header, and EventSource cannot send one. The key is kept in
// sessionStorage (this tab only) once the user enters it.
"use strict";

const KEY_HEADER = document.body.dataset.keyHeader;
const KEY_STORE = "towtruck.clusterKey";
const $ = (id) => document.getElementById(id);
let stream = null; // the AbortController of the open event stream
let retry = 1000;  // ms before the next attempt to reconnect (doubles up to 10 s)
let lastEvent = 0;

function headers() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { [KEY_HEADER]: key } : {};
}

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text || state;
}

class Refused extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw new Refused(response.status, (body.error || {}).message || response.statusText);
  }
  return response;
}

// Login

function askForKey(message) {
  if (stream) stream.abort();
  $("board").hidden = true;
  $("login").hidden = false;
  $("sign-out").hidden = true;
  $("login-error").textContent = message || "";
  setState("locked", "key needed");
  $("key").focus();
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, $("key").value);
  $("key").value = "";
  start();
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  askForKey("");
});

// Live updates

async function start() {
  setState("connecting", "connecting");
  try {
    const response = await getJSON("dashboard/data");
    if (!response.ok) throw new Error(`dashboard/data answered ${response.status}`);
    show(await response.json());
  } catch (error) {
    if (error instanceof Refused) {
      askForKey(error.status === 403 ? "That is not this cluster's key." : "");
      return;
    }
    return reconnect(error);
  }
  $("login").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = !sessionStorage.getItem(KEY_STORE);
  listen();
}

async function listen() {
  if (stream) stream.abort();
  const controller = (stream = new AbortController());
  let ended = null;
  try {
    const response = await fetch("dashboard/events", {
      headers: headers(), cache: "no-store", signal: controller.signal,
    });
    if (response.status === 401 || response.status === 403) return askForKey("");
    if (!response.ok || !response.body) throw new Error(`events answered ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event.type === "view") show(event.data);
        else if (event.type === "end") ended = event.data.reason;
      }
    }
  } catch (error) {
    if (controller.signal.aborted) return;
    return reconnect(error);
  }
  if (controller.signal.aborted) return;
  if (ended === "renew") { retry = 1000; return listen(); }
  reconnect(new Error(ended === "stopping" ? "the node is stopping" : "the stream ended"));
}

function parseEvent(block) {
  const event = { type: "message", data: "" };
  for (const line of block.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const field = line.slice(0, colon), value = line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event.type = value;
    else if (field === "data") event.data += value;
  }
  try { event.data = JSON.parse(event.data); } catch (_) { event.data = {}; }
  return event;
}

function reconnect(error) {
  setState("stale", `reconnecting: ${error.message}`);
  const wait = retry;
  retry = Math.min(retry * 2, 10000);
  setTimeout(start, wait);
}

// Drawing

function show(view) {
  retry = 1000;
  lastEvent = Date.now();
  setState("live", "live");
  const t = view.totals;
  $("served-by").textContent = `served by ${view.node}`;
  $("nodes-count").textContent = t.nodes;
  $("nodes-up").textContent = t.answered === t.nodes ? "all answering" : `${t.answered} answering`;
  $("actors-total").textContent = whole(t.actors);
  $("actors-max").textContent = t.max_actors ? `of ${whole(t.max_actors)} allowed` : "";
  $("calls-rate").textContent = rate(t.calls_per_s);
  $("errors-rate").textContent = rate(t.errors_per_s);
  $("p50").textContent = seconds(t.p50);
  $("p99").textContent = seconds(t.p99);
  $("forwarded").textContent = t.forwarded_share == null ? "–" : `${(100 * t.forwarded_share).toFixed(0)}%`;
  const history = view.history || [];
  spark($("calls-spark"), [history.map((p) => p.calls_per_s)], [""]);
  spark($("errors-spark"), [history.map((p) => p.errors_per_s)], ["err"]);
  spark($("latency-spark"), [history.map((p) => p.p50), history.map((p) => p.p99)], ["", "p99"]);
  showNodes(view.nodes);
  showMethods(view.methods);
  showReminders(view.reminders || {}, view.timers || 0);
  $("footer").textContent = `updated ${new Date().toLocaleTimeString()} · every ${view.interval} s`;
}

function showNodes(nodes) {
  const rows = nodes.map((node) => {
    const cells = [
      cell(node.address, "mono"),
      cell([dot(node.state), text(node.answered ? node.state : `${node.state} (no answer)`)]),
      cell(node.answered ? meter(node.actors, node.max_actors) : text("–")),
      cell(rate(node.calls_per_s), "num"),
      cell(rate(node.errors_per_s), "num"),
      cell(seconds(node.p99), "num"),
      cell(whole(node.in_flight), "num"),
      cell(whole(node.queued), "num"),
      cell(node.answered ? duration(node.uptime) : "–", "num"),
    ];
    return row(cells, node.address);
  });
  $("nodes").tBodies[0].replaceChildren(...rows);
}

function showMethods(methods) {
  const rows = methods.map((m) => row([
    cell(m.name, "mono"),
    cell(rate(m.calls_per_s), "num"),
    cell(rate(m.errors_per_s), "num"),
    cell(whole(m.calls), "num"),
    cell(whole(m.errors), "num"),
    cell(seconds(m.p99), "num"),
  ]));
  $("methods").tBodies[0].replaceChildren(...rows);
  $("no-methods").hidden = methods.length > 0;
}

function showReminders(reminders, timers) {
  const names = Object.keys(reminders).filter((k) => reminders[k]);
  $("reminders").hidden = names.length === 0 && !timers;
  const facts = names.map((k) => [k, whole(reminders[k])]);
  if (timers) facts.push(["timers", whole(timers)]);
  $("reminder-facts").replaceChildren(...factList(facts));
}

// Actor search

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = $("actor-id").value.trim();
  const out = $("actor-result");
  out.replaceChildren(text("looking…", "dim"));
  try {
    const response = await getJSON(`actors/${encodeURIComponent(id)}`);
    const body = await response.json();
    if (!response.ok) {
      out.replaceChildren(text((body.error || {}).message || `answered ${response.status}`, "dim"));
      return;
    }
    const facts = [
      ["node", body.node], ["state", body.state], ["calls", whole(body.calls)],
      ["errors", whole(body.errors)], ["queued", whole(body.queued)],
      ["activated", new Date(body.activated).toLocaleString()],
      ["last call", new Date(body.last_call).toLocaleString()],
    ];
    if (body.epoch != null) facts.push(["epoch", String(body.epoch)]);
    if (body.timers && body.timers.length) facts.push(["timers", body.timers.join(", ")]);
    const list = document.createElement("dl");
    list.className = "facts";
    list.id = "actor-facts";
    list.dataset.node = body.node;
    list.replaceChildren(...factList(facts));
    out.replaceChildren(list);
  } catch (error) {
    if (error instanceof Refused) return askForKey("");
    out.replaceChildren(text(error.message, "error"));
  }
});

// Small helpers: text only ever goes in through textContent.

function text(value, className) {
  const span = document.createElement("span");
  span.textContent = value;
  if (className) span.className = className;
  return span;
}

function cell(content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  for (const part of [].concat(content)) td.append(part instanceof Node ? part : text(part));
  return td;
}

function row(cells, key) {
  const tr = document.createElement("tr");
  if (key) tr.dataset.node = key;
  tr.append(...cells);
  return tr;
}

function dot(state) {
  const span = document.createElement("span");
  span.className = `dot ${state}`;
  return span;
}

function meter(count, most) {
  const box = document.createElement("div");
  box.className = "meter";
  const track = document.createElement("div");
  track.className = "track";
  const fill = document.createElement("div");
  const share = most ? Math.min(1, count / most) : 0;
  fill.className = "fill" + (share >= 1 ? " full" : share >= 0.8 ? " high" : "");
  fill.style.width = `${(100 * share).toFixed(1)}%`;
  track.append(fill);
  box.append(track, text(most ? `${whole(count)} / ${whole(most)}` : whole(count), "count"));
  return box;
}

function factList(facts) {
  return facts.flatMap(([name, value]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    return [dt, dd];
  });
}

const SVG = "http://www.w3.org/2000/svg";

function spark(box, series, classes) {
  const width = 120, height = 28;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const values = series.flat().filter((v) => v != null);
  const top = Math.max(...values, 0) || 1;
  series.forEach((points, index) => {
    if (points.length < 2) return;
    const step = width / (points.length - 1);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.map((v, i) =>
      `${(i * step).toFixed(1)},${(height - 1 - ((v || 0) / top) * (height - 2)).toFixed(1)}`).join(" "));
    if (classes[index]) line.setAttribute("class", classes[index]);
    line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.append(line);
  });
  box.replaceChildren(svg);
}

function whole(n) { return n == null ? "–" : Number(n).toLocaleString("en-US"); }

function rate(n) {
  if (n == null) return "–";
  if (n >= 10000) return `${(n / 1000).toFixed(1)}k`;
  return n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

function seconds(s) {
  if (s == null) return "–";
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

function duration(s) {
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

// A stream that has said nothing for a while is stale: show it, and start again.
setInterval(() => {
  if (document.body.dataset.state === "live" && Date.now() - lastEvent > 5000) {
    if (stream) stream.abort();
    reconnect(new Error("no update for 5 s"));
  }
}, 1000);

start();
