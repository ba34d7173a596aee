// The web chat: a small client of the HTTP API and the WebSocket protocol,
// version 2 (docs/protocol.md). Plain JavaScript, no build step.
//
// Inbox order: every message reaches this device at a position (`seq`) of
// the user's inbox. Positions are handled strictly in order: an event that
// overtakes a missing position is held, a gap that does not close within
// half a second (or a `resync` event) starts a sync from the cursor, and
// the cursor (the last position handled) is acked to the server. The
// device's own sends count as handled by their reply's `seq`.
"use strict";

const PROTOCOL = 2;
const GAP_MS = 500;
const ACK_DELAY_MS = 1000;
const REFRESH_MARGIN_MS = 60000;
const MAX_BACKOFF_MS = 10000;

const $ = (id) => document.getElementById(id);
const store = window.localStorage;

/** A random UUID (v4), also outside secure contexts. */
function uuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function load(key, fallback) {
  try {
    const v = store.getItem(key);
    return v === null ? fallback : JSON.parse(v);
  } catch {
    return fallback;
  }
}
function save(key, value) {
  store.setItem(key, JSON.stringify(value));
}

// ---------------------------------------------------------------- state

const state = {
  auth: load("chat.auth", null), // AuthResponse
  device: load("chat.device", null),
  users: new Map(), // id -> User
  friends: [], // User ids
  presence: new Map(), // user id -> "online" | "offline"
  channels: new Map(), // id -> Channel
  messages: new Map(), // channel id -> Map(message id -> Message)
  current: null, // channel id
};
if (!state.device) {
  state.device = uuid();
  save("chat.device", state.device);
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// ---------------------------------------------------------------- HTTP

let refreshing = null;

async function refresh() {
  if (!refreshing) {
    refreshing = (async () => {
      const auth = await call("POST", "/v1/refresh", { refresh_token: state.auth.refresh_token }, false);
      setAuth(auth);
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

async function accessToken() {
  if (state.auth.expires_at - REFRESH_MARGIN_MS < Date.now()) await refresh();
  return state.auth.token;
}

/** One API call; with `authed`, refreshes the token first if it is about
 * to expire and once after an `unauthorized`. */
async function call(method, path, body, authed = true, retried = false) {
  const headers = { "content-type": "application/json" };
  if (authed) headers.authorization = `Bearer ${await accessToken()}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const error = data && data.error ? data.error : { code: "internal", message: `HTTP ${response.status}` };
  if (authed && error.code === "unauthorized" && !retried) {
    try {
      await refresh();
    } catch {
      logOut(false);
      throw new ApiError(response.status, error.code, "logged out");
    }
    return call(method, path, body, authed, true);
  }
  throw new ApiError(response.status, error.code, error.message);
}

function setAuth(auth) {
  state.auth = auth;
  state.users.set(auth.user.id, auth.user);
  save("chat.auth", auth);
}

async function user(id) {
  if (!state.users.has(id)) state.users.set(id, await call("GET", `/v1/users/${id}`));
  return state.users.get(id);
}

function nameOf(id) {
  const u = state.users.get(id);
  return u ? u.profile.display_name : "…";
}

// ---------------------------------------------------------------- inbox

/** Per user and device: the last inbox position this page handled. */
const cursorKey = () => `chat.cursor.${state.auth.user.id}.${state.device}`;

const inbox = {
  cursor: 0,
  held: new Map(), // seq -> message, ahead of cursor + 1
  gapTimer: null,
  ackTimer: null,
  acked: 0,
  syncing: false,

  reset(serverCursor) {
    this.cursor = Math.max(load(cursorKey(), 0), serverCursor);
    this.acked = serverCursor;
    this.held.clear();
    clearTimeout(this.gapTimer);
    this.gapTimer = null;
  },

  /** A message at inbox position `seq`, from sync, a live event or the
   * reply to this device's own send: handled once, in position order. */
  offer(seq, message) {
    if (seq <= this.cursor) return; // handled already (a repeat)
    this.held.set(seq, message);
    this.drain();
  },

  drain() {
    while (this.held.has(this.cursor + 1)) {
      const next = this.cursor + 1;
      const message = this.held.get(next);
      this.held.delete(next);
      this.cursor = next;
      showMessage(message);
    }
    save(cursorKey(), this.cursor);
    this.scheduleAck();
    if (this.held.size === 0) {
      clearTimeout(this.gapTimer);
      this.gapTimer = null;
    } else if (!this.gapTimer && !this.syncing) {
      // Something overtook a missing position: give it a moment to arrive
      // live, then fetch it.
      this.gapTimer = setTimeout(() => {
        this.gapTimer = null;
        if (this.held.size > 0) this.sync();
      }, GAP_MS);
    }
  },

  /** Pages through the inbox from the cursor until nothing is left. */
  async sync() {
    if (this.syncing || !socket.ready) return;
    this.syncing = true;
    clearTimeout(this.gapTimer);
    this.gapTimer = null;
    try {
      for (;;) {
        const result = await socket.request({ type: "sync", after: this.cursor, limit: 200 });
        for (const entry of result.entries) this.offer(entry.seq, entry.message);
        if (!result.has_more || result.entries.length === 0) break;
      }
    } catch (e) {
      console.warn("sync failed", e);
    } finally {
      this.syncing = false;
    }
    this.drain();
  },

  scheduleAck() {
    if (this.cursor <= this.acked || this.ackTimer) return;
    this.ackTimer = setTimeout(async () => {
      this.ackTimer = null;
      if (!socket.ready) return;
      try {
        const result = await socket.request({ type: "ack", cursor: this.cursor });
        this.acked = result.cursor;
      } catch (e) {
        console.warn("ack failed", e);
      }
      this.scheduleAck();
    }, ACK_DELAY_MS);
  },
};

// ---------------------------------------------------------------- WebSocket

const socket = {
  ws: null,
  ready: false,
  next: 1,
  waiting: new Map(), // request id -> {resolve, reject}
  heartbeat: null,
  attempt: 0,
  retryTimer: null,
  stopped: true,

  async open() {
    this.stopped = false;
    clearTimeout(this.retryTimer);
    if (this.ws) return;
    setStatus("connecting");
    let url;
    try {
      const token = await accessToken();
      const route = await call("GET", "/v1/route");
      url = new URL(route.ws_url, location.href);
      url.searchParams.set("device", state.device);
      url.searchParams.set("token", token);
      url.searchParams.set("v", String(PROTOCOL));
    } catch (e) {
      if (e instanceof ApiError && e.code === "unauthorized") return;
      return this.retry();
    }
    const ws = new WebSocket(url.toString());
    this.ws = ws;
    ws.onmessage = (m) => this.frame(m.data);
    ws.onclose = (e) => this.closed(ws, e.code);
  },

  frame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.type === "welcome") return this.welcomed(frame);
    if (frame.type === "reply") {
      const w = this.waiting.get(frame.id);
      if (!w) return;
      this.waiting.delete(frame.id);
      if (frame.error) w.reject(new ApiError(0, frame.error.code, frame.error.message));
      else w.resolve(frame.result);
      return;
    }
    if (frame.type === "event") event(frame);
  },

  welcomed(welcome) {
    this.ready = true;
    this.attempt = 0;
    setStatus("online");
    inbox.reset(welcome.cursor);
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => {
      this.request({ type: "heartbeat" }).catch(() => {});
    }, welcome.heartbeat_interval_ms);
    inbox.sync();
    refreshLists();
  },

  request(body) {
    if (!this.ready) return Promise.reject(new ApiError(0, "unavailable", "not connected"));
    const id = `r${this.next++}`;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, ...body }));
    });
  },

  closed(ws, code) {
    if (this.ws !== ws) return;
    this.ws = null;
    this.ready = false;
    clearInterval(this.heartbeat);
    for (const w of this.waiting.values()) w.reject(new ApiError(0, "unavailable", "connection closed"));
    this.waiting.clear();
    if (this.stopped) return setStatus("offline");
    if (code === 4100) {
      // Token refused: refresh it, or log in again.
      refresh().then(() => this.open(), () => logOut(false));
      return;
    }
    if (code >= 4100 && code < 4200) {
      setStatus("offline", `closed (${code})`);
      return;
    }
    this.retry();
  },

  retry() {
    setStatus("connecting");
    const base = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt);
    this.attempt += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), base / 2 + Math.random() * (base / 2));
  },

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
  },
};

function event(frame) {
  switch (frame.event) {
    case "message":
      inbox.offer(frame.seq, frame.message);
      break;
    case "changed":
      // An edit, a deletion or a reaction: a change entry of the inbox,
      // carrying the message after the change, which replaces the copy
      // shown (messages are kept by id).
      inbox.offer(frame.seq, frame.message);
      break;
    case "resync":
      inbox.sync();
      break;
    case "presence":
      state.presence.set(frame.presence.user, frame.presence.status);
      renderFriends();
      break;
    case "friend_accepted":
      note(`${frame.friend.profile.display_name} accepted`);
      refreshLists();
      break;
    case "friend_request":
      refreshLists();
      break;
    default:
      break;
  }
}

// The network dropped: the socket may hang until TCP gives up, so close it
// now and say so; reconnect (and sync) when the network is back, rather
// than at the next backoff step.
window.addEventListener("offline", () => {
  if (!socket.ws) return;
  const ws = socket.ws;
  ws.close();
  socket.closed(ws, 1006);
  clearTimeout(socket.retryTimer);
  setStatus("offline");
});
window.addEventListener("online", () => {
  if (state.auth && !socket.ws) {
    socket.attempt = 0;
    socket.open();
  }
});

// ---------------------------------------------------------------- view

function setStatus(status, note) {
  $("connection-dot").className = `dot ${status === "online" ? "online" : status === "connecting" ? "connecting" : ""}`;
  $("connection-status").textContent = note || status;
  document.body.dataset.connection = status;
}

function note(text) {
  $("sidebar-note").textContent = text;
}

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
}

function channelTitle(channel) {
  if (channel.kind === "group") return channel.name;
  const other = channel.members.find((m) => m !== state.auth.user.id) || state.auth.user.id;
  return nameOf(other);
}

function showMessage(message) {
  let messages = state.messages.get(message.channel_id);
  if (!messages) {
    messages = new Map();
    state.messages.set(message.channel_id, messages);
  }
  messages.set(message.id, message);
  if (!state.channels.has(message.channel_id)) refreshLists();
  if (message.channel_id === state.current) renderMessages();
}

function compareIds(a, b) {
  // Message ids are 64-bit numbers as decimal strings.
  return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
}

function renderMessages() {
  const list = $("messages");
  const messages = [...(state.messages.get(state.current) || new Map()).values()].sort((a, b) =>
    compareIds(a.id, b.id),
  );
  list.replaceChildren(
    ...messages.map((m) => {
      const mine = m.sender === state.auth.user.id;
      const time = new Date(m.created_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      return el(
        "li",
        { className: mine ? "mine" : "", title: time },
        el("span", { className: "meta", textContent: `${nameOf(m.sender)} · ${time}` }),
        el("span", {
          className: "text",
          textContent: m.deleted ? "(deleted)" : m.edited_at ? `${m.content} (edited)` : m.content,
        }),
      );
    }),
  );
  list.scrollTop = list.scrollHeight;
}

function renderFriends() {
  $("friends").replaceChildren(
    ...state.friends.map((id) => {
      const status = state.presence.get(id) || "offline";
      const li = el(
        "li",
        { title: `${nameOf(id)} is ${status}` },
        el("span", { className: `dot ${status === "online" ? "online" : ""}` }),
        el("span", { className: "name", textContent: nameOf(id) }),
      );
      li.dataset.user = state.users.get(id)?.username || "";
      li.dataset.presence = status;
      li.onclick = () => openDirect(id);
      return li;
    }),
  );
}

function renderChannels() {
  const channels = [...state.channels.values()].sort((a, b) => channelTitle(a).localeCompare(channelTitle(b)));
  $("channels").replaceChildren(
    ...channels.map((c) => {
      const li = el("li", {}, el("span", { className: "name", textContent: channelTitle(c) }));
      if (c.id === state.current) li.classList.add("active");
      li.onclick = () => openChannel(c.id);
      return li;
    }),
  );
}

async function refreshLists() {
  try {
    const [friends, requests] = await Promise.all([call("GET", "/v1/friends"), call("GET", "/v1/friends/requests")]);
    for (const u of friends.users) state.users.set(u.id, u);
    state.friends = friends.users.map((u) => u.id);
    let after = null;
    for (;;) {
      const page = await call("GET", `/v1/channels?limit=100${after ? `&after=${after}` : ""}`);
      for (const c of page.channels) {
        state.channels.set(c.id, c);
        await Promise.all(c.members.map((m) => user(m).catch(() => null)));
      }
      if (!page.next) break;
      after = page.next;
    }
    if (state.friends.length > 0) {
      const presence = await call("GET", `/v1/presence?users=${state.friends.join(",")}`);
      for (const p of presence.users) state.presence.set(p.user, p.status);
    }
    $("requests").replaceChildren(
      ...requests.incoming.map((r) => {
        state.users.set(r.user.id, r.user);
        const accept = el("button", { textContent: "Accept" });
        accept.onclick = async () => {
          await call("PUT", `/v1/friends/${r.user.id}`);
          refreshLists();
        };
        return el("li", {}, el("span", { className: "name", textContent: r.user.profile.display_name }), accept);
      }),
      ...requests.outgoing.map((r) =>
        el("li", {}, el("span", { className: "name muted", textContent: `${r.user.profile.display_name} (asked)` })),
      ),
    );
    renderFriends();
    renderChannels();
    if (state.current) $("conversation-title").textContent = channelTitle(state.channels.get(state.current));
  } catch (e) {
    note(e.message);
  }
}

async function openDirect(userId) {
  try {
    const channel = await call("POST", "/v1/channels/direct", { user: userId });
    state.channels.set(channel.id, channel);
    await openChannel(channel.id);
    renderChannels();
  } catch (e) {
    note(e.message);
  }
}

async function openChannel(id) {
  state.current = id;
  const channel = state.channels.get(id);
  $("conversation-title").textContent = channelTitle(channel);
  $("composer").hidden = false;
  renderChannels();
  renderMessages();
  // The newest page of history; the inbox adds what arrives after.
  try {
    const page = await call("GET", `/v1/channels/${id}/messages?limit=50`);
    let messages = state.messages.get(id);
    if (!messages) {
      messages = new Map();
      state.messages.set(id, messages);
    }
    for (const m of page.messages) messages.set(m.id, m);
    if (state.current === id) renderMessages();
  } catch (e) {
    note(e.message);
  }
  $("message-input").focus();
}

async function send(text) {
  const channel = state.current;
  const client_msg_id = uuid();
  // Retries use the same client_msg_id: the server stores the message once.
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      if (!socket.ready) throw new ApiError(0, "unavailable", "not connected");
      const sent = await socket.request({ type: "send", channel, client_msg_id, content: text });
      const message = {
        id: sent.message_id,
        channel_id: channel,
        sender: state.auth.user.id,
        content: text,
        created_at: sent.created_at,
        client_msg_id,
      };
      // The sending device has its message from the reply: its position is
      // handled (through the same ordering as everything else).
      if (sent.seq !== undefined && sent.seq !== null) inbox.offer(sent.seq, message);
      showMessage(message);
      return;
    } catch (e) {
      if (!["unavailable", "rate_limited"].includes(e.code)) {
        note(`not sent: ${e.message}`);
        return;
      }
      await new Promise((r) => setTimeout(r, 500 * 2 ** attempt));
    }
  }
  note("not sent: no connection");
}

// ---------------------------------------------------------------- start

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = state.auth.user.profile.display_name;
  socket.open();
}

function logOut(tellServer) {
  const auth = state.auth;
  socket.stop();
  if (tellServer && auth) call("POST", "/v1/logout").catch(() => {});
  state.auth = null;
  store.removeItem("chat.auth");
  state.messages.clear();
  state.channels.clear();
  state.current = null;
  $("app").hidden = true;
  $("login").hidden = false;
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const signup = e.submitter && e.submitter.value === "signup";
  const body = { username: $("username").value.trim(), password: $("password").value };
  $("login-error").textContent = "";
  try {
    const auth = await call("POST", signup ? "/v1/signup" : "/v1/login", body, false);
    setAuth(auth);
    $("password").value = "";
    showApp();
  } catch (err) {
    $("login-error").textContent = err.message;
  }
});

$("add-friend-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("add-friend").value.trim();
  try {
    const other = await call("GET", `/v1/users/by-name/${encodeURIComponent(name)}`);
    state.users.set(other.id, other);
    const answer = await call("PUT", `/v1/friends/${other.id}`);
    note(answer.status === "friends" ? `${other.profile.display_name} is your friend` : `asked ${other.profile.display_name}`);
    $("add-friend").value = "";
    refreshLists();
  } catch (err) {
    note(err.message);
  }
});

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("message-input").value;
  if (!text.trim() || !state.current) return;
  $("message-input").value = "";
  send(text);
});

$("message-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});

$("logout").addEventListener("click", () => logOut(true));

if (state.auth) showApp();
else $("login").hidden = false;
