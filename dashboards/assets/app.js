// Tally finance dashboard. Plain JavaScript over the JSON API; Chart.js is
// embedded in the binary, nothing is loaded from a CDN. Amounts are shown as
// the API's exact decimal strings; numbers are only used to draw charts.
"use strict";

const KEY_STORE = "tally.financeKey";
const CURRENCY_STORE = "tally.currency";
const $ = (sel) => document.querySelector(sel);
const LABELS = {
  net: "Net revenue", captured: "Captured", refunded: "Refunded", gross: "Gross placed",
  orders_placed: "Orders placed", average_order: "Average order", orders_cancelled: "Cancelled", items_sold: "Items sold",
};
// For these, a fall is good news.
const LOWER_IS_BETTER = new Set(["refunded", "orders_cancelled"]);

let dailyChart = null;
let topChart = null;
let lastQuery = null;
let lastLoad = 0;
let loadedWatermark = null;
// New data reloads the figures by itself, at most this often.
const AUTO_RELOAD_MS = 60000;

// ---------- API key ----------

function takeKeyFromFragment() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    localStorage.setItem(KEY_STORE, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function apiKey() { return localStorage.getItem(KEY_STORE); }

function showSignIn(why) {
  $("#dashboard").hidden = true;
  $("#signin").hidden = false;
  if (why) $("#signin-why").textContent = why;
  document.body.dataset.state = "signin";
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || ("HTTP " + status));
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, params, accept) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v) url.searchParams.set(k, v);
  const res = await fetch(url, { headers: { Authorization: "Bearer " + apiKey() } });
  if (!res.ok) {
    let problem = {};
    try { problem = await res.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, problem);
  }
  return accept === "blob" ? res : res.json();
}

// ---------- formatting (strings only: no float arithmetic on money) ----------

function group(decimal) {
  const neg = decimal.startsWith("-");
  const [int, frac] = (neg ? decimal.slice(1) : decimal).split(".");
  const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return (neg ? "-" : "") + grouped + (frac !== undefined ? "." + frac : "");
}

function iso(d) { return d.toISOString().slice(0, 10); }

// The days from `from` to `to` (YYYY-MM-DD, inclusive), in UTC.
function daysOf(from, to) {
  const out = [];
  if (!from || !to) return out;
  for (let t = Date.parse(from + "T00:00:00Z"); t <= Date.parse(to + "T00:00:00Z"); t += 86400000) {
    out.push(iso(new Date(t)));
  }
  return out;
}

function setRange(days) {
  const to = new Date();
  const from = new Date(to.getTime() - (days - 1) * 86400000);
  $("#from").value = iso(from);
  $("#to").value = iso(to);
}

// ---------- freshness badge ----------

function showFreshness(f) {
  const b = $("#freshness");
  b.classList.remove("fresh", "lagging", "stale");
  if (!f || !f.complete_up_to) {
    b.textContent = "no data ingested yet";
    b.classList.add("stale");
    b.dataset.lag = "";
    return;
  }
  const at = new Date(f.complete_up_to);
  const lag = f.lag_seconds;
  const lagText = lag < 1 ? "< 1 s" : lag < 120 ? lag.toFixed(1) + " s" : lag < 7200 ? Math.round(lag / 60) + " min" : Math.round(lag / 3600) + " h";
  b.textContent = "data as of " + at.toISOString().replace("T", " ").slice(0, 19) + " UTC (lag " + lagText + ")";
  b.dataset.completeUpTo = f.complete_up_to;
  b.dataset.lag = String(lag);
  b.classList.add(lag < 60 ? "fresh" : lag < 900 ? "lagging" : "stale");
}

async function pollFreshness() {
  if (!apiKey() || $("#dashboard").hidden) return;
  try {
    const f = await api("/v1/freshness");
    showFreshness(f);
    const coversToday = $("#to").value >= iso(new Date());
    const idle = document.body.dataset.state === "ready";
    if (coversToday && idle && f.complete_up_to !== loadedWatermark && Date.now() - lastLoad > AUTO_RELOAD_MS) {
      load();
    }
  } catch (_) { /* the next poll retries */ }
}

// ---------- rendering ----------

function showError(e) {
  const box = $("#error");
  if (!e) { box.hidden = true; box.textContent = ""; return; }
  box.hidden = false;
  const params = (e.problem && e.problem.invalid_params) || [];
  box.textContent = params.length ? params.map((p) => p.name + ": " + p.reason).join(" · ") : e.message;
}

