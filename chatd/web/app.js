// chatd's web client: the documented protocol (docs/protocol.md), nothing more.
// One connection follows every room the page is in ("keep", "room_id"), and
// comes back to all of them in one "sync" after a reconnection or a reload.
import { $, convItem, dayItems, el, lineItem, lineTail, messageItems, nameOf } from "./view.js";

const state = {
  ws: null, clientId: null, user: null, nick: null, welcomed: false,
  pending: [],          // what each outstanding command was, in order: replies come in order
  delay: 1000,          // the next reconnection delay
  retryAt: 0, retryTimer: null, countdown: null,
  // A token to authenticate with: from the page's own #token=... (a
  // fragment never reaches a server's log), or typed when the server asks;
  // kept for this tab's reloads (sessionStorage), not beyond it.
  token: new URLSearchParams(location.hash.slice(1)).get("token") || sessionStorage.getItem("chatd.token"),
  myIds: new Set(),     // this page's client IDs, this connection's and earlier ones
  convs: new Map(),     // "room ID" or "@peer" -> a conversation (newConv)
  viewing: null,        // the key of the conversation shown
};
window.chatd = state;   // for the curious, and the browser tests (chatd.connect() reconnects now)

// The token leaves the address bar once read: it would be bookmarked, shared
// and reused by a reload long after it expired.
if (location.hash) history.replaceState(null, "", location.pathname + location.search);

// What the page was in, kept across a reload (this browser only): the rooms
// and the last message seen in each, and the nick.
const STORE = "chatd.page";
function saved() {
  try { return JSON.parse(localStorage.getItem(STORE)) || {}; } catch (e) { return {}; }
}
function save() {
  if (state.wantView) return;  // not before the first sync has put the page back as it was
  const rooms = {};
  for (const conv of state.convs.values()) {
    if (conv.kind === "room" && conv.joined) rooms[conv.id] = { name: conv.name, seen: conv.seen };
  }
  const ids = [...state.myIds].slice(-20);  // to tell its own messages among those missed
  try { localStorage.setItem(STORE, JSON.stringify({ rooms, viewing: state.viewing, nick: state.nick, ids })); } catch (e) { /* full, or private mode */ }
}

function newConv(key, kind, id, name) {
  const list = el("ol", "messages");
  list.hidden = true;
  list.setAttribute("aria-live", "polite");
  list.setAttribute("aria-label", `Messages in ${name}`);
  list.addEventListener("scroll", () => onScroll(conv));
  $("conversation").append(list);
  const conv = {
    key, kind, id, name, private: false, persistent: false, role: "member",
    joined: false,       // the connection is in the room
    loaded: false,       // its latest page of history is shown
    loading: false, early: [],  // live messages that came while the first page was asked for
    lastId: null,        // the newest message shown (or known)
    seen: 0,             // the newest message the person has seen (kept across a reload)
    oldestId: null, loadingOlder: false,
    unread: 0, readSent: 0, ids: new Set(), head: null, tail: null,
    members: new Map(),  // client_id -> {nick, user, role}
    list,
  };
  state.convs.set(key, conv);
  return conv;
}

function room(roomId, name) {
  return state.convs.get(roomId) || newConv(roomId, "room", roomId, name || roomId);
}

// -- the connection -----------------------------------------------------------
state.connect = () => connect();

function connect() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdown);
  $("retry").hidden = true;
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
  setStatus("connecting", "Connecting…");
  const ws = new WebSocket(url);
  state.ws = ws;
  state.pending = [];
  state.welcomed = false;
  ws.onmessage = (event) => {
    let message;
    try { message = JSON.parse(event.data); } catch (e) { return; }
    handle(message);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (event.code === 4001) {
      // The token expired: sign in again (a reload will not bring it back).
      keepToken(null);
      state.user = null;
      askSignIn("Your sign-in expired: paste a new token");
    }
    state.clientId = null;
    showComposer();
    state.retryAt = Date.now() + state.delay;
    state.retryTimer = setTimeout(connect, state.delay);
    state.delay = Math.min(state.delay * 2, 30000);
    tick();
    state.countdown = setInterval(tick, 1000);
    $("retry").hidden = false;
  };
}

