// The Kalami Gateway playground: talks to /ws exactly as a phone app would (docs/protocol.md).
// No build step and no dependencies: an ES module the gateway serves as it is.

const MODE = document.querySelector('meta[name="kalami-mode"]').content; // "stub" or "http"
const el = (id) => document.getElementById(id);
const LOG_LINES = 300;
// Close codes after which reconnecting cannot help (docs/protocol.md, section 1).
const FINAL_CLOSES = new Set([4001, 4002, 4004, 4007, 4008]);
// The protocol version the page speaks, offered as a WebSocket subprotocol.
const PROTOCOL_VERSION = "kalami.v1";

const state = {
  ws: null,
  token: null,
  resumeToken: null,
  sessionOpen: false,
  phase: "idle", // idle, active, recording, processing
  wanted: false, // the user wants to be connected (reconnect after a drop)
  retries: 0,
  recorder: null,
  meter: null,
};

// --- what the user sees ----------------------------------------------------------------

function setStatus(text, kind) {
  const status = el("status");
  status.textContent = text;
  status.dataset.state = kind;
}

function showError(message) {
  const box = el("error");
  box.textContent = message;
  box.hidden = false;
  chat("error", message);
}

function clearError() {
  el("error").hidden = true;
}

function chat(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text;
  el("chat").append(item);
  item.scrollIntoView({ block: "nearest" });
}

function log(direction, text) {
  const shown = text.replace(/"(audio_base64|token)":"([^"]{24})[^"]*"/g, '"$1":"$2…"');
  const lines = el("log-lines");
  lines.textContent += `${new Date().toISOString().slice(11, 23)} ${direction} ${shown}\n`;
  const all = lines.textContent.split("\n");
  if (all.length > LOG_LINES) lines.textContent = all.slice(-LOG_LINES).join("\n");
}

function refreshControls() {
  const open = state.ws !== null && state.ws.readyState === WebSocket.OPEN;
  el("connect").disabled = state.ws !== null;
  el("disconnect").disabled = state.ws === null && !state.wanted;
  el("start-session").disabled = !open || state.sessionOpen;
  el("end-session").disabled = !open || !state.sessionOpen;
  const record = el("record");
  record.disabled = !open || !(state.phase === "active" || state.phase === "recording");
  const recording = state.recorder !== null;
  record.setAttribute("aria-pressed", String(recording));
  record.textContent = recording
    ? "Recording… release Space or click to stop"
    : state.phase === "processing"
      ? "The tutor is answering…"
      : "Hold Space or click to talk";
}

// --- the socket --------------------------------------------------------------------------

async function mintToken() {
  const sub = el("sub").value.trim() || "playground";
  const response = await fetch("/playground/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ sub }),
  });
  if (!response.ok) throw new Error(`could not get a development token (HTTP ${response.status})`);
  return (await response.json()).token;
}

async function obtainToken() {
  if (MODE === "stub") return mintToken();
  const pasted = el("token-input").value.trim();
  if (!pasted) throw new Error("Paste a token (a JWT from the backend) first.");
  return pasted;
}

function send(message) {
  if (state.ws === null || state.ws.readyState !== WebSocket.OPEN) return false;
  const text = JSON.stringify(message);
  state.ws.send(text);
  log("→", text);
  return true;
}

async function connect() {
  clearError();
  state.wanted = true;
  try {
    state.token = await obtainToken();
  } catch (error) {
    state.wanted = false;
    showError(error.message);
    return;
  }
  // Connecting again after a Disconnect carries the open session on, as a phone would.
  open(state.sessionOpen ? state.resumeToken : null);
}

function open(resume) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let url = `${scheme}://${location.host}/ws`;
  if (resume) url += `?resume=${encodeURIComponent(resume)}`;
  // The token goes in Sec-WebSocket-Protocol, never in the URL (URLs end up in proxy and
  // load-balancer access logs): a browser can set no other header on a WebSocket. The
  // gateway answers "kalami.v1", never the bearer entry, and a browser fails a handshake
  // answered with none of the protocols it offered: so both are offered (docs/protocol.md §1).
  let ws;
  try {
    ws = new WebSocket(url, [PROTOCOL_VERSION, `bearer.${state.token}`]);
  } catch (error) {
    // A SyntaxError: characters a subprotocol cannot hold, so no JWT (only letters, digits,
    // "-", "_" and "." are in one).
    state.wanted = false;
    setStatus("disconnected", "disconnected");
    showError(`That token cannot be sent: it is not a JWT (${error.message}).`);
    refreshControls();
    return;
  }
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  setStatus(resume ? "resuming…" : "connecting…", "connecting");
  refreshControls();
  ws.onopen = refreshControls;
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") return;
    log("←", event.data);
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      showError("The gateway sent a frame that is not JSON.");
      return;
    }
    handle(message.type, message.payload || {});
    refreshControls();
  };
  ws.onclose = (event) => closed(ws, event);
}

