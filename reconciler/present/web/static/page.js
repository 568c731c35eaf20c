/* The status page: polls the JSON endpoints and draws them. Read-only: it only GETs.
 * Text from the server (names, commit subjects, reasons) is always set as text, never
 * parsed as HTML. Charts are uPlot (vendored, MIT). */
"use strict";

const POLL_OVERVIEW_MS = 3000;
const POLL_PASSES_MS = 5000;
const POLL_RECORDS_MS = 10000;
const PALETTE = ["#2b6cb0", "#dd6b20", "#2f855a", "#805ad5", "#c53030", "#319795", "#b7791f"];

const page = { overview: null, services: new Map(), windowS: 3600, failures: 0 };
window.statusPage = page; // for people poking at it in the console, and for tests

// ------------------------------------------------------------------ small helpers

function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k.startsWith("data-")) el.setAttribute(k, String(v));
    else el[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function getJSON(url) {
  const resp = await fetch(url, { cache: "no-store", credentials: "same-origin" });
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  return resp.json();
}

function ago(t) {
  if (t === null || t === undefined) return "–";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}

function clock(t) {
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

function fmt(v, digits = 1) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function pct(v) {
  return v === null || v === undefined ? "–" : `${(100 * v).toFixed(2)} %`;
}

function tone(word) {
  const w = String(word || "").toLowerCase();
  if (["ok", "healthy", "running", "promoted", "up"].some((x) => w.startsWith(x))) return "ok";
  if (["failed", "unhealthy", "aborted", "down", "exited", "dead", "maint", "not in"]
      .some((x) => w.startsWith(x))) return "bad";
  if (["progressing", "waiting", "starting", "drain", "nolb", "paused"].some((x) => w.startsWith(x)))
    return "warn";
  if (w === "nothing-to-do") return "idle";
  return "info";
}

/* A pass's outcome: "running" is under way here, not a container that is fine. */
function passTone(outcome) {
  return outcome === "running" ? "info" : tone(outcome);
}

function banner(text) {
  const el = document.getElementById("banner");
  el.textContent = text || "";
  el.hidden = !text;
}

/* One colour per revision of a service, stable while the page is open. */
function colourOf(svc, rev) {
  if (!svc.colours.has(rev)) svc.colours.set(rev, PALETTE[svc.colours.size % PALETTE.length]);
  return svc.colours.get(rev);
}

// ------------------------------------------------------------------ charts

/* A chart in ``holder`` (kept across polls: data is swapped in when the series are the
 * same, the chart is made anew when they differ). ``draw`` marks the holder with the
 * number of points drawn per series (data-points), once uPlot has drawn them. */
function chart(holder, key, spec) {
  const sig = JSON.stringify(spec.series.map((s) => s.label));
  let c = holder._chart;
  if (c && holder._sig === sig) {
    c.setData(spec.data);
    return c;
  }
  if (c) c.destroy();
  holder.replaceChildren();
  const grid = { stroke: "#eef0f3" };
  const yAxis = clean({ stroke: "#6b7280", grid, size: 64, values: spec.yValues });
  const opts = {
    title: spec.title,
    width: Math.max(260, holder.clientWidth || 320),
    height: 190,
    scales: spec.scales || { x: { time: true } },
    series: [{}, ...spec.series.map((s) => clean({ spanGaps: false, points: { size: 4 }, ...s }))],
    axes: spec.axes || [{ stroke: "#6b7280", grid }, yAxis],
    legend: { live: false },
    hooks: {
      draw: [
        (u) => {
          const points = {};
          u.series.slice(1).forEach((s, i) => {
            points[s.label] = (u.data[i + 1] || []).filter((v) => v !== null && v !== undefined).length;
          });
          holder.setAttribute("data-points", JSON.stringify(points));
          holder.setAttribute("data-drawn", String(Date.now()));
        },
      ],
    },
  };
  c = new uPlot(opts, spec.data, holder);
  holder._chart = c;
  holder._sig = sig;
  holder.setAttribute("data-chart", key);
  return c;
}

/* ``o`` without its null and undefined entries (uPlot takes a present key as set). */
function clean(o) {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null && v !== undefined));
}

function resizeCharts() {
  for (const el of document.querySelectorAll("[data-chart]")) {
    if (el._chart && el.clientWidth) el._chart.setSize({ width: el.clientWidth, height: 190 });
  }
}