// The countdown to the next attempt, always in view.
function tick() {
  const seconds = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
  setStatus("offline", `Disconnected — reconnecting in ${seconds} s`);
}

// A command the person asked for: its error is shown ``where`` it was asked.
function ask(kind, body, extra, where) {
  hideErrors();
  send(kind, body, extra, where || "room");
}

// ``extra``: top-level keys (a room-scoped action's "room_id"), and
// ``as``, what the reply is taken for when not the action's own.
function send(kind, body, extra, where) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    showError(where || "room", "Not connected: wait for the reconnection");
    return false;
  }
  const { as, ...keys } = extra || {};
  const command = body === undefined ? { action: kind, ...keys } : { action: kind, ...keys, body };
  state.pending.push({ kind: as || kind, where: where || "room", body, room: keys.room_id });
  state.ws.send(JSON.stringify(command));
  return true;
}

function handle(message) {
  if (message.status === "connected") {
    state.clientId = message.client_id;
    state.myIds.add(message.client_id);
    save();
    state.user = message.user || null;
    state.delay = 1000;
    if (state.token && !state.user) {
      send("auth", { token: state.token }, null, "auth");  // the rest follows its reply
      return;
    }
    welcomed();
    return;
  }
  if (message.status !== undefined) {
    reply(state.pending.shift() || { kind: "", where: "room" }, message);
    return;
  }
  if (message.event !== undefined) {
    roomEvent(message);
    return;
  }
  if (message.from !== undefined) {
    if (message.direct) {
      const peer = message.user || message.from;
      const conv = state.convs.get("@" + peer) || newConv("@" + peer, "dm", peer, nameOf(message.nick, message.user, message.from));
      conv.joined = conv.loaded = true;
      arrived(conv, message);
    } else {
      const conv = state.convs.get(message.room_id);
      if (conv) arrived(conv, message);
    }
  }
}

// Connected (and signed in, if the page has a token): back in every room
// the page was in, with what was said meanwhile, in one round trip.
function welcomed() {
  state.welcomed = true;
  showIdentity();
  send("events", true);
  if (state.nick) send("nick", state.nick, null, "side");
  const since = {};
  for (const conv of state.convs.values()) {
    if (conv.kind === "room" && conv.joined) since[conv.id] = (conv.loaded ? conv.lastId : conv.seen) || 0;
  }
  send("sync", { since }, null, "side");
  send("list", undefined, null, "side");
}

function showIdentity() {
  setStatus("online", `Connected as ${state.nick || state.user || "a guest"}`);
  $("status").title = state.clientId ? `client ID ${state.clientId}` + (state.user ? `, user ${state.user}` : "") : "";
  $("sign-in").hidden = !!state.user || document.body.dataset.signIn !== "yes";
  clearInterval(state.countdown);
  $("retry").hidden = true;
}

function keepToken(token) {
  state.token = token;
  try {
    if (token) sessionStorage.setItem("chatd.token", token); else sessionStorage.removeItem("chatd.token");
  } catch (e) { /* storage refused: the token lasts as long as the page */ }
}

function askSignIn(why) {
  $("auth-why").textContent = why;
  $("auth-form").hidden = false;
  $("token").focus();
}

