// The intent console: three views over the console's own routes (/console/api/...), which the
// session cookie authenticates. Every text that comes from events (shopper ids, product names,
// reasons) goes into the page as text nodes, never as HTML. Charts are SVG drawn here.
"use strict";

const RECENT = 100;
const COLORS = 8;
const state = { session: null, source: null, live: null, freshFeed: true, testResults: new Map() };

// ---- small DOM helpers

function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function s(tag, attributes, ...children) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attributes || {})) element.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const $ = (selector) => document.querySelector(selector);
const show = (element, visible) => { element.hidden = !visible; };
const percent = (p) => (p === null || p === undefined ? "" : `${(100 * p).toFixed(1)}%`);
const time = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z").replace("Z", " UTC") : "");
const clock = (iso) => (iso ? iso.slice(11, 19) : "");
const shortTime = (iso) => (iso ? iso.slice(5, 16).replace("T", " ") : "");

const shortId = (id) => (id && id.length > 16 ? `${id.slice(0, 12)}…` : id || "");
const shorten = (text, most) => (text && text.length > most ? `${text.slice(0, most - 1)}…` : text || "");

function notice(message) {
  const bar = $("#notice");
  bar.textContent = message || "";
  show(bar, Boolean(message));
}

// ---- the console's API

async function call(method, path, body) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = state.session ? state.session.csrf_token : "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`api/${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch { data = { error: `HTTP ${response.status}` }; }
  }
  if (response.status === 401 && path !== "login") loggedOut();
  return { status: response.status, data, retryAfter: response.headers.get("Retry-After") };
}

function errorText(answer) {
  const message = (answer.data && answer.data.error) || `HTTP ${answer.status}`;
  return answer.retryAfter ? `${message} (try again in ${answer.retryAfter} s)` : message;
}

// ---- login and the views

async function start() {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#shopper-form").addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/shopper/${encodeURIComponent($("#shopper-id").value.trim())}`;
  });
  $("#subscription-form").addEventListener("submit", createSubscription);
  $("#secret-done").addEventListener("click", () => { $("#secret-value").textContent = ""; show($("#secret"), false); });
  window.addEventListener("hashchange", route);
  const answer = await call("GET", "session");
  if (answer.status === 200) loggedIn(answer.data);
  else if (answer.status !== 401) notice(errorText(answer));
  route();
}

async function login(event) {
  event.preventDefault();
  const field = $("#token");
  const answer = await call("POST", "login", { token: field.value });
  field.value = "";
  if (answer.status !== 200) {
    $("#login-error").textContent = errorText(answer);
    return;
  }
  $("#login-error").textContent = "";
  loggedIn(answer.data);
  route();
}

async function logout() {
  await call("POST", "logout");
  loggedOut();
}

function loggedIn(session) {
  state.session = session;
  $("#about").textContent = `${session.app_id} · domain ${session.domain} · model ${session.model_version}`;
  show($("#nav"), true);
  show($("#logout"), true);
  renderIntentChoices();
  openLiveFeed();
}

function loggedOut() {
  state.session = null;
  if (state.source) state.source.close();
  state.source = null;
  show($("#nav"), false);
  show($("#logout"), false);
  $("#about").textContent = "";
  route();
}

