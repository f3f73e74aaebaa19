/* Ad hoc page: live preview of the hosts a pattern matches (GET /api/hosts?pattern=), the action
   switch, and scripts/copies: the file goes to POST /api/uploads, the job to POST /api/jobs. */
(function () {
  "use strict";
  const ET = window.EasyTask;
  const SHOW = 60;

  document.addEventListener("DOMContentLoaded", function () {
    const input = document.getElementById("pattern");
    const preview = document.getElementById("preview");
    if (!input || !preview) return;
    let timer = null;
    let asked = 0;

    async function refresh() {
      const pattern = input.value.trim();
      const mine = ++asked;
      if (!pattern) {
        preview.replaceChildren();
        return;
      }
      try {
        const data = await ET.api("GET", "/api/hosts?pattern=" + encodeURIComponent(pattern));
        if (mine !== asked) return;
        const head = document.createElement("span");
        head.className = "count";
        head.textContent = data.hosts.length + " host(s): ";
        const list = document.createElement("span");
        list.className = "hosts";
        data.hosts.slice(0, SHOW).forEach(function (h) {
          const item = document.createElement("span");
          item.className = "host conn-" + (h.connection === "ssh" ? "ssh" : "agent");
          item.textContent = h.name;
          item.title = h.connection;
          list.appendChild(item);
        });
        if (data.hosts.length > SHOW) list.appendChild(document.createTextNode(" … and " + (data.hosts.length - SHOW) + " more"));
        preview.className = "preview ok";
        preview.replaceChildren(head, list);
      } catch (err) {
        if (mine !== asked) return;
        preview.className = "preview bad";
        preview.textContent = err.message;
      }
    }

    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(refresh, 200);
    });
    refresh();
    setupKinds();
  });

  function currentKind(form) {
    const checked = form.querySelector('input[name="kind"]:checked');
    return checked ? checked.value : "command";
  }

  /* Show the fields of the chosen action; only those are validated and sent. */
  function showKind(form) {
    const kind = currentKind(form);
    form.querySelectorAll(".kind-fields").forEach(function (set) {
      const on = set.dataset.kind === kind;
      set.hidden = !on;
      set.disabled = !on;
    });
  }

  function setupKinds() {
    const form = document.getElementById("adhoc-form");
    if (!form) return;
    form.querySelectorAll('input[name="kind"]').forEach(function (radio) {
      radio.addEventListener("change", function () { showKind(form); });
    });
    showKind(form);
    form.addEventListener("submit", function (event) {
      const kind = currentKind(form);
      if (kind !== "script" && kind !== "copy") return; // a plain form post
      event.preventDefault();
      sendFileJob(form, kind);
    });
  }

  function showError(message) {
    const box = document.getElementById("adhoc-error");
    box.textContent = message;
    box.hidden = false;
  }

  /* Bytes as the server writes them: 512 bytes, 64.0 KiB, 1.5 GiB. */
  function humanSize(n) {
    if (n < 1024) return n + " bytes";
    const units = ["KiB", "MiB", "GiB"];
    let i = 0;
    n /= 1024;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(1) + " " + units[i];
  }

  /* Stream the file to the server (not through JSON), then submit the job naming the upload. */
  async function upload(file, limit) {
    if (limit && file.size > limit) {
      throw new Error("upload too large: " + humanSize(file.size) + " is more than the server's limit of " +
        humanSize(limit) + " (easytask server --upload-limit)");
    }
    const resp = await fetch("/api/uploads?name=" + encodeURIComponent(file.name), {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "X-EasyTask-Client": "console",
        "X-CSRF-Token": ET.csrf(),
        "Content-Type": "application/octet-stream",
      },
      body: file,
    });
    let data = null;
    try { data = await resp.json(); } catch (err) { data = null; }
    if (!resp.ok) throw new Error((data && data.error) || resp.status + " " + resp.statusText);
    return data;
  }

  async function sendFileJob(form, kind) {
    const button = document.getElementById("adhoc-run");
    const progress = document.getElementById("upload-progress");
    const limit = parseInt(form.dataset.uploadLimit || "0", 10);
    const value = function (name) {
      const el = form.elements.namedItem(name);
      return el ? el.value.trim() : "";
    };
    document.getElementById("adhoc-error").hidden = true;
    button.disabled = true;
    progress.hidden = false;
    try {
      const file = form.elements.namedItem(kind === "script" ? "script_file" : "copy_file").files[0];
      if (!file) throw new Error("choose a file");
      const sent = await upload(file, limit);
      const body = { pattern: value("pattern"), kind: kind, timeout: value("timeout") || null };
      if (kind === "script") {
        body.script = {
          name: sent.name,
          upload: sent.upload,
          args: value("script_args"),
          interpreter: value("interpreter") || null,
        };
      } else {
        body.copy = {
          name: sent.name,
          upload: sent.upload,
          dest: value("dest"),
          mode: value("mode") || null,
          owner: value("owner") || null,
          backup: form.elements.namedItem("backup").checked,
        };
      }
      const data = await ET.api("POST", "/api/jobs", body);
      window.location.assign("/jobs/" + data.job.id);
    } catch (err) {
      showError(err.message);
      button.disabled = false;
    } finally {
      progress.hidden = true;
    }
  }
})();