function reply(asked, message) {
  const kind = asked.kind;
  if (kind === "auth" || message.message === "Authentication required") {
    // The server wants a token (or refused ours): ask for one.
    if (message.status === "error") {
      keepToken(null);
      askSignIn(message.message === "Authentication required"
        ? "This server needs you to sign in: paste your token" : `${message.message}: paste another token`);
      showError("auth", message.message);
      if (kind === "auth" && !state.welcomed) welcomed();  // the token it came with: on as a guest
      return;
    }
    $("auth-form").hidden = true;
  }
  if (message.status === "error") {
    showError(asked.where, message.message + (message.retry_after ? ` (retry in ${message.retry_after} s)` : ""));
    if (kind === "message" && asked.item) asked.item.classList.add("failed");
    if (kind === "sync") state.wantView = null;  // what is kept is saved again from now on
    if (kind === "older" && state.convs.get(asked.room)) state.convs.get(asked.room).loadingOlder = false;
    return;
  }
  const conv = asked.room ? state.convs.get(asked.room) : null;
  switch (kind) {
    case "create":
    case "join": {
      const quoted = /'(.*)'/.exec(message.message || "");
      const name = quoted ? quoted[1] : message.room_id;
      const c = room(message.room_id, name);
      c.name = name;
      c.joined = true;
      if (kind === "create") {
        $("room-name").value = "";
        c.private = message.private === true;
        c.persistent = message.persistent === true;
        c.role = "owner";
      }
      open(c.key);
      send("list", undefined, null, "side");
      break;
    }
    case "sync":
      synced(message);
      break;
    case "history":
      if (conv) firstPage(conv, message.messages || []);
      break;
    case "older":
      if (conv) showOlder(conv, message.messages || []);
      break;
    case "members":
      if (conv) {
        conv.members = new Map(message.members.map(
          (m) => [m.client_id, { nick: m.nick, user: m.user || null, role: m.role || "member" }]));
        conv.role = (conv.members.get(state.clientId) || {}).role || conv.role;
        if (message.persistent !== undefined) conv.persistent = message.persistent === true;
        if (message.private !== undefined) conv.private = message.private === true;
        if (conv.key === state.viewing) { showMembers(); showRoomBar(); }
      }
      break;
    case "leave":
    case "delete":
      if (kind === "delete") showNotice(message.message);
      gone(asked.room || (asked.body && asked.body.room_id));
      send("list", undefined, null, "side");
      break;
    case "list":
      showRooms(message.rooms || []);
      break;
    case "invite": case "kick": case "ban": case "unban":
      // A change of role shows as its event; these as their replies.
      if (conv) append(conv, lineItem(message.message, "event"), null);
      break;
    case "nick":
      state.nick = message.nick;
      $("nick").value = message.nick;
      save();
      showIdentity();
      if (state.viewing) showMembers();
      break;
    case "auth":
      keepToken(state.token);
      state.user = message.user;
      if (state.welcomed) {  // signed in on the way: the lasting rooms come along
        showIdentity();
        send("sync", undefined, null, "side");
      } else {
        welcomed();  // the token it came with: the session begins
      }
      break;
    default:
      break;
  }
}

// -- rooms ----------------------------------------------------------------------------

// Where the page stands in every room it is in, after a (re)connection.
function synced(message) {
  const entered = new Set();
  for (const entry of message.rooms || []) {
    const conv = room(entry.room_id, entry.name);
    entered.add(conv.key);
    Object.assign(conv, { name: entry.name, private: entry.private, persistent: entry.persistent, role: entry.role, joined: true });
    if (conv.loaded && entry.messages) {
      if (!entry.recovered) append(conv, lineItem("Some messages were missed while disconnected", "event"), null);
      // This page's own messages are shown already (sent before the reconnection).
      for (const m of entry.messages) if (!state.myIds.has(m.from)) arrived(conv, m);
    } else if (!conv.loaded) {
      // Unread: the lasting room's count (the user's marker), or what others said since.
      conv.unread = entry.messages && !(entry.persistent && state.user)
        ? entry.messages.filter((m) => !state.myIds.has(m.from)).length : entry.unread;
      conv.lastId = entry.last_id;
    }
    if (conv.key === state.viewing) send("members", undefined, { room_id: conv.id });
  }
  const said = [];
  for (const skipped of message.skipped || []) {
    const conv = state.convs.get(skipped.room_id);
    said.push(`${conv ? conv.name : skipped.room_id}: ${skipped.message}`);
    gone(skipped.room_id);
  }
  const wanted = state.wantView;  // shown before a reload
  state.wantView = null;
  if (!state.viewing || !state.convs.has(state.viewing)) {
    const first = (message.rooms || []).find((r) => r.current) || (message.rooms || [])[0];
    open(entered.has(wanted) ? wanted : first ? first.room_id : null);
  } else {
    showSidebar();
  }
  if (said.length) showError("side", said.join("; "));  // after the drawer closed on opening a room
}

// Out of a room (left, put out, deleted): it leaves the sidebar.
function gone(roomId) {
  const conv = state.convs.get(roomId);
  if (!conv) return;
  conv.list.remove();
  state.convs.delete(roomId);
  if (state.viewing === roomId) {
    const next = [...state.convs.values()].find((c) => c.joined);
    state.viewing = null;
    open(next ? next.key : null);
  } else {
    showSidebar();
  }
  save();
}

