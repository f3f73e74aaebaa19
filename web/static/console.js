/* EasyTask console: helpers shared by every page. Untrusted text only ever goes into textContent. */
(function () {
  "use strict";

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  /* Call the JSON API with the session cookie; state changes carry the CSRF header. */
  async function api(method, url, body) {
    const headers = { "X-EasyTask-Client": "console" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(url, {
      method: method,
      headers: headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try {
      data = await resp.json();
    } catch (err) {
      data = null;
    }
    if (!resp.ok) {
      const error = new Error((data && data.error) || resp.status + " " + resp.statusText);
      error.status = resp.status;
      throw error;
    }
    return data;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
    if (seconds < 10) return seconds.toFixed(2) + "s";
    if (seconds < 60) return seconds.toFixed(1) + "s";
    let minutes = Math.floor(seconds / 60);
    const secs = Math.floor(seconds % 60);
    if (minutes < 60) return minutes + "m " + String(secs).padStart(2, "0") + "s";
    const hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    return hours + "h " + String(minutes).padStart(2, "0") + "m";
  }

  function stateBadge(state) {
    const span = document.createElement("span");
    span.className = "state state-" + String(state).replace(/[^a-z]/g, "");
    span.textContent = state;
    return span;
  }

  function setState(container, state) {
    if (!container) return;
    container.replaceChildren(stateBadge(state));
  }

  /* A kill button asks for a second click within 4 s, then POSTs to its data-kill-url. */
  function armKill(button, onDone) {
    if (!button) return;
    const label = button.textContent;
    let armed = null;
    button.addEventListener("click", async function () {
      if (!armed) {
        button.textContent = "Confirm: " + label.toLowerCase();
        button.classList.add("armed");
        armed = setTimeout(function () {
          armed = null;
          button.textContent = label;
          button.classList.remove("armed");
        }, 4000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      button.disabled = true;
      button.textContent = "Killing…";
      try {
        const result = await api("POST", button.dataset.killUrl);
        button.textContent = "Kill sent";
        if (onDone) onDone(result);
      } catch (err) {
        button.disabled = false;
        button.textContent = label;
        button.classList.remove("armed");
        alertText(button.parentElement, err.message);
      }
    });
  }

  function alertText(parent, message) {
    let box = parent.querySelector(".error.js");
    if (!box) {
      box = document.createElement("p");
      box.className = "error js";
      box.setAttribute("role", "alert");
      parent.appendChild(box);
    }
    box.textContent = message;
  }

  /* `2024-05-01 10:00:03` (UTC, as the server renders times) to epoch milliseconds. */
  function parseUtc(text) {
    if (!text) return null;
    const ms = Date.parse(text.replace(" ", "T") + "Z");
    return isNaN(ms) ? null : ms;
  }

  window.EasyTask = {
    api: api,
    csrf: csrf,
    fmtDuration: fmtDuration,
    stateBadge: stateBadge,
    setState: setState,
    armKill: armKill,
    alertText: alertText,
    parseUtc: parseUtc,
    FINAL: ["success", "failed", "terminated", "unreachable", "skipped"],
  };
})();
