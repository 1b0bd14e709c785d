// audiosocket-gw console: plain JS, no build step, no external resources.
// Auth: the API's bearer token, asked once and kept in sessionStorage (this tab only).
// Live updates: GET /v1/events (Server-Sent Events) read with fetch() streaming so the
// token goes in the Authorization header, never in a URL.
"use strict";
(function () {
  const KEY = "aigw-console-token";
  const FINAL = new Set(["completed", "busy", "failed", "no-answer", "canceled"]);
  const calls = new Map();       // id -> call JSON
  const live = new Set();        // ids with an AudioSocket leg up
  let token = sessionStorage.getItem(KEY) || "";
  let stream = null;             // AbortController of the event stream
  let current = null;            // id on the call page
  let transcriptTimer = null;
  const $ = (id) => document.getElementById(id);

  function headers() { return token ? { Authorization: "Bearer " + token } : {}; }

  class Unauthorized extends Error {}

  async function api(path) {
    const r = await fetch(path, { headers: headers(), cache: "no-store" });
    if (r.status === 401) throw new Unauthorized("unauthorized");
    if (r.status === 404) return null;
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  function show(section) {
    for (const s of ["login", "list", "call"]) $(s).hidden = s !== section;
  }

  function setConn(text, cls) { const c = $("conn"); c.textContent = text; c.className = cls || ""; }

  function needLogin(wrong) {
    if (stream) { stream.abort(); stream = null; }
    show("login");
    setConn("not signed in", "down");
    $("login-error").textContent = wrong ? "The gateway refused this token." : "";
    $("token").focus();
  }

  // -- formatting -------------------------------------------------------------------
  function fmtTime(t) {
    if (t == null) return "";
    const d = new Date(t * 1000);
    return d.toLocaleString(undefined, { hour12: false });
  }
  function fmtClock(t) {
    return t == null ? "" : new Date(t * 1000).toLocaleTimeString(undefined, { hour12: false });
  }
  function fmtDur(s) {
    if (s == null || !isFinite(s)) return "";
    s = Math.max(0, Math.round(s));
    const m = Math.floor(s / 60), r = s % 60;
    return m + ":" + String(r).padStart(2, "0");
  }
  function duration(c) {
    if (c.duration_s != null && FINAL.has(c.status)) return c.duration_s;
    if (c.answered_at != null && !FINAL.has(c.status)) return Date.now() / 1000 - c.answered_at;
    return c.duration_s;
  }
  function mask(n) {
    if (!n) return "";
    if ($("f-reveal").checked) return n;
    return n.length <= 4 ? "\u2022\u2022\u2022\u2022" : n.slice(0, 2) + "\u2022\u2022\u2022\u2022" + n.slice(-2);
  }
  function mos(v) { return v == null ? "" : Number(v).toFixed(2); }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }

  // -- the list ---------------------------------------------------------------------
  function matches(c) {
    const tenant = $("f-tenant").value, status = $("f-status").value;
    const since = Number($("f-since").value);
    if (tenant && c.tenant !== tenant) return false;
    if (status && c.status !== status) return false;
    if (since && c.created_at < Date.now() / 1000 - since) return false;
    return true;
  }

  function renderList() {
    const body = $("calls-body");
    const rows = [...calls.values()].filter(matches)
      .sort((a, b) => b.created_at - a.created_at);
    body.replaceChildren(...rows.map((c) => {
      const tr = el("tr", { "data-call-id": c.id, "data-status": c.status });
      const start = el("td");
      start.appendChild(el("a", { href: "#/call/" + c.id, "aria-label": "call of " + fmtTime(c.created_at) }, fmtTime(c.created_at)));
      tr.appendChild(start);
      const st = el("td", { class: "status status-" + c.status }, c.status + (live.has(c.id) ? " \u25CF" : ""));
      tr.appendChild(st);
      for (const v of [c.tenant, c.agent, c.direction, mask(c.from), mask(c.to)]) tr.appendChild(el("td", {}, v == null ? "" : v));
      tr.appendChild(el("td", { "data-duration": "" }, fmtDur(duration(c))));
      for (const v of [mos(c.quality && c.quality.mos_in_mean), mos(c.quality && c.quality.mos_out_mean)]) tr.appendChild(el("td", {}, v));
      return tr;
    }));
    $("empty").hidden = rows.length > 0;
    const sel = $("f-tenant"), have = new Set([...sel.options].map((o) => o.value));
    for (const c of calls.values()) if (!have.has(c.tenant)) { sel.appendChild(el("option", {}, c.tenant)); have.add(c.tenant); }
  }

  async function loadList() {
    const q = new URLSearchParams({ limit: "500" });
    const data = await api("/v1/calls?" + q);
    calls.clear();
    for (const c of data.calls) calls.set(c.id, c);
    renderList();
  }

  // -- live events (SSE over fetch) ------------------------------------------------
  function onEvent(kind, data) {
    if (kind === "call") {
      calls.set(data.id, Object.assign(calls.get(data.id) || {}, data));
      if (FINAL.has(data.status)) live.delete(data.id);
    } else if (kind === "live") {
      if (data.up) live.add(data.id); else live.delete(data.id);
      if (!data.up) setTimeout(() => refreshCall(data.id), 300);
    }
    renderList();
    if (current && data.id === current) renderCallPage(current, false);
  }

  async function refreshCall(id) {
    try { const c = await api("/v1/calls/" + id); if (c) { calls.set(id, c); renderList(); } } catch (e) { /* next event */ }
  }

  async function runStream() {
    const ctl = new AbortController();
    stream = ctl;
    try {
      const r = await fetch("/v1/events", { headers: headers(), signal: ctl.signal, cache: "no-store" });
      if (r.status === 401) { needLogin(true); return; }
      if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
      setConn("live", "up");
      await loadList();
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
          let kind = "message", data = "";
          for (const line of chunk.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          }
          if (!data) continue;
          if (kind === "dropped") throw new Error("dropped");
          onEvent(kind, JSON.parse(data));
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    if (stream !== ctl) return;
    setConn("reconnecting\u2026", "down");
    setTimeout(() => { if (stream === ctl) runStream(); }, 2000);
  }

  // -- the call page -------------------------------------------------------------------
  function facts(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v] of pairs) {
      if (v == null || v === "") continue;
      dl.appendChild(el("dt", {}, k));
      dl.appendChild(el("dd", {}, String(v)));
    }
  }

  async function renderCallPage(id, full) {
    const c = await api("/v1/calls/" + id);
    if (current !== id) return;
    if (!c) { $("call-title").textContent = "No such call"; return; }
    calls.set(id, Object.assign(calls.get(id) || {}, c));
    $("call-title").textContent = "Call " + id;
    facts($("call-facts"), [["Status", c.status], ["Tenant", c.tenant], ["Agent", c.agent],
      ["Direction", c.direction], ["From", mask(c.from)], ["To", mask(c.to)],
      ["Created", fmtTime(c.created_at)], ["Answered", fmtTime(c.answered_at)],
      ["Ended", fmtTime(c.ended_at)], ["Duration", fmtDur(duration(c))],
      ["Answered by", c.answered_by], ["Hang-up", c.hangup_reason || c.hangup_cause]]);
    const q = c.quality || {};
    facts($("quality"), [["MOS in (mean / min)", q.mos_in_mean == null ? "" : mos(q.mos_in_mean) + " / " + mos(q.mos_in_min) + (q.mos_in_source ? " (" + q.mos_in_source + ")" : "")],
      ["MOS out (mean / min)", q.mos_out_mean == null ? "" : mos(q.mos_out_mean) + " / " + mos(q.mos_out_min) + (q.mos_out_source ? " (" + q.mos_out_source + ")" : "")],
      ["Gateway loss", q.gateway_loss], ["Underruns", q.underruns]]);
    if (!$("quality").children.length) $("quality").appendChild(el("dd", {}, "No figures yet."));
    const tl = await api("/v1/console/calls/" + id + "/timeline");
    const ol = $("timeline");
    ol.replaceChildren();
    for (const ev of (tl ? tl.events : [])) {
      const li = el("li", { "data-kind": ev.kind });
      li.appendChild(el("time", { datetime: new Date(ev.at * 1000).toISOString() }, fmtClock(ev.at)));
      const d = ev.data || {};
      let text = ev.kind;
      if (ev.kind === "input") text = (d.changed ? (d.from || "") + " \u2192 " + (d.to || "") + " " : "") + "(" + d.input + ")";
      else if (ev.kind === "quality") text = "quality figures";
      else if (ev.kind === "barge_in") text = "barge-in (" + (d.source || "") + ")";
      else text = ev.kind.replace(/_/g, " ");
      li.appendChild(document.createTextNode(text));
      ol.appendChild(li);
    }
    await renderTranscript(id);
    if (full || !$("recording-audio")) await renderRecording(id);
  }

  async function renderTranscript(id) {
    const t = await api("/v1/calls/" + id + "/transcript");
    if (current !== id || !t) return;
    const ol = $("transcript");
    ol.replaceChildren(...t.lines.map((l) => {
      const li = el("li");
      li.appendChild(el("time", { datetime: new Date(l.at * 1000).toISOString() }, fmtClock(l.at)));
      li.appendChild(el("span", { class: "role" }, l.role));
      li.appendChild(document.createTextNode(l.text));
      return li;
    }));
    if (!t.lines.length) ol.appendChild(el("li", {}, "No transcript."));
    $("transcript-live").hidden = !t.live;
    clearTimeout(transcriptTimer);
    if (t.live) transcriptTimer = setTimeout(() => { if (current === id) renderTranscript(id).catch(() => {}); }, 2000);
  }

  async function renderRecording(id) {
    const box = $("recording");
    const rec = await api("/v1/calls/" + id + "/recording");
    if (current !== id) return;
    if (!rec) { box.replaceChildren(el("p", {}, "No recording.")); return; }
    const link = await api("/v1/console/calls/" + id + "/media-link");
    if (!link) return;
    const audio = el("audio", { id: "recording-audio", controls: "", preload: "metadata",
      src: link.url, "aria-label": "Recording of call " + id });
    const p = el("p", {}, "Recording (" + rec.status + ", " + fmtDur(rec.duration) + ", " + rec.channels + " channel(s)) ");
    const dl = el("a", { href: link.url, download: id + ".wav" }, "download");
    p.appendChild(dl);
    box.replaceChildren(audio, p);
  }

  // -- routing -------------------------------------------------------------------------
  async function route() {
    const m = location.hash.match(/^#\/call\/([0-9a-fA-F-]{36})$/);
    try {
      if (m) {
        current = m[1].toLowerCase();
        show("call");
        $("timeline").replaceChildren(); $("transcript").replaceChildren();
        $("recording").replaceChildren(el("p", {}, "Loading\u2026"));
        await renderCallPage(current, true);
        $("call-title").focus();
      } else {
        current = null; clearTimeout(transcriptTimer);
        show("list");
        renderList();
      }
    } catch (e) {
      if (e instanceof Unauthorized) needLogin(!!token); else setConn(String(e.message || e), "down");
    }
  }

  async function startSession() {
    try {
      await loadList();
    } catch (e) {
      if (e instanceof Unauthorized) { needLogin(!!token); return; }
      setConn("gateway unreachable", "down");
      return;
    }
    $("logout").hidden = !token;
    runStream();
    route();
  }

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(KEY, token);
    $("token").value = "";
    startSession();
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY); token = ""; needLogin(false); $("logout").hidden = true;
  });
  for (const id of ["f-tenant", "f-status", "f-since", "f-reveal"]) $(id).addEventListener("change", () => { renderList(); if (current) renderCallPage(current, false).catch(() => {}); });
  window.addEventListener("hashchange", route);
  $("call-title").tabIndex = -1;
  // Running durations tick in place (no re-render: focus and selection stay put).
  setInterval(() => {
    if (current) return;
    for (const td of document.querySelectorAll("#calls-body td[data-duration]")) {
      const c = calls.get(td.parentElement.dataset.callId);
      if (c && c.answered_at && !FINAL.has(c.status)) td.textContent = fmtDur(duration(c));
    }
  }, 1000);
  startSession();
})();