// Show a conversation; the first time, its latest page of history.
function open(key) {
  const before = state.convs.get(state.viewing);
  if (before && before.key !== key) before.list.removeAttribute("id");
  const conv = key ? state.convs.get(key) : null;
  state.viewing = conv ? key : null;
  for (const c of state.convs.values()) c.list.hidden = c !== conv;
  $("empty").hidden = !!conv;
  document.body.classList.remove("show-side", "show-members");
  $("menu").setAttribute("aria-expanded", "false");
  if (conv) {
    conv.list.id = "messages";
    if (conv.kind === "room" && !conv.loaded && !conv.loading) {
      conv.loading = true;
      conv.newFrom = conv.unread;  // the "new" line goes above the last of these
      send("history", { limit: 50 }, { room_id: conv.id });
    }
    if (conv.kind === "room") send("members", undefined, { room_id: conv.id });
    else conv.members = new Map();
    if (conv.loaded) scrollDown(conv);
    seenAll(conv);
  }
  showRoomBar();
  showMembers();
  showComposer();
  showSidebar();
  save();
}

// The first page of a room's history, then what came live meanwhile.
function firstPage(conv, messages) {
  conv.loading = false;
  conv.loaded = true;
  const early = conv.early;
  conv.early = [];
  conv.list.replaceChildren();
  conv.ids.clear();
  conv.tail = null;
  conv.head = messages.length ? { from: messages[0].from } : null;
  conv.oldestId = messages.length ? messages[0].id : 1;
  const newAt = conv.newFrom > 0 ? messages.length - conv.newFrom : -1;
  messages.forEach((m, i) => {
    if (i === newAt) conv.list.append(el("li", "new-line", "New"));
    put(conv, m);
  });
  for (const m of early) if (!conv.ids.has(m.id)) put(conv, m);
  if (conv.key === state.viewing) {
    const line = conv.list.querySelector(".new-line");
    if (line) line.scrollIntoView({ block: "center" }); else scrollDown(conv);
  }
  conv.newFrom = 0;
  seenAll(conv);
}

function showOlder(conv, messages) {
  conv.loadingOlder = false;
  if (!messages.length) {
    conv.oldestId = 1;
    return;
  }
  const list = conv.list;
  const height = list.scrollHeight;
  const items = [];
  let before = null;
  for (const m of messages) {
    const made = messageItems(m, before, state.myIds.has(m.from));
    before = made.tail;
    items.push(...made.items);
    conv.ids.add(m.id);
  }
  // The page's old first day separator goes when the day goes on.
  const first = list.firstElementChild;
  if (first && first.classList.contains("day") && first.textContent === items[0].textContent && before) first.remove();
  list.prepend(...items);
  list.scrollTop += list.scrollHeight - height;
  conv.oldestId = messages[0].id;
}

function loadOlder(conv) {
  if (conv.kind !== "room" || !conv.loaded || conv.loadingOlder || !(conv.oldestId > 1)) return;
  conv.loadingOlder = true;
  send("history", { limit: 50, before: conv.oldestId }, { room_id: conv.id, as: "older" });
}

// -- messages ----------------------------------------------------------------------

// A message that came (live, or missed while away).
function arrived(conv, message) {
  if (conv.loading) {
    conv.early.push(message);
    return;
  }
  if (typeof message.id === "number" && conv.ids.has(message.id)) return;
  if (!conv.loaded) {  // not shown yet: counted, and shown with its history when opened
    if (typeof message.id === "number") conv.lastId = Math.max(conv.lastId || 0, message.id);
    conv.unread += 1;
    showSidebar();
    return;
  }
  const list = conv.list;
  const atBottom = isAtBottom(list);
  put(conv, message);
  const looking = conv.key === state.viewing && document.visibilityState === "visible";
  if (!looking) {
    conv.unread += 1;
    showSidebar();
  } else if (atBottom) {
    scrollDown(conv);
    seenAll(conv);
  } else {
    conv.below = (conv.below || 0) + 1;  // scrolled up: a marker, not a jump
    showNewBelow(conv);
  }
}