/* Revisions' series on one time axis: the union of their interval starts. */
function align(revisions, field) {
  const ts = new Set();
  for (const r of Object.values(revisions)) for (const t of r.t) ts.add(t);
  // From the interval before the first request on: a window of an hour with a minute
  // of traffic would otherwise be a flat line with the data squeezed at its right end.
  const all = [...ts].sort((a, b) => a - b);
  const busy = (t) => Object.values(revisions).some((r) => r.rate[r.t.indexOf(t)] > 0);
  const first = all.findIndex(busy);
  const xs = first > 0 ? all.slice(first - 1) : all;
  const cols = {};
  for (const [rev, r] of Object.entries(revisions)) {
    const at = new Map(r.t.map((t, i) => [t, i]));
    cols[rev] = (f) => xs.map((t) => (at.has(t) ? r[f][at.get(t)] ?? null : null));
  }
  return { xs, cols, field };
}

function drawSeries(svc, series) {
  const revs = Object.keys(series.revisions || {}).sort();
  const empty = revs.length === 0;
  for (const [key, holder] of Object.entries(svc.chartEls)) {
    if (empty) {
      if (holder._chart) { holder._chart.destroy(); holder._chart = null; }
      holder.removeAttribute("data-points");
      holder.replaceChildren(h("div", { class: "empty muted" },
        series.note || "no requests in this window"));
      holder.setAttribute("data-chart", key);
    }
  }
  if (empty) return;
  const { xs, cols } = align(series.revisions, null);
  const line = (rev, label, f, dash, width) => ({
    label, stroke: colourOf(svc, rev), width: width || 1.5, dash, _col: cols[rev](f),
  });
  const specs = {
    rate: { title: "requests / s", series: revs.map((r) => line(r, r, "rate")), yValues: (u, v) => v.map((x) => fmt(x, 1)) },
    errors: {
      title: "error rate: 5xx ─  4xx ┄",
      series: revs.flatMap((r) => [line(r, `${r} 5xx`, "err_5xx"), line(r, `${r} 4xx`, "err_4xx", [4, 4])]),
      yValues: (u, v) => v.map((x) => `${(100 * x).toFixed(1)}%`),
      // 0 to at least 5%: with no errors at all, autoscaling would label 0 as 10000%.
      scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(0.05, (hi || 0) * 1.1)] } },
    },
    latency: {
      title: "response ms: p50 thin, p95, p99 ┄",
      series: revs.flatMap((r) => [line(r, `${r} p50`, "p50", null, 1), line(r, `${r} p95`, "p95", null, 2),
        line(r, `${r} p99`, "p99", [6, 3], 1.5)]),
    },
  };
  for (const [key, spec] of Object.entries(specs)) {
    spec.data = [xs, ...spec.series.map((s) => s._col)];
    spec.series = spec.series.map(({ _col, ...s }) => s);
    chart(svc.chartEls[key], key, spec);
  }
}

function drawEvidence(svc, canary) {
  const holder = svc.evidenceEl;
  const looks = (canary && canary.looks) || [];
  if (looks.length === 0) {
    if (holder._chart) { holder._chart.destroy(); holder._chart = null; }
    holder.replaceChildren(h("div", { class: "empty muted" }, "no looks yet"));
    return;
  }
  // At least two minutes wide (an empty point before the first look): a chart of one
  // look would otherwise span years.
  const first = looks[0].t;
  const last = looks[looks.length - 1].t;
  const pad = last - first < 120 ? [{ t: last - 120, pad: true }] : [];
  const all = [...pad, ...looks];
  const data = [
    all.map((l) => l.t),
    all.map((l) => (l.pad ? null : Math.max(1e-6, l.evidence))),
    all.map(() => canary.abort_at || null),
    all.map((l) => (l.pad ? null : (l.weights || {})[canary.canary] ?? null)),
  ];
  chart(holder, "evidence", {
    title: "evidence (log) and canary weight",
    data,
    series: [
      { label: "evidence", stroke: "#c53030", width: 2, scale: "e" },
      { label: "abort at", stroke: "#c5303066", width: 1, dash: [4, 4], scale: "e", points: { show: false } },
      { label: `${canary.canary} weight %`, stroke: colourOf(svc, canary.canary), width: 1.5, scale: "w", paths: uPlot.paths.stepped({ align: 1 }) },
    ],
    scales: { x: { time: true }, e: { distr: 3 }, w: { range: [0, 100] } },
    axes: [
      { stroke: "#6b7280", grid: { stroke: "#eef0f3" } },
      { scale: "e", stroke: "#6b7280", grid: { stroke: "#eef0f3" }, size: 56 },
      { scale: "w", side: 1, grid: { show: false }, stroke: "#6b7280", size: 40 },
    ],
  });
}

// ------------------------------------------------------------------ services