function renderTiles(summary, currency) {
  const tiles = $("#tiles");
  tiles.innerHTML = "";
  const cur = summary.currencies.find((c) => c.currency === currency);
  if (!cur) return;
  for (const m of cur.measures) {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.id = "tile-" + m.measure;
    tile.dataset.measure = m.measure;
    let change = "no previous data";
    let cls = "";
    if (m.change_percent !== null) {
      const pct = m.change_percent;
      const rising = m.change > 0, falling = m.change < 0;
      const good = LOWER_IS_BETTER.has(m.measure) ? falling : rising;
      const bad = LOWER_IS_BETTER.has(m.measure) ? rising : falling;
      cls = good ? "up" : bad ? "down" : "";
      change = (rising ? "▲ +" : falling ? "▼ " : "") + pct + " % vs previous period";
    }
    tile.innerHTML = '<div class="label"></div><div class="value"></div><div class="change"></div>';
    tile.querySelector(".label").textContent = LABELS[m.measure] || m.measure;
    const v = tile.querySelector(".value");
    if (m.unit === "minor") {
      const ccy = document.createElement("span");
      ccy.className = "ccy";
      ccy.textContent = currency;
      v.append(ccy, " " + group(m.current_formatted));
    } else {
      v.textContent = group(m.current_formatted);
    }
    v.dataset.value = m.current_formatted;
    const c = tile.querySelector(".change");
    c.textContent = change;
    if (cls) c.classList.add(cls);
    c.title = "previous period: " + group(m.previous_formatted);
    tiles.appendChild(tile);
  }
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function renderDaily(daily, summary, currency) {
  const body = $("#daily-table tbody");
  body.innerHTML = "";
  for (const r of daily.rows) {
    const tr = document.createElement("tr");
    tr.dataset.day = r.day;
    cell(tr, r.day);
    cell(tr, String(r.orders_placed));
    cell(tr, String(r.orders_cancelled));
    cell(tr, String(r.items_sold));
    cell(tr, group(r.gross));
    cell(tr, group(r.captured));
    cell(tr, group(r.refunded));
    cell(tr, group(r.net), r.net_minor < 0 ? "neg" : "").dataset.value = r.net;
    cell(tr, r.average_order === null ? "–" : group(r.average_order));
    body.appendChild(tr);
  }
  const foot = $("#daily-table tfoot");
  foot.innerHTML = "";
  const cur = summary.currencies.find((c) => c.currency === currency);
  if (cur) {
    const m = Object.fromEntries(cur.measures.map((x) => [x.measure, x.current_formatted]));
    const tr = document.createElement("tr");
    cell(tr, "Total " + currency);
    cell(tr, m.orders_placed);
    cell(tr, m.orders_cancelled);
    cell(tr, m.items_sold);
    cell(tr, group(m.gross));
    cell(tr, group(m.captured));
    cell(tr, group(m.refunded));
    cell(tr, group(m.net)).id = "daily-total-net";
    cell(tr, group(m.average_order));
    foot.appendChild(tr);
  }
  // Every day of the range is on the axis; a day without orders is zero.
  const byDay = new Map(daily.rows.map((r) => [r.day, r]));
  const labels = daysOf(daily.from, daily.to);
  const pick = (f) => labels.map((d) => (byDay.has(d) ? byDay.get(d)[f] : "0"));
  const series = (f) => pick(f).map(Number);
  const data = {
    labels,
    datasets: [
      { label: "Net", data: series("net"), exact: pick("net"), fill: "origin", borderColor: "#2f5bea", backgroundColor: "rgba(47,91,234,.15)", tension: .25, pointRadius: 2 },
      { label: "Captured", data: series("captured"), exact: pick("captured"), borderColor: "#1e7a3c", backgroundColor: "#1e7a3c", tension: .25, pointRadius: 2 },
      { label: "Refunded", data: series("refunded"), exact: pick("refunded"), borderColor: "#b42318", backgroundColor: "#b42318", tension: .25, pointRadius: 2 },
    ],
  };
  const tooltip = { callbacks: { label: (ctx) => ctx.dataset.label + ": " + currency + " " + group(ctx.dataset.exact[ctx.dataIndex]) } };
  if (dailyChart) {
    dailyChart.data = data;
    dailyChart.options.plugins.tooltip = tooltip;
    dailyChart.update();
  } else {
    dailyChart = new Chart($("#daily-chart"), {
      type: "line", data,
      options: { animation: false, maintainAspectRatio: false, interaction: { mode: "index", intersect: false }, plugins: { tooltip } },
    });
  }
}

function renderTop(top) {
  const body = $("#top-table tbody");
  body.innerHTML = "";
  for (const r of top.rows) {
    const tr = document.createElement("tr");
    tr.dataset.merchant = r.merchant_id;
    cell(tr, String(r.rank));
    cell(tr, r.merchant_id, "text");
    cell(tr, group(r.net), r.net_minor < 0 ? "neg" : "").dataset.value = r.net;
    cell(tr, r.share_percent === null ? "–" : r.share_percent + " %");
    cell(tr, group(r.gross));
    cell(tr, String(r.orders_placed));
    body.appendChild(tr);
  }
  const data = {
    labels: top.rows.map((r) => r.merchant_id),
    datasets: [{ label: "Net " + top.currency, data: top.rows.map((r) => Number(r.net)), exact: top.rows.map((r) => r.net), backgroundColor: "#2f5bea" }],
  };
  const tooltip = { callbacks: { label: (ctx) => top.currency + " " + group(ctx.dataset.exact[ctx.dataIndex]) + (top.rows[ctx.dataIndex].share_percent ? " (" + top.rows[ctx.dataIndex].share_percent + " %)" : "") } };
  if (topChart) {
    topChart.data = data;
    topChart.options.plugins.tooltip = tooltip;
    topChart.update();
  } else {
    topChart = new Chart($("#top-chart"), {
      type: "bar", data,
      options: { indexAxis: "y", animation: false, maintainAspectRatio: false, plugins: { legend: { display: false }, tooltip } },
    });
  }
}

// ---------- merchant drill-down: their recent orders (needs orders:read) ----------

let drill = null; // { merchant, query, cursor }

function orderRow(o) {
  const tr = document.createElement("tr");
  cell(tr, o.placed_at.replace("T", " ").replace("Z", ""), "text");
  cell(tr, o.order_id, "text id").title = "version " + o.version;
  cell(tr, o.customer_id, "text");
  cell(tr, o.status, "text");
  cell(tr, String(o.item_count));
  cell(tr, group(o.total) + " " + o.currency);
  cell(tr, group(o.captured));
  cell(tr, group(o.refunded), o.refunded_minor > 0 ? "neg" : "");
  return tr;
}

async function loadOrders(more) {
  const note = $("#mo-note");
  const params = Object.assign({ limit: "25" }, drill.query, more ? { cursor: drill.cursor } : {});
  try {
    const page = await api("/v1/merchants/" + encodeURIComponent(drill.merchant) + "/orders", params);
    const body = $("#mo-table tbody");
    if (!more) body.innerHTML = "";
    for (const o of page.orders) body.appendChild(orderRow(o));
    drill.cursor = page.next_cursor;
    $("#mo-more").hidden = !page.next_cursor;
    const shown = body.children.length;
    note.textContent = shown === 0
      ? "No orders in this range and currency."
      : shown + " order(s), newest first, " + drill.query.currency + ", " + drill.query.from + " – " + drill.query.to + ".";
  } catch (e) {
    $("#mo-more").hidden = true;
    note.textContent = e.status === 403
      ? "This key may not read orders: it needs the orders:read role (tally keys create --role orders:read)."
      : "Could not load the orders: " + e.message;
  }
}

function openMerchant(merchant) {
  const q = lastQuery || {};
  drill = { merchant, query: { currency: q.currency, from: q.from, to: q.to }, cursor: null };
  for (const tr of document.querySelectorAll("#top-table tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.merchant === merchant);
  }
  $("#mo-merchant").textContent = merchant;
  $("#merchant-orders").hidden = false;
  loadOrders(false);
}

function closeMerchant() {
  drill = null;
  $("#merchant-orders").hidden = true;
  for (const tr of document.querySelectorAll("#top-table tbody tr")) tr.classList.remove("selected");
}

function renderSummary(summary) {
  const body = $("#summary-table tbody");
  body.innerHTML = "";
  const shown = ["net", "captured", "refunded", "gross", "orders_placed"];
  for (const cur of summary.currencies) {
    const m = Object.fromEntries(cur.measures.map((x) => [x.measure, x]));
    const tr = document.createElement("tr");
    tr.dataset.currency = cur.currency;
    cell(tr, cur.currency);
    for (const name of shown) {
      const x = m[name];
      cell(tr, group(x.current_formatted));
      cell(tr, x.change_percent === null ? "–" : (x.change > 0 ? "+" : "") + x.change_percent + " %", x.change < 0 ? "neg" : "");
    }
    body.appendChild(tr);
  }
}

function fillCurrencies(summary) {
  const sel = $("#currency");
  const wanted = sel.value || localStorage.getItem(CURRENCY_STORE);
  const codes = summary.currencies.map((c) => c.currency);
  sel.innerHTML = "";
  for (const c of codes) {
    const o = document.createElement("option");
    o.value = o.textContent = c;
    sel.appendChild(o);
  }
  sel.value = codes.includes(wanted) ? wanted : (codes[0] || "");
  return sel.value;
}

// ---------- loading ----------

async function load() {
  document.body.dataset.state = "loading";
  lastLoad = Date.now();
  showError(null);
  const range = { from: $("#from").value, to: $("#to").value, merchant_id: $("#merchants").value.replace(/\s+/g, "") };
  try {
    const summary = await api("/v1/revenue/summary", range);
    showFreshness(summary.freshness);
    loadedWatermark = summary.freshness.complete_up_to;
    const currency = fillCurrencies(summary);
    renderSummary(summary);
    $("#period").textContent = "Compared with " + summary.previous_from + " – " + summary.previous_to + ".";
    if (!currency) {
      $("#tiles").innerHTML = '<p class="muted">No orders in this range.</p>';
      renderDaily({ rows: [], from: summary.from, to: summary.to }, summary, "");
      renderTop({ rows: [], currency: "" });
      lastQuery = range;
      document.body.dataset.state = "ready";
      return;
    }
    localStorage.setItem(CURRENCY_STORE, currency);
    const q = Object.assign({ currency }, range);
    const [daily, top] = await Promise.all([api("/v1/revenue/daily", q), api("/v1/merchants/top", q)]);
    renderTiles(summary, currency);
    renderDaily(daily, summary, currency);
    renderTop(top);
    showFreshness(top.freshness);
    lastQuery = q;
    if (drill) openMerchant(drill.merchant);
    document.body.dataset.state = "ready";
  } catch (e) {
    if (e.status === 401 || e.status === 403) { showSignIn(e.message); return; }
    showError(e);
    document.body.dataset.state = "error";
  }
}

async function downloadCsv(path) {
  try {
    const res = await api(path, Object.assign({ format: "csv" }, lastQuery || {}), "blob");
    const name = (res.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await res.blob());
    a.download = name ? name[1] : "tally.csv";
    document.body.appendChild(a);
    a.click();
    a.remove();
  } catch (e) { showError(e); }
}

function start() {
  $("#signin").hidden = true;
  $("#dashboard").hidden = false;
  if (!$("#from").value) setRange(30);
  load();
}

window.addEventListener("DOMContentLoaded", () => {
  takeKeyFromFragment();
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
  $("#currency").addEventListener("change", load);
  $("#refresh").addEventListener("click", load);
  for (const b of document.querySelectorAll(".presets button")) {
    b.addEventListener("click", () => { setRange(Number(b.dataset.days)); load(); });
  }
  for (const b of document.querySelectorAll("[data-csv]")) {
    b.addEventListener("click", () => downloadCsv(b.dataset.csv));
  }
  $("#top-table tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr && tr.dataset.merchant) openMerchant(tr.dataset.merchant);
  });
  $("#mo-more").addEventListener("click", () => loadOrders(true));
  $("#mo-close").addEventListener("click", closeMerchant);
  $("#mo-csv").addEventListener("click", async () => {
    if (!drill) return;
    try {
      const res = await api("/v1/merchants/" + encodeURIComponent(drill.merchant) + "/orders",
        Object.assign({ format: "csv", limit: "500" }, drill.query), "blob");
      const a = document.createElement("a");
      a.href = URL.createObjectURL(await res.blob());
      a.download = "orders-" + drill.merchant + ".csv";
      document.body.appendChild(a);
      a.click();
      a.remove();
    } catch (e) { showError(e); }
  });
  $("#signout").addEventListener("click", () => { localStorage.removeItem(KEY_STORE); showSignIn(); });
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(KEY_STORE, $("#signin-key").value.trim());
    start();
  });
  setInterval(pollFreshness, 5000);
  if (apiKey()) start(); else showSignIn();
});