function route() {
  const [, view, argument] = location.hash.match(/^#\/([a-z]+)\/?(.*)$/) || [null, "live", ""];
  const current = state.session ? (["live", "shopper", "subscriptions"].includes(view) ? view : "live") : "login";
  for (const section of ["login", "live", "shopper", "subscriptions"]) show($(`#${section}`), section === current);
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", link.dataset.view === current);
  notice("");
  if (current === "shopper" && argument) showShopper(decodeURIComponent(argument));
  if (current === "subscriptions") loadSubscriptions();
  if (current === "login") $("#token").focus();
}

// ---- Live: server-sent events on the session cookie

function openLiveFeed() {
  if (state.source) state.source.close();
  const source = new EventSource("api/live");
  state.source = source;
  source.addEventListener("open", () => { state.freshFeed = true; $("#live-connection").classList.add("on"); });
  source.addEventListener("update", (event) => {
    const update = JSON.parse(event.data);
    state.live = state.freshFeed || !state.live ? update : merge(state.live, update);
    state.freshFeed = false;
    renderLive(update);
  });
  source.addEventListener("logout", () => loggedOut());
  source.addEventListener("error", async () => {
    $("#live-connection").classList.remove("on");
    $("#live-status").textContent = "disconnected; reconnecting…";
    if (source.readyState === EventSource.CLOSED) {
      // closed for good (a 401 or 503 answer): ask why, then try again if still logged in
      const answer = await call("GET", "session");
      if (answer.status === 200 && state.source === source) setTimeout(openLiveFeed, 3000);
    }
  });
}

function merge(previous, update) {
  const merged = { ...update };
  for (const kind of ["changes", "dead_letters", "webhook_dead_letters", "webhook_failures"]) {
    merged[kind] = [...previous[kind], ...update[kind]].slice(-RECENT);
  }
  return merged;
}

function renderLive(update) {
  const live = state.live;
  const totals = live.totals;
  $("#live-status").textContent =
    `${live.caught_up ? "live" : "reading the topics' history…"} · everything since ${time(live.since)}, ` +
    "from every worker (this worker reads the whole topics)";
  const card = (id, figure, caption, alarm) =>
    h("div", { class: alarm ? "card alarm" : "card", id }, h("div", { class: "figure" }, figure), h("div", { class: "caption" }, caption));
  $("#live-totals").replaceChildren(
    card("total-changes", totals.changes, "intent changes"),
    card("total-withheld", totals.withheld_for_consent, "withheld for consent (counted, not listed)"),
    card("total-holdout", totals.holdout, "for holdout shoppers"),
    card("total-dead-letters", totals.dead_letters, "dead letters (events rejected)", totals.dead_letters > 0),
    card(
      "total-webhook-failures",
      `${totals.webhook_failed_attempts} / ${totals.webhook_attempts}`,
      "webhook attempts failed / made",
      totals.webhook_failed_attempts > 0,
    ),
    card("total-webhook-dead-letters", totals.webhook_dead_letters, "webhook dead letters", totals.webhook_dead_letters > 0),
  );
  $("#live-by-intent").replaceChildren(barChart(live.by_intent));
  const fresh = new Set(live === update ? [] : update.changes.map((c) => c.seq));
  fillTable("#live-changes", [...live.changes].reverse(), (change) =>
    h("tr", { class: fresh.has(change.seq) ? "fresh" : null, "data-change-id": change.id },
      h("td", { title: change.detected_at }, clock(change.detected_at)),
      h("td", {}, h("a", { href: `#/shopper/${encodeURIComponent(change.shopper_id)}` }, change.shopper_id)),
      h("td", {}, `${change.from_intent ? change.from_intent.label : "(none)"} → `, h("strong", {}, change.to_intent.label)),
      h("td", { class: "number" }, percent(change.to_intent.confidence)),
      h("td", {}, change.trigger || ""),
      h("td", { class: "number" }, change.holdout ? h("span", { class: "badge" }, "holdout") : change.suggestions),
    ),
    "no intent change yet",
  );
  fillTable("#live-dead-letters", [...live.dead_letters].reverse(), (letter) =>
    h("tr", {},
      h("td", { title: letter.rejected_at }, clock(letter.rejected_at)),
      h("td", {}, letter.reason),
      h("td", {}, letter.key || ""),
      h("td", {}, `${letter.topic}/${letter.partition}/${letter.offset}`),
      h("td", { class: "excerpt", title: `${letter.bytes} bytes` }, letter.excerpt),
    ),
    "no dead letter",
  );
  fillTable("#live-webhook-failures", [...live.webhook_failures].reverse(), (attempt) =>
    h("tr", {},
      h("td", { title: attempt.at }, clock(attempt.at)),
      h("td", { title: attempt.subscription_id }, shortId(attempt.subscription_id)),
      h("td", {}, attempt.intent || attempt.type || ""),
      h("td", { title: attempt.error || "" },
        h("span", { class: "badge bad" }, attempt.status ? `HTTP ${attempt.status}` : shorten(attempt.error, 60))),
    ),
    "no failed attempt",
  );
  fillTable("#live-webhook-dead-letters", [...live.webhook_dead_letters].reverse(), (letter) =>
    h("tr", {},
      h("td", { title: letter.dead_lettered_at }, clock(letter.dead_lettered_at)),
      h("td", { title: letter.subscription_id }, shortId(letter.subscription_id)),
      h("td", {}, letter.url || ""),
      h("td", { class: "number" }, letter.attempts),
      h("td", {}, letter.last_status ? `HTTP ${letter.last_status}` : letter.last_error || ""),
    ),
    "no webhook dead letter",
  );
}

function fillTable(selector, rows, render, empty) {
  const body = $(`${selector} tbody`);
  const columns = $(`${selector} thead tr`).children.length;
  body.replaceChildren(...(rows.length ? rows.map(render) : [h("tr", {}, h("td", { colspan: columns, class: "muted" }, empty))]));
}

function barChart(counts) {
  if (!counts.length) return h("p", { class: "muted" }, "no intent change yet");
  const row = 22, labelWidth = 170, width = 480;
  const most = Math.max(...counts.map((c) => c.count));
  return s("svg", { viewBox: `0 0 ${width} ${row * counts.length}`, width: "100%", role: "img", "aria-label": "intent changes per intent" },
    counts.map((c, i) => s("g", { "data-intent": c.id },
      s("text", { x: 0, y: i * row + 15 }, c.label),
      s("rect", { class: "bar", x: labelWidth, y: i * row + 4, height: row - 8, width: Math.max(1, ((width - labelWidth - 50) * c.count) / most) }),
      s("text", { x: labelWidth + ((width - labelWidth - 50) * c.count) / most + 6, y: i * row + 15 }, c.count),
    )));
}

// ---- Shopper: the read side (GET /v1/shoppers/{id}/intent and /timeline, through the console)

async function showShopper(shopperId) {
  $("#shopper-id").value = shopperId;
  $("#shopper-error").textContent = "";
  show($("#shopper-result"), false);
  const answer = await call("GET", `shopper?id=${encodeURIComponent(shopperId)}`);
  if (answer.status !== 200) {
    $("#shopper-error").textContent =
      answer.status === 404 ? `no shopper ${shopperId} on any worker (${errorText(answer)})` : errorText(answer);
    return;
  }
  const { intent, timeline } = answer.data;
  renderSummary(intent);
  const changes = timeline.changes || [];
  const markers = changeMarkers(timeline.events, changes);
  renderChart(timeline.events, changes, markers);
  renderChanges(changes, intent.holdout || timeline.holdout);
  renderEvents(timeline.events, markers);
  show($("#shopper-result"), true);
}

function renderSummary(intent) {
  const windowText = (w) => (w ? `${w.events} events, the last at ${time(w.last_event_at)}` : "none");
  const committed = intent.committed_intent;
  $("#shopper-summary").replaceChildren(...[
    h("h2", {}, intent.shopper_id),
    intent.holdout ? h("p", {}, h("span", { class: "badge" }, "holdout"), " no suggestions are sent for this shopper") : null,
    h("p", {}, "Committed intent: ", committed ? h("strong", { id: "committed-intent" }, committed.label) : "(none yet)",
      committed ? ` (${percent(committed.confidence)} when it changed)` : ""),
    h("h3", {}, "The model now"),
    h("table", { id: "current-intents" }, h("tbody", {}, (intent.current || []).map((c) =>
      h("tr", {}, h("td", {}, c.label), h("td", { class: "number" }, percent(c.probability)))))),
    h("h3", {}, "Windows"),
    h("p", {}, `session: ${windowText(intent.session_window)}`, h("br"), `shopper: ${windowText(intent.shopper_window)}`),
    intent.last_change
      ? h("p", {}, "Last change: ", intentName(intent.last_change.from_intent), " → ", intentName(intent.last_change.to_intent),
        ` at ${time(intent.last_change.event_time)}`)
      : null,
    h("p", { class: "muted" }, `model ${intent.model_version} · answered by ${intent.served_by}`),
  ].filter(Boolean));
}

function intentName(intent) {
  return intent ? intent.label || intent.id : "(none)";
}

// each change at the last event at or before its event time
function changeMarkers(events, changes) {
  const times = events.map((e) => Date.parse(e.t));
  return changes.map((change) => {
    const at = Date.parse(change.event_time);
    let index = -1;
    times.forEach((t, i) => { if (t <= at) index = i; });
    return { change, index };
  });
}

function plottedIntents(events) {
  const best = new Map();
  for (const event of events) {
    for (const top of event.top_intents || []) {
      const seen = best.get(top.id);
      if (!seen || top.probability > seen.probability) best.set(top.id, { id: top.id, label: top.label, probability: top.probability });
    }
  }
  return [...best.values()].sort((a, b) => b.probability - a.probability).slice(0, COLORS);
}

function renderChart(events, changes, markers) {
  const width = 900, height = 280, left = 40, right = 10, top = 28, bottom = 30;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const x = (i) => left + (events.length > 1 ? (i * plotWidth) / (events.length - 1) : plotWidth / 2);
  const y = (p) => top + (1 - p) * plotHeight;
  const intents = plottedIntents(events);
  const grid = [0, 0.25, 0.5, 0.75, 1].map((p) => s("g", {},
    s("line", { class: "axis", x1: left, x2: width - right, y1: y(p), y2: y(p) }),
    s("text", { x: 0, y: y(p) + 4 }, `${p * 100}%`)));
  const step = Math.max(1, Math.ceil(events.length / 8));
  const ticks = events.map((e, i) => (i % step === 0 ? s("text", { x: x(i) - 30, y: height - 8 }, shortTime(e.t)) : null));
  const lines = intents.map((intent, n) => {
    let path = "", pen = false;
    const points = [];
    events.forEach((event, i) => {
      const found = (event.top_intents || []).find((t) => t.id === intent.id);
      if (!found) { pen = false; return; }  // not among the top intents there: a gap, not a zero
      path += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(found.probability).toFixed(1)} `;
      pen = true;
      points.push(s("circle", { cx: x(i), cy: y(found.probability), r: 2.5, class: `point-${n}` },
        s("title", {}, `#${i + 1} ${event.event}: ${intent.label} ${percent(found.probability)}`)));
    });
    return s("g", { "data-intent": intent.id }, s("path", { d: path, fill: "none", "stroke-width": 2, class: `line-${n}` }), points);
  });
  // a label for a marker only where it has room; every marker says what it is on hover
  let labelledUpTo = -Infinity;
  const flags = markers.filter((m) => m.index >= 0).map(({ change, index }) => {
    const label = x(index) >= labelledUpTo;
    if (label) labelledUpTo = x(index) + 140;
    return s("g", { class: "change-marker", "data-change-id": change.id },
      s("line", { class: "marker", x1: x(index), x2: x(index), y1: top - 6, y2: top + plotHeight }),
      label ? s("text", { class: "marker-label", x: Math.min(x(index) + 3, width - 150), y: top - 10 }, `→ ${intentName(change.to_intent)}`) : null,
      s("title", {}, `${intentName(change.from_intent)} → ${intentName(change.to_intent)} at ${time(change.event_time)}`));
  });
  const chart = s("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": "top intents after each event" },
    grid, ticks, lines, flags);
  colorLines(chart);
  $("#shopper-chart").replaceChildren(chart);
  $("#shopper-legend").replaceChildren(...intents.map((intent, n) =>
    h("span", {}, h("span", { class: `swatch swatch-${n}` }), intent.label)));
  if (!events.length) $("#shopper-chart").replaceChildren(h("p", { class: "muted" }, "no events in the window"));
}

