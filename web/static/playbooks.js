/* Playbooks page: lists /api/playbooks when the server has it, else says there are none yet. */
(function () {
  "use strict";
  const ET = window.EasyTask;
  const KEYS = ["name", "file", "path", "hosts", "schedule", "next_run", "last_run", "state"];

  document.addEventListener("DOMContentLoaded", async function () {
    const box = document.getElementById("playbooks");
    if (!box) return;
    let items = [];
    try {
      const data = await ET.api("GET", "/api/playbooks");
      items = Array.isArray(data) ? data : data.playbooks || [];
    } catch (err) {
      if (err.status !== 404) {
        box.replaceChildren();
        ET.alertText(box, err.message);
        return;
      }
    }
    if (!items.length) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No playbooks yet.";
      box.replaceChildren(p);
      return;
    }
    const keys = KEYS.filter(function (k) {
      return items.some(function (it) { return it[k] !== undefined && it[k] !== null; });
    });
    const table = document.createElement("table");
    table.className = "grid";
    const head = table.createTHead().insertRow();
    keys.forEach(function (k) {
      const th = document.createElement("th");
      th.textContent = k.replace("_", " ");
      head.appendChild(th);
    });
    const body = table.createTBody();
    items.forEach(function (it) {
      const tr = body.insertRow();
      keys.forEach(function (k) {
        const v = it[k];
        tr.insertCell().textContent = v === undefined || v === null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
      });
    });
    box.replaceChildren(table);
  });
})();
