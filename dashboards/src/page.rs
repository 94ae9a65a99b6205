//! The dashboard page, embedded in the binary (no CDN, works offline).
//! A first cut: a daily table with a freshness badge. Issue #6 grows it
//! into charts.

pub const INDEX: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Tally · Daily revenue</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 2rem; color: #1d2330; }
  h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
  .badge { display: inline-block; padding: .2rem .6rem; border-radius: 1rem; background: #e6f4ea; color: #1e6b35; font-size: .85rem; }
  .badge.stale { background: #fdecea; color: #a3231a; }
  form { margin: 1rem 0; display: flex; gap: .75rem; align-items: end; flex-wrap: wrap; }
  label { display: flex; flex-direction: column; font-size: .8rem; color: #555; }
  input, select, button { font: inherit; padding: .3rem .5rem; }
  table { border-collapse: collapse; min-width: 60rem; }
  th, td { padding: .35rem .7rem; border-bottom: 1px solid #e3e6ec; text-align: right; }
  th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
  th { background: #f5f6f8; font-weight: 600; }
  .neg { color: #a3231a; }
  #error { color: #a3231a; }
</style>
</head>
<body>
<h1>Daily revenue</h1>
<div><span id="freshness" class="badge">loading…</span></div>
<form id="filters">
  <label>From <input type="date" name="from" id="from"></label>
  <label>To <input type="date" name="to" id="to"></label>
  <label>Currency <input name="currency" id="currency" placeholder="all" size="5"></label>
  <label>Merchant <input name="merchant_id" id="merchant_id" placeholder="all"></label>
  <button type="submit">Show</button>
</form>
<p id="error"></p>
<table>
  <thead><tr><th>Day</th><th>Currency</th><th>Orders</th><th>Gross</th><th>Captured</th><th>Refunded</th><th>Net</th><th>Cancelled</th><th>Items</th></tr></thead>
  <tbody id="rows"></tbody>
</table>
<script>
const $ = (id) => document.getElementById(id);
function params() {
  const p = new URLSearchParams();
  for (const k of ["from", "to", "currency", "merchant_id"]) { const v = $(k).value.trim(); if (v) p.set(k, v); }
  return p;
}
async function load() {
  const res = await fetch("/v1/revenue/daily?" + params());
  const body = await res.json();
  if (!res.ok) { $("error").textContent = body.detail || body.title; return; }
  $("error").textContent = "";
  if (!$("from").value) $("from").value = body.from;
  if (!$("to").value) $("to").value = body.to;
  const f = body.freshness;
  const badge = $("freshness");
  if (f.complete_up_to) {
    badge.textContent = "data as of " + new Date(f.complete_up_to).toLocaleString() + " (lag " + f.lag_seconds.toFixed(1) + " s)";
    badge.className = "badge" + (f.lag_seconds > 60 ? " stale" : "");
  } else { badge.textContent = "no data ingested yet"; badge.className = "badge stale"; }
  const tbody = $("rows");
  tbody.replaceChildren(...body.rows.map((r) => {
    const tr = document.createElement("tr");
    for (const [v, cls] of [[r.day], [r.currency], [r.orders_placed], [r.gross], [r.captured], [r.refunded], [r.net, r.net_minor < 0 ? "neg" : ""], [r.orders_cancelled], [r.items_sold]]) {
      const td = document.createElement("td"); td.textContent = v; if (cls) td.className = cls; tr.appendChild(td);
    }
    return tr;
  }));
}
$("filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
load(); setInterval(load, 5000);
</script>
</body>
</html>
"##;