// SVG strokes from the palette, set through the DOM (the page's policy allows no inline styles)
function colorLines(chart) {
  const palette = ["#2f5bea", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0b7285", "#5c940d", "#862e9c"];
  palette.forEach((color, n) => {
    for (const line of chart.querySelectorAll(`.line-${n}`)) line.setAttribute("stroke", color);
    for (const point of chart.querySelectorAll(`.point-${n}`)) point.setAttribute("fill", color);
  });
}

function renderChanges(changes, holdout) {
  if (!changes.length) {
    $("#shopper-changes").replaceChildren(h("p", { class: "muted" }, "no intent change in the window"));
    return;
  }
  $("#shopper-changes").replaceChildren(...[...changes].reverse().map((change) => h("div", { class: "change", "data-change-id": change.id, "data-to-intent": change.to_intent ? change.to_intent.id : "" },
    h("h3", {}, `${intentName(change.from_intent)} → ${intentName(change.to_intent)}`,
      change.to_intent && change.to_intent.confidence !== undefined ? ` (${percent(change.to_intent.confidence)})` : ""),
    h("p", { class: "muted" }, `after the event of ${time(change.event_time)}, detected at ${time(change.detected_at)} · ${change.id}`),
    h("strong", {}, "Evidence: the events that triggered it"),
    h("ol", { class: "evidence" }, (change.evidence || []).map((e) => h("li", {},
      `${shortTime(e.timestamp)} ${e.event}`, e.name || e.query || e.product_id ? ": " : "",
      h("strong", {}, e.name || e.query || e.product_id || ""),
      e.category ? ` (${e.category}${e.price !== undefined ? `, ${e.price}` : ""})` : ""))),
    h("strong", {}, "Suggestions it carried"),
    (change.suggestions || []).length
      ? h("ul", { class: "suggestions" }, change.suggestions.map((item) => h("li", {},
        h("strong", {}, item.name || item.product_id), item.category ? ` (${item.category}${item.price !== undefined ? `, ${item.price}` : ""})` : "",
        h("div", { class: "reasons" }, (item.reasons || []).map((r) => r.text || r.code).join("; ")))))
      : h("p", { class: "muted" }, holdout ? "none: a holdout shopper gets no suggestions" : "none"),
  )));
}

function renderEvents(events, markers) {
  const marked = new Map(markers.map((m) => [m.index, m.change]));
  fillTable("#shopper-events", events.map((e, i) => ({ ...e, i })), (e) => {
    const top = (e.top_intents || [])[0];
    const change = marked.get(e.i);
    return h("tr", { class: change ? "marked" : null },
      h("td", { class: "number" }, e.i + 1),
      h("td", {}, time(e.t)),
      h("td", {}, e.event),
      h("td", {}, e.product_name || e.product_id || (e.query ? `search: ${e.query}` : "")),
      h("td", {}, e.category || ""),
      h("td", { class: "number" }, e.price ?? ""),
      h("td", {}, top ? `${top.label} ${percent(top.probability)}` : "", change ? h("strong", {}, ` → changed to ${intentName(change.to_intent)}`) : ""),
    );
  }, "no events in the window");
}

// ---- Subscriptions

function renderIntentChoices() {
  $("#subscription-intents").replaceChildren(...state.session.intents.map((intent) =>
    h("label", {}, h("input", { type: "checkbox", name: "intents", value: intent.id }), intent.label,
      intent.sensitive ? h("span", { class: "badge" }, "sensitive") : null)));
}

async function loadSubscriptions() {
  const answer = await call("GET", "subscriptions");
  if (answer.status !== 200) { notice(errorText(answer)); return; }
  const { subscriptions, outcomes_since: since, outcomes_caught_up: caughtUp } = answer.data;
  $("#subscriptions-note").textContent =
    `${subscriptions.length} subscription(s), shared by every worker. Deliveries since ${time(since)}` +
    (caughtUp ? "." : " (still reading their history).");
  const labels = new Map(state.session.intents.map((i) => [i.id, i.label]));
  fillTable("#subscription-list", subscriptions, (sub) => h("tr", { "data-subscription-id": sub.id },
    h("td", {}, h("code", {}, sub.id), h("div", { class: "muted" }, sub.description || ""), h("div", { class: "muted" }, `since ${time(sub.created_at)}`)),
    h("td", {}, sub.url),
    h("td", {}, sub.intents.length ? sub.intents.map((i) => labels.get(i) || i).join(", ") : "every intent"),
    h("td", {}, sub.enabled ? h("span", { class: "badge good" }, "enabled") : h("span", { class: "badge bad", title: sub.disabled_reason }, "disabled")),
    h("td", {}, h("div", { class: "outcomes" }, sub.outcomes.length ? sub.outcomes.map((o) =>
      h("span", { class: o.delivered ? "badge good" : "badge bad", title: `${time(o.at)} ${o.type || ""} ${o.intent || ""} ${o.error || ""} ${o.seconds} s` },
        o.status ? o.status : "error")) : h("span", { class: "muted" }, "none yet")),
      h("div", { class: "test-result muted" }, state.testResults.get(sub.id) || "")),
    h("td", {},
      h("button", { type: "button", onclick: () => testSubscription(sub.id) }, "Send test"), " ",
      h("button", { type: "button", onclick: () => rotateSecret(sub.id) }, "Rotate secret"), " ",
      h("button", { type: "button", class: "danger", onclick: () => deleteSubscription(sub.id) }, "Delete")),
  ), "no subscription yet");
}

async function createSubscription(event) {
  event.preventDefault();
  const form = event.target;
  const body = {
    url: form.url.value.trim(),
    intents: [...form.querySelectorAll("input[name=intents]:checked")].map((box) => box.value),
  };
  if (form.description.value.trim()) body.description = form.description.value.trim();
  const answer = await call("POST", "subscriptions", body);
  if (answer.status !== 201) { notice(errorText(answer)); return; }
  form.reset();
  showSecret(answer.data);
  loadSubscriptions();
}

function showSecret(subscription) {
  $("#secret-subscription").textContent = subscription.id;
  $("#secret-value").textContent = subscription.secret;
  show($("#secret"), true);
}

async function rotateSecret(id) {
  if (!confirm(`A new signing secret for ${id}? The current one keeps signing during the overlap.`)) return;
  const answer = await call("POST", `subscriptions/${encodeURIComponent(id)}/rotate-secret`);
  if (answer.status !== 200) { notice(errorText(answer)); return; }
  showSecret(answer.data);
}

async function testSubscription(id) {
  const cell = $(`tr[data-subscription-id="${CSS.escape(id)}"] .test-result`);
  cell.textContent = "sending…";
  const answer = await call("POST", `subscriptions/${encodeURIComponent(id)}/test`);
  const result = answer.data;
  let text = errorText(answer);
  if (answer.status === 200) {
    text = result.delivered
      ? `test delivered: HTTP ${result.status} in ${result.seconds} s`
      : `test failed: ${result.status ? `HTTP ${result.status}` : result.error}`;
  }
  state.testResults.set(id, text);
  cell.textContent = text;
  setTimeout(loadSubscriptions, 1500);  // its outcome reaches the list through the attempts topic
}

async function deleteSubscription(id) {
  if (!confirm(`Delete ${id}? Its pending deliveries are dropped.`)) return;
  const answer = await call("DELETE", `subscriptions/${encodeURIComponent(id)}`);
  if (answer.status !== 204) { notice(errorText(answer)); return; }
  loadSubscriptions();
}

start();
