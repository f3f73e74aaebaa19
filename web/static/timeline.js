/* EasyTask run timeline: one time axis from a little before the run to its end (live while it
 * runs) with the scheduler's events of every attempt and the agent's link drops as marks, the
 * output's density (lines per second) and its ERROR/WARN lines, and the host's CPU, memory and
 * load when the server has its metrics. Clicking a moment scrolls the log viewer to the lines
 * printed then. Marks are elements over the chart (text only via textContent).
 */
(function () {
  "use strict";

  const ET = window.EasyTask;
  const EC = window.EasyTaskCharts;
  const REFRESH_MS = 3000;
  const MAX_LABEL_ROWS = 8;
  const MARK_LABEL = {
    queued: "queued",
    dispatched: "dispatched",
    started: "started",
    retry: "retry",
    disconnect: "agent lost",
    reconnect: "agent back",
    handoff: "hand-off",
    kill: "kill",
    timeout: "timeout",
    terminating: "terminating",
    end: "end",
    info: "",
  };

  class Timeline {
    constructor(root) {
      this.root = root;
      this.runId = root.dataset.run;
      this.base = "/api/runs/" + encodeURIComponent(this.runId);
      this.plotEl = root.querySelector(".tl-plot");
      this.marksEl = root.querySelector(".tl-marks");
      this.statusEl = root.querySelector(".tl-status");
      this.summaryEl = document.getElementById("timeline-summary");
      this.plot = null;
      this.data = null;
      this.metrics = null;
      this.timer = 0;
      window.addEventListener("resize", () => this.resize());
      this.refresh();
    }

    async refresh() {
      const began = Date.now();
      let data;
      try {
        data = await ET.api("GET", this.base + "/timeline");
      } catch (err) {
        this.statusEl.textContent = err.message;
        this.later();
        return;
      }
      this.data = data;
      const [from, to] = this.window();
      if (data.agent) {
        try {
          const metrics = await EC.fetchMetrics(data.agent, from, to);
          this.metrics = metrics && EC.clip(metrics, from, to);
        } catch (err) {
          this.metrics = null;
        }
      }
      EC.showSummary(this.summaryEl, this.metrics);
      this.draw();
      this.root.dataset.final = data.final ? "1" : "0";
      this.root.dataset.ready = String((Number(this.root.dataset.ready) || 0) + 1);
      if (!data.final) this.later(Date.now() - began);
    }

    /* The next refresh: every 3 s, less often when the last one was slow (a huge log). */
    later(took) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.refresh(), Math.max(REFRESH_MS, 10 * (took || 0)));
    }

    /* From a little before the first attempt was queued to its end (now while it runs). */
    window() {
      const d = this.data;
      const end = d.end !== null ? d.end : Math.max(d.now, Date.now() / 1000);
      const from = d.start - d.lead;
      const to = end + Math.max(2, (end - d.start) * 0.03);
      return [from, to];
    }

    columns() {
      const d = this.data;
      const [from, to] = this.window();
      const tables = [[[from, to], [null, null]]];
      const series = [{}, { show: false, label: "" }];
      /* each value holds over its bucket: close the last bucket with a zero at its end */
      const dt = d.density.t.slice();
      const dl = d.density.lines.slice();
      if (dt.length) {
        dt.push(dt[dt.length - 1] + d.density.bucket);
        dl.push(0);
      }
      tables.push([dt, dl]);
      series.push({ label: "lines/s", stroke: EC.COLORS.lines, fill: "rgba(102,112,133,.15)", scale: "lps", width: 1, points: { show: false }, paths: uPlot.paths.stepped({ align: 1 }) });
      const m = this.metrics;
      if (m) {
        const cpu = EC.series(m, "cpu");
        const mem = EC.memPct(m);
        const load = EC.series(m, "load1");
        if (cpu) {
          tables.push([m.t, cpu]);
          series.push({ label: "CPU %", stroke: EC.COLORS.cpu, scale: "%", width: 1.5 });
        }
        if (mem) {
          tables.push([m.t, mem]);
          series.push({ label: "memory %", stroke: EC.COLORS.mem, scale: "%", width: 1.5 });
        }
        if (load) {
          tables.push([m.t, load]);
          series.push({ label: "load", stroke: EC.COLORS.load1, scale: "load", width: 1.5 });
        }
      }
      return { data: uPlot.join(tables), series: series };
    }

    draw() {
      const [from, to] = this.window();
      const cols = this.columns();
      const key = cols.series.map((s) => s.label).join("|");
      if (this.plot && this.plotKey === key) {
        this.plot.batch(() => {
          this.plot.setData(cols.data, false);
          this.plot.setScale("x", { min: from, max: to });
        });
      } else {
        if (this.plot) this.plot.destroy();
        this.plotKey = key;
        this.plot = new uPlot(
          {
            width: this.width(),
            height: 220,
            tzDate: EC.utc,
            cursor: { drag: { x: false, y: false } },
            scales: {
              x: { time: true, min: from, max: to },
              lps: { range: (u, lo, hi) => [0, Math.max(1, hi || 1)] },
              "%": { range: [0, 100] },
            },
            axes: [
              {},
              { scale: "lps", label: "lines/s", size: 50 },
              { scale: "%", side: 1, grid: { show: false }, size: 50, values: (u, vals) => vals.map((v) => v + "%") },
            ],
            series: cols.series,
            hooks: { setSize: [() => this.placeMarks()] },
          },
          cols.data,
          this.plotEl
        );
        this.plot.over.addEventListener("click", (ev) => this.clicked(ev));
        EC.describe(this.plot, "Story chart: output lines per second and the host's CPU and memory over the run's time; its summary is beside it and its events in the Timeline table below", "timeline-summary");
      }
      this.placeMarks();
      const n = this.data.events.length;
      this.statusEl.textContent =
        n + " event(s), " + this.data.marks.length + (this.data.marks_truncated ? "+" : "") + " ERROR/WARN line(s)" +
        (this.data.final ? "" : " · live") + (this.metrics ? "" : " · no host metrics yet");
    }

    width() {
      return Math.max(300, (this.plotEl.clientWidth || this.root.clientWidth || 800) - 4);
    }

    resize() {
      if (this.plot) this.plot.setSize({ width: this.width(), height: 220 });
    }

    /* Event marks (a line and a label) and ERROR/WARN ticks, laid over the plotting area. */
    placeMarks() {
      const u = this.plot;
      if (!u || !this.data) return;
      const box = u.over.getBoundingClientRect();
      const host = this.marksEl.getBoundingClientRect();
      const left0 = box.left - host.left;
      const top0 = box.top - host.top;
      this.marksEl.replaceChildren();
      const rows = []; /* the right end of the last label placed on each row of labels */
      const events = this.data.events;
      events.forEach((e) => {
        const x = u.valToPos(e.at, "x");
        if (x < 0 || x > box.width) return;
        const mark = document.createElement("button");
        mark.type = "button";
        mark.className = "tl-event mk-" + e.mark;
        mark.dataset.mark = e.mark;
        mark.dataset.kind = e.kind;
        mark.dataset.at = e.at;
        if (e.attempt !== null) mark.dataset.attempt = e.attempt;
        mark.style.left = left0 + x + "px";
        mark.style.top = top0 + "px";
        mark.style.height = box.height + "px";
        mark.title = new Date(e.at * 1000).toISOString().replace("T", " ").slice(0, 23) + " UTC · " + e.kind +
          (e.attempt ? " (attempt " + e.attempt + ")" : "") + (e.detail ? ": " + e.detail : "");
        const label = document.createElement("span");
        label.className = "tl-label";
        label.textContent = MARK_LABEL[e.mark] || "";
        if (label.textContent) {
          /* the first row where the label does not run into another one; none: title only */
          const w = 7 * label.textContent.length + 10;
          const row = rows.findIndex((end) => end < x);
          const at = row >= 0 ? row : rows.length < MAX_LABEL_ROWS ? rows.length : -1;
          if (at >= 0) {
            rows[at] = x + w;
            label.style.top = at * 14 + "px";
            mark.appendChild(label);
          }
        }
        mark.addEventListener("click", () => this.jumpTo(e.at));
        this.marksEl.appendChild(mark);
      });
      this.data.marks.forEach((m) => {
        const x = u.valToPos(m.at, "x");
        if (x < 0 || x > box.width) return;
        const tick = document.createElement("button");
        tick.type = "button";
        tick.className = "tl-line lv-" + m.level;
        tick.dataset.seq = m.seq;
        tick.dataset.at = m.at;
        tick.dataset.level = m.level;
        tick.style.left = left0 + x + "px";
        tick.style.top = top0 + box.height + "px";
        tick.title = m.level + " line " + m.seq + ": " + m.text;
        tick.addEventListener("click", () => this.showLine(m.seq));
        this.marksEl.appendChild(tick);
      });
    }

    clicked(ev) {
      const u = this.plot;
      const rect = u.over.getBoundingClientRect();
      const at = u.posToVal(ev.clientX - rect.left, "x");
      this.jumpTo(at);
    }

    /* Scroll the log viewer to the first line printed at or after `at`. */
    async jumpTo(at) {
      const log = window.easytaskLog;
      if (!log) return;
      this.root.dataset.jumpAt = at;
      let found;
      try {
        found = await ET.api("GET", this.base + "/seek?at=" + encodeURIComponent(at) + log.levelParam());
      } catch (err) {
        this.statusEl.textContent = err.message;
        return;
      }
      if (found.seq === null) return;
      log.jump(found.seq, found.pos);
    }

    async showLine(seq) {
      const log = window.easytaskLog;
      if (!log) return;
      if (!log.filtered()) {
        log.jump(seq, seq - 1);
        return;
      }
      const mark = this.data.marks.find((m) => m.seq === seq);
      if (mark) this.jumpTo(mark.at);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("timeline");
    if (root) window.easytaskTimeline = new Timeline(root);
  });
})();
