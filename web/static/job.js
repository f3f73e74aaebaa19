/* Ad hoc job page: the per-host status grid, kept live from /api/jobs/{id}/events. */
(function () {
  "use strict";
  const ET = window.EasyTask;

  document.addEventListener("DOMContentLoaded", function () {
    const grid = document.getElementById("status-grid");
    if (!grid) return;
    const jobId = grid.dataset.job;
    const rows = new Map();
    grid.querySelectorAll("tbody tr").forEach(function (tr) {
      rows.set(String(tr.dataset.run), {
        tr: tr,
        state: tr.querySelector(".st").textContent.trim(),
        started: ET.parseUtc(tr.dataset.started),
      });
    });
    const summary = document.getElementById("job-summary");
    const kill = document.getElementById("kill-job");
    ET.armKill(kill);

    function showSummary() {
      const counts = {};
      rows.forEach(function (r) {
        counts[r.state] = (counts[r.state] || 0) + 1;
      });
      const parts = Object.keys(counts).sort().map(function (k) {
        return counts[k] + " " + k;
      });
      summary.textContent = rows.size + " host(s): " + parts.join(", ");
    }

    function update(ev) {
      const id = String(ev.run !== undefined ? ev.run : ev.id);
      const r = rows.get(id);
      if (!r) return;
      r.state = ev.state;
      r.tr.dataset.state = ev.state;
      ET.setState(r.tr.querySelector(".st"), ev.state);
      if (ev.state === "running" && !r.started) r.started = Date.now();
      const jobState = document.getElementById("job-state");
      if (ev.state !== "queued" && jobState && jobState.textContent.trim() === "queued") ET.setState(jobState, "running");
      if (ev.exit_code !== undefined && ev.exit_code !== null) r.tr.querySelector(".exit").textContent = ev.exit_code;
      if (ev.reason) r.tr.querySelector(".reason").textContent = ev.reason;
      if (ET.FINAL.indexOf(ev.state) >= 0) {
        let seconds = ev.duration;
        if ((seconds === undefined || seconds === null) && r.started) seconds = (Date.now() - r.started) / 1000;
        r.tr.querySelector(".dur").textContent = ET.fmtDuration(seconds);
      }
      showSummary();
    }

    function tick() {
      rows.forEach(function (r) {
        if (r.state === "running" && r.started) {
          r.tr.querySelector(".dur").textContent = ET.fmtDuration((Date.now() - r.started) / 1000);
        }
      });
    }

    showSummary();
    if (grid.dataset.final === "1") return;
    const timer = setInterval(tick, 1000);
    const es = new EventSource("/api/jobs/" + encodeURIComponent(jobId) + "/events?lines=0");
    es.onmessage = function (msg) {
      const ev = JSON.parse(msg.data);
      if (ev.t === "run") update(ev);
      else if (ev.t === "job") {
        es.close();
        clearInterval(timer);
        ET.setState(document.getElementById("job-state"), ev.state);
        if (kill) kill.hidden = true;
        grid.dataset.final = "1";
      }
    };
  });
})();
