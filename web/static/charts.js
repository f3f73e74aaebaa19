/* EasyTask charts: host metrics read from /api/agents/{name}/metrics, drawn with uPlot (vendored
 * in /static/vendor/uplot), a summary of what stood out, and the agents page's sparklines.
 * Times are epoch seconds and shown in UTC, as the rest of the console shows them.
 */
(function () {
  "use strict";

  const ET = window.EasyTask;
  const COLORS = {
    cpu: "#c62828",
    iowait: "#b26a00",
    mem: "#1f4e79",
    swap: "#8e44ad",
    load1: "#1a7f37",
    load5: "#2f9e60",
    load15: "#7cc49a",
    lines: "#667085",
  };

  function utc(ts) {
    return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
  }

  function iso(ts) {
    return new Date(ts * 1000).toISOString();
  }

  function bytes(n) {
    if (n === null || n === undefined || isNaN(n)) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
  }

  /* The host's samples between two moments, or null when there are none (404: nothing sampled;
   * 404 or 405: a server without host metrics; or no point in the range). */
  async function fetchMetrics(agent, since, until, resolution) {
    const url =
      "/api/agents/" + encodeURIComponent(agent) + "/metrics?since=" + encodeURIComponent(iso(since)) +
      "&until=" + encodeURIComponent(iso(until)) + "&resolution=" + encodeURIComponent(resolution || "auto");
    let data;
    try {
      data = await ET.api("GET", url);
    } catch (err) {
      if (err.status === 404 || err.status === 405) return null;
      throw err;
    }
    if (!data || !Array.isArray(data.t) || data.t.length === 0) return null;
    return data;
  }

  /* The samples taken in [from, to] (the same columns), or null when there are none. */
  function clip(data, from, to) {
    const keep = [];
    data.t.forEach((t, i) => {
      if (t >= from && t <= to) keep.push(i);
    });
    if (!keep.length) return null;
    const out = {};
    Object.keys(data).forEach((name) => {
      const values = data[name];
      out[name] = Array.isArray(values) && values.length === data.t.length ? keep.map((i) => values[i]) : values;
    });
    return out;
  }

  function series(data, name) {
    const values = data[name];
    return Array.isArray(values) && values.length === data.t.length ? values : null;
  }

  /* Memory used as a percentage of used + available. */
  function memPct(data) {
    const used = series(data, "mem_used");
    const avail = series(data, "mem_available");
    if (!used || !avail) return null;
    return used.map((u, i) => (u === null || avail[i] === null || u + avail[i] <= 0 ? null : (100 * u) / (u + avail[i])));
  }

  function numbers(values) {
    return (values || []).filter((v) => v !== null && v !== undefined && !isNaN(v));
  }

  /* Peak memory, average CPU, and what stood out: swap, a disk over 90 %, load over the CPUs. */
  function summarize(data) {
    const out = { peakMem: null, peakMemAt: null, avgCpu: null, notes: [] };
    const used = series(data, "mem_used") || [];
    used.forEach((v, i) => {
      if (v !== null && (out.peakMem === null || v > out.peakMem)) {
        out.peakMem = v;
        out.peakMemAt = data.t[i];
      }
    });
    const cpu = numbers(series(data, "cpu"));
    if (cpu.length) out.avgCpu = cpu.reduce((a, b) => a + b, 0) / cpu.length;
    const swap = numbers(series(data, "swap_used"));
    const swapPeak = swap.length ? Math.max.apply(null, swap) : 0;
    if (swapPeak > 0) out.notes.push({ kind: "swap", text: "swap in use (peak " + bytes(swapPeak) + ")" });
    [["disk_root_pct", "/"], ["disk_work_pct", "the working directory"]].forEach(([name, label]) => {
      const pct = numbers(series(data, name));
      const top = pct.length ? Math.max.apply(null, pct) : 0;
      if (top > 90) out.notes.push({ kind: "disk", text: "disk of " + label + " over 90 % (" + top.toFixed(0) + " %)" });
    });
    const cpus = Number(data.cpus) || 0;
    const load = numbers(series(data, "load1"));
    const loadPeak = load.length ? Math.max.apply(null, load) : 0;
    if (cpus > 0 && loadPeak > cpus) {
      out.notes.push({ kind: "load", text: "load over the CPUs (peak " + loadPeak.toFixed(2) + " on " + cpus + ")" });
    }
    return out;
  }

  /* Fill a summary list (<dl>) from the metrics, or say there are none. */
  function showSummary(el, data) {
    el.replaceChildren();
    function row(label, value, testid) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      if (testid) dd.dataset.testid = testid;
      el.append(dt, dd);
    }
    if (!data) {
      row("Host", "no host metrics yet", "summary-empty");
      return;
    }
    const s = summarize(data);
    row("Peak memory", s.peakMem === null ? "—" : bytes(s.peakMem), "peak-mem");
    row("Average CPU", s.avgCpu === null ? "—" : s.avgCpu.toFixed(1) + " %", "avg-cpu");
    row("Stood out", s.notes.length ? s.notes.map((n) => n.text).join("; ") : "nothing", "stood-out");
  }

  function width(el) {
    return Math.max(200, el.clientWidth || 600);
  }

  /* A chart's text alternative: its canvas named as an image, described by a text element. */
  function describe(plot, label, describedBy) {
    plot.root.querySelectorAll("canvas").forEach((canvas) => {
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", label);
      if (describedBy) canvas.setAttribute("aria-describedby", describedBy);
    });
    /* the legend is a table whose rows each start with the series' name */
    plot.root.querySelectorAll(".u-legend th").forEach((th) => th.setAttribute("scope", "row"));
    return plot;
  }

  /* One chart of some of the host's series over [since, until]. */
  function hostChart(el, data, title, names, since, until) {
    const cols = [data.t];
    const ser = [{}];
    const scale = names[0].scale;
    names.forEach((n) => {
      const values = "values" in n ? n.values : series(data, n.name);
      if (!values) return;
      cols.push(values);
      ser.push({ label: n.label, stroke: COLORS[n.color || n.name], scale: scale, width: 1.5, spanGaps: false });
    });
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.chart = title;
    el.appendChild(box);
    const plot = new uPlot(
      {
        title: title,
        width: width(el) - 32,
        height: 160,
        tzDate: utc,
        scales: { x: { time: true, min: since, max: until } },
        axes: [{}, { scale: scale, size: 60 }],
        series: ser,
      },
      cols,
      box
    );
    const shown = ser.slice(1).map((x) => x.label).join(", ");
    return describe(plot, title + " chart over the last hours (" + shown + "); values in its legend", null);
  }

  /* The host page: CPU, memory and load over the last `hours`. */
  async function hostCharts(el) {
    const agent = el.dataset.agent;
    const until = Date.now() / 1000;
    const since = until - 3600 * Number(el.dataset.hours || 24);
    const status = el.querySelector(".chart-empty");
    let data;
    try {
      data = await fetchMetrics(agent, since, until, "auto");
    } catch (err) {
      status.textContent = err.message;
      return;
    }
    if (!data) {
      status.textContent = "no host metrics yet";
      return;
    }
    status.hidden = true;
    hostChart(el, data, "CPU %", [{ name: "cpu", label: "CPU", scale: "%" }, { name: "iowait", label: "iowait", scale: "%" }], since, until);
    const gib = (name) => {
      const values = series(data, name);
      return values && values.map((v) => (v === null ? null : v / 1073741824));
    };
    hostChart(el, data, "Memory (GiB)", [
      { name: "mem_used", label: "used", scale: "GiB", color: "mem", values: gib("mem_used") },
      { name: "swap_used", label: "swap", scale: "GiB", color: "swap", values: gib("swap_used") },
    ], since, until);
    hostChart(el, data, "Load", [
      { name: "load1", label: "1 min", scale: "load" },
      { name: "load5", label: "5 min", scale: "load" },
      { name: "load15", label: "15 min", scale: "load" },
    ], since, until);
  }

  /* A small CPU line for the last hour, or a dash while the agent has no metrics. */
  function sparkline(el, points, since, until) {
    if (!points || !points.t.length) {
      el.textContent = "—";
      el.title = "no host metrics yet";
      el.dataset.empty = "1";
      return;
    }
    el.textContent = "";
    el.title = "CPU % over the last hour";
    el.dataset.empty = "0";
    el.dataset.points = String(points.t.length);
    const plot = new uPlot(
      {
        width: 120,
        height: 28,
        tzDate: utc,
        pxAlign: false,
        cursor: { show: false },
        select: { show: false },
        legend: { show: false },
        scales: { x: { time: true, min: since, max: until }, y: { range: [0, 100] } },
        axes: [{ show: false }, { show: false }],
        series: [{}, { stroke: COLORS.cpu, width: 1, points: { show: points.t.length < 3, size: 3 } }],
      },
      [points.t, points.cpu],
      el
    );
    const last = points.cpu.filter((v) => v !== null).slice(-1)[0];
    describe(plot, "CPU % over the last hour" + (last !== undefined ? ", last " + Math.round(last) + "%" : ""), null);
  }

  /* Every sparkline of the page from one request (GET /api/agents/metrics/recent). */
  async function sparklines(els) {
    if (!els.length) return;
    let data = null;
    try {
      data = await ET.api("GET", "/api/agents/metrics/recent?minutes=60");
    } catch (err) {
      data = null;
    }
    const agents = (data && data.agents) || {};
    const until = Date.now() / 1000;
    const since = until - 3600;
    els.forEach((el) => sparkline(el, agents[el.dataset.agent], since, until));
  }

  window.EasyTaskCharts = {
    COLORS: COLORS,
    utc: utc,
    bytes: bytes,
    fetchMetrics: fetchMetrics,
    clip: clip,
    series: series,
    memPct: memPct,
    summarize: summarize,
    showSummary: showSummary,
    describe: describe,
  };

  document.addEventListener("DOMContentLoaded", function () {
    const host = document.getElementById("host-charts");
    if (host) hostCharts(host);
    sparklines(Array.from(document.querySelectorAll(".spark[data-agent]")));
  });
})();