function disconnect() {
  state.wanted = false;
  stopRecording();
  if (state.ws !== null) state.ws.close(1000, "bye");
  setStatus("disconnected", "disconnected");
  refreshControls();
}

async function closed(ws, event) {
  if (state.ws !== ws) return;
  state.ws = null;
  abandonRecording();
  log("×", `closed ${event.code} ${event.reason || ""}`.trim());
  if (!state.wanted) {
    setStatus("disconnected", "disconnected");
    refreshControls();
    return;
  }
  if (FINAL_CLOSES.has(event.code)) {
    state.wanted = false;
    state.sessionOpen = false;
    state.phase = "idle";
    setStatus(`closed: ${event.code} ${event.reason}`, "closed");
    showError(`The gateway closed the connection: ${event.code} ${event.reason}`);
    refreshControls();
    return;
  }
  const delay = Math.min(250 * 2 ** state.retries, 8000);
  state.retries += 1;
  setStatus(`connection lost (${event.code}); reconnecting…`, "reconnecting");
  refreshControls();
  await new Promise((resolve) => setTimeout(resolve, delay));
  if (!state.wanted || state.ws !== null) return;
  if (event.code === 4003 && MODE === "stub") {
    try {
      state.token = await mintToken();
    } catch (error) {
      showError(error.message);
    }
  }
  open(state.sessionOpen ? state.resumeToken : null);
}

// --- what the gateway says ---------------------------------------------------------------

function handle(type, payload) {
  switch (type) {
    case "connected":
      state.resumeToken = payload.resumeToken;
      state.retries = 0;
      setStatus("connected", "connected");
      break;
    case "session_started":
      state.sessionOpen = true;
      state.phase = "active";
      chat("note", `Session ${payload.id} started (topic: ${payload.topic ?? "none"}).`);
      break;
    case "session_resumed":
      state.sessionOpen = true;
      state.phase = payload.state;
      setStatus("connected · session resumed", "connected");
      chat("note", `Session ${payload.id} resumed (${payload.state}).`);
      break;
    case "recording_started":
      state.phase = "recording";
      break;
    case "processing":
      state.phase = "processing";
      chat("note", "The tutor is listening…");
      break;
    case "transcription":
      el("transcript").textContent = payload.text;
      chat("learner", payload.text);
      break;
    case "response":
      state.phase = "active";
      el("reply").textContent = payload.text;
      chat("tutor", payload.text);
      showCorrections(payload.grammar_corrections || []);
      showVocabulary(payload.vocabulary_introduced || []);
      break;
    case "audio":
      playReply(payload);
      break;
    case "session_ended":
      state.sessionOpen = false;
      state.phase = "idle";
      chat("note", `Session ${payload.id} ended.`);
      break;
    case "error":
      if (state.phase === "processing") state.phase = state.sessionOpen ? "active" : "idle";
      if (state.recorder !== null) abandonRecording();
      if (state.phase === "recording") state.phase = "active";
      showError(payload.message);
      break;
    case "token_expiring":
      refreshToken();
      break;
    case "refreshed":
      chat("note", `Token refreshed (valid until ${new Date(payload.expiresAt * 1000).toLocaleTimeString()}).`);
      break;
    case "push":
      chat("note", `Push: ${JSON.stringify(payload)}`);
      break;
    default:
      break; // pong, heartbeat, audio_received: in the log only
  }
}

function showCorrections(corrections) {
  const list = el("corrections");
  list.replaceChildren();
  for (const fix of corrections) {
    const item = document.createElement("li");
    const wrong = document.createElement("del");
    wrong.textContent = fix.original;
    const right = document.createElement("ins");
    right.textContent = fix.corrected;
    const why = document.createElement("span");
    why.className = "why";
    why.textContent = fix.explanation;
    item.append(wrong, " → ", right, why);
    list.append(item);
  }
}

