// avaserve web page: plain JavaScript, no build step.
// Upload mode: POST the file to /v1/jobs, poll the job, then play the video with boxes, track
// ids and top actions drawn on a canvas in sync with playback, plus a per-person timeline.
// Live mode: camera (getUserMedia) or a local file drawn to a canvas, sent as JPEG frames over
// the WebSocket protocol in docs/api.md; annotations are drawn as they arrive.
"use strict";

const KEY_STORAGE = "avaserve.apiKey"; // sessionStorage: gone when the tab closes
// Colours per track id. The first is what the browser test looks for on the canvas.
const PALETTE = ["#ff00ff", "#00e5ff", "#ffd400", "#00ff6a", "#ff7a00", "#8c7bff", "#ff3b3b"];
const $ = (id) => document.getElementById(id);

function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }
function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}
function colourFor(trackId) { return PALETTE[(trackId - 1) % PALETTE.length]; }

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { const body = await response.json(); message = body.message || body.detail || message; } catch (_) { /* not JSON */ }
    throw new Error(typeof message === "string" ? message : JSON.stringify(message));
  }
  return response;
}

// ------------------------------------------------------------------ key + tabs
$("api-key").value = apiKey();
$("key-state").textContent = apiKey() ? "key set" : "";
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  $("key-state").textContent = apiKey() ? "key set" : "no key";
});
for (const [tab, pane] of [["tab-upload", "upload-pane"], ["tab-live", "live-pane"]]) {
  $(tab).addEventListener("click", () => {
    for (const t of ["tab-upload", "tab-live"]) $(t).classList.toggle("active", t === tab);
    $("upload-pane").hidden = pane !== "upload-pane";
    $("live-pane").hidden = pane !== "live-pane";
  });
}

// ------------------------------------------------------------------ drawing
// Records follow service/records.py: {time, track_id, box, box_norm, score, actions:[{id,name,score}]}.
function drawRecords(ctx, records, width, height) {
  ctx.clearRect(0, 0, width, height);
  const lineWidth = Math.max(3, Math.round(width / 200));
  ctx.font = Math.max(12, Math.round(width / 60)) + "px system-ui, sans-serif";
  ctx.textBaseline = "top";
  for (const r of records) {
    const [x1, y1, x2, y2] = r.box_norm;
    const x = x1 * width, y = y1 * height, w = (x2 - x1) * width, h = (y2 - y1) * height;
    const colour = colourFor(r.track_id);
    ctx.strokeStyle = colour;
    ctx.lineWidth = lineWidth;
    ctx.strokeRect(x, y, w, h);
    const lines = ["#" + r.track_id].concat(
      (r.actions || []).slice(0, 3).map((a) => a.name + " " + Math.round(a.score * 100) + "%"));
    const lh = parseInt(ctx.font, 10) + 3;
    const tw = Math.max(...lines.map((s) => ctx.measureText(s).width)) + 6;
    const ty = Math.max(0, y - lh * lines.length);
    const tx = Math.max(0, Math.min(x, width - tw)); // keep the label inside the frame
    ctx.fillStyle = "rgba(0,0,0,0.6)";
    ctx.fillRect(tx, ty, tw, lh * lines.length);
    ctx.fillStyle = colour;
    lines.forEach((s, i) => ctx.fillText(s, tx + 3, ty + i * lh + 1));
  }
}

// ------------------------------------------------------------------ upload mode
const video = $("video"), overlay = $("overlay");
let byTime = []; // [[time, records]] sorted by time
let currentJob = null;

function recordsAt(t) {
  // Annotations hold for the second around their keyframe: show the latest keyframe <= t + 0.5.
  let best = null;
  for (const entry of byTime) {
    if (entry[0] <= t + 0.5) best = entry; else break;
  }
  return best && t - best[0] <= 1.5 ? best[1] : [];
}

function redraw() {
  if (!video.videoWidth) return;
  if (overlay.width !== video.videoWidth) { overlay.width = video.videoWidth; overlay.height = video.videoHeight; }
  drawRecords(overlay.getContext("2d"), recordsAt(video.currentTime), overlay.width, overlay.height);
  overlay.dataset.drawnAt = String(video.currentTime);
}

function frameLoop() {
  // requestVideoFrameCallback fires once per presented frame (exact sync); timeupdate is the fallback.
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const tick = () => { redraw(); video.requestVideoFrameCallback(tick); };
    video.requestVideoFrameCallback(tick);
  }
  for (const ev of ["timeupdate", "seeked", "loadeddata", "pause"]) video.addEventListener(ev, redraw);
}
frameLoop();

