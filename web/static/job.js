/* Job page: the status grid (and a playbook's tasks x hosts matrix), kept live from
   /api/jobs/{id}/events. */
(function () {
  "use strict";
  const ET = window.EasyTask;

  document.addEventListener("DOMContentLoaded", function () {
    const grid = document.getElementById("status-grid");
    if (!grid) return;
    const jobId = grid.dataset.job;
    const unit = grid.dataset.unit || "host";
    const matrix = document.getElementById("matrix");
    const rows = new Map(); // run id -> {els: [row or cell entry], state, started}

    function track(id, el) {
      let r = rows.get(id);
      if (!r) {
        r = { els: [], state: el.querySelector(".st").textContent.trim(), started: ET.parseUtc(el.dataset.started) };
        rows.set(id, r);
      }
      r.els.push(el);
      return r;
    }
    grid.querySelectorAll("tbody tr").forEach(function (tr) {
      track(String(tr.dataset.run), tr);
    });
    if (matrix) {
      matrix.querySelectorAll("a.entry").forEach(function (a) {
        track(String(a.dataset.run), a);
      });
    }
    const summary = document.getElementById("job-summary");
    const kill = document.getElementById("kill-job");
    ET.armKill(kill);

    function showSummary() {
      const counts = {};
      let shown = 0;
      rows.forEach(function (r) {
        if (!r.els.some(function (el) { return el.tagName === "TR"; })) return;
        shown += 1;
        counts[r.state] = (counts[r.state] || 0) + 1;
      });
      const parts = Object.keys(counts).sort().map(function (k) {
        return counts[k] + " " + k;
      });
      summary.textContent = shown + " " + unit + "(s): " + parts.join(", ");
    }

    /* A run the page does not know yet (a retry's next attempt): its matrix cell follows it.
       Events for it that arrive while its record is fetched are kept, and the latest state of
       the two wins (a run's state only moves forward). */
    const pending = new Map(); // run id -> latest event seen before its cell took it
    const fetching = new Set();
    function rank(state) {
      if (ET.FINAL.indexOf(state) >= 0) return 2;
      return state === "queued" ? 0 : 1;
    }
    function adopt(id, ev) {
      if (!matrix) return;
      if (ev) {
        const seen = pending.get(id);
        if (!seen || rank(ev.state) >= rank(seen.state)) pending.set(id, ev);
      }
      if (fetching.has(id)) return;
      fetching.add(id);
      ET.api("GET", "/api/runs/" + encodeURIComponent(id)).then(function (data) {
        fetching.delete(id);
        const run = data.run;
        const seen = pending.get(id);
        pending.delete(id);
        const latest = seen && rank(seen.state) > rank(run.state) ? seen : run;
        let cell = null;
        matrix.querySelectorAll("td.cell").forEach(function (td) {
          if (td.dataset.task === run.task && td.dataset.host === run.host) cell = td;
        });
        const entry = cell && cell.querySelector("a.entry");
        if (!entry || rows.has(id)) return;
        // two retries fetched at once may come back out of order: a later attempt keeps its cell
        if (Number(entry.dataset.run) > Number(id)) return;
        const old = rows.get(String(entry.dataset.run));
        if (old) old.els = old.els.filter(function (el) { return el !== entry; });
        entry.dataset.run = id;
        entry.href = "/runs/" + id;
        entry.dataset.started = "";
        entry.querySelector(".attempt").textContent = run.attempt > 1 ? "×" + run.attempt : "";
        entry.querySelector(".dur").textContent = "";
        const r = track(id, entry);
        r.started = null;
        update(latest);
      }).catch(function () {
        fetching.delete(id); /* the next event tries again */
      });
    }

    function update(ev) {
      const id = String(ev.run !== undefined ? ev.run : ev.id);
      const r = rows.get(id);
      if (!r) {
        adopt(id, ev);
        return;
      }
      r.state = ev.state;
      if (ev.state === "running" && !r.started) r.started = Date.now();
      r.els.forEach(function (el) {
        el.dataset.state = ev.state;
        ET.setState(el.querySelector(".st"), ev.state);
        const exit = el.querySelector(".exit");
        if (exit && ev.exit_code !== undefined && ev.exit_code !== null) exit.textContent = ev.exit_code;
        const reason = el.querySelector(".reason");
        if (reason && ev.reason) reason.textContent = ev.reason;
        if (ET.FINAL.indexOf(ev.state) >= 0) {
          let seconds = ev.duration;
          if ((seconds === undefined || seconds === null) && r.started) seconds = (Date.now() - r.started) / 1000;
          el.querySelector(".dur").textContent = ET.fmtDuration(seconds);
        }
      });
      const jobState = document.getElementById("job-state");
      if (ev.state !== "queued" && jobState && jobState.textContent.trim() === "queued") ET.setState(jobState, "running");
      showSummary();
    }

    function tick() {
      rows.forEach(function (r) {
        if (r.state === "running" && r.started) {
          r.els.forEach(function (el) {
            el.querySelector(".dur").textContent = ET.fmtDuration((Date.now() - r.started) / 1000);
          });
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