function serviceCard(name) {
  const svc = { name, colours: new Map() };
  svc.head = h("div", { class: "svc-head" });
  svc.releases = h("div");
  svc.canary = h("div");
  svc.evidenceEl = h("div", { class: "chart", "data-chart": "evidence" });
  svc.canaryBox = h("div", { class: "canary", hidden: true }, svc.canary, svc.evidenceEl);
  svc.containers = h("div", { class: "scroll" });
  svc.chartEls = {
    rate: h("div", { class: "chart" }),
    errors: h("div", { class: "chart" }),
    latency: h("div", { class: "chart" }),
  };
  svc.actions = h("div", { class: "scroll" });
  svc.el = h("section", { class: "card service", "data-service": name },
    svc.head,
    h("div", { class: "grid2" },
      h("div", {}, h("h3", {}, "releases"), svc.releases),
      h("div", {}, svc.canaryBox)),
    h("h3", {}, "containers"), svc.containers,
    h("h3", {}, "revisions over time"),
    h("div", { class: "charts" }, svc.chartEls.rate, svc.chartEls.errors, svc.chartEls.latency),
    h("h3", {}, "per action"), svc.actions);
  return svc;
}

function renderService(svc, data) {
  const serving = data.containers.filter((c) => c.status === "running").length;
  svc.head.replaceChildren(
    h("h2", {}, data.name),
    h("span", { class: "muted" }, `${serving} of ${data.containers.length} containers running`),
    ...(data.held ? [h("span", { class: "badge bad" }, `held: ${data.held}`)] : []),
  );
  svc.releases.replaceChildren(...data.releases.map((r) => h("div", { class: "release", "data-revision": r.revision },
    h("span", {}, h("span", { class: "swatch", style: { background: colourOf(svc, r.revision) } }), r.revision,
      r.canary ? h("span", { class: "badge info" }, " canary") : null),
    h("div", { class: "bar" }, h("span", { style: { width: `${r.weight}%`, background: colourOf(svc, r.revision) } })),
    h("span", { class: "num" }, `${r.weight}%`))));
  const c = data.canary;
  svc.canaryBox.hidden = !c;
  if (c) {
    const weights = Object.entries(c.weights || {}).map(([rev, w]) => `${rev} ${w}%`).join(" · ");
    svc.canary.replaceChildren(
      h("h3", {}, "canary"),
      h("div", {}, h("span", { class: `badge ${tone(c.status)}` }, c.status), " ",
        `${c.canary} vs ${c.baseline}`,
        c.step ? `, step ${c.step} of ${c.steps.length}` : "",
        ` (steps ${c.steps.join(" → ")})`),
      h("div", {}, `weights now: ${weights}`),
      h("div", {}, `evidence ${fmt(c.evidence, 3)}`, c.abort_at ? ` (aborts at ${fmt(c.abort_at, 0)})` : ""),
      h("div", { class: "muted wrap" }, c.reason));
    drawEvidence(svc, c);
  }
  svc.containers.replaceChildren(containersTable(svc, data.containers));
}

function containersTable(svc, containers) {
  if (containers.length === 0) return h("div", { class: "muted" }, "no containers");
  const rows = [];
  let host = null;
  for (const c of containers) {
    rows.push(h("tr", { "data-container": c.name },
      h("td", {}, c.host === host ? "" : c.host),
      h("td", { class: "mono" }, c.name),
      h("td", {}, h("span", { class: "swatch", style: { background: colourOf(svc, c.revision) } }), c.revision),
      h("td", {}, h("span", { class: `badge ${tone(c.status)}` }, c.status)),
      h("td", {}, h("span", { class: `badge ${tone(c.health)}` }, c.health)),
      h("td", {}, h("span", { class: `badge ${tone(c.lb_state)}` }, c.lb_state)),
      h("td", { class: "num" }, c.weight ?? "–")));
    host = c.host;
  }
  return h("table", { class: "table containers" },
    h("thead", {}, h("tr", {}, ["host", "container", "revision", "state", "health", "HAProxy", "weight"]
      .map((t, i) => h("th", { class: i === 6 ? "num" : "" }, t)))),
    h("tbody", {}, rows));
}