function drawTimeline(records, duration) {
  const svg = $("timeline");
  const tracks = [...new Set(records.map((r) => r.track_id))].sort((a, b) => a - b);
  const rowH = 22, labelW = 50, width = svg.clientWidth || 900;
  const span = Math.max(duration || 0, ...records.map((r) => r.time + 1), 1);
  const scale = (width - labelW) / span;
  svg.setAttribute("height", String(Math.max(1, tracks.length) * rowH + 4));
  svg.innerHTML = "";
  const ns = "http://www.w3.org/2000/svg";
  tracks.forEach((tid, row) => {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", "4"); label.setAttribute("y", String(row * rowH + 15));
    label.textContent = "#" + tid;
    svg.appendChild(label);
    for (const r of records.filter((x) => x.track_id === tid)) {
      const top = (r.actions || [])[0];
      const rect = document.createElementNS(ns, "rect");
      rect.setAttribute("x", String(labelW + (r.time - 0.5) * scale));
      rect.setAttribute("y", String(row * rowH + 2));
      rect.setAttribute("width", String(Math.max(2, scale - 1)));
      rect.setAttribute("height", String(rowH - 4));
      rect.setAttribute("fill", colourFor(tid));
      rect.setAttribute("fill-opacity", String(top ? 0.25 + 0.75 * top.score : 0.2));
      const title = document.createElementNS(ns, "title");
      title.textContent = r.time.toFixed(0) + " s  #" + tid + "  " +
        (r.actions || []).slice(0, 3).map((a) => a.name + " " + Math.round(a.score * 100) + "%").join(", ");
      rect.appendChild(title);
      rect.addEventListener("click", () => { video.currentTime = r.time; });
      svg.appendChild(rect);
    }
  });
}

function setResults(records) {
  const groups = new Map();
  for (const r of records) {
    if (!groups.has(r.time)) groups.set(r.time, []);
    groups.get(r.time).push(r);
  }
  byTime = [...groups.entries()].sort((a, b) => a[0] - b[0]);
  drawTimeline(records, video.duration);
  redraw();
}

async function pollJob(jobId) {
  for (;;) {
    const job = await (await api("/v1/jobs/" + jobId)).json();
    $("progress").value = job.progress || 0;
    $("job-state").textContent = job.state + (job.error ? ": " + job.error : "");
    if (job.state === "done") return job;
    if (job.state === "failed" || job.state === "cancelled") throw new Error(job.error || job.state);
    await new Promise((resolve) => setTimeout(resolve, 700));
  }
}

async function download(link, path, name) {
  // Links need the key header, so fetch then hand the browser a blob URL.
  link.onclick = async (e) => {
    e.preventDefault();
    const blob = await (await api(path)).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob); a.download = name; a.click();
  };
}

$("upload-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("file").files[0];
  if (!file) { $("job-state").textContent = "choose a video file first"; return; }
  $("upload-btn").disabled = true;
  $("progress").hidden = false; $("progress").value = 0;
  byTime = []; redraw();
  video.src = URL.createObjectURL(file); // play the local copy: no second download
  try {
    $("job-state").textContent = "uploading…";
    const query = new URLSearchParams({ render: $("render").checked, name: file.name.slice(0, 200) });
    const response = await api("/v1/jobs?" + query, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    const job = await response.json();
    currentJob = job.id;
    document.body.dataset.jobId = job.id;
    const done = await pollJob(job.id);
    const records = await (await api("/v1/jobs/" + job.id + "/results?format=json")).json();
    setResults(records);
    document.body.dataset.results = String(records.length);
    $("downloads").hidden = false;
    download($("dl-json"), "/v1/jobs/" + job.id + "/results?format=json", "annotations.json");
    download($("dl-csv"), "/v1/jobs/" + job.id + "/results?format=csv", "annotations.csv");
    $("dl-video-wrap").hidden = !done.render;
    if (done.render) download($("dl-video"), "/v1/jobs/" + job.id + "/video", "annotated.mp4");
    $("job-state").textContent = "done: " + records.length + " annotations";
  } catch (err) {
    $("job-state").textContent = "error: " + err.message;
    document.body.dataset.error = err.message;
  } finally {
    $("upload-btn").disabled = false;
  }
});

// ------------------------------------------------------------------ live mode
const live = { ws: null, timer: null, stream: null, latest: [], sent: 0, received: 0 };
window.avaserveLive = live; // counters for tests and the curious
const liveVideo = $("live-video"), liveCanvas = $("live-canvas");
const grab = document.createElement("canvas"); // what is encoded and sent

function liveLog(text) {
  const log = $("live-log");
  log.textContent = (text + "\n" + log.textContent).slice(0, 4000);
}

function streamId() {
  // Same id across reconnects in this tab, so the server keeps this stream's feature bank.
  let id = sessionStorage.getItem("avaserve.streamId");
  if (!id) { id = "web-" + Math.random().toString(36).slice(2, 10); sessionStorage.setItem("avaserve.streamId", id); }
  return id;
}

