"use strict";
// Homeport dashboard. Plain ES2020, no build step. Every piece of server data is inserted
// with createElement/textContent, never as HTML.
(() => {
  const TOKEN_KEY = "homeport.token";
  const PAGE = 25;
  const FEED_MAX = 100;
  const DEVICE_EVENTS_MAX = 50;
  const EVENT_ROWS_MAX = 1000;
  const POWER_STATES = {
    2: "On", 3: "Sleep (light)", 4: "Sleep (deep)", 6: "Off (hard)", 7: "Hibernate",
    8: "Off (soft)", 9: "Power cycle", 13: "Off (hard graceful)",
  };
  const SEVERITY = { 0: "Unspecified", 1: "Monitor", 2: "Information", 4: "OK", 8: "Non-critical", 16: "Critical", 32: "Non-recoverable" };

  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem(TOKEN_KEY);
  let view = null; // the mounted view: { key, ctl, signal, timers, onEvent, update }
  let initialRender = true;

  // ---------- DOM helpers ----------
  function add(node, kids) {
    for (const k of kids) {
      if (k == null || k === false) continue;
      if (Array.isArray(k)) add(node, k);
      else node.append(k instanceof Node ? k : String(k));
    }
    return node;
  }
  function build(node, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    return add(node, kids);
  }
  const el = (tag, attrs, ...kids) => build(document.createElement(tag), attrs, kids);
  const svg = (tag, attrs, ...kids) => build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, kids);

  const devHref = (guid) => "#/devices/" + encodeURIComponent(guid);
  const fmtNum = (n) => Number(n || 0).toLocaleString();
  const toArray = (x) => (Array.isArray(x) ? x.filter((i) => i && typeof i === "object") : x && typeof x === "object" ? [x] : []);

  function ago(d) {
    const s = (Date.now() - d.getTime()) / 1000;
    if (s < 0) return d.toLocaleString();
    if (s < 45) return "just now";
    if (s < 3600) return `${Math.max(1, Math.round(s / 60))} min ago`;
    if (s < 172800) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }
  // A <time> element; relative text ("5 min ago") keeps the full time as a tooltip.
  function timeEl(iso, mode) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    const text = mode === "ago" ? ago(d) : mode === "time" ? d.toLocaleTimeString() : d.toLocaleString();
    return el("time", { datetime: d.toISOString(), title: mode ? d.toLocaleString() : null }, text);
  }
  function facts(pairs, attrs) {
    return el("dl", Object.assign({ class: "facts" }, attrs),
      pairs.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v == null || v === "" ? "—" : v))));
  }
  const badge = (on) => el("span", { class: "badge " + (on ? "ok" : "off") }, on ? "Connected" : "Disconnected");
  const tagList = (tags) => (Array.isArray(tags) && tags.length ? el("span", { class: "tags" }, tags.map((t) => el("span", { class: "tag" }, t))) : "—");
  const table = (attrs, headers, tbody) =>
    el("div", { class: "table-wrap" }, el("table", attrs, el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))), tbody));

  // ---------- view lifecycle: timers and requests die with the view ----------
  function later(v, fn, ms) {
    const id = setTimeout(() => { v.timers.delete(id); fn(); }, ms);
    v.timers.add(id);
    return id;
  }
  function cancel(v, id) { clearTimeout(id); v.timers.delete(id); }
  function every(v, fn, ms) { v.timers.add(setInterval(fn, ms)); } // clearTimeout also clears intervals
  // At most one call per `ms`, trailing: bursts of events cause one refresh, not many.
  function throttle(v, fn, ms) {
    let last = 0, pending = 0;
    return () => {
      if (pending) return;
      pending = later(v, () => { pending = 0; last = Date.now(); fn(); }, Math.max(0, last + ms - Date.now()));
    };
  }
  // One request per slot: a new one aborts the stale one, so only the latest answer renders.
  function slot(v) {
    let c = null;
    v.signal.addEventListener("abort", () => c && c.abort(), { once: true });
    return () => {
      if (c) c.abort();
      c = new AbortController();
      if (v.signal.aborted) c.abort();
      return c.signal;
    };
  }
  const isAbort = (e) => e && e.name === "AbortError";

  // ---------- API ----------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  function errorText(data, res) {
    if (data && typeof data === "object") {
      const errs = Array.isArray(data.errors) ? [...new Set(data.errors.map((e) => e && e.msg).filter(Boolean))].join("; ") : "";
      const m = data.errorDescription || data.error || data.message || errs;
      if (m) return String(m);
    }
    if (typeof data === "string" && data.trim() && data.length < 200) return data.trim();
    return `Request failed (${res.status}${res.statusText ? " " + res.statusText : ""})`;
  }
  async function api(method, path, body, opts = {}) {
    const headers = { Accept: "application/json" };
    if (!opts.anonymous && token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, signal: opts.signal, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      if (isAbort(e)) throw e;
      throw new ApiError(0, "Cannot reach the server; check the connection.");
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = text; }
    }
    if (res.status === 401 && !opts.anonymous) {
      signOut("Your session has ended; please sign in again.");
      throw new ApiError(401, "Not signed in");
    }
    if (!res.ok) throw new ApiError(res.status, errorText(data, res));
    return data;
  }

  // ---------- session ----------
  function decodeToken(t) {
    try {
      let s = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      s += "=".repeat((4 - (s.length % 4)) % 4);
      return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(s), (c) => c.charCodeAt(0))));
    } catch {
      return null; // opaque token: still usable, just no tenant to show
    }
  }
  function showSignin(message) {
    $("app").hidden = true;
    $("view").replaceChildren();
    $("signin-section").hidden = false;
    $("signin-error").textContent = message || "";
    $("username").focus();
  }
  function signOut(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    stopFeed(true);
    unmount();
    closeConfirm();
    showSignin(message);
  }
  function start() {
    const claims = decodeToken(token) || {};
    if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) {
      signOut("Your session has expired; please sign in again.");
      return;
    }
    $("tenant").textContent = claims.tenant ? String(claims.tenant) : "default";
    $("signin-section").hidden = true;
    $("app").hidden = false;
    startFeed();
    route();
  }
  async function onSignin(e) {
    e.preventDefault();
    const btn = $("signin"), err = $("signin-error");
    btn.disabled = true;
    err.textContent = "";
    try {
      const r = await api("POST", "/api/v1/authorize", { username: $("username").value, password: $("password").value }, { anonymous: true });
      if (!r || typeof r.token !== "string") throw new Error("The server did not return a token.");
      token = r.token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("password").value = "";
      initialRender = false; // the sign-in button disappears: move focus to the page heading
      start();
    } catch (ex) {
      err.textContent = ex.message;
    } finally {
      btn.disabled = false;
    }
  }

  // ---------- confirmation dialog ----------
  function confirmDialog(title, text) {
    const dlg = $("confirm");
    if (dlg.open) dlg.close("no");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    dlg.returnValue = ""; // Escape closes without setting it
    dlg.showModal();
    $("confirm-no").focus();
    return new Promise((resolve) => dlg.addEventListener("close", () => resolve(dlg.returnValue === "yes"), { once: true }));
  }
  function closeConfirm() {
    const dlg = $("confirm");
    if (dlg.open) dlg.close("no");
  }

  // ---------- live feed: SSE over fetch, because EventSource cannot send Authorization ----------
  const feed = { ctl: null, timer: 0, lastId: "", delay: 2000 };

  function setFeedStatus(state, text) {
    const s = $("feed-status");
    s.dataset.state = state;
    s.textContent = text;
  }
  function stopFeed(reset) {
    clearTimeout(feed.timer);
    feed.timer = 0;
    if (feed.ctl) feed.ctl.abort();
    feed.ctl = null;
    if (reset) {
      feed.lastId = "";
      feed.delay = 2000;
      $("feed").replaceChildren();
      setFeedStatus("off", "offline");
    }
  }
  function startFeed() {
    stopFeed(false);
    connectFeed();
  }
  async function connectFeed() {
    const ctl = new AbortController();
    feed.ctl = ctl;
    feed.timer = 0;
    if ($("feed-status").dataset.state !== "reconnecting") setFeedStatus("connecting", "connecting…");
    try {
      const headers = { Accept: "text/event-stream", Authorization: `Bearer ${token}` };
      if (feed.lastId) headers["Last-Event-ID"] = feed.lastId;
      const res = await fetch("/api/v1/events/stream", { headers, signal: ctl.signal, cache: "no-store" });
      if (res.status === 401) {
        signOut("Your session has ended; please sign in again.");
        return;
      }
      if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
      setFeedStatus("live", "live");
      await readSse(res.body.getReader());
    } catch {
      // Network errors and aborted reads both end here; the reconnect below handles them.
    }
    if (ctl.signal.aborted || feed.ctl !== ctl) return; // signed out or restarted
    feed.ctl = null;
    setFeedStatus("reconnecting", "reconnecting…");
    feed.timer = setTimeout(connectFeed, feed.delay);
    feed.delay = Math.min(feed.delay * 2, 30000);
  }
  // Parses the SSE wire format (https://html.spec.whatwg.org/#event-stream-interpretation).
  async function readSse(reader) {
    const dec = new TextDecoder();
    let buf = "", data = [], type = "", idBuf = feed.lastId;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      feed.delay = 2000; // bytes arrived (even a keep-alive): the next reconnect starts fast again
      buf += dec.decode(value, { stream: true });
      // A trailing \r may be half of \r\n: keep it for the next chunk.
      const cr = buf.endsWith("\r");
      const lines = (cr ? buf.slice(0, -1) : buf).split(/\r\n|\r|\n/);
      buf = lines.pop() + (cr ? "\r" : "");
      for (const line of lines) {
        if (line === "") {
          feed.lastId = idBuf; // committed at the frame's end, so a cut frame is replayed
          const stop = data.length > 0 && onSseEvent(type || "message", data.join("\n"));
          data = [];
          type = "";
          if (stop) {
            reader.cancel().catch(() => {});
            return;
          }
          continue;
        }
        if (line[0] === ":") continue; // comment / keep-alive
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        let val = i < 0 ? "" : line.slice(i + 1);
        if (val[0] === " ") val = val.slice(1);
        if (field === "data") data.push(val);
        else if (field === "event") type = val;
        else if (field === "id" && !val.includes("\0")) idBuf = val;
      }
    }
  }
  // Returns true when the stream should be dropped and reopened.
  function onSseEvent(type, data) {
    if (type === "close") return true; // the server dropped us as a slow client; resume from lastId
    if (type !== "message") return false;
    let ev;
    try { ev = JSON.parse(data); } catch { return false; }
    if (!ev || typeof ev !== "object") return false;
    addFeedItem(ev);
    if (view && view.onEvent) view.onEvent(ev);
    return false;
  }
  function eventItem(ev, withGuid) {
    const guid = ev.deviceGuid || "";
    return el("li", { "data-kind": ev.kind || "", "data-guid": guid, "data-id": ev.id || null },
      el("span", { class: "ev-meta" }, timeEl(ev.time, withGuid ? "time" : null), " ", el("span", { class: "kind" }, ev.kind || "event")),
      withGuid && guid ? el("a", { class: "guid", href: devHref(guid) }, guid) : null,
      el("span", { class: "summary" }, ev.summary || ev.subject || ""));
  }
  function addFeedItem(ev) {
    const list = $("feed");
    list.prepend(eventItem(ev, true));
    while (list.children.length > FEED_MAX) list.lastElementChild.remove();
  }
  const sameGuid = (a, b) => typeof a === "string" && typeof b === "string" && a.toLowerCase() === b.toLowerCase();

  // ---------- router ----------
  function parseHash() {
    const raw = location.hash.replace(/^#/, "");
    const q = raw.indexOf("?");
    return { path: (q < 0 ? raw : raw.slice(0, q)) || "/overview", params: new URLSearchParams(q < 0 ? "" : raw.slice(q + 1)) };
  }
  // Sets the hash unless it is already that (after the browser's own percent-encoding).
  function navigate(hash, ifSame) {
    if (new URL(hash, location.href).hash === location.hash) ifSame && ifSame();
    else location.hash = hash;
  }
  function route() {
    if (!token) return;
    closeConfirm();
    if (!location.hash.replace(/^#\/?/, "")) history.replaceState(null, "", "#/overview"); // the default page, visible in the URL
    const { path, params } = parseHash();
    const m = /^\/devices\/([^/]+)$/.exec(path);
    if (path === "/overview") mount("overview", "overview", params, renderOverview);
    else if (path === "/devices") mount("devices", "devices", params, renderDevices);
    else if (path === "/events") mount("events", "events", params, renderEvents);
    else if (m) {
      let guid = m[1];
      try { guid = decodeURIComponent(guid); } catch { /* keep it raw */ }
      mount("device:" + guid, "devices", params, (v, p, root) => renderDevice(v, guid, root));
    } else location.replace("#/overview");
  }
  function unmount() {
    if (!view) return;
    view.ctl.abort();
    for (const id of view.timers) clearTimeout(id);
    view = null;
  }
  function mount(key, nav, params, render) {
    for (const a of document.querySelectorAll("[data-nav]")) {
      if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    // Same view, new query (search, paging, back/forward): update in place to keep focus.
    if (view && view.key === key && view.update) {
      view.update(params);
      return;
    }
    unmount();
    const ctl = new AbortController();
    view = { key, ctl, signal: ctl.signal, timers: new Set(), onEvent: null, update: null };
    const root = $("view");
    root.replaceChildren();
    render(view, params, root);
    // Move focus to the new heading so keyboard and screen reader users land on the new page.
    const h = root.querySelector("h1");
    if (h && !initialRender) {
      h.tabIndex = -1;
      h.focus();
    }
    initialRender = false;
  }

  // ---------- overview ----------
  function renderOverview(v, params, root) {
    const stat = (id, label) => el("div", { class: "stat" }, el("dt", {}, label), el("dd", { id }, "…"));
    const total = stat("stat-total", "Devices"), conn = stat("stat-connected", "Connected"), disc = stat("stat-disconnected", "Disconnected");
    const statsErr = el("p", { class: "error", hidden: true });
    const nodesBody = el("tbody");
    const chartBox = el("div", { class: "chart-box" }, el("p", { class: "muted" }, "Loading…"));
    const chartErr = el("p", { class: "error", hidden: true });
    root.append(el("section", { id: "overview", "aria-labelledby": "overview-title" },
      el("h1", { id: "overview-title" }, "Overview"),
      el("dl", { class: "stats" }, total, conn, disc),
      statsErr,
      el("div", { class: "cols" },
        el("section", { class: "card chart-card", "aria-labelledby": "chart-title" },
          el("h2", { id: "chart-title" }, "Connects and disconnects, last hour"), chartBox, chartErr),
        el("section", { class: "card", "aria-labelledby": "nodes-title" },
          el("h2", { id: "nodes-title" }, "Connected by node"),
          table({ id: "nodes" }, ["Node", "Connected"], nodesBody)))));

    const next = slot(v);
    async function refresh() {
      const signal = next();
      await Promise.all([
        api("GET", "/api/v1/devices/stats", undefined, { signal }).then((s) => {
          if (signal.aborted) return;
          s = s || {};
          total.lastChild.textContent = String(Number(s.totalCount) || 0);
          conn.lastChild.textContent = String(Number(s.connectedCount) || 0);
          disc.lastChild.textContent = String(Number(s.disconnectedCount) || 0);
          const nodes = toArray(s.nodes).slice().sort((a, b) => String(a.node).localeCompare(String(b.node)));
          nodesBody.replaceChildren(...(nodes.length
            ? nodes.map((n) => el("tr", {}, el("td", {}, n.node || "—"), el("td", { class: "num" }, fmtNum(n.connectedCount))))
            : [el("tr", {}, el("td", { colspan: 2, class: "muted" }, "No device is connected to any node."))]));
          statsErr.hidden = true;
        }, (e) => {
          if (isAbort(e) || signal.aborted) return;
          statsErr.textContent = "Device statistics unavailable: " + e.message;
          statsErr.hidden = false;
        }),
        api("GET", "/api/v1/events/counts?kinds=connected,disconnected&minutes=60", undefined, { signal }).then((c) => {
          if (signal.aborted) return;
          chartBox.replaceChildren(drawChart(c || {}));
          chartErr.hidden = true;
        }, (e) => {
          if (isAbort(e) || signal.aborted) return;
          chartErr.textContent = "Chart unavailable: " + e.message;
          chartErr.hidden = false;
          if (!chartBox.querySelector("svg")) chartBox.replaceChildren();
        }),
      ]);
    }
    refresh();
    every(v, () => { if (!document.hidden) refresh(); }, 15000);
    const soon = throttle(v, refresh, 2000);
    v.onEvent = (ev) => { if (ev.kind === "connected" || ev.kind === "disconnected") soon(); };
  }

  // Rounds the axis maximum up to 1, 2 or 5 × 10^k so the gridlines get round labels.
  function niceMax(n) {
    if (n <= 1) return 1;
    const p = 10 ** Math.floor(Math.log10(n));
    return [1, 2, 5, 10].map((f) => f * p).find((x) => x >= n);
  }
  function drawChart(data) {
    const series = data.series || {};
    const con = (series.connected || []).map((x) => Number(x) || 0);
    const dis = (series.disconnected || []).map((x) => Number(x) || 0);
    const n = Math.max(con.length, dis.length, 1);
    const bucketMin = (Number(data.bucketSeconds) || 60) / 60;
    const sum = (a) => a.reduce((s, x) => s + x, 0);
    const max = niceMax(Math.max(1, ...con, ...dis));
    const W = 640, H = 250, L = 44, R = 12, T = 34, B = 44, pw = W - L - R, ph = H - T - B;
    const minutes = Math.round(n * bucketMin);
    const label = `Connects and disconnects over the last ${minutes} minutes: ${fmtNum(sum(con))} connects, ${fmtNum(sum(dis))} disconnects.`;
    const g = svg("svg", { id: "chart", role: "img", "aria-label": label, viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMidYMid meet" });
    const y = (val) => T + ph - (val / max) * ph;
    for (const t of [0, max / 2, max]) {
      if (!Number.isInteger(t)) continue;
      g.append(svg("line", { class: "gridline", x1: L, x2: W - R, y1: y(t), y2: y(t) }),
        svg("text", { class: "axis", x: L - 6, y: y(t) + 4, "text-anchor": "end" }, fmtNum(t)));
    }
    const slotW = pw / n, bw = Math.max(1, slotW * 0.38);
    [[con, "connected", 0.1], [dis, "disconnected", 0.52]].forEach(([arr, kind, off]) => {
      arr.forEach((val, i) => {
        if (!val) return;
        const agoMin = Math.round((n - i) * bucketMin);
        g.append(svg("rect", { class: "bar bar-" + kind, x: (L + i * slotW + slotW * off).toFixed(1), y: y(val).toFixed(1), width: bw.toFixed(1), height: (ph - (y(val) - T)).toFixed(1) },
          svg("title", {}, `${val} ${kind}, ${agoMin} min ago`)));
      });
    });
    g.append(svg("line", { class: "axis-line", x1: L, x2: W - R, y1: T + ph, y2: T + ph }));
    const step = Math.max(1, Math.round(n / 4));
    for (let i = 0; i <= n; i++) {
      if ((n - i) % step) continue;
      const agoMin = Math.round((n - i) * bucketMin);
      g.append(svg("text", { class: "axis", x: L + i * slotW, y: T + ph + 16, "text-anchor": i === 0 ? "start" : i === n ? "end" : "middle" }, agoMin ? String(agoMin) : "now"));
    }
    g.append(svg("text", { class: "axis", x: L + pw / 2, y: H - 6, "text-anchor": "middle" }, "minutes ago"));
    [["connected", "Connects", sum(con)], ["disconnected", "Disconnects", sum(dis)]].forEach(([kind, name, tot], i) => {
      const x = L + i * 170;
      g.append(svg("rect", { class: "bar-" + kind, x, y: 10, width: 12, height: 12, rx: 2 }),
        svg("text", { class: "legend", x: x + 18, y: 21 }, `${name} (${fmtNum(tot)})`));
    });
    return g;
  }

  // ---------- device list ----------
  function renderDevices(v, params, root) {
    const search = el("input", { id: "search", type: "search", autocomplete: "off", placeholder: "Name, hostname or GUID" });
    const tagSel = el("select", { id: "tag-filter" }, el("option", { value: "" }, "All tags"));
    const prev = el("button", { id: "prev", type: "button" }, "← Previous");
    const nextBtn = el("button", { id: "next", type: "button" }, "Next →");
    const info = el("span", { id: "page-info", "aria-live": "polite" });
    const status = el("p", { class: "muted", role: "status" });
    const tbody = el("tbody");
    const tbl = table({ id: "device-table" }, ["Name", "GUID", "Status", "Node", "Tags", "Last seen"], tbody);
    root.append(el("section", { id: "devices", "aria-labelledby": "devices-title" },
      el("h1", { id: "devices-title" }, "Devices"),
      el("form", { class: "toolbar", role: "search", onsubmit: (e) => e.preventDefault() },
        el("div", { class: "field" }, el("label", { for: "search" }, "Search"), search),
        el("div", { class: "field" }, el("label", { for: "tag-filter" }, "Tag"), tagSel)),
      tbl, status,
      el("div", { class: "pager" }, prev, info, nextBtn)));

    let state = { search: "", tag: "", skip: 0 }, debounce = 0;
    const next = slot(v);
    const fromParams = (p) => ({ search: p.get("search") || "", tag: p.get("tag") || "", skip: Math.max(0, parseInt(p.get("skip"), 10) || 0) });
    function go(s) {
      const q = new URLSearchParams();
      if (s.search) q.set("search", s.search);
      if (s.tag) q.set("tag", s.tag);
      if (s.skip) q.set("skip", String(s.skip));
      const qs = q.toString();
      navigate("#/devices" + (qs ? "?" + qs : ""));
    }
    function ensureTagOption(tag) {
      if (tag && ![...tagSel.options].some((o) => o.value === tag)) tagSel.append(el("option", { value: tag }, tag));
      tagSel.value = tag;
    }
    async function load() {
      const signal = next();
      tbl.setAttribute("aria-busy", "true");
      status.className = "muted";
      status.textContent = "Loading…";
      const q = [`$top=${PAGE}`, `$skip=${state.skip}`, "$count=true"];
      if (state.search) q.push("search=" + encodeURIComponent(state.search));
      if (state.tag) q.push("tags=" + encodeURIComponent(state.tag));
      try {
        const r = await api("GET", "/api/v1/devices?" + q.join("&"), undefined, { signal });
        if (signal.aborted) return;
        const list = toArray(Array.isArray(r) ? r : r && r.data);
        const total = Number(r && r.totalCount) || 0;
        tbody.replaceChildren(...list.map(deviceRow));
        status.textContent = list.length ? "" : state.search || state.tag ? "No devices match." : "No devices yet.";
        info.textContent = list.length ? `${fmtNum(state.skip + 1)}–${fmtNum(state.skip + list.length)} of ${fmtNum(total)}` : `0 of ${fmtNum(total)}`;
        prev.disabled = state.skip === 0;
        nextBtn.disabled = state.skip + list.length >= total;
      } catch (e) {
        if (isAbort(e) || signal.aborted) return;
        status.className = "error";
        status.textContent = "Could not load devices: " + e.message;
      } finally {
        if (!signal.aborted) tbl.removeAttribute("aria-busy");
      }
    }
    function deviceRow(d) {
      return el("tr", { "data-guid": d.guid },
        el("td", {}, el("a", { class: "device-link", href: devHref(d.guid || "") }, d.friendlyName || d.hostname || d.guid)),
        el("td", { class: "mono" }, d.guid),
        el("td", { class: "status" }, badge(d.connectionStatus === true)),
        el("td", {}, d.mpsInstance || "—"),
        el("td", {}, tagList(d.tags)),
        el("td", {}, timeEl(d.lastSeen, "ago")));
    }

    search.addEventListener("input", () => {
      cancel(v, debounce);
      debounce = later(v, () => { debounce = 0; go({ ...state, search: search.value.trim(), skip: 0 }); }, 250);
    });
    tagSel.addEventListener("change", () => go({ ...state, tag: tagSel.value, skip: 0 }));
    prev.addEventListener("click", () => go({ ...state, skip: Math.max(0, state.skip - PAGE) }));
    nextBtn.addEventListener("click", () => go({ ...state, skip: state.skip + PAGE }));
    v.update = (p) => {
      state = fromParams(p);
      if (!debounce && search.value.trim() !== state.search) search.value = state.search; // back/forward
      ensureTagOption(state.tag);
      load();
    };
    // Live connects/disconnects flip the status badge of a visible row.
    v.onEvent = (ev) => {
      if ((ev.kind !== "connected" && ev.kind !== "disconnected") || !ev.deviceGuid) return;
      for (const tr of tbody.rows) {
        if (sameGuid(tr.dataset.guid, ev.deviceGuid)) tr.querySelector(".status").replaceChildren(badge(ev.kind === "connected"));
      }
    };

    api("GET", "/api/v1/devices/tags", undefined, { signal: v.signal }).then((tags) => {
      if (v.signal.aborted || !Array.isArray(tags)) return;
      const known = new Set([...tagSel.options].map((o) => o.value));
      [...tags].map(String).sort((a, b) => a.localeCompare(b)).forEach((t) => { if (!known.has(t)) tagSel.append(el("option", { value: t }, t)); });
      tagSel.value = state.tag;
    }, () => { /* the tag list is a convenience; the filter still works from the URL */ });
    v.update(params);
  }

  // ---------- device page ----------
  function renderDevice(v, guid, root) {
    const g = encodeURIComponent(guid);
    const title = el("h1", { id: "device-title" }, "Device");
    const err = el("p", { id: "device-error", class: "error", role: "alert", hidden: true });
    const summary = el("div", {}, el("p", { class: "muted" }, "Loading device…"));
    const amtArea = el("div", { class: "amt-area" });
    const evStatus = el("p", { class: "muted" }, "Loading…");
    const evList = el("ul", { id: "device-events", class: "events" });
    root.append(el("section", { id: "device", "aria-labelledby": "device-title" },
      el("p", { class: "crumbs" }, el("a", { href: "#/devices" }, "← All devices")),
      title, err, summary, amtArea,
      el("section", { class: "card", "aria-labelledby": "dev-ev-title" },
        el("h2", { id: "dev-ev-title" }, "Homeport events"), evStatus, evList)));

    let device = null, amtShown = null, reloadPower = null;
    const nextAmt = slot(v);
    const label = () => (device && (device.friendlyName || device.hostname)) || guid;

    async function loadDevice() {
      try {
        const d = await api("GET", "/api/v1/devices/" + g, undefined, { signal: v.signal });
        if (v.signal.aborted) return;
        device = d || {};
        err.hidden = true;
        showSummary(device);
        if (amtShown !== (device.connectionStatus === true)) buildAmt(device.connectionStatus === true);
      } catch (e) {
        if (isAbort(e) || v.signal.aborted) return;
        err.textContent = e.status === 404 ? "Device not found" : "Could not load the device: " + e.message;
        err.hidden = false;
        if (!device) summary.replaceChildren();
      }
    }
    function showSummary(d) {
      title.textContent = label();
      const i = d.deviceInfo || null;
      const fw = i ? [i.fwVersion, i.fwBuild && `build ${i.fwBuild}`, i.fwSku && `SKU ${i.fwSku}`].filter(Boolean).join(", ") : "";
      summary.replaceChildren(facts([
        ["GUID", el("span", { class: "mono" }, d.guid || guid)],
        ["Status", badge(d.connectionStatus === true)],
        ["Node", d.mpsInstance],
        ["Hostname", [d.hostname, d.dnsSuffix].filter(Boolean).join(".")],
        ["Tags", tagList(d.tags)],
        ["Last connected", timeEl(d.lastConnected)],
        ["Last disconnected", timeEl(d.lastDisconnected)],
        ["Last seen", d.lastSeen ? [timeEl(d.lastSeen), " (", timeEl(d.lastSeen, "ago"), ")"] : null],
        ["Firmware", fw],
        ["Control mode", i && i.currentMode],
        ["IP address", i && i.ipAddress],
        ["Features", i && i.features],
      ], { id: "device-summary", class: "facts card" }));
    }
    function buildAmt(connected) {
      amtShown = connected;
      const signal = nextAmt(); // aborts the previous area's requests
      reloadPower = null;
      if (!connected) {
        amtArea.replaceChildren(el("p", { class: "notice", id: "amt-unavailable" }, "Device is not connected; AMT details are unavailable"));
        return;
      }
      const ctx = { v, g, signal, label };
      const power = powerSection(ctx);
      reloadPower = power.reload;
      const card = (id, heading, body) => el("section", { class: "card", "aria-labelledby": id }, el("h2", { id }, heading), body);
      amtArea.replaceChildren(el("div", { class: "grid" },
        power.node,
        card("amt-title", "Intel AMT", loader(signal, el("div", { id: "amt-version" }), `/api/v1/amt/version/${g}`, amtVersionView)),
        card("hw-title", "Hardware", loader(signal, el("div", { id: "hardware" }), `/api/v1/amt/hardwareInfo/${g}`, hardwareView)),
        card("feat-title", "Features", featuresSection(ctx)),
        card("alarms-title", "Alarms", loader(signal, el("div", { id: "alarms" }), `/api/v1/amt/alarmOccurrences/${g}`, alarmsView))),
        card("log-title", "AMT event log", loader(signal, el("div", { id: "event-log" }), `/api/v1/amt/log/event/${g}`, eventLogView)));
    }

    const ids = new Set();
    function addDeviceEvent(ev, atTop) {
      if (ev.id && ids.has(ev.id)) return;
      if (ev.id) ids.add(ev.id);
      const li = eventItem(ev, false);
      if (atTop) evList.prepend(li); else evList.append(li);
      while (evList.children.length > DEVICE_EVENTS_MAX) {
        ids.delete(evList.lastElementChild.dataset.id);
        evList.lastElementChild.remove();
      }
      evStatus.textContent = "";
    }
    api("GET", `/api/v1/events?device=${g}&$top=20&order=desc`, undefined, { signal: v.signal }).then((r) => {
      if (v.signal.aborted) return;
      toArray(r && r.data).forEach((ev) => addDeviceEvent(ev, false)); // after any live ones already shown
      evStatus.textContent = evList.children.length ? "" : "No events recorded for this device.";
    }, (e) => {
      if (isAbort(e) || v.signal.aborted) return;
      evStatus.className = "error";
      evStatus.textContent = "Could not load events: " + e.message;
    });

    const deviceSoon = throttle(v, loadDevice, 2000);
    const powerSoon = throttle(v, () => reloadPower && reloadPower(), 2000);
    v.onEvent = (ev) => {
      if (!sameGuid(ev.deviceGuid, guid)) return;
      addDeviceEvent(ev, true);
      if (ev.kind === "connected" || ev.kind === "disconnected") deviceSoon();
      else powerSoon();
    };
    loadDevice();
  }

  // Fills `box` from one GET; its own loading and error text, so one failure spares the rest.
  function loader(signal, box, path, render) {
    box.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    api("GET", path, undefined, { signal }).then((data) => {
      if (!signal.aborted) box.replaceChildren(render(data));
    }, (e) => {
      if (!isAbort(e) && !signal.aborted) box.replaceChildren(el("p", { class: "error" }, "Unavailable: " + e.message));
    });
    return box;
  }

  function powerSection({ v, g, signal, label }) {
    const state = el("strong", { id: "power-state" }, "Loading…");
    const sel = el("select", { id: "power-action", disabled: true }, el("option", { value: "" }, "Loading…"));
    const apply = el("button", { id: "power-apply", type: "button", disabled: true }, "Apply…");
    const result = el("p", { id: "power-result", role: "status" });
    const node = el("section", { class: "card", "aria-labelledby": "power-title" },
      el("h2", { id: "power-title" }, "Power"),
      el("p", {}, "State: ", state),
      el("div", { class: "inline" }, el("label", { for: "power-action" }, "Action"), sel, apply),
      result);

    async function reload() {
      try {
        const r = await api("GET", `/api/v1/amt/power/state/${g}`, undefined, { signal });
        if (signal.aborted) return;
        const code = Number(r && r.powerstate);
        state.textContent = POWER_STATES[code] || `State ${r && r.powerstate != null ? r.powerstate : "unknown"}`;
        state.className = "";
      } catch (e) {
        if (isAbort(e) || signal.aborted) return;
        state.textContent = "Unavailable: " + e.message;
        state.className = "error";
      }
    }
    api("GET", `/api/v1/amt/power/capabilities/${g}`, undefined, { signal }).then((caps) => {
      if (signal.aborted) return;
      const all = Object.entries(caps && typeof caps === "object" ? caps : {})
        .filter(([, c]) => c !== null && c !== "" && Number.isFinite(Number(c)))
        .map(([name, c]) => [name, Number(c)]).sort((a, b) => a[1] - b[1]);
      const opts = (list) => list.map(([name, c]) => el("option", { value: c, "data-name": name }, name));
      const power = all.filter(([, c]) => c < 100), boot = all.filter(([, c]) => c >= 100);
      sel.replaceChildren(...(all.length ? [
        power.length ? el("optgroup", { label: "Power actions" }, opts(power)) : null,
        boot.length ? el("optgroup", { label: "Boot options" }, opts(boot)) : null,
      ].filter(Boolean) : [el("option", { value: "" }, "No actions available")]));
      sel.disabled = apply.disabled = all.length === 0;
    }, (e) => {
      if (isAbort(e) || signal.aborted) return;
      sel.replaceChildren(el("option", { value: "" }, "Unavailable"));
      result.className = "error";
      result.textContent = "Power actions unavailable: " + e.message;
    });

    apply.addEventListener("click", async () => {
      const opt = sel.selectedOptions[0];
      if (!opt || opt.value === "") return;
      const code = Number(opt.value), name = opt.dataset.name || opt.textContent;
      const yes = await confirmDialog("Confirm power action", `${name} on ${label()} (${decodeURIComponent(g)})?`);
      if (!yes || signal.aborted) return;
      apply.focus();
      apply.disabled = true;
      result.className = "muted";
      result.textContent = `${name}: sending…`;
      try {
        // No abort signal: once sent, the action happens even if the user navigates away.
        const r = code < 100
          ? await api("POST", `/api/v1/amt/power/action/${g}`, { action: code })
          : await api("POST", `/api/v1/amt/power/bootOptions/${g}`, { action: code, useSOL: false });
        const b = (r && (r.Body || r.body)) || r || {};
        const rv = b.ReturnValue;
        result.className = rv == null || Number(rv) === 0 ? "ok" : "error";
        result.textContent = `${name}: ${b.ReturnValueStr || (rv == null ? "done" : Number(rv) === 0 ? "SUCCESS" : "return value " + rv)}`;
      } catch (e) {
        if (isAbort(e)) return;
        result.className = "error";
        result.textContent = `${name} failed: ${e.message}`;
      } finally {
        apply.disabled = false;
      }
      later(v, reload, 1000);
    });
    reload();
    return { node, reload };
  }

  function amtVersionView(r) {
    const items = toArray(r && r.CIM_SoftwareIdentity && r.CIM_SoftwareIdentity.responses);
    const find = (id) => { const x = items.find((i) => i.InstanceID === id); return x ? x.VersionString : null; };
    const setup = (r && r.AMT_SetupAndConfigurationService && r.AMT_SetupAndConfigurationService.response) || {};
    const pm = setup.ProvisioningMode;
    return facts([
      ["AMT version", find("AMT")],
      ["Build", find("Build Number")],
      ["SKU", find("Sku")],
      ["Control mode", { 1: "ACM", 4: "CCM" }[pm] || (pm != null ? `Mode ${pm}` : null)],
      ["Provisioning", { 0: "Pre-provisioning", 1: "In provisioning", 2: "Provisioned" }[setup.ProvisioningState]],
    ]);
  }

  function hardwareView(r) {
    const one = (k) => (r && r[k] && r[k].response && typeof r[k].response === "object" ? r[k].response : {});
    const many = (k) => toArray(r && r[k] && (r[k].responses || r[k].response));
    const chassis = one("CIM_Chassis"), bios = one("CIM_BIOSElement");
    const cpus = many("CIM_Processor"), mem = many("CIM_PhysicalMemory"), disks = many("CIM_MediaAccessDevice");
    const rd = bios.ReleaseDate && (bios.ReleaseDate.Datetime || bios.ReleaseDate);
    const rdDate = typeof rd === "string" ? new Date(rd) : null;
    const biosText = [bios.Manufacturer, bios.Version, rdDate && !isNaN(rdDate.getTime()) ? `(${rdDate.toLocaleDateString()})` : null].filter(Boolean).join(" ");
    const cpuName = cpus.map((c) => c.ElementName).find(Boolean);
    const mhz = cpus.map((c) => Number(c.MaxClockSpeed) || Number(c.CurrentClockSpeed)).find(Boolean);
    const memBytes = mem.reduce((s, m) => s + (Number(m.Capacity) || 0), 0);
    // CIM's MaxMediaSize is in kilobytes.
    const storage = disks.map((d) => (Number(d.MaxMediaSize) ? `${Math.round((Number(d.MaxMediaSize) * 1000) / 1e9)} GB` : d.DeviceID)).filter(Boolean).join(", ");
    return facts([
      ["Manufacturer", chassis.Manufacturer],
      ["Model", chassis.Model],
      ["Serial number", chassis.SerialNumber],
      ["BIOS", biosText],
      ["Processors", cpus.length ? `${cpus.length}${cpuName ? " × " + cpuName : ""}${mhz ? ` @ ${fmtNum(mhz)} MHz` : ""}` : null],
      ["Memory", memBytes ? `${Number((memBytes / 2 ** 30).toFixed(1))} GiB in ${mem.length} module${mem.length === 1 ? "" : "s"}` : null],
      ["Storage", storage],
      ["Platform GUID", one("CIM_ComputerSystemPackage").PlatformGUID],
    ]);
  }

  function featuresSection({ g, signal }) {
    const box = el("div", { id: "features" }, el("p", { class: "muted" }, "Loading…"));
    api("GET", `/api/v1/amt/features/${g}`, undefined, { signal }).then((f) => {
      if (signal.aborted) return;
      f = f || {};
      const check = (id, text, on) => el("div", { class: "check" }, el("input", { id, type: "checkbox", checked: !!on }), el("label", { for: id }, text));
      const consentNow = String(f.userConsent || "").toLowerCase();
      const consent = el("select", { id: "feat-consent" },
        [["none", "None"], ["kvm", "KVM only"], ["all", "All redirection"]].map(([val, text]) => el("option", { value: val, selected: consentNow === val }, text)));
      const save = el("button", { id: "feat-save", type: "submit" }, "Save");
      const out = el("p", { id: "feat-result", role: "status" });
      const form = el("form", { class: "features-form" },
        el("fieldset", {}, el("legend", {}, "Redirection"),
          check("feat-kvm", "KVM", f.KVM), check("feat-sol", "Serial over LAN", f.SOL), check("feat-ider", "IDE redirection", f.IDER)),
        el("div", { class: "field" }, el("label", { for: "feat-consent" }, "User consent"), consent),
        el("p", { class: "muted small" },
          `Redirection ${f.redirection ? "enabled" : "disabled"}; KVM ${f.kvmAvailable === false ? "not available" : "available"}` +
          (f.optInState != null ? `; opt-in state ${f.optInState}` : "")),
        save, out);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        save.disabled = true;
        out.className = "muted";
        out.textContent = "Saving…";
        try {
          const r = await api("POST", `/api/v1/amt/features/${g}`, {
            userConsent: consent.value,
            enableSOL: form.querySelector("#feat-sol").checked,
            enableIDER: form.querySelector("#feat-ider").checked,
            enableKVM: form.querySelector("#feat-kvm").checked,
          });
          out.className = "ok";
          out.textContent = (r && r.status) || "Saved";
        } catch (ex) {
          out.className = "error";
          out.textContent = "Save failed: " + ex.message;
        } finally {
          save.disabled = false;
        }
      });
      box.replaceChildren(form);
    }, (e) => {
      if (!isAbort(e) && !signal.aborted) box.replaceChildren(el("p", { class: "error" }, "Unavailable: " + e.message));
    });
    return box;
  }

  function eventLogView(r) {
    const ts = (x) => Date.parse(x.TimeStamp) || 0;
    const rows = toArray(r).sort((a, b) => ts(b) - ts(a)).slice(0, 50);
    if (!rows.length) return el("p", { class: "muted" }, "The AMT event log is empty.");
    return table({ class: "compact" }, ["Time", "Severity", "Source", "Description"], el("tbody", {}, rows.map((x) =>
      el("tr", {}, el("td", {}, timeEl(x.TimeStamp)), el("td", {}, SEVERITY[x.EventSeverity] || (x.EventSeverity != null ? String(x.EventSeverity) : "—")),
        el("td", {}, x.EntityStr || "—"), el("td", {}, x.Desc || x.Description || "—")))));
  }

  function alarmsView(r) {
    const list = toArray(r);
    if (!list.length) return el("p", { class: "muted" }, "No alarms are set.");
    return el("ul", { class: "plain" }, list.map((a) => {
      const interval = Number(a.InternalInMinutes ?? a.IntervalInMinutes) || 0;
      return el("li", {}, el("strong", {}, a.ElementName || a.InstanceID || "Alarm"), " — ",
        timeEl(a.StartTime && (a.StartTime.Datetime || a.StartTime)),
        interval ? `, every ${fmtNum(interval)} min` : ", once",
        a.DeleteOnCompletion ? " (deleted when done)" : "");
    }));
  }

  // ---------- stored events ----------
  function renderEvents(v, params, root) {
    const kinds = new Set(["connected", "disconnected"]);
    const kind = el("input", { id: "event-kind", type: "text", list: "event-kinds", autocomplete: "off", placeholder: "any kind" });
    const dev = el("input", { id: "event-device", type: "text", autocomplete: "off", spellcheck: "false", placeholder: "any device GUID" });
    const datalist = el("datalist", { id: "event-kinds" });
    const older = el("button", { id: "older", type: "button", disabled: true }, "Older");
    const fresh = el("button", { id: "events-new", type: "button", class: "link", hidden: true });
    const status = el("p", { class: "muted", role: "status" });
    const tbody = el("tbody");
    const tbl = table({ id: "event-table" }, ["Time", "Kind", "Device", "Summary", "Actor"], tbody);
    root.append(el("section", { id: "events", "aria-labelledby": "events-title" },
      el("h1", { id: "events-title" }, "Events"),
      el("form", { class: "toolbar", role: "search", onsubmit: (e) => { e.preventDefault(); go(); } },
        el("div", { class: "field" }, el("label", { for: "event-kind" }, "Kind"), kind, datalist),
        el("div", { class: "field" }, el("label", { for: "event-device" }, "Device"), dev),
        el("button", { id: "event-apply", type: "submit" }, "Filter")),
      fresh, tbl, status, el("div", { class: "pager" }, older)));

    let state = { kind: "", device: "" }, cursor = null, newCount = 0;
    const next = slot(v);
    function noteKind(k) {
      if (!k || kinds.has(k) || kinds.size >= 50) return;
      kinds.add(k);
      datalist.replaceChildren(...[...kinds].sort().map((x) => el("option", { value: x })));
    }
    [...kinds].forEach((k) => datalist.append(el("option", { value: k })));
    function go() {
      const q = new URLSearchParams();
      if (kind.value.trim()) q.set("kind", kind.value.trim());
      if (dev.value.trim()) q.set("device", dev.value.trim());
      const qs = q.toString();
      navigate("#/events" + (qs ? "?" + qs : ""), reload);
    }
    function reload() {
      tbody.replaceChildren();
      cursor = null;
      newCount = 0;
      fresh.hidden = true;
      load();
    }
    async function load() {
      const signal = next();
      older.disabled = true;
      status.className = "muted";
      status.textContent = "Loading…";
      const q = ["$top=50", "order=desc"];
      if (state.kind) q.push("kind=" + encodeURIComponent(state.kind));
      if (state.device) q.push("device=" + encodeURIComponent(state.device));
      if (cursor) q.push("before=" + encodeURIComponent(cursor));
      try {
        const r = await api("GET", "/api/v1/events?" + q.join("&"), undefined, { signal });
        if (signal.aborted) return;
        const list = toArray(r && r.data);
        tbody.append(...list.map((ev) => {
          noteKind(ev.kind);
          return el("tr", { "data-kind": ev.kind || "", "data-guid": ev.deviceGuid || "" },
            el("td", {}, timeEl(ev.time)), el("td", {}, el("span", { class: "kind" }, ev.kind || "—")),
            el("td", {}, ev.deviceGuid ? el("a", { class: "mono", href: devHref(ev.deviceGuid) }, ev.deviceGuid) : "—"),
            el("td", {}, ev.summary || ev.subject || ""), el("td", {}, ev.actor || ev.source || ""));
        }));
        cursor = (r && r.next) || null;
        const full = tbody.rows.length >= EVENT_ROWS_MAX;
        older.disabled = !cursor || full;
        status.textContent = !tbody.rows.length ? "No events match." : full && cursor ? `Showing the newest ${fmtNum(tbody.rows.length)}; narrow the filters to see older events.` : cursor ? "" : "No older events.";
      } catch (e) {
        if (isAbort(e) || signal.aborted) return;
        status.className = "error";
        status.textContent = "Could not load events: " + e.message;
        older.disabled = !cursor;
      }
    }
    older.addEventListener("click", load);
    fresh.addEventListener("click", reload);
    v.update = (p) => {
      state = { kind: p.get("kind") || "", device: p.get("device") || "" };
      kind.value = state.kind;
      dev.value = state.device;
      reload();
    };
    // The trail is a snapshot; rather than grow it, offer to reload when matching events arrive.
    v.onEvent = (ev) => {
      noteKind(ev.kind);
      if (state.kind && !state.kind.split(",").some((k) => k.trim().toLowerCase() === String(ev.kind).toLowerCase())) return;
      if (state.device && !sameGuid(state.device, ev.deviceGuid)) return;
      newCount++;
      fresh.textContent = `${fmtNum(newCount)} new event${newCount === 1 ? "" : "s"} — show`;
      fresh.hidden = false;
    };
    v.update(params);
  }

  // ---------- boot ----------
  function init() {
    $("signin-form").addEventListener("submit", onSignin);
    $("signout").addEventListener("click", () => {
      history.replaceState(null, "", location.pathname + location.search); // next sign-in starts at the overview
      signOut("");
    });
    $("confirm-yes").addEventListener("click", () => $("confirm").close("yes"));
    $("confirm-no").addEventListener("click", () => $("confirm").close("no"));
    // A plain #view link would be taken by the router; move focus instead.
    $("skip").addEventListener("click", (e) => { e.preventDefault(); $("view").focus(); });
    window.addEventListener("hashchange", route);
    if (token) start();
    else showSignin("");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
