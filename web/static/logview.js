/* EasyTask log viewer.
 *
 * Renders only the rows on screen: the scroll area is a spacer as tall as the whole log (scaled
 * down past MAX_VIRTUAL pixels, which browsers cannot lay out), and a small pool of row elements
 * is re-filled on every scroll from pages of PAGE lines fetched by position from
 * /api/runs/{id}/lines. Live lines arrive over /api/runs/{id}/events (SSE, resumable by seq).
 * Text from the log is only ever assigned with textContent or as text nodes.
 */
(function () {
  "use strict";

  const ET = window.EasyTask;
  const LEVELS = ["DEBUG", "INFO", "WARN", "ERROR"];
  const ROW_H = 18; /* keep equal to .logline height in console.css */
  const PAGE = 200;
  const MAX_PAGES = 400;
  const MAX_VIRTUAL = 12000000;
  const RETRY_MS = 1000;

  function escapeRegExp(text) {
    return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  }

  class LogView {
    constructor(root) {
      this.root = root;
      this.runId = root.dataset.run;
      this.base = "/api/runs/" + encodeURIComponent(this.runId);
      this.final = root.dataset.final === "1";
      this.scroller = root.querySelector(".logscroll");
      this.spacer = root.querySelector(".logspacer");
      this.layer = root.querySelector(".loglayer");
      this.statusEl = root.querySelector(".status");
      this.followBox = root.querySelector(".follow");
      this.countEl = root.querySelector(".count");
      this.searchForm = root.querySelector("form.search");
      this.searchInput = this.searchForm.querySelector("input[name=q]");

      this.levels = new Set(LEVELS);
      this.total = 0; /* rows in the current (filtered) view */
      this.seen = 0; /* highest seq known to be counted or shown */
      this.pages = new Map();
      this.loading = new Set();
      this.missedAt = new Map();
      this.gen = 0;
      this.buffer = null; /* live lines held while the view is being (re)counted */
      this.follow = true;
      this.pool = [];
      this.frame = 0;
      this.dirty = false;
      this.query = "";
      this.regex = null;
      this.matches = [];
      this.truncated = false;
      this.cur = -1;
      this.curSeq = null;
      this.es = null;

      root.querySelectorAll("input[name=level]").forEach((box) => {
        box.addEventListener("change", () => {
          if (box.checked) this.levels.add(box.value);
          else this.levels.delete(box.value);
          this.reload().then(() => {
            if (this.query) this.search(this.query);
          });
        });
      });
      this.scroller.addEventListener("scroll", () => {
        this.follow = this.atBottom();
        this.followBox.checked = this.follow;
        this.schedule();
      }, { passive: true });
      this.followBox.addEventListener("change", () => {
        this.follow = this.followBox.checked;
        if (this.follow) this.scrollToEnd();
      });
      this.searchForm.addEventListener("submit", (ev) => {
        ev.preventDefault();
        this.search(this.searchInput.value);
      });
      this.searchForm.querySelector(".next").addEventListener("click", () => this.step(1));
      this.searchForm.querySelector(".prev").addEventListener("click", () => this.step(-1));
      window.addEventListener("resize", () => this.schedule());

      this.reload().then(() => {
        if (!this.final) this.connect();
        if (this.searchInput.value) this.search(this.searchInput.value);
      });
    }

    /* -- the view ------------------------------------------------------------------------ */

    filtered() {
      return this.levels.size < LEVELS.length;
    }

    levelParam() {
      return this.filtered() ? "&level=" + encodeURIComponent(Array.from(this.levels).join(",")) : "";
    }

    matchesLevel(line) {
      return this.levels.has(line.level);
    }

    async reload() {
      const gen = ++this.gen;
      this.pages.clear();
      this.loading.clear();
      this.missedAt.clear();
      this.buffer = [];
      if (this.levels.size === 0) {
        this.total = 0;
        this.buffer = null;
        this.layout();
        this.render();
        this.setStatus("no level selected");
        return;
      }
      let data;
      try {
        data = await ET.api("GET", this.base + "/lines?count=1&offset=0&limit=" + PAGE + this.levelParam());
      } catch (err) {
        this.setStatus(err.message);
        return;
      }
      if (gen !== this.gen) return;
      this.total = data.total;
      this.seen = Math.max(this.seen, data.max_seq);
      this.fill(0, data.lines);
      const held = this.buffer || [];
      this.buffer = null;
      held.forEach((line) => {
        if (line.seq > data.max_seq) this.append(line);
      });
      this.layout();
      if (this.follow) this.scrollToEnd();
      this.render();
      this.showTotals();
    }

    geometry() {
      const viewH = this.scroller.clientHeight || 1;
      const virt = Math.min(this.total * ROW_H, MAX_VIRTUAL);
      const rowsInView = viewH / ROW_H;
      return {
        viewH: viewH,
        virt: virt,
        maxScroll: Math.max(0, virt - viewH),
        span: Math.max(0, this.total - rowsInView),
        rowsInView: rowsInView,
      };
    }

    layout() {
      this.spacer.style.height = this.geometry().virt + "px";
    }

    firstFloat() {
      const g = this.geometry();
      if (g.maxScroll <= 0) return 0;
      const frac = Math.min(1, this.scroller.scrollTop / g.maxScroll);
      return frac * g.span;
    }

    /* From the laid-out sizes, not from this.total, which may be ahead until the next frame. */
    atBottom() {
      const s = this.scroller;
      return s.scrollHeight - s.clientHeight - s.scrollTop <= 4;
    }

    scrollToEnd() {
      this.layout();
      this.scroller.scrollTop = this.scroller.scrollHeight;
      this.schedule();
    }

    /* Bring a position into view, about a third from the top. */
    scrollToPos(pos) {
      this.layout();
      const g = this.geometry();
      const target = Math.min(g.span, Math.max(0, pos - Math.floor(g.rowsInView / 3)));
      this.scroller.scrollTop = g.span > 0 ? (target / g.span) * g.maxScroll : 0;
      this.follow = this.atBottom();
      this.followBox.checked = this.follow;
      this.schedule();
    }

    schedule() {
      if (this.frame) return;
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        if (this.dirty) {
          /* Live lines arrived: grow the scroll area once per frame, not once per line. */
          this.dirty = false;
          this.layout();
          if (this.follow) this.scroller.scrollTop = this.scroller.scrollHeight;
          this.showTotals();
        }
        this.render();
      });
    }

    rowAt(pos) {
      const page = this.pages.get(Math.floor(pos / PAGE));
      return page ? page[pos % PAGE] : undefined;
    }

    render() {
      const g = this.geometry();
      const ff = this.firstFloat();
      const first = Math.floor(ff);
      const top = this.scroller.scrollTop - (ff - first) * ROW_H;
      this.layer.style.transform = "translateY(" + Math.max(0, top) + "px)";
      const count = Math.max(0, Math.min(Math.ceil(g.viewH / ROW_H) + 1, this.total - first));
      while (this.pool.length < count) {
        const el = document.createElement("div");
        const seq = document.createElement("span");
        seq.className = "seq";
        const text = document.createElement("span");
        text.className = "txt";
        el.append(seq, text);
        this.layer.appendChild(el);
        this.pool.push(el);
      }
      const wanted = new Set();
      for (let i = 0; i < this.pool.length; i++) {
        const el = this.pool[i];
        if (i >= count) {
          el.hidden = true;
          continue;
        }
        el.hidden = false;
        const pos = first + i;
        const row = this.rowAt(pos);
        if (row) this.paint(el, row);
        else {
          this.placeholder(el);
          wanted.add(Math.floor(pos / PAGE));
        }
      }
      wanted.forEach((p) => this.fetchPage(p));
    }

    paint(el, row) {
      let cls = "logline lv-" + row.level;
      if (row.stream === "stderr") cls += " err";
      if (row.stream === "system") cls += " sys";
      if (row.seq === this.curSeq) cls += " current";
      el.className = cls;
      el.dataset.seq = row.seq;
      el.firstChild.textContent = row.seq;
      const txt = el.lastChild;
      if (this.regex) {
        const parts = [];
        let last = 0;
        this.regex.lastIndex = 0;
        let m;
        while ((m = this.regex.exec(row.text)) !== null && m[0].length > 0) {
          if (m.index > last) parts.push(document.createTextNode(row.text.slice(last, m.index)));
          const mark = document.createElement("mark");
          mark.textContent = m[0];
          parts.push(mark);
          last = m.index + m[0].length;
        }
        if (last < row.text.length) parts.push(document.createTextNode(row.text.slice(last)));
        txt.replaceChildren.apply(txt, parts);
      } else {
        txt.textContent = row.text;
      }
      if (row.cut) {
        const more = document.createElement("span");
        more.className = "cut";
        more.textContent = " … (" + row.cut + " characters; see raw)";
        txt.appendChild(more);
      }
    }

    placeholder(el) {
      el.className = "logline loading";
      delete el.dataset.seq;
      el.firstChild.textContent = "";
      el.lastChild.textContent = "…";
    }

    async fetchPage(p) {
      if (this.loading.has(p)) return;
      const missed = this.missedAt.get(p);
      if (missed && Date.now() - missed < RETRY_MS) {
        setTimeout(() => this.schedule(), RETRY_MS);
        return;
      }
      this.loading.add(p);
      const gen = this.gen;
      let url = this.base + "/lines?offset=" + p * PAGE + "&limit=" + PAGE + this.levelParam();
      const prev = this.pages.get(p - 1);
      if (this.filtered() && prev && prev[PAGE - 1]) url += "&after_seq=" + prev[PAGE - 1].seq;
      try {
        const data = await ET.api("GET", url);
        if (gen !== this.gen) return;
        this.fill(p, data.lines);
        const page = this.pages.get(p);
        const expected = Math.min(PAGE, this.total - p * PAGE);
        let have = 0;
        for (let i = 0; i < expected; i++) if (page[i]) have++;
        if (have < expected) this.missedAt.set(p, Date.now());
        else this.missedAt.delete(p);
      } catch (err) {
        this.missedAt.set(p, Date.now());
        this.setStatus(err.message);
      } finally {
        this.loading.delete(p);
      }
      this.schedule();
    }

    fill(p, lines) {
      let page = this.pages.get(p);
      if (!page) {
        page = [];
        this.pages.set(p, page);
      }
      lines.forEach((line, i) => {
        page[i] = line;
      });
      this.evict(p);
    }

    evict(keep) {
      if (this.pages.size <= MAX_PAGES) return;
      const order = Array.from(this.pages.keys()).sort((a, b) => Math.abs(b - keep) - Math.abs(a - keep));
      const last = Math.floor(Math.max(0, this.total - 1) / PAGE);
      for (const p of order) {
        if (this.pages.size <= MAX_PAGES) break;
        if (p !== keep && p !== last) this.pages.delete(p);
      }
    }

    /* -- live ---------------------------------------------------------------------------- */

    connect() {
      const es = new EventSource(this.base + "/events?after=" + this.seen);
      this.es = es;
      this.setStatus("live");
      es.onopen = () => this.setStatus("live");
      es.onmessage = (msg) => {
        const ev = JSON.parse(msg.data);
        if (ev.t === "line") this.live(ev);
        else if (ev.t === "run") this.runState(ev);
        else if (ev.t === "end") {
          es.close();
          this.es = null;
          this.final = true;
          this.runState(ev);
          this.showTotals();
        }
      };
      es.onerror = () => {
        if (this.es) this.setStatus("reconnecting…");
      };
    }

    live(line) {
      if (line.seq <= this.seen) return;
      this.seen = line.seq;
      if (this.buffer) this.buffer.push(line);
      else {
        this.append(line);
        this.dirty = true;
        this.schedule();
      }
    }

    append(line) {
      if (!this.matchesLevel(line)) return;
      const pos = this.total++;
      const p = Math.floor(pos / PAGE);
      let page = this.pages.get(p);
      if (!page) {
        page = [];
        this.pages.set(p, page);
      }
      page[pos % PAGE] = line;
      if (this.regex && !this.truncated) {
        this.regex.lastIndex = 0;
        if (this.regex.test(line.text)) {
          this.matches.push({ seq: line.seq, pos: pos });
          this.showCount();
        }
      }
    }

    runState(ev) {
      ET.setState(document.getElementById("run-state"), ev.state);
      const exit = document.getElementById("run-exit");
      if (exit && ev.exit_code !== undefined && ev.exit_code !== null) exit.textContent = ev.exit_code;
      const reason = document.getElementById("run-reason");
      if (reason && ev.reason) reason.textContent = ev.reason;
      if (ET.FINAL.indexOf(ev.state) >= 0) {
        const kill = document.getElementById("kill-run");
        if (kill) kill.hidden = true;
      }
    }

    setStatus(text) {
      this.statusEl.textContent = text;
    }

    showTotals() {
      const n = this.total.toLocaleString("en");
      this.setStatus(n + (this.filtered() ? " matching lines" : " lines") + (this.final ? "" : " · live"));
    }

    /* -- search -------------------------------------------------------------------------- */

    async search(query) {
      this.query = query;
      this.matches = [];
      this.cur = -1;
      this.curSeq = null;
      this.regex = query ? new RegExp(escapeRegExp(query), "gi") : null;
      if (!query) {
        this.countEl.textContent = "";
        this.schedule();
        return;
      }
      const gen = this.gen;
      let data;
      try {
        data = await ET.api("GET", this.base + "/search?q=" + encodeURIComponent(query) + this.levelParam());
      } catch (err) {
        this.countEl.textContent = err.message;
        return;
      }
      if (gen !== this.gen || query !== this.query) return;
      this.matches = data.matches;
      this.truncated = data.truncated;
      if (this.matches.length) {
        const top = Math.floor(this.firstFloat());
        let start = this.matches.findIndex((m) => m.pos >= top);
        if (this.follow || start < 0) start = 0;
        this.go(start);
      } else {
        this.showCount();
        this.schedule();
      }
    }

    step(delta) {
      if (!this.matches.length) return;
      const n = this.matches.length;
      this.go(((this.cur < 0 ? (delta > 0 ? -1 : 0) : this.cur) + delta + n) % n);
    }

    go(index) {
      this.cur = index;
      const match = this.matches[index];
      this.curSeq = match.seq;
      this.showCount();
      this.scrollToPos(match.pos);
    }

    /* Scroll to a line (by its position in the current view) and mark it, as the timeline asks. */
    jump(seq, pos) {
      this.curSeq = seq;
      this.root.dataset.jumped = seq;
      this.scrollToPos(pos);
    }

    showCount() {
      if (!this.matches.length) {
        this.countEl.textContent = this.query ? "no match" : "";
        return;
      }
      const of = this.matches.length + (this.truncated ? "+" : "");
      this.countEl.textContent = (this.cur >= 0 ? this.cur + 1 : 0) + " / " + of;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.getElementById("logview");
    if (root) window.easytaskLog = new LogView(root);
    const kill = document.getElementById("kill-run");
    if (kill) ET.armKill(kill);
  });
})();