function openSocket(fps) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // The key rides in the subprotocol list: browsers cannot set headers on a WebSocket, and a
  // query-string token would land in access logs.
  const protocols = ["avaserve.v1"];
  if (apiKey()) protocols.push("bearer." + apiKey());
  const ws = new WebSocket(scheme + "//" + location.host + "/v1/streams/" + streamId(), protocols);
  ws.binaryType = "arraybuffer";
  let opened = false;
  ws.onopen = () => {
    opened = true;
    ws.send(JSON.stringify({ type: "start", input: "jpeg", fps_hint: fps }));
    $("live-state").textContent = "streaming";
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "annotation") { live.latest = msg.records; live.received += 1; }
    else if (msg.type === "status") $("live-state").textContent =
      "lag " + (msg.lag_s ?? 0).toFixed(2) + " s, dropped " + (msg.dropped_keyframes ?? 0);
    else if (msg.type === "error") liveLog("error: " + msg.message);
  };
  ws.onclose = async (ev) => {
    stopLive(false);
    if (!opened) { liveLog(await refusalReason()); $("live-state").textContent = "refused"; return; }
    liveLog("closed " + ev.code + " " + (ev.reason || ""));
  };
  return ws;
}

async function refusalReason() {
  // A refused handshake's HTTP status (401, 403, 429...) is hidden from scripts: browsers only
  // report close code 1006. Ask the REST API with the same key to tell the commonest case apart.
  try {
    const response = await fetch("/v1/jobs", { headers: authHeaders() });
    if (response.status === 401) return "refused: missing or invalid API key; enter it above";
  } catch (_) {
    return "refused: the server cannot be reached";
  }
  return "refused by the server: Origin not allowed, too many open streams, or shutting down";
}

function sendFrame(source, pts) {
  const ws = live.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  // Skip a frame rather than queue it when the socket is backed up: the newest frame matters.
  if (ws.bufferedAmount > 2_000_000) return;
  const w = source.videoWidth, h = source.videoHeight;
  if (!w || !h) return;
  const scale = Math.min(1, 640 / Math.max(w, h));
  grab.width = Math.round(w * scale); grab.height = Math.round(h * scale);
  grab.getContext("2d").drawImage(source, 0, 0, grab.width, grab.height);
  grab.toBlob(async (blob) => {
    if (!blob || !live.ws) return;
    const jpeg = new Uint8Array(await blob.arrayBuffer());
    const message = new Uint8Array(8 + jpeg.length);
    new DataView(message.buffer).setFloat64(0, pts, true); // 8-byte little-endian pts prefix
    message.set(jpeg, 8);
    live.ws.send(message.buffer);
    live.sent += 1;
  }, "image/jpeg", 0.8);
}

function drawLive() {
  if (!live.stream && !live.fileMode) return;
  const w = liveVideo.videoWidth, h = liveVideo.videoHeight;
  if (w && h) {
    if (liveCanvas.width !== w) { liveCanvas.width = w; liveCanvas.height = h; }
    const ctx = liveCanvas.getContext("2d");
    ctx.drawImage(liveVideo, 0, 0, w, h);
    drawLiveOverlay(ctx, w, h);
  }
  requestAnimationFrame(drawLive);
}

function drawLiveOverlay(ctx, w, h) {
  // drawRecords clears first; draw onto an offscreen layer and composite over the frame.
  const layer = drawLiveOverlay.layer || (drawLiveOverlay.layer = document.createElement("canvas"));
  layer.width = w; layer.height = h;
  drawRecords(layer.getContext("2d"), live.latest, w, h);
  ctx.drawImage(layer, 0, 0);
}

async function startLive(kind) {
  stopLive(true);
  const fps = Math.max(1, Math.min(30, Number($("live-fps").value) || 10));
  try {
    if (kind === "camera") {
      live.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640 }, audio: false });
      liveVideo.srcObject = live.stream;
    } else {
      const file = $("live-file").files[0];
      if (!file) return;
      live.fileMode = true;
      liveVideo.srcObject = null;
      liveVideo.src = URL.createObjectURL(file);
    }
    await liveVideo.play();
  } catch (err) { liveLog("cannot start: " + err.message); return; }
  live.latest = []; live.sent = 0; live.received = 0;
  live.ws = openSocket(fps);
  const t0 = performance.now();
  live.timer = setInterval(() => {
    // A file sends its own media time, the camera the wall clock since start: both are
    // presentation times in seconds, increasing, as the protocol asks.
    const pts = live.fileMode ? liveVideo.currentTime : (performance.now() - t0) / 1000;
    sendFrame(liveVideo, pts);
    if (live.fileMode && liveVideo.ended) stopLive(true);
  }, 1000 / fps);
  $("live-stop").disabled = false;
  requestAnimationFrame(drawLive);
}

function stopLive(closeSocket) {
  if (live.timer) clearInterval(live.timer);
  live.timer = null;
  if (closeSocket && live.ws && live.ws.readyState === WebSocket.OPEN) {
    live.ws.send(JSON.stringify({ type: "end" }));
  }
  live.ws = closeSocket ? null : live.ws;
  if (live.stream) { live.stream.getTracks().forEach((t) => t.stop()); live.stream = null; }
  live.fileMode = false;
  $("live-stop").disabled = true;
}

$("live-camera").addEventListener("click", () => startLive("camera"));
$("live-file").addEventListener("change", () => startLive("file"));
$("live-stop").addEventListener("click", () => stopLive(true));