function put(conv, message, mine) {
  const made = messageItems(message, conv.tail, mine || state.myIds.has(message.from));
  conv.tail = made.tail;
  conv.list.append(...made.items);
  if (typeof message.id === "number") {
    conv.ids.add(message.id);
    conv.lastId = Math.max(conv.lastId || 0, message.id);
  }
  return made.items[made.items.length - 1];
}

function append(conv, li, timestamp) {
  const atBottom = isAtBottom(conv.list);
  conv.list.append(...dayItems(timestamp, conv.tail), li);
  conv.tail = lineTail(timestamp);
  if (atBottom && conv.key === state.viewing) scrollDown(conv);
}

function isAtBottom(list) {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function scrollDown(conv) {
  conv.list.scrollTop = conv.list.scrollHeight;
  conv.below = 0;
  showNewBelow(conv);
}

function showNewBelow(conv) {
  const button = $("new-below");
  button.hidden = !(conv.key === state.viewing && conv.below > 0);
  button.textContent = `${conv.below} new message${conv.below === 1 ? "" : "s"} ↓`;
}

function onScroll(conv) {
  if (conv.list.scrollTop < 20) loadOlder(conv);
  if (isAtBottom(conv.list)) {
    conv.below = 0;
    showNewBelow(conv);
    seenAll(conv);
  }
}

// The person has seen the conversation to its end: nothing unread, and a
// lasting room's read marker moves (signed in).
function seenAll(conv) {
  if (conv.key !== state.viewing || document.visibilityState !== "visible" || !conv.loaded) return;
  if (!isAtBottom(conv.list)) return;
  const changed = conv.unread !== 0 || conv.seen !== conv.lastId;
  conv.unread = 0;
  conv.seen = conv.lastId || 0;
  if (conv.kind === "room" && conv.persistent && state.user && !conv.readTimer) {
    // One read a second at most, however fast messages come and go.
    conv.readTimer = setTimeout(() => {
      conv.readTimer = null;
      if (state.clientId && conv.seen > conv.readSent && state.convs.get(conv.key) === conv) {
        conv.readSent = conv.seen;
        send("read", { room_id: conv.id, id: conv.seen }, null, "side");
      }
    }, 1000);
  }
  if (changed) { showSidebar(); save(); }
}

// -- events ------------------------------------------------------------------------------

function memberName(conv, clientId) {
  const member = conv.members.get(clientId);
  if (clientId === state.clientId) return nameOf(state.nick, state.user, clientId) + " (you)";
  return member ? nameOf(member.nick, member.user, clientId) : `guest ${clientId}`;
}

function roomEvent(event) {
  if (event.event === "invite") {
    showNotice(`${nameOf(event.nick, event.user, event.client_id)} invited you to the private room ${event.name}`);
    send("list", undefined, null, "side");
    return;
  }
  const conv = state.convs.get(event.room_id);
  if (!conv) return;
  if (event.event === "read") {  // read on another of this user's connections
    conv.readSent = Math.max(conv.readSent, event.id);
    if (event.id >= (conv.lastId || 0)) { conv.unread = 0; showSidebar(); }
    return;
  }
  if (event.event === "kick" || event.event === "deleted") {
    // Put out of the room (whatever the events setting): not to be rejoined.
    showNotice(event.event === "deleted" ? `${conv.name} was deleted by its owner`
      : `You were put out of ${conv.name} by ${memberName(conv, event.by)}` + (event.reason ? `: ${event.reason}` : ""));
    gone(conv.key);
    send("list", undefined, null, "side");
    return;
  }
  const before = memberName(conv, event.client_id);
  const member = conv.members.get(event.client_id) || { nick: event.nick, user: event.user || null, role: "member" };
  member.nick = event.nick;
  member.user = event.user || member.user || null;
  if (event.client_id === state.clientId && event.event === "nick") {
    state.nick = event.nick;  // null: a user of that name came, and the name is theirs
    $("nick").value = event.nick || "";
    showIdentity();
  }
  const role = { owner: "owner", op: "moderator", deop: "member" }[event.event];
  if (role) member.role = role;
  if (event.client_id === state.clientId && role) conv.role = role;
  if (event.event === "leave") conv.members.delete(event.client_id);
  else conv.members.set(event.client_id, member);
  const who = memberName(conv, event.client_id);
  const text = {
    join: `${who} joined`, leave: `${before} left`,
    nick: event.nick ? `${before} is now ${event.nick}` : `${before} has no nick any more (a user of that name is here)`,
    owner: `${who} now owns the room`, op: `${who} is now a moderator`, deop: `${who} is no longer a moderator`,
  }[event.event];
  if (text && conv.loaded) append(conv, lineItem(text, "event", event.timestamp), event.timestamp);
  if (conv.key === state.viewing) { showMembers(); showRoomBar(); }
  if (event.event === "join" || event.event === "leave") refreshRoomsSoon();
}

let refreshing = null;
function refreshRoomsSoon() {
  // Member counts changed: one list request for a burst of joins and leaves.
  if (refreshing) return;
  refreshing = setTimeout(() => { refreshing = null; if (state.clientId) send("list", undefined, null, "side"); }, 500);
}

// -- drawing ------------------------------------------------------------------------------

function showSidebar() {
  const rooms = [...state.convs.values()].filter((c) => c.kind === "room" && c.joined);
  const dms = [...state.convs.values()].filter((c) => c.kind === "dm");
  $("my-rooms").replaceChildren(...rooms.map((c) => convItem(c, state.viewing, open)));
  $("dms").replaceChildren(...dms.map((c) => convItem(c, state.viewing, open)));
  $("dms-pane").hidden = !dms.length;
  $("no-rooms").hidden = rooms.length > 0;
  const unread = [...state.convs.values()].reduce((n, c) => n + (c.key === state.viewing ? 0 : c.unread), 0);
  $("menu-unread").hidden = !unread;
  $("menu-unread").textContent = String(unread);
  document.title = unread ? `(${unread}) chatd` : "chatd";
  for (const li of $("rooms").children) li.classList.toggle("current", li.dataset.room === state.viewing);
}

function showRoomBar() {
  const conv = state.convs.get(state.viewing);
  const title = $("room-title");
  title.replaceChildren();
  if (!conv) {
    title.textContent = "Not in a room";
  } else if (conv.kind === "dm") {
    title.textContent = `${conv.name} (direct)`;
  } else {
    title.append(conv.name + " ", el("small", "meta", `(${conv.id})`));
  }
  const isRoom = conv && conv.kind === "room";
  $("leave").hidden = !isRoom;
  $("members-toggle").hidden = !isRoom;
  const manages = isRoom && (conv.role === "owner" || conv.role === "moderator");
  $("invite-form").hidden = !(manages && conv.private);
  $("delete").hidden = !(isRoom && conv.persistent && conv.role === "owner" && state.user);
}

function showComposer() {
  const conv = state.convs.get(state.viewing);
  const usable = !!conv && !!state.clientId;
  $("text").disabled = !usable;
  $("send-form").querySelector("button").disabled = !usable;
  $("text").placeholder = !conv ? "Join a room to chat" : !state.clientId ? "Reconnecting…"
    : conv.kind === "dm" ? `Message ${conv.name}` : `Message # ${conv.name}`;
}

// The rooms there are: a Join button each (Open for one the page is in).
function showRooms(rooms) {
  const list = $("rooms");
  list.replaceChildren();
  for (const r of rooms) {
    const li = el("li");
    li.dataset.room = r.room_id;
    li.classList.toggle("current", r.room_id === state.viewing);
    const label = el("span", null, r.name + (r.private ? " (private)" : "") + (r.persistent ? " ⌂" : ""));
    label.title = r.room_id;
    label.append(el("small", "meta", ` ${r.members}`));
    const inIt = state.convs.has(r.room_id);
    const go = el("button", "quiet", inIt ? "Open" : "Join");
    go.type = "button";
    go.setAttribute("aria-label", `${inIt ? "Open" : "Join"} ${r.name}`);
    go.onclick = () => (inIt ? open(r.room_id) : ask("join", { room_id: r.room_id, keep: true }, null, "side"));
    li.append(label, go);
    list.append(li);
    const conv = state.convs.get(r.room_id);
    if (conv) { conv.private = !!r.private; conv.persistent = !!r.persistent; }
  }
  if (!rooms.length) list.append(el("li", "meta", "No rooms yet: create one"));
  showRoomBar();
}

function showMembers() {
  const conv = state.convs.get(state.viewing);
  const list = $("members");
  list.replaceChildren();
  if (!conv || conv.kind !== "room") return;
  const mine = conv.role;
  for (const [clientId, member] of conv.members) {
    const li = el("li");
    li.dataset.client = clientId;
    const label = el("span", null, memberName(conv, clientId) + (member.role !== "member" ? ` · ${member.role}` : ""));
    label.title = member.user ? `${member.user} (${clientId})` : clientId;
    li.append(label);
    const actions = [];
    if (clientId !== state.clientId) actions.push(["msg", "Message"]);
    // What the owner and the moderators may do to the others.
    if (clientId !== state.clientId && member.role !== "owner" && (mine === "owner" || (mine === "moderator" && member.role === "member"))) {
      actions.push(["kick", "Kick"], ["ban", "Ban"]);
    }
    if (clientId !== state.clientId && mine === "owner") {
      actions.push(member.role === "moderator" ? ["deop", "Deop"] : ["op", "Op"]);
    }
    for (const [action, title] of actions) {
      const button = el("button", `member-${action} quiet`, title);
      button.type = "button";
      button.setAttribute("aria-label", `${title} ${nameOf(member.nick, member.user, clientId)}`);
      button.onclick = action === "msg"
        ? () => openDirect(member.user || clientId, nameOf(member.nick, member.user, clientId))
        : () => ask(action, { client_id: clientId }, { room_id: conv.id });
      li.append(button);
    }
    list.append(li);
  }
}

function openDirect(peer, name) {
  const conv = state.convs.get("@" + peer) || newConv("@" + peer, "dm", peer, name);
  conv.joined = conv.loaded = true;
  open(conv.key);
  $("text").focus();
}

function setStatus(kind, text) {
  const status = $("status");
  status.className = `status ${kind}`;
  status.textContent = text;
}

const ERRORS = { room: "error", side: "side-error", auth: "auth-error" };
function showError(where, text) {
  const box = $(ERRORS[where] || "error");
  box.textContent = text;
  box.hidden = false;
  if (where === "side" && window.matchMedia("(max-width: 700px)").matches) document.body.classList.add("show-side");
}

function hideErrors() {
  for (const id of Object.values(ERRORS)) $(id).hidden = true;
}

function showNotice(text) {
  $("notice").textContent = text;
  $("notice").hidden = false;
}

// -- what the person does --------------------------------------------------------------

// A line typed with a slash: a direct message or a room action.
function slashCommand(text, conv) {
  const [, name, rest] = /^\/(\S+)\s*(.*)$/.exec(text) || [];
  const [who, ...why] = (rest || "").split(/\s+/);
  const target = (byId) => (byId || /^[0-9a-f]{8}$/.test(who)) ? { client_id: who } : { user: who.replace(/^@/, "") };
  if (name === "msg") {
    const body = (rest || "").slice(who.length).trim();
    if (!who || !body) return showError("room", "/msg needs a client ID or user, then the message");
    sendDirect(who, body, state.convs.get("@" + who) || newConv("@" + who, "dm", who, who));
    return;
  }
  if (!["invite", "kick", "ban", "unban", "op", "deop"].includes(name)) return showError("room", `Unknown command /${name}`);
  if (!who) return showError("room", `/${name} needs a client ID or a user`);
  if (!conv || conv.kind !== "room") return showError("room", `/${name} is for a room`);
  const body = target(["kick", "op", "deop"].includes(name));
  if (why.join(" ").trim() && (name === "kick" || name === "ban")) body.reason = why.join(" ").trim();
  ask(name, body, { room_id: conv.id });
}

function sendDirect(to, body, conv) {
  conv.joined = conv.loaded = true;
  hideErrors();
  if (send("direct", { to, body })) {
    put(conv, { from: state.clientId, nick: state.nick, user: state.user, body, timestamp: new Date().toISOString(), direct: true }, true);
    scrollDown(conv);
  }
  showSidebar();  // a /msg typed in a room: the conversation is in the sidebar, the room stays in view
}

$("send-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value;
  const conv = state.convs.get(state.viewing);
  if (!text.trim() || !conv) return;
  $("text").value = "";
  if (text.startsWith("/") && !text.startsWith("//")) return slashCommand(text.trim(), conv);
  const body = text.startsWith("//") ? text.slice(1) : text;
  if (conv.kind === "dm") return sendDirect(conv.id, body, conv);
  hideErrors();
  if (!send("message", body, { room_id: conv.id })) return;
  const item = put(conv, { from: state.clientId, nick: state.nick, user: state.user, body, timestamp: new Date().toISOString() }, true);
  state.pending[state.pending.length - 1].item = item;  // marked if refused
  scrollDown(conv);
};
$("create-form").onsubmit = (e) => {
  e.preventDefault();
  const body = { name: $("room-name").value.trim(), keep: true };
  if ($("private").checked) body.private = true;
  if ($("persistent").checked) body.persistent = true;
  ask("create", body, null, "side");
};
$("invite-form").onsubmit = (e) => {
  e.preventDefault();
  const who = $("invitee").value.trim();
  const conv = state.convs.get(state.viewing);
  if (!who || !conv) return;
  ask("invite", /^[0-9a-f]{8}$/.test(who) ? { client_id: who } : { user: who.replace(/^@/, "") }, { room_id: conv.id });
  $("invitee").value = "";
};
$("join-form").onsubmit = (e) => {
  e.preventDefault();
  const roomId = $("room-id").value.trim();
  if (state.convs.has(roomId)) return open(roomId);
  ask("join", { room_id: roomId, keep: true }, null, "side");
};
$("nick-form").onsubmit = (e) => {
  e.preventDefault();
  ask("nick", $("nick").value.trim(), null, "side");
};
$("auth-form").onsubmit = (e) => {
  e.preventDefault();
  signIn($("token").value.trim());
  $("token").value = "";
};
$("sign-in").onclick = () => askSignIn("Sign in: paste your token");
$("retry").onclick = () => { state.delay = 1000; connect(); };

function signIn(token) {
  if (!token) return;
  state.token = token;
  if (state.ws && state.clientId) ask("auth", { token }, null, "auth");  // else at the next welcome
}

// An app that signs its users in hands the page a token, and a fresh one
// before the last expires, from a window of the same origin (the page
// that opened this one): window.postMessage({type: "chatd-token", token}).
window.addEventListener("message", (event) => {
  if (event.origin !== location.origin || !event.data || event.data.type !== "chatd-token") return;
  if (typeof event.data.token === "string") signIn(event.data.token);
});
$("leave").onclick = () => {
  const conv = state.convs.get(state.viewing);
  if (conv) ask("leave", undefined, { room_id: conv.id });
};
$("delete").onclick = () => {
  const conv = state.convs.get(state.viewing);
  if (conv && window.confirm(`Delete ${conv.name} and all its messages, for everyone?`)) {
    ask("delete", { room_id: conv.id });
  }
};
$("refresh").onclick = () => { hideErrors(); send("list", undefined, null, "side"); };
$("new-below").onclick = () => {
  const conv = state.convs.get(state.viewing);
  if (conv) { scrollDown(conv); seenAll(conv); }
};
function toggle(which, button) {
  const on = !document.body.classList.contains(which);
  document.body.classList.remove("show-side", "show-members");
  document.body.classList.toggle(which, on);
  button.setAttribute("aria-expanded", String(on));
}
$("menu").onclick = () => toggle("show-side", $("menu"));
$("members-toggle").onclick = () => toggle("show-members", $("members-toggle"));
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") document.body.classList.remove("show-side", "show-members");
});
document.addEventListener("visibilitychange", () => {
  const conv = state.convs.get(state.viewing);
  if (conv) seenAll(conv);
});

// Back where the page was before a reload: its rooms (entered again by the
// first sync, with what came meanwhile counted as unread) and its nick.
const before = saved();
state.nick = before.nick || null;
state.wantView = before.viewing || null;
for (const id of before.ids || []) state.myIds.add(id);
if (state.nick) $("nick").value = state.nick;
for (const [roomId, r] of Object.entries(before.rooms || {})) {
  const conv = room(roomId, r.name);
  conv.joined = true;
  conv.seen = r.seen || 0;
}
showSidebar();
setInterval(() => { if (state.ws && state.clientId) send("list", undefined, null, "side"); }, 30000);
connect();
