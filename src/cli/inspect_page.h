// The inspection web page, served at "/": plain HTML and JavaScript, no external files, polling
// /api/status every second and /api/history every two. The token (if any) comes from the page's
// own ?token= and goes along with every request.
#pragma once

namespace troupe::cli {

inline constexpr const char* kInspectPage = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>troupe inspect</title>
<style>
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222}
#job{font-size:15px;margin-bottom:8px} table{border-collapse:collapse;width:100%}
th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{background:#f4f4f4;cursor:pointer} td.l,th.l{text-align:left}
tr.failed{background:#fdd} button{margin-right:6px} canvas{border:1px solid #ddd;margin:8px 0}
.err{color:#b00}
</style></head><body>
<div id="job">connecting…</div>
<div><button id="pause">pause</button><button id="resume">resume</button><button id="checkpoint">checkpoint now</button>
log_freq <input id="freq" size="4"><button id="setfreq">set</button> <span id="msg"></span></div>
<canvas id="plot" width="900" height="180"></canvas>
<table><thead><tr>
<th class="l" data-k="name">actor</th><th data-k="node">node</th><th data-k="rank">rank</th>
<th class="l" data-k="state">state</th><th data-k="step">step</th><th data-k="mailbox">mailbox</th>
<th data-k="rate">msgs/s</th><th data-k="busy">busy %</th><th data-k="bytes_in_flight">bytes in flight</th>
<th class="l" data-k="last_error">error, or what it began last</th></tr></thead><tbody id="actors"></tbody></table>
<script>
const token = new URLSearchParams(location.search).get("token");
const q = p => token ? p + (p.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : p;
let prev = {}, sortKey = "name", sortUp = true;
const fmt = (x, d) => Number(x).toFixed(d);
const doing = a => a.activity + (a.activity && a.quiet_seconds >= 10 ? ` (${fmt(a.quiet_seconds, 0)} s ago)` + (a.collective ? "; " + a.collective : "") : "");
function eta(s) { if (s < 0) return "–"; const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60); return h + "h" + String(m).padStart(2, "0"); }
async function refresh() {
  try {
    const r = await fetch(q("/api/status")); if (!r.ok) throw new Error(r.status + " " + await r.text());
    const s = await r.json(), j = s.job;
    document.getElementById("job").textContent =
      `${j.state} | step ${j.step}/${j.steps} | loss ${fmt(j.loss, 4)} | ${fmt(j.tokens_per_second, 0)} tok/s | ` +
      `MFU ${fmt(100 * j.mfu, 1)}% | ETA ${eta(j.eta_seconds)} | last checkpoint ${j.last_checkpoint || "–"} | ` +
      `${j.nodes} node(s), ${j.ranks} rank(s)`;
    const rows = s.actors.map(a => {
      const p = prev[a.name];
      const dt = p ? a.age_seconds - p.age_seconds : 0;
      a.rate = p && dt > 0 ? (a.handled - p.handled) / dt : 0;
      a.busy = p && dt > 0 ? 100 * (a.busy_seconds - p.busy_seconds) / dt : (a.age_seconds > 0 ? 100 * a.busy_seconds / a.age_seconds : 0);
      return a;
    });
    prev = Object.fromEntries(s.actors.map(a => [a.name, a]));
    rows.sort((a, b) => (a[sortKey] < b[sortKey] ? -1 : a[sortKey] > b[sortKey] ? 1 : 0) * (sortUp ? 1 : -1));
    const body = document.getElementById("actors"); body.textContent = "";
    for (const a of rows) {
      const tr = document.createElement("tr"); tr.className = "actor " + (a.state === "failed" ? "failed" : "");
      for (const [v, l] of [[a.name, 1], [a.node], [a.rank < 0 ? "–" : a.rank], [a.state, 1], [a.step], [a.mailbox],
                            [fmt(a.rate, 1)], [fmt(a.busy, 0)], [a.bytes_in_flight], [a.last_error || doing(a), 1]]) {
        const td = document.createElement("td"); td.textContent = v; if (l) td.className = "l"; tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  } catch (e) { document.getElementById("job").innerHTML = '<span class="err">' + e + "</span>"; }
}
async function plot() {
  const r = await fetch(q("/api/history")); if (!r.ok) return;
  const rows = (await r.json()).rows, c = document.getElementById("plot"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height); if (rows.length < 2) return;
  const line = (col, color, label, y0) => {
    const v = rows.map(x => x[col]), lo = Math.min(...v), hi = Math.max(...v), span = hi - lo || 1;
    g.strokeStyle = color; g.beginPath();
    rows.forEach((x, i) => { const px = 40 + i * (c.width - 50) / (rows.length - 1), py = 10 + (1 - (x[col] - lo) / span) * (c.height - 20);
                             i ? g.lineTo(px, py) : g.moveTo(px, py); });
    g.stroke(); g.fillStyle = color; g.fillText(`${label} ${fmt(v[v.length - 1], col === 1 ? 4 : 0)}`, 44, y0);
  };
  line(1, "#c33", "loss", 14); line(2, "#36c", "tok/s", 28);
}
async function post(path) {
  const r = await fetch(q(path), {method: "POST"});
  document.getElementById("msg").textContent = r.ok ? "sent" : await r.text();
}
for (const id of ["pause", "resume", "checkpoint"]) document.getElementById(id).onclick = () => post("/api/" + id);
document.getElementById("setfreq").onclick = () => post("/api/log_freq?value=" + encodeURIComponent(document.getElementById("freq").value));
for (const th of document.querySelectorAll("th")) th.onclick = () => { const k = th.dataset.k; sortUp = k === sortKey ? !sortUp : true; sortKey = k; refresh(); };
refresh(); plot(); setInterval(refresh, 1000); setInterval(plot, 2000);
</script></body></html>
)HTML";

}  // namespace troupe::cli
