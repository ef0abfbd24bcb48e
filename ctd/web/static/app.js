// ctd web console. Static: everything shown comes from the API at run time and is put on the
// page as text (textContent), never as HTML. The token lives in this tab's sessionStorage and
// goes to ctd only: as "Authorization: Bearer" on requests and as the WebSocket subprotocol
// "ctd.bearer.TOKEN" (beside "ctd.v1") on the console, exec and display streams. The buttons
// follow GET /1.0/whoami; the server still judges every request.

const TOKEN_KEY = "ctd.token";
const REFRESH_MS = 3000;
const BUILD_HINT = "The terminal and display need xterm.js and noVNC, copied into ctd at install time: " +
  "run scripts/build-web.sh on the ctd host (setup.sh does), then reload this page.";

const $ = (id) => document.getElementById(id);
const session = { token: sessionStorage.getItem(TOKEN_KEY), may: {}, timer: null, viewer: null };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const init = { method, cache: "no-store", headers: { "Authorization": "Bearer " + session.token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    // A network blip (the browser saw an interface change, Wi-Fi roaming): a read is safe to
    // ask again once; a change is not (it may have been done).
    if (method !== "GET") throw err;
    await new Promise((done) => setTimeout(done, 500));
    resp = await fetch(path, init);
  }
  let data = {};
  try { data = await resp.json(); } catch { /* an empty or non-JSON answer */ }
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || `${resp.status} ${resp.statusText}`);
  return data;
}

function instancePath(name, tail) {
  return "/1.0/instances/" + encodeURIComponent(name) + tail;
}

function wsUrl(path) {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
}

function wsProtocols() {
  return ["ctd.v1", "ctd.bearer." + session.token];
}

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function notice(message) { $("notice").textContent = message || ""; }

// ------------------------------------------------------------------ login

