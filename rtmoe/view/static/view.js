// rtmoe view: the live page. No dependencies: EventSource for the data, canvas for drawing.
//
// The server (rtmoe/view/server.py) forwards the runtime's ZeroMQ messages unchanged as
// Server-Sent Events: "snapshot" (recent decodes and the newest status, on every
// (re)connection), "decode", "status", and "view" (the server's own counters). Fields are
// those of docs/protocol.md; a field this page does not know is still listed in the
// status table. What is shown is also written into data attributes of #live (seq,
// probabilities, state, ...) so that a test can read it back from the DOM.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const HOLD = params.get("hold"); // test hook: delays the page's load event (server.py)
  const REPORT = params.get("report") === "1"; // test hook: post what is shown...
  const REPORT_MS = Number(params.get("report_ms")) || 200; // ... this often
  const DRAW_MS = 90; // about 11 redraws a second (decodes come at 10 Hz)
  const HEARTBEAT_LOST_S = 3; // protocol.md: no status for 3 s means the runtime is gone
  const LATENCY_KEEP = 600; // decodes in the latency histogram (1 min at 10 Hz)
  const COLORS = ["#58a6ff", "#f78166", "#3fb950", "#d2a8ff", "#e3b341", "#39c5cf",
                  "#ff7eb6", "#a5d6ff", "#ffa657", "#7ee787"];
  const $ = (id) => document.getElementById(id);
  // Only touch the DOM when the text changes (each change costs a layout and a paint).
  const setText = (el, text) => { if (el.textContent !== text) el.textContent = text; };
  const live = $("live");

  if (HOLD) {
    const img = document.createElement("img");
    img.hidden = true;
    img.alt = "";
    img.src = "/hold?name=" + encodeURIComponent(HOLD);
    document.body.appendChild(img);
  }

  const S = {
    historyS: 30,
    t: [], probs: [], gates: [], // per decode, oldest first
    labels: [], gateNames: [],
    latency: [], compute: [],
    last: null, // newest decode
    status: null, statusAt: 0, // newest status and performance.now() at receipt
    view: null,
    clockLsl: null, clockAt: 0, // newest LSL time seen and performance.now() then
    liveUpdates: 0, firstLiveSeq: null, draws: 0, points: 0,
    states: [], stateChangedMs: null, shownState: null,
    connected: false, dirty: true,
    // signal preview (protocol 1.3): per column its LSL time and one value per channel
    pv: { t: [], cols: [], names: [], last: null },
    markers: [], // cues of the experiment's marker stream (rtmoe view --markers): {t, label}
  };
  const TRACE_SPAN_S = 10;

  function reset() {
    S.t = []; S.probs = []; S.gates = []; S.latency = []; S.compute = [];
    S.last = null; S.clockLsl = null; S.dirty = true;
    S.pv = { t: [], cols: [], names: [], last: null };
    S.markers = [];
  }

  function addMarker(m) {
    S.markers.push({ t: m.lsl_s, label: m.label });
    const oldest = m.lsl_s - S.historyS - 2;
    while (S.markers.length && S.markers[0].t < oldest) S.markers.shift();
    live.dataset.lastMarker = m.label;
    live.dataset.markers = String(S.markers.length);
    S.dirty = true;
  }

  // Cues as dashed vertical lines with their label, on a chart whose x maps LSL time.
  function drawMarkers(ctx, X, t0, t1, top, bottom) {
    let n = 0;
    ctx.save();
    ctx.setLineDash([4, 3]);
    ctx.strokeStyle = "#e3b341";
    ctx.fillStyle = "#e3b341";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    for (const m of S.markers) {
      if (m.t < t0 || m.t > t1) continue;
      const x = X(m.t);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
      ctx.fillText(m.label, x + 3, top);
      n++;
    }
    ctx.restore();
    return n;
  }

  function addPreview(p) {
    const pv = S.pv;
    if (p.ch_names.join("\u0000") !== pv.names.join("\u0000")
        || (pv.t.length && p.last_lsl_s < pv.t[pv.t.length - 1])) {
      S.pv = { t: [], cols: [], names: p.ch_names.slice(), last: null };
    }
    const q = S.pv;
    const n = p.data_uv.length ? p.data_uv[0].length : 0;
    for (let j = 0; j < n; j++) {
      q.t.push(p.last_lsl_s - (n - 1 - j) / p.sfreq);
      q.cols.push(p.data_uv.map((row) => row[j]));
    }
    const oldest = p.last_lsl_s - TRACE_SPAN_S - 2;
    let cut = 0;
    while (cut < q.t.length && q.t[cut] < oldest) cut++;
    if (cut) { q.t.splice(0, cut); q.cols.splice(0, cut); }
    q.last = p;
    seeLsl(p.last_lsl_s);
    S.dirty = true;
  }

  function seeLsl(t) {
    if (typeof t === "number" && (S.clockLsl === null || t >= S.clockLsl)) {
      S.clockLsl = t;
      S.clockAt = performance.now();
    }
  }

  function nowLsl() {
    if (S.clockLsl === null) return null;
    // between messages the axis keeps moving, for at most 1.5 s (then it stops: no data)
    return S.clockLsl + Math.min((performance.now() - S.clockAt) / 1000, 1.5);
  }

  function addDecode(d, isLive) {
    if (S.last && d.seq <= S.last.seq) reset(); // a restarted runtime
    if (d.labels.join("\u0000") !== S.labels.join("\u0000")) {
      S.labels = d.labels.slice(); reset(); legend("probs-legend", S.labels);
    }
    const gateNames = Object.keys(d.gates || {});
    if (gateNames.join("\u0000") !== S.gateNames.join("\u0000")) {
      S.gateNames = gateNames; legend("gates-legend", gateNames);
    }
    S.t.push(d.window_last_lsl_s);
    S.probs.push(d.probabilities);
    S.gates.push(S.gateNames.map((k) => d.gates[k]));
    S.latency.push(d.latency_ms);
    S.compute.push(d.compute_ms);
    if (S.latency.length > LATENCY_KEEP) { S.latency.shift(); S.compute.shift(); }
    const oldest = d.window_last_lsl_s - S.historyS - 2;
    let cut = 0;
    while (cut < S.t.length && S.t[cut] < oldest) cut++;
    if (cut) { S.t.splice(0, cut); S.probs.splice(0, cut); S.gates.splice(0, cut); }
    S.last = d;
    seeLsl(d.window_last_lsl_s);
    if (isLive) {
      S.liveUpdates++;
      if (S.firstLiveSeq === null) S.firstLiveSeq = d.seq;
    }
    S.dirty = true;
  }

  function setStatus(st) {
    S.status = st;
    S.statusAt = performance.now();
    seeLsl(st.published_lsl_s);
    S.dirty = true;
    renderStatus();
  }

  // -- event stream ---------------------------------------------------------------------
  const es = new EventSource("/events");
  es.onopen = () => { S.connected = true; S.dirty = true; };
  es.onerror = () => { S.connected = false; S.dirty = true; };
  es.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    reset();
    if (snap.view) setView(snap.view);
    for (const d of snap.decodes) addDecode(d, false);
    for (const p of snap.previews || []) addPreview(p);
    for (const m of snap.markers || []) addMarker(m);
    if (snap.status) setStatus(snap.status);
  });
  es.addEventListener("decode", (e) => addDecode(JSON.parse(e.data), true));
  es.addEventListener("status", (e) => setStatus(JSON.parse(e.data)));
  es.addEventListener("preview", (e) => addPreview(JSON.parse(e.data)));
  es.addEventListener("marker", (e) => addMarker(JSON.parse(e.data)));
  es.addEventListener("view", (e) => setView(JSON.parse(e.data)));

  function setView(v) {
    S.view = v;
    if (v.history_s && v.history_s !== S.historyS) {
      S.historyS = v.history_s;
      for (const el of document.querySelectorAll(".history-s")) el.textContent = String(v.history_s);
    }
    S.dirty = true;
  }

  // -- drawing --------------------------------------------------------------------------
  function legend(id, names) {
    const box = $(id);
    box.textContent = "";
    names.forEach((name, i) => {
      const span = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = COLORS[i % COLORS.length];
      span.append(sw, name);
      box.append(span);
    });
  }

  function ctx2d(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return { ctx, w: w / dpr, h: h / dpr };
  }

  const PAD = { l: 42, r: 14, t: 8, b: 18 };

  function axes(ctx, w, h, y0, y1, yFmt, t1) {
    ctx.strokeStyle = "#2a3540";
    ctx.fillStyle = "#8b98a5";
    ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let k = 0; k <= 4; k++) {
      const v = y0 + ((y1 - y0) * k) / 4;
      const y = PAD.t + (h - PAD.t - PAD.b) * (1 - k / 4);
      ctx.beginPath(); ctx.moveTo(PAD.l, y); ctx.lineTo(w - PAD.r, y); ctx.stroke();
      ctx.fillText(yFmt(v), PAD.l - 4, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const span = S.historyS;
    const step = span > 20 ? 10 : span > 8 ? 5 : span > 3 ? 2 : 1;
    for (let s = 0; s <= span + 1e-9; s += step) {
      const x = PAD.l + (w - PAD.l - PAD.r) * (1 - s / span);
      ctx.textAlign = s === 0 ? "right" : s + step > span + 1e-9 ? "left" : "center";
      ctx.fillText(s === 0 ? "now" : `-${s} s`, s === 0 ? w - PAD.r : x, h - PAD.b + 3);
    }
    return t1;
  }

  // One line per series; a hole longer than 1 s (a stall, a restart) breaks the line.
  function drawSeries(canvas, rows, n, y0, y1, yFmt, withMarkers = false) {
    const { ctx, w, h } = ctx2d(canvas);
    const t1 = nowLsl();
    axes(ctx, w, h, y0, y1, yFmt, t1);
    if (t1 === null || !S.t.length) return 0;
    const t0 = t1 - S.historyS;
    const X = (t) => PAD.l + ((t - t0) / S.historyS) * (w - PAD.l - PAD.r);
    const Y = (v) => PAD.t + (1 - (v - y0) / (y1 - y0)) * (h - PAD.t - PAD.b);
    let start = 0;
    while (start < S.t.length && S.t[start] < t0) start++;
    let points = 0;
    ctx.lineWidth = 1.6;
    ctx.save();
    ctx.beginPath(); ctx.rect(PAD.l, 0, w - PAD.l - PAD.r, h); ctx.clip();
    for (let k = 0; k < n; k++) {
      ctx.strokeStyle = COLORS[k % COLORS.length];
      ctx.beginPath();
      let prev = null;
      for (let i = Math.max(0, start - 1); i < S.t.length; i++) {
        const v = rows[i][k];
        if (typeof v !== "number") { prev = null; continue; }
        const x = X(S.t[i]), y = Y(v);
        if (prev === null || S.t[i] - prev > 1.0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
        prev = S.t[i];
        points++;
      }
      ctx.stroke();
    }
    ctx.restore();
    if (withMarkers) {
      live.dataset.markersDrawn = String(drawMarkers(ctx, X, t0, t1, PAD.t, h - PAD.b));
    }
    return points;
  }

  function quantile(sorted, q) {
    if (!sorted.length) return null;
    const pos = (sorted.length - 1) * q, lo = Math.floor(pos), hi = Math.ceil(pos);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
  }

  function niceMax(v) {
    const m = Math.pow(10, Math.floor(Math.log10(Math.max(v, 1e-3))));
    for (const f of [1, 2, 2.5, 5, 10]) if (f * m >= v) return f * m;
    return 10 * m;
  }

  function drawLatency() {
    const { ctx, w, h } = ctx2d($("latency"));
    const sorted = S.latency.slice().sort((a, b) => a - b);
    const p50 = quantile(sorted, 0.5), p99 = quantile(sorted, 0.99);
    const c50 = quantile(S.compute.slice().sort((a, b) => a - b), 0.5);
    const fmt = (v) => (v === null ? "–" : v.toFixed(1));
    setText($("p50"), fmt(p50));
    setText($("p99"), fmt(p99));
    setText($("compute"), fmt(c50));
    live.dataset.p50 = p50 === null ? "" : String(p50);
    live.dataset.p99 = p99 === null ? "" : String(p99);
    live.dataset.latencyCount = String(sorted.length);
    if (!sorted.length) return;
    const lo = Math.min(0, sorted[0]);
    const hi = niceMax(Math.max(10, sorted[sorted.length - 1], p99 * 1.25));
    const nBins = 30, counts = new Array(nBins).fill(0);
    for (const v of sorted) {
      counts[Math.min(nBins - 1, Math.max(0, Math.floor(((v - lo) / (hi - lo)) * nBins)))]++;
    }
    const top = Math.max(...counts);
    const pw = w - PAD.l - PAD.r, ph = h - PAD.t - PAD.b;
    ctx.fillStyle = "#58a6ff";
    counts.forEach((c, i) => {
      const bh = (c / top) * ph;
      ctx.fillRect(PAD.l + (i * pw) / nBins + 0.5, PAD.t + ph - bh, pw / nBins - 1, bh);
    });
    ctx.fillStyle = "#8b98a5";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "top";
    ctx.textAlign = "center";
    for (let k = 0; k <= 4; k++) {
      const v = lo + ((hi - lo) * k) / 4;
      ctx.fillText(`${+v.toFixed(1)}`, PAD.l + (pw * k) / 4, h - PAD.b + 3);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(String(top), PAD.l - 4, PAD.t);
    ctx.fillText("0", PAD.l - 4, PAD.t + ph);
    for (const [v, name, color] of [[p50, "p50", "#3fb950"], [p99, "p99", "#f78166"]]) {
      const x = PAD.l + ((v - lo) / (hi - lo)) * pw;
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(x, PAD.t); ctx.lineTo(x, PAD.t + ph); ctx.stroke();
      ctx.fillStyle = color;
      ctx.textAlign = "left";
      ctx.fillText(name, x + 3, PAD.t + 8 + (name === "p99" ? 12 : 0));
    }
  }

  function drawGates() {
    let lo = Infinity, hi = -Infinity;
    for (const row of S.gates) for (const v of row) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (!(hi >= lo)) { lo = 0; hi = 1; }
    const pad = Math.max((hi - lo) * 0.1, 0.01);
    lo = Math.max(0, lo - pad); hi = Math.min(1, hi + pad);
    if (hi - lo < 0.02) hi = Math.min(1, lo + 0.02);
    drawSeries($("gates"), S.gates, S.gateNames.length, lo, hi, (v) => v.toFixed(3));
  }

  // One lane per channel; flat, out-of-range and zero-filled channels named in red.
  function drawTraces() {
    const pv = S.pv, canvas = $("traces");
    const hint = $("trace-hint");
    const show = pv.last !== null;
    const display = show ? "none" : "block";
    if (hint.style.display !== display) hint.style.display = display;
    const height = show ? `${Math.max(90, 26 * pv.names.length + 24)}px` : "0px";
    if (canvas.style.height !== height) canvas.style.height = height;
    if (!show) return 0;
    const { ctx, w, h } = ctx2d(canvas);
    const left = 120, t1 = nowLsl(), span = TRACE_SPAN_S;
    const n = pv.names.length, lane = (h - PAD.t - PAD.b) / n;
    const X = (t) => left + ((t - (t1 - span)) / span) * (w - left - PAD.r);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.fillStyle = "#8b98a5";
    ctx.textAlign = "center";
    for (let s = 0; s <= span; s += 2) {
      ctx.textAlign = s === 0 ? "right" : s === span ? "left" : "center";
      ctx.fillText(s === 0 ? "now" : `-${s} s`, s === 0 ? w - PAD.r : X(t1 - s), h - PAD.b + 9);
    }
    const p = pv.last, flagged = [];
    // noisy: the rule of the calibration quality report (calibration/quality.py: SD above
    // NOISY_FACTOR = 5 times the median over channels, or above NOISY_UV = 200 µV)
    const sds = p.std_uv.slice().sort((a, b) => a - b);
    const medianSd = sds.length ? sds[Math.floor((sds.length - 1) / 2)] : 0;
    let points = 0;
    for (let c = 0; c < n; c++) {
      const y0 = PAD.t + lane * (c + 0.5);
      const noisy = p.std_uv[c] > 200 || (medianSd > 0 && p.std_uv[c] > 5 * medianSd);
      const flags = [["flat", p.flat[c]], ["noisy", noisy], ["range", p.out_of_range[c]],
        ["filled", p.filled[c]]].filter(([, on]) => on).map(([name]) => name);
      if (flags.length) flagged.push(`${pv.names[c]}:${flags.join("+")}`);
      ctx.textAlign = "left";
      ctx.fillStyle = flags.length ? "#ff7b72" : "#e6edf3";
      ctx.fillText(pv.names[c], 0, y0);
      ctx.fillStyle = flags.length ? "#ff7b72" : "#8b98a5";
      ctx.fillText(flags.length ? flags.join(" ") : `${p.std_uv[c].toFixed(1)} µV`, 56, y0);
      ctx.strokeStyle = "#2a3540";
      ctx.beginPath(); ctx.moveTo(left, y0); ctx.lineTo(w - PAD.r, y0); ctx.stroke();
      // each lane fitted to what it shows: centred on its mean, its extremes at the edges
      let first = 0;
      while (first < pv.t.length && pv.t[first] < t1 - span - 0.05) first++;
      let sum = 0, lo = Infinity, hi = -Infinity;
      for (let i = first; i < pv.t.length; i++) {
        const v = pv.cols[i][c];
        sum += v; if (v < lo) lo = v; if (v > hi) hi = v;
      }
      const mean = sum / Math.max(1, pv.t.length - first);
      const k = (0.45 * lane) / Math.max(hi - mean, mean - lo, 1);
      ctx.strokeStyle = flags.length ? "#ff7b72" : COLORS[0];
      ctx.beginPath();
      let prev = null;
      for (let i = first; i < pv.t.length; i++) {
        const x = X(pv.t[i]);
        const y = y0 - (pv.cols[i][c] - mean) * k;
        if (prev === null || pv.t[i] - prev > 0.5) ctx.moveTo(x, y); else ctx.lineTo(x, y);
        prev = pv.t[i];
        points++;
      }
      ctx.stroke();
    }
    drawMarkers(ctx, X, t1 - span, t1, PAD.t, h - PAD.b);
    live.dataset.traceChannels = JSON.stringify(pv.names);
    live.dataset.flagged = JSON.stringify(flagged);
    live.dataset.previewSeq = String(p.seq);
    return points;
  }

  function pct(v) { return `${Math.round(v * 100)}%`; }

  function renderDecision() {
    const d = S.last;
    if (!d) return;
    const p = d.probabilities[d.labels.indexOf(d.label)];
    $("label").textContent = d.label;
    $("prob").textContent = `p = ${p.toFixed(2)}`;
    $("seq").textContent = `#${d.seq}`;
    const v = $("validity");
    if (d.valid === false) {
      v.textContent = `not valid: ${d.invalid_reason || "?"}`;
      v.className = "bad";
    } else { v.textContent = ""; v.className = ""; }
    live.dataset.seq = String(d.seq);
    live.dataset.label = d.label;
    live.dataset.labels = JSON.stringify(d.labels);
    live.dataset.probabilities = JSON.stringify(d.probabilities);
    live.dataset.gates = JSON.stringify(d.gates);
    live.dataset.latencyMs = String(d.latency_ms);
    live.dataset.valid = String(d.valid !== false);
  }

  function shownState() {
    if (!S.connected) return "OFFLINE";
    if (!S.status) return "CONNECTING";
    if ((performance.now() - S.statusAt) / 1000 > HEARTBEAT_LOST_S) return "GONE";
    return S.status.state;
  }

  function renderHeader() {
    const state = shownState();
    const el = $("state");
    setText(el, state);
    if (el.className !== state) el.className = state;
    el.title = state === "GONE" ? `no heartbeat for over ${HEARTBEAT_LOST_S} s` : "";
    if (state !== S.shownState) {
      S.shownState = state;
      S.states.push(state);
      if (S.states.length > 50) S.states.shift();
      S.stateChangedMs = Date.now();
      live.dataset.state = state;
      live.dataset.states = S.states.join(",");
      live.dataset.stateChangedMs = String(S.stateChangedMs);
    }
    const v = S.view;
    const link = $("link");
    if (!S.connected) setText(link, "view server unreachable (retrying)");
    else if (v) {
      const age = S.status ? Math.floor((performance.now() - S.statusAt) / 1000) : "–";
      setText(link, `${v.zmq_address} · last status < ${age + 1} s ago`
        + (v.bad_messages ? ` · ${v.bad_messages} refused (${v.last_error})` : ""));
    }
    const st = S.status;
    const box = $("errorbox");
    let problem = "";
    if (st && (st.error || st.error_detail)) problem = `${st.error || "error"}: ${st.error_detail || ""}`;
    else if (state === "GONE") {
      problem = `no status from ${v ? v.zmq_address : "the runtime"} for over `
        + `${HEARTBEAT_LOST_S} s: rtmoe stopped or is unreachable`;
    }
    setText(box, problem);
    const display = problem ? "block" : "none";
    if (box.style.display !== display) box.style.display = display;
  }

  const ORDER = ["state", "error", "error_detail", "sfreq", "sfreq_declared", "sfreq_clock",
    "sfreq_effective", "timestamp_jitter_ms", "lag_ms", "samples_received", "dropped_samples",
    "gaps", "continuity_resets", "nonfinite_values", "filled_channels", "disabled_plugins",
    "decodes", "invalid_decodes", "skipped_windows", "stale_windows", "refused_windows",
    "publish_drops", "latency_ms_mean", "latency_ms_max", "last_sample_lsl_s",
    "published_lsl_s", "uptime_s", "seq"];
  const SKIP = new Set(["type", "schema_version", "model_id", "subject_id", "rtmoe_version"]);
  const WARN_IF_NONZERO = new Set(["dropped_samples", "gaps", "continuity_resets",
    "nonfinite_values", "invalid_decodes", "skipped_windows", "stale_windows",
    "refused_windows", "publish_drops"]);

  function fmtValue(v) {
    if (v === null || v === undefined) return "–";
    if (Array.isArray(v)) return v.length ? v.join(", ") : "none";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(v > 1000 ? 3 : 2);
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function renderStatus() {
    const st = S.status;
    $("model").textContent = st.model_id;
    $("subject").textContent = st.subject_id === null ? "none" : st.subject_id;
    $("version").textContent = `${st.rtmoe_version} (schema ${st.schema_version})`;
    $("uptime").textContent = `${Math.round(st.uptime_s)} s`;
    const r = (v) => (typeof v === "number" ? v.toFixed(2) : "–");
    $("rate").textContent = `declared ${r(st.sfreq_declared)} · clock ${r(st.sfreq_clock)} · `
      + `seen ${r(st.sfreq_effective)} Hz (model ${r(st.sfreq)})`;
    $("skipped").textContent = fmtValue(st.skipped_windows);
    $("drops").textContent = fmtValue(st.publish_drops);
    $("holes").textContent = S.view ? fmtValue(S.view.seq_holes) : "–";
    const keys = ORDER.filter((k) => k in st)
      .concat(Object.keys(st).filter((k) => !ORDER.includes(k) && !SKIP.has(k)));
    const body = document.createElement("tbody");
    for (const k of keys) {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      const value = document.createElement("td");
      name.textContent = k;
      value.textContent = fmtValue(st[k]);
      if (WARN_IF_NONZERO.has(k) && st[k]) value.className = "warn";
      if ((k === "state" && st[k] !== "RUNNING") || (k === "error" && st[k])) value.className = "bad";
      if (k === "sfreq_clock" && typeof st.sfreq_declared === "number" && typeof st[k] === "number"
          && Math.abs(st[k] / st.sfreq_declared - 1) > 0.01) value.className = "bad";
      tr.append(name, value);
      body.append(tr);
    }
    $("status-table").replaceChildren(body);
    live.dataset.statusSeq = String(st.seq);
    live.dataset.statusState = st.state;
  }

  function draw() {
    if (document.hidden) return;
    renderHeader();
    // the time axes move with LSL time: redraw every tick while messages arrive
    const moving = S.clockLsl !== null && performance.now() - S.clockAt < 1600;
    if (!S.dirty && !moving) return;
    if (S.dirty) renderDecision();
    S.points = drawSeries($("probs"), S.probs, S.labels.length, 0, 1, pct, true);
    live.dataset.tracePoints = String(drawTraces());
    drawGates();
    if (S.dirty) drawLatency();
    S.dirty = false;
    S.draws++;
    live.dataset.draws = String(S.draws);
    live.dataset.points = String(S.points);
    live.dataset.liveUpdates = String(S.liveUpdates);
    live.dataset.firstLiveSeq = S.firstLiveSeq === null ? "" : String(S.firstLiveSeq);
  }

  setInterval(draw, DRAW_MS);
  draw();

  if (REPORT) {
    setInterval(() => {
      const name = params.get("name") || HOLD || "";
      const body = JSON.stringify(Object.assign({ name, reportMs: Date.now() }, live.dataset));
      fetch("/report", { method: "POST", body, headers: { "Content-Type": "application/json" } })
        .catch(() => {});
    }, REPORT_MS);
  }
})();
