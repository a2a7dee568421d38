// The live page: mailboxes, one conversation, notes from "human". Every text is set with
// textContent (never innerHTML), so a message cannot inject markup. Live updates come from a
// long-poll on /v1/feed (EventSource cannot send the Authorization header).
"use strict";

const HUMAN = "human";
const WAIT_SECONDS = 20;
const state = { boxes: [], name: null, peer: null, last: 0, run: 0, abort: null };

// The token arrives once in the URL fragment (never sent to any server), then lives in sessionStorage.
(function takeToken() {
  const match = /(?:^|[#&])token=([A-Za-z0-9]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("claude-mailbox-token", match[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function $(id) { return document.getElementById(id); }

// What textsafe.py escapes for the CLI and the hooks, written visibly as \uXXXX here too: controls,
// bidi overrides, zero-width and invisible characters could reorder or hide text ("RTL \u202elive").
// Newlines and tabs in a body stay layout (the body is shown pre-wrapped).
const UNSAFE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\ud800-\udfff]/gu; // u: a lone surrogate only, never half of an emoji

function visible(text) {
  return String(text).replace(UNSAFE, (ch) => "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0"));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = visible(text);
  return node;
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = sessionStorage.getItem("claude-mailbox-token");
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.error ? data.error.message : "HTTP " + response.status;
    throw new Error(response.status === 401 ? message + " (open the link `claude-mailbox open` prints)" : message);
  }
  return data;
}

function setStatus(text) { $("status").textContent = text; }

function feedQuery(extra) {
  const query = new URLSearchParams(extra);
  if (state.name) query.set("name", state.name);
  if (state.name && state.peer) query.set("peer", state.peer);
  return "/v1/feed?" + query.toString();
}

function renderBoxes() {
  const list = $("mailboxes");
  list.replaceChildren();
  for (const box of state.boxes) {
    if (box.state === "alias") continue;
    const button = element("button", "box" + (box.name === state.name ? " selected" : ""));
    button.type = "button";
    button.dataset.name = box.name;
    const dot = element("span", "dot" + (box.alive ? " alive" : ""));
    dot.title = box.state;
    button.append(dot, element("span", "name", box.name));
    if (box.pending > 0) {
      const unread = element("span", "unread", String(box.pending));
      unread.title = box.pending + " unread";
      button.append(unread);
    }
    const where = box.projectDir ? " · " + box.projectDir : "";
    button.append(element("span", "meta", box.state + where));
    button.addEventListener("click", () => select(box.name, null));
    const item = element("li");
    item.append(button);
    list.append(item);
  }
  $("all").classList.toggle("selected", state.name === null);
  const peer = $("peer");
  peer.replaceChildren(element("option", "", "everyone"));
  peer.firstChild.value = "";
  for (const box of state.boxes) {
    if (box.name === state.name || box.state === "alias") continue;
    const option = element("option", "", box.name);
    option.value = box.name;
    option.selected = box.name === state.peer;
    peer.append(option);
  }
}

function messageItem(message) {
  const outgoing = state.name ? message.from === state.name : message.from === HUMAN;
  const item = element("li", "msg" + (outgoing ? " out" : ""));
  item.dataset.id = String(message.id);
  const head = element("div", "head");
  const time = new Date(message.createdAt);
  head.append(element("span", "", message.from + " → " + message.to + " · " + time.toLocaleString()));
  if (message.urgent) head.append(element("span", "urgent", "urgent"));
  head.append(element("span", "state " + (message.read ? "read" : "pending"), message.read ? "read" : "unread"));
  item.append(head, element("div", "body", message.body));
  return item;
}

// replace: the whole thread anew (a first load jumps to the newest; a refresh keeps the reader's place).
function renderThread(messages, replace, first = false) {
  const thread = $("thread");
  const atBottom = thread.scrollHeight - thread.scrollTop - thread.clientHeight < 40;
  if (replace) thread.replaceChildren();
  for (const message of messages) thread.append(messageItem(message));
  if (!thread.children.length) thread.append(element("li", "empty", "no mail yet"));
  else thread.querySelector(".empty")?.remove();
  if (first || atBottom) thread.scrollTop = thread.scrollHeight;
}

async function loadBoxes() {
  state.boxes = (await api("/v1/list")).mailboxes;
  renderBoxes();
}

async function loadThread(first = false) {
  const answer = await api(feedQuery({ limit: "200" }));
  state.last = answer.last;
  renderThread(answer.messages, true, first);
}

// One long-poll loop per selection; a new selection aborts the old loop.
async function follow(run, signal) {
  while (run === state.run) {
    try {
      const answer = await api(feedQuery({ after: String(state.last), wait: String(WAIT_SECONDS), limit: "200" }), { signal });
      if (run !== state.run) return;
      state.last = answer.last;
      if (answer.messages.length) renderThread(answer.messages, false);
      else await loadThread(); // a quiet interval: refresh read / unread marks
      await loadBoxes();
      setStatus("live");
    } catch (error) {
      if (run !== state.run) return;
      setStatus("disconnected: " + error.message + "; retrying");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

async function select(name, peer) {
  state.name = name;
  state.peer = name ? peer : null;
  state.run += 1;
  if (state.abort) state.abort.abort();
  state.abort = new AbortController();
  $("title").textContent = name ? name : "All mail";
  $("peer-label").hidden = !name;
  $("compose").hidden = !name;
  $("note-label").textContent = name ? "Note to " + name : "Note";
  renderBoxes();
  const run = state.run;
  try {
    await loadThread(true);
    await loadBoxes();
    setStatus("live");
  } catch (error) {
    setStatus("error: " + error.message);
  }
  follow(run, state.abort.signal);
}

async function sendNote(event) {
  event.preventDefault();
  const body = $("note").value;
  if (!state.name || !body.trim()) return;
  $("send").disabled = true;
  try {
    const key = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
    await api("/v1/send", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": key },
      body: JSON.stringify({ from: HUMAN, to: state.name, body }),
    });
    $("note").value = "";
    setStatus("note sent to " + state.name);
  } catch (error) {
    setStatus("not sent: " + error.message);
  } finally {
    $("send").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("all").addEventListener("click", () => select(null, null));
  $("peer").addEventListener("change", (event) => select(state.name, event.target.value || null));
  $("compose").addEventListener("submit", sendNote);
  select(null, null);
});