function showLogin(message) {
  stopRefresh();
  closeViewer();
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function login(token) {
  session.token = token;
  try {
    const me = await api("GET", "/1.0/whoami");
    sessionStorage.setItem(TOKEN_KEY, token);
    session.may = me.may || {};
    const id = me.identity || {};
    $("who").textContent = `${id.name} (${id.role}, project ${id.project})`;
    $("login").hidden = true;
    $("main").hidden = false;
    await refresh();
    session.timer = setInterval(refresh, REFRESH_MS);
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    session.token = null;
    if (err.status === 401) showLogin("That token was refused: it is wrong, expired or revoked.");
    else showLogin("Login failed: " + err.message);
  }
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  showLogin("");
}

function stopRefresh() {
  if (session.timer) clearInterval(session.timer);
  session.timer = null;
}

// ------------------------------------------------------------------ the list

function cpu(usage) {
  return usage && typeof usage.cpu_seconds === "number" ? usage.cpu_seconds.toFixed(1) + " s" : "";
}

function memory(usage) {
  if (!usage || typeof usage.memory_current !== "number") return "";
  return (usage.memory_current / 1048576).toFixed(1) + " MiB";
}

async function refresh() {
  let list;
  try {
    list = (await api("GET", "/1.0/instances")).instances || [];
  } catch (err) {
    if (err.status === 401) { showLogin("Your token is no longer accepted: log in again."); return; }
    notice("Could not list instances: " + err.message);
    return;
  }
  const body = $("instances").tBodies[0];
  body.replaceChildren(...list.map(row));
  $("empty").hidden = list.length > 0;
}

function row(inst) {
  const tr = el("tr", undefined, { "data-name": String(inst.name) });
  tr.append(el("td", inst.name, { class: "name" }), el("td", inst.type),
            el("td", inst.state, { class: "state state-" + String(inst.state).replace(/[^a-z]/g, "") }),
            el("td", cpu(inst.usage)), el("td", memory(inst.usage)), el("td", inst.description || ""));
  const actions = el("td", undefined, { class: "actions" });
  const running = inst.state === "running";
  const may = session.may;
  const add = (label, allowed, handler) => {
    if (!allowed) return;
    const b = el("button", label, { type: "button", "data-action": label.toLowerCase() });
    b.addEventListener("click", () => handler(inst, b));
    actions.append(b);
  };
  add("Start", !running && may.start, (i, b) => changeState(i, "start", b));
  add("Stop", running && may.stop, (i, b) => changeState(i, "stop", b));
  add("Restart", running && may.restart, (i, b) => changeState(i, "restart", b));
  add("Console", running && may.console, (i) => openTerminal(i, "console"));
  add("Shell", running && inst.type === "container" && may.exec, (i) => openTerminal(i, "exec"));
  add("Display", running && inst.type === "vm" && may.display, (i) => openDisplay(i));
  tr.append(actions);
  return tr;
}

async function changeState(inst, action, button) {
  button.disabled = true;
  notice("");
  try {
    const answer = await api("PUT", instancePath(inst.name, "/state"), { action });
    const op = answer.operation;
    if (op && op.status !== "success" && op.id) {
      const done = (await api("GET", "/1.0/operations/" + encodeURIComponent(op.id) + "/wait")).operation;
      if (done && done.status !== "success") notice(`${action} ${inst.name}: ${done.error || done.status}`);
    }
  } catch (err) {
    notice(`${action} ${inst.name}: ${err.message}`);
  }
  await refresh();
}

// ------------------------------------------------------------------ console, exec, display

function closeViewer() {
  if (session.viewer) session.viewer();
  session.viewer = null;
  $("screen").replaceChildren();
  delete $("screen").dataset.state;
  $("viewer").hidden = true;
}

function openViewer(title) {
  closeViewer();
  $("viewer-title").textContent = title;
  $("viewer").hidden = false;
  return $("screen");
}

// xterm.js writes its measured sizes and colours into <style> elements, which this page's
// Content-Security-Policy (no inline style) refuses; copy them into a constructed stylesheet.
function adoptStyles(root) {
  const sheet = new CSSStyleSheet();
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  const sync = () => sheet.replaceSync([...root.querySelectorAll("style")].map((s) => s.textContent).join("\n"));
  sync();
  const observer = new MutationObserver(sync);
  observer.observe(root, { subtree: true, childList: true, characterData: true });
  return () => {
    observer.disconnect();
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
  };
}

async function loadXterm() {
  try {
    const [{ Terminal }, { FitAddon }] = await Promise.all([
      import("./vendor/xterm/xterm.mjs"), import("./vendor/xterm/addon-fit.mjs")]);
    return { Terminal, FitAddon };
  } catch {
    notice(BUILD_HINT);
    return null;
  }
}

async function openTerminal(inst, kind) {
  const lib = await loadXterm();
  if (!lib) return;
  const screen = openViewer(`${kind === "exec" ? "Shell in" : "Console of"} ${inst.name}`);
  const term = new lib.Terminal({ convertEol: false, cursorBlink: true, scrollback: 2000 });
  const fit = new lib.FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  const unstyle = adoptStyles(screen);
  fit.fit();
  const size = `width=${term.cols}&height=${term.rows}`;
  const path = kind === "exec"
    ? instancePath(inst.name, `/exec?cmd=%2Fbin%2Fsh&tty=1&env=TERM%3Dxterm-256color&${size}`)
    : instancePath(inst.name, `/console?${size}`);
  const ws = new WebSocket(wsUrl(path), wsProtocols());
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      let control = {};
      try { control = JSON.parse(ev.data); } catch { /* not ours */ }
      if (control.type === "exit") term.write(`\r\n[exited with code ${Number(control.code)}]\r\n`);
      return;
    }
    const bytes = new Uint8Array(ev.data);
    term.write(kind === "exec" ? bytes.subarray(1) : bytes);   // exec: the first byte is the channel
  };
  ws.onclose = () => term.write("\r\n[disconnected]\r\n");
  ws.onerror = () => notice(`The ${kind} of ${inst.name} could not be opened (refused, or the instance stopped).`);
  const input = term.onData((data) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data)); });
  const resize = term.onResize(({ cols, rows }) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "resize", width: cols, height: rows }));
  });
  term.focus();
  session.viewer = () => { input.dispose(); resize.dispose(); ws.close(); term.dispose(); unstyle(); };
}

async function openDisplay(inst) {
  let RFB;
  try {
    RFB = (await import("./vendor/novnc/core/rfb.js")).default;
  } catch {
    notice(BUILD_HINT);
    return;
  }
  const screen = openViewer(`Display of ${inst.name}`);
  const rfb = new RFB(screen, wsUrl(instancePath(inst.name, "/vnc")), { wsProtocols: wsProtocols() });
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => {
    screen.dataset.state = "connected";
    $("viewer-title").textContent = `Display of ${inst.name} (connected)`;
  });
  rfb.addEventListener("disconnect", () => {
    screen.dataset.state = "disconnected";
    notice(`The display of ${inst.name} was closed.`);
  });
  session.viewer = () => rfb.disconnect();
}

// ------------------------------------------------------------------ start

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";
  if (!token) { showLogin("Paste an API token first."); return; }
  login(token);
});
$("logout").addEventListener("click", logout);
$("viewer-close").addEventListener("click", closeViewer);
if (session.token) login(session.token); else showLogin("");