function showVocabulary(words) {
  const list = el("vocabulary");
  list.replaceChildren();
  for (const word of words) {
    const item = document.createElement("li");
    item.textContent = word;
    list.append(item);
  }
}

function playReply(payload) {
  const audio = el("reply-audio");
  audio.src = `data:audio/${payload.format === "mp3" ? "mpeg" : payload.format};base64,${payload.audio_base64}`;
  el("replay").disabled = false;
  audio.play().catch(() => {
    // A browser that has not seen a click may refuse to play: the controls still work.
  });
}

async function refreshToken() {
  let fresh = null;
  if (MODE === "stub") {
    try {
      fresh = await mintToken();
    } catch (error) {
      showError(error.message);
      return;
    }
  } else {
    const pasted = el("token-input").value.trim();
    if (pasted && pasted !== state.token) fresh = pasted;
    else {
      showError("Your token expires soon: paste a new one of the same user, then it is sent.");
      el("token-input").addEventListener("change", refreshToken, { once: true });
      return;
    }
  }
  state.token = fresh;
  send({ type: "refresh", payload: { token: fresh } });
}

// --- the microphone ----------------------------------------------------------------------

async function startRecording() {
  if (state.phase !== "active" || state.recorder !== null) return;
  clearError();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(`The microphone is not available: ${error.message}`);
    return;
  }
  const mimeType = "audio/webm;codecs=opus";
  const recorder = new MediaRecorder(stream, MediaRecorder.isTypeSupported(mimeType) ? { mimeType } : {});
  const ws = state.ws;
  recorder.ondataavailable = (event) => {
    if (event.data.size > 0 && ws.readyState === WebSocket.OPEN) ws.send(event.data);
  };
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    stopMeter();
    // The last timeslice has been handed to ondataavailable by now: the utterance is whole.
    if (!recorder.abandoned && state.ws === ws) send({ type: "stop_recording" });
  };
  if (!send({ type: "start_recording", payload: { format: "webm" } })) return;
  recorder.start(100);
  state.recorder = recorder;
  startMeter(stream);
  refreshControls();
}

function stopRecording() {
  const recorder = state.recorder;
  state.recorder = null;
  if (recorder !== null && recorder.state !== "inactive") recorder.stop();
  refreshControls();
}

function abandonRecording() {
  if (state.recorder !== null) state.recorder.abandoned = true;
  stopRecording();
}

function startMeter(stream) {
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  context.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const meter = { context, frame: 0 };
  const draw = () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    el("level").value = Math.min(1, Math.sqrt(sum / samples.length) * 4);
    meter.frame = requestAnimationFrame(draw);
  };
  draw();
  state.meter = meter;
}

function stopMeter() {
  if (state.meter === null) return;
  cancelAnimationFrame(state.meter.frame);
  state.meter.context.close();
  state.meter = null;
  el("level").value = 0;
}

function toggleRecording() {
  if (state.recorder !== null) stopRecording();
  else startRecording();
}

function isTextField(target) {
  return target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement;
}

// --- wiring ------------------------------------------------------------------------------

document.body.dataset.mode = MODE;
el("connect").addEventListener("click", connect);
el("disconnect").addEventListener("click", disconnect);
el("start-session").addEventListener("click", () => {
  const topic = el("topic").value.trim();
  send({ type: "start_session", payload: { profileId: el("profile").value.trim(), topic: topic || null } });
});
el("end-session").addEventListener("click", () => {
  abandonRecording();
  send({ type: "end_session" });
});
el("record").addEventListener("click", toggleRecording);
el("replay").addEventListener("click", () => {
  const audio = el("reply-audio");
  audio.currentTime = 0;
  audio.play().catch(() => {});
});
// Push to talk: Space held down records, released stops (outside text fields).
document.addEventListener("keydown", (event) => {
  if (event.code !== "Space" || isTextField(event.target)) return;
  event.preventDefault();
  if (!event.repeat && state.recorder === null) startRecording();
});
document.addEventListener("keyup", (event) => {
  if (event.code !== "Space" || isTextField(event.target)) return;
  event.preventDefault(); // a focused button would otherwise take the release as a click
  stopRecording();
});
refreshControls();