function actionsTable(svc, rows) {
  if (!rows.length) return h("div", { class: "muted" }, svc.note || "no requests in this window");
  const overview = page.overview && page.overview.services.find((s) => s.name === svc.name);
  const c = overview && overview.canary;
  const revs = c ? [c.baseline, c.canary]
    : [...new Set(rows.flatMap((r) => Object.keys(r.revisions)))].sort();
  const head = h("tr", {}, h("th", {}, "action"),
    revs.flatMap((rev) => ["requests", "errors", "p50 ms", "p95 ms", "p99 ms"].map((t) =>
      h("th", { class: "num" }, `${rev}${c ? (rev === c.canary ? " (canary)" : " (baseline)") : ""} ${t}`))));
  const body = rows.map((row) => h("tr", { "data-action": row.action }, h("td", { class: "mono" }, row.action),
    revs.flatMap((rev) => {
      const d = row.revisions[rev] || {};
      return [h("td", { class: "num" }, d.requests ?? 0), h("td", { class: "num" }, pct(d.error_rate)),
        h("td", { class: "num" }, fmt(d.p50)), h("td", { class: "num" }, fmt(d.p95)), h("td", { class: "num" }, fmt(d.p99))];
    })));
  return h("table", { class: "table actions" }, h("thead", {}, head), h("tbody", {}, body));
}

// ------------------------------------------------------------------ polling

async function refreshOverview() {
  const o = await getJSON("/api/overview");
  page.overview = o;
  document.getElementById("env").textContent = o.environment || "(no environment)";
  const cm = o.commit;
  document.getElementById("commit").replaceChildren(cm
    ? h("span", {}, "applied commit ", h("code", {}, cm.sha.slice(0, 10)), cm.subject ? ` “${cm.subject}”` : "",
      cm.author ? ` by ${cm.author}` : "", cm.time ? `, ${clock(cm.time)} (${ago(cm.time)})` : "")
    : "no commit applied yet");
  document.getElementById("freshness").textContent = o.observed_at ? `observed ${ago(o.observed_at)}` : "";
  const holder = document.getElementById("services");
  const names = new Set(o.services.map((s) => s.name));
  for (const [name, svc] of page.services) {
    if (!names.has(name)) { svc.el.remove(); page.services.delete(name); }
  }
  for (const data of o.services) {
    let svc = page.services.get(data.name);
    if (!svc) {
      svc = serviceCard(data.name);
      page.services.set(data.name, svc);
      holder.append(svc.el);
      refreshRecords(svc).catch(report);
    }
    renderService(svc, data);
  }
  return o.error ? `last observation failed: ${o.error}` : null;
}

async function refreshRecords(svc) {
  const q = `service=${encodeURIComponent(svc.name)}&since=${page.windowS}`;
  const [series, actions] = await Promise.all([getJSON(`/api/series?${q}`), getJSON(`/api/actions?${q}`)]);
  svc.note = series.note;
  drawSeries(svc, series);
  svc.actions.replaceChildren(actionsTable(svc, actions));
}

async function refreshPasses() {
  const passes = await getJSON("/api/passes?limit=60");
  const strip = document.getElementById("strip");
  strip.replaceChildren(...passes.slice().reverse().map((p) =>
    h("span", { class: passTone(p.outcome), title: `${clock(p.t)} ${p.outcome}: ${p.summary}` })));
  const rows = passes.map((p) => h("tr", { "data-pass": p.id },
    h("td", {}, clock(p.t)),
    h("td", {}, h("span", { class: `badge ${passTone(p.outcome)}` }, p.outcome)),
    h("td", {}, p.kind, p.looks > 1 ? ` ×${p.looks}` : ""),
    h("td", { class: "mono" }, p.commit ? p.commit.slice(0, 7) : "–"),
    h("td", { class: "wrap" }, p.summary)));
  document.querySelector("#passes tbody").replaceChildren(...(rows.length ? rows
    : [h("tr", {}, h("td", { colSpan: 5, class: "muted" }, "no passes recorded yet"))]));
}

function report(err) {
  // A bug of this page is an error, not a reconciler out of reach: say both in the console.
  console.error("status page:", err);
  page.failures += 1;
  banner(`cannot reach the reconciler (${err.message}); retrying`);
}

function every(ms, fn) {
  const tick = async () => {
    try {
      const note = await fn();
      page.failures = 0;
      if (fn === refreshOverview) banner(note);
    } catch (err) {
      report(err);
    }
    setTimeout(tick, ms);
  };
  tick();
}

function start() {
  const select = document.getElementById("window");
  select.addEventListener("change", () => {
    page.windowS = Number(select.value);
    for (const svc of page.services.values()) refreshRecords(svc).catch(report);
  });
  every(POLL_OVERVIEW_MS, refreshOverview);
  every(POLL_PASSES_MS, refreshPasses);
  every(POLL_RECORDS_MS, async () => {
    await Promise.all([...page.services.values()].map(refreshRecords));
    return null;
  });
  let pending = null;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(resizeCharts, 150);
  });
}

document.addEventListener("DOMContentLoaded", start);
