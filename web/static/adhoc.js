/* Ad hoc page: live preview of the hosts a pattern matches (GET /api/hosts?pattern=). */
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
  });
})();
