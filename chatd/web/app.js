// chatd's web client: the documented protocol (docs/protocol.md), nothing more.
// Every piece of text from the server goes in with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  ws: null, clientId: null, roomId: null, roomName: null, nick: null, private: false,
  members: new Map(),   // client_id -> {nick (or null), user (or null), role: "owner", "moderator" or "member"}
  pending: [],          // what each outstanding command was, in order: replies come in order
  delay: 1000,          // the next reconnection delay
  wantRoom: null,       // the room to go back to after a reconnection
  // A token to authenticate with: from the page's own #token=... (a
  // fragment never reaches a server's log), or typed when the server asks.
  token: new URLSearchParams(location.hash.slice(1)).get("token"),
  user: null,
  signInWhy: null,      // why the sign-in form is shown (the server's words), if it is
  lastId: null,         // the id of the last message shown in the room: a rejoin asks for what came after
  myIds: new Set(),     // this page's client IDs, this connection's and earlier ones
  persistent: false,    // the room lasts: it keeps read markers and all its history
  oldestId: null,       // the id of the oldest message shown: scrolling up loads those before it
  loadingOlder: false,
  readSent: 0,          // the read marker this page last moved to, in this room
  readTimer: null,
};

// The token leaves the address bar once read: it would be bookmarked, shared
// and reused by a reload long after it expired.
if (location.hash) history.replaceState(null, "", location.pathname + location.search);

// How people read a person: the nick, else the user name; a guest without a
// nick by its client ID (the one thing that tells two such guests apart).
function nameOf(nick, user, clientId) {
  return nick || user || `guest ${clientId}`;
}

function memberName(clientId) {
  const member = state.members.get(clientId);
  if (clientId === state.clientId) return nameOf(state.nick, state.user, clientId) + " (you)";
  return member ? nameOf(member.nick, member.user, clientId) : `guest ${clientId}`;
}

function connect() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
  setStatus("connecting", "Connecting…");
  const ws = new WebSocket(url);
  state.ws = ws;
  state.pending = [];
  state.welcomed = false;  // this connection's session has begun (welcomed)
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
      state.token = null;
      state.user = null;
      askSignIn("Your sign-in expired: paste a new token");
    }
    state.clientId = null;
    state.wantRoom = state.roomId || state.wantRoom;
    inRoom(null, null);
    const seconds = Math.round(state.delay / 1000);
    setStatus("offline", `Disconnected — reconnecting in ${seconds} s`);
    setTimeout(connect, state.delay);
    state.delay = Math.min(state.delay * 2, 30000);
  };
}

// A command the person asked for: the last error goes away.
function ask(kind, body) {
  hideError();
  send(kind, body);
}

// ``as``: what the reply is taken for, when not the action's own (a page of
// older history is not the room's first page).
function send(kind, body, as) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    showError("Not connected: wait for the reconnection");
    return;
  }
  const command = body === undefined ? { action: kind } : { action: kind, body: body };
  state.pending.push(as || kind);
  state.ws.send(JSON.stringify(command));
}

function handle(message) {
  if (message.status === "connected") {
    state.clientId = message.client_id;
    state.myIds.add(message.client_id);
    state.user = message.user || null;
    state.delay = 1000;
    if (state.token && !state.user) {
      send("auth", { token: state.token });  // the rest follows its reply
      return;
    }
    welcomed();
    return;
  }
  if (message.status !== undefined) {
    reply(state.pending.shift(), message);
    return;
  }
  if (message.event !== undefined) {
    roomEvent(message);
    return;
  }
  if (message.from !== undefined) {
    addMessage(message, false);
  }
}

// Connected (and authenticated, if the page has a token): on with the session.
function welcomed() {
  state.welcomed = true;
  showIdentity();
  send("events", true);
  if (state.nick) send("nick", state.nick);
  if (state.wantRoom) {
    // Back in the room with what was said meanwhile, each message once.
    const body = { room_id: state.wantRoom };
    if (state.lastId !== null) body.since = state.lastId;
    send("join", body);
  }
  refreshLists();
}

// The rooms, and a signed-in user's own rooms with their unread counts.
function refreshLists() {
  send("list");
  if (state.user) send("rooms");
}

function showIdentity() {
  setStatus("online", `Connected as ${state.nick || state.user || "a guest"}`);
  $("status").title = state.clientId ? `client ID ${state.clientId}` + (state.user ? `, user ${state.user}` : "") : "";
  $("sign-in").hidden = !!state.user || document.body.dataset.signIn !== "yes";
}

function askSignIn(why) {
  state.signInWhy = why;
  $("auth-why").textContent = why;
  $("auth-form").hidden = false;
  $("token").focus();
}

function reply(kind, message) {
  if (kind === "auth" || message.message === "Authentication required") {
    // The server wants a token (or refused ours): ask for one.
    if (message.status === "error") {
      state.token = null;
      askSignIn(message.message === "Authentication required"
        ? "This server needs you to sign in: paste your token" : `${message.message}: paste another token`);
      if (kind === "auth" && !state.welcomed) welcomed();  // the token it came with: on as a guest
    } else {
      $("auth-form").hidden = true;
    }
  }
  if (message.status === "error") {
    showError(message.message + (message.retry_after ? ` (retry in ${message.retry_after} s)` : ""));
    if (kind === "join") state.wantRoom = null;
    return;
  }
  switch (kind) {
    case "create":
    case "join":
      if (message.messages !== undefined && message.room_id === state.wantRoom && state.lastId !== null) {
        rejoined(message);
        break;
      }
      enterRoom(message.room_id, kind === "create" ? $("room-name").value.trim() || null : null, message.message,
                message.private === true, message.persistent === true);
      break;
    case "rooms":
      showMyRooms(message.rooms || []);
      break;
    case "older":
      showOlder(message.messages || []);
      break;
    case "delete":
      addLine(message.message, "event", new Date().toISOString());
      refreshLists();
      break;
    case "leave":
      state.wantRoom = null;
      state.lastId = null;
      inRoom(null, null);
      refreshLists();
      break;
    case "list":
      showRooms(message.rooms || []);
      break;
    case "members":
      state.members = new Map(message.members.map(
        (m) => [m.client_id, { nick: m.nick, user: m.user || null, role: m.role || "member" }]));
      showMembers();
      break;
    case "invite":
    case "kick":
    case "ban":
    case "unban":
    case "op":
    case "deop":
    case "direct":
      // A change of role shows as its event; the others as their replies.
      if (!["direct", "op", "deop"].includes(kind)) addLine(message.message, "event", new Date().toISOString());
      break;
    case "history":
      for (const m of message.messages || []) addMessage(m, true);
      state.oldestId = message.messages && message.messages.length ? message.messages[0].id : 1;
      markReadSoon();
      break;
    case "nick":
      state.nick = message.nick;
      $("nick").value = message.nick;
      showIdentity();
      showMembers();
      break;
    case "auth":
      state.user = message.user;
      if (state.welcomed) showIdentity();  // signed in on the way: the session goes on
      else welcomed();                      // the token it came with: the session begins
      refreshLists();
      break;
    default:
      break;
  }
}

function enterRoom(roomId, name, text, isPrivate, isPersistent) {
  // "Joined room 'lobby'" / "Room 'lobby' created": the name is in the reply.
  const quoted = /'(.*)'/.exec(text || "");
  state.private = isPrivate;
  state.persistent = isPersistent;  // else the lists say
  inRoom(roomId, name || (quoted ? quoted[1] : roomId));
  state.wantRoom = roomId;
  state.lastId = null;
  state.oldestId = null;
  state.readSent = 0;
  $("messages").replaceChildren();
  send("history", { limit: 50 });
  send("members");
  refreshLists();
}

// Back in the room after a reconnection: only what was missed is added.
function rejoined(message) {
  const quoted = /'(.*)'/.exec(message.message || "");
  inRoom(message.room_id, quoted ? quoted[1] : message.room_id);
  if (!message.recovered) addLine("Some messages were missed while disconnected", "event", new Date().toISOString());
  // This page's own messages are shown already (sent before the reconnection).
  for (const m of message.messages) if (!state.myIds.has(m.from)) addMessage(m, false);
  send("members");
  refreshLists();
}

function inRoom(roomId, name) {
  state.roomId = roomId;
  state.roomName = name;
  $("room-title").textContent = roomId ? `${name} (${roomId})` : "Not in a room";
  $("leave").hidden = !roomId;
  if (!roomId) state.persistent = false;
  showInvite();
  $("text").disabled = !roomId;
  $("send-form").querySelector("button").disabled = !roomId;
  $("text").placeholder = roomId ? "Message" : "Join a room to chat";
  if (!roomId) {
    state.members = new Map();
    showMembers();
  }
  for (const li of $("rooms").children) li.classList.toggle("current", li.dataset.room === roomId);
}

function roomEvent(event) {
  if (event.event === "invite") {
    // Shown at once, wherever the page is; the room is in the list now.
    addLine(`${nameOf(event.nick, event.user, event.client_id)} invited you to the private room ${event.name}`,
            "event", event.timestamp);
    send("list");
    return;
  }
  if (event.event === "read") {
    // Read on another of this user's connections.
    if (event.room_id === state.roomId) state.readSent = Math.max(state.readSent, event.id);
    if (state.user) send("rooms");
    return;
  }
  if (event.room_id !== state.roomId) return;
  if (event.event === "kick" || event.event === "deleted") {
    // Put out of the room (whatever the events setting): not to be rejoined.
    addLine(event.event === "deleted" ? "The room was deleted by its owner"
            : `You were put out of the room by ${memberName(event.by)}` + (event.reason ? `: ${event.reason}` : ""),
            "event", new Date().toISOString());
    state.wantRoom = null;
    state.lastId = null;
    inRoom(null, null);
    refreshLists();
    return;
  }
  const before = memberName(event.client_id);
  const member = state.members.get(event.client_id) || { nick: event.nick, user: event.user || null, role: "member" };
  member.nick = event.nick;
  member.user = event.user || member.user || null;
  if (event.client_id === state.clientId && event.event === "nick") {
    state.nick = event.nick;  // null: a user of that name came, and the name is theirs
    $("nick").value = event.nick || "";
    showIdentity();
  }
  const role = { owner: "owner", op: "moderator", deop: "member" }[event.event];
  if (role) member.role = role;
  if (event.event === "leave") state.members.delete(event.client_id);
  else state.members.set(event.client_id, member);
  showMembers();
  const who = memberName(event.client_id);
  const text = {
    join: `${who} joined`, leave: `${before} left`,
    nick: event.nick ? `${before} is now ${event.nick}` : `${before} has no nick any more (a user of that name is here)`,
    owner: `${who} now owns the room`, op: `${who} is now a moderator`, deop: `${who} is no longer a moderator`,
  }[event.event];
  if (text) addLine(text, "event", event.timestamp);
  if (event.event === "join" || event.event === "leave") refreshRoomsSoon();
}

let refreshing = null;
function refreshRoomsSoon() {
  // Member counts changed: one list request for a burst of joins and leaves.
  if (refreshing) return;
  refreshing = setTimeout(() => { refreshing = null; if (state.clientId) send("list"); }, 500);
}

function addMessage(message, fromHistory) {
  if (typeof message.id === "number") state.lastId = Math.max(state.lastId ?? 0, message.id);
  append(messageItem(message, fromHistory));
  if (!fromHistory) markReadSoon();
}

// A page of older messages, above what is shown, the view kept where it was.
function showOlder(messages) {
  state.loadingOlder = false;
  if (!messages.length) {
    state.oldestId = 1;
    return;
  }
  const list = $("messages");
  const before = list.scrollHeight;
  list.prepend(...messages.map((m) => messageItem(m, true)));
  list.scrollTop += list.scrollHeight - before;
  state.oldestId = messages[0].id;
}

function loadOlder() {
  if (!state.roomId || state.loadingOlder || !(state.oldestId > 1)) return;
  state.loadingOlder = true;
  send("history", { limit: 50, before: state.oldestId }, "older");
}

// The read marker follows what the person has seen: the latest message, once
// the page is in view and scrolled to the bottom (a persistent room, signed in).
function markReadSoon() {
  if (state.readTimer || !state.persistent || !state.user) return;
  state.readTimer = setTimeout(() => {
    state.readTimer = null;
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    if (document.visibilityState !== "visible" || !atBottom || !state.roomId || !state.persistent) return;
    if (state.lastId && state.lastId > state.readSent) {
      state.readSent = state.lastId;
      send("read", { room_id: state.roomId, id: state.lastId });
    }
  }, 500);
}

function messageItem(message, fromHistory) {
  const li = document.createElement("li");
  if (fromHistory) li.classList.add("history");
  if (message.from === state.clientId) li.classList.add("mine");
  const time = document.createElement("span");
  time.className = "meta";
  time.textContent = localTime(message.timestamp) + " ";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = nameOf(message.nick, message.user, message.from);
  who.title = message.user ? `${message.user} (${message.from})` : message.from;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = typeof message.body === "string" ? message.body : JSON.stringify(message.body);
  if (message.direct) {
    li.classList.add("direct");
    who.textContent += " (to you)";
  }
  li.append(time, who, body);
  return li;
}

function addLine(text, kind, timestamp) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = `${localTime(timestamp)} ${text}`;
  append(li);
}

function append(li) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function localTime(timestamp) {
  const date = timestamp ? new Date(timestamp) : new Date();
  return isNaN(date) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// One room of a list: its name (and what follows it: a member count, an
// unread badge), and a button that goes in; the lists say what the current
// room is (private, persistent), which the join's reply does not.
function roomItem(room, text, title, badge, button) {
  const li = document.createElement("li");
  li.dataset.room = room.room_id;
  li.classList.toggle("current", room.room_id === state.roomId);
  const label = document.createElement("span");
  label.textContent = text;
  label.title = title;
  if (badge) label.append(badge);
  if (room.room_id === state.roomId && (state.private !== !!room.private || state.persistent !== !!room.persistent)) {
    state.private = !!room.private;
    state.persistent = !!room.persistent;
    showInvite();
  }
  const go = document.createElement("button");
  go.type = "button";
  go.textContent = button;
  go.onclick = () => ask("join", { room_id: room.room_id });
  li.append(label, go);
  return li;
}

function small(text, className, title) {
  const element = document.createElement("small");
  element.textContent = text;
  if (className) element.className = className;
  if (title) element.title = title;
  return element;
}

function showRooms(rooms) {
  const list = $("rooms");
  list.replaceChildren();
  for (const room of rooms) {
    const text = room.name + (room.private ? " (private)" : "") + (room.persistent ? " ⌂" : "");
    list.append(roomItem(room, text, room.room_id, small(` ${room.members}`), "Join"));
  }
  if (!rooms.length) {
    const li = document.createElement("li");
    li.className = "meta";
    li.textContent = "No rooms yet: create one";
    list.append(li);
  }
}

// A signed-in user's own rooms: the persistent ones they belong to, with
// what they have not read.
function showMyRooms(rooms) {
  const mine = rooms.filter((room) => room.persistent);
  $("my-rooms-pane").hidden = !mine.length;
  const list = $("my-rooms");
  list.replaceChildren();
  for (const room of mine) {
    const title = `${room.room_id}, you are ${room.role === "member" ? "a member" : "its " + room.role}`;
    const badge = room.unread && room.room_id !== state.roomId
      ? small(` ${room.unread}`, "unread", `${room.unread} unread`) : null;
    list.append(roomItem(room, room.name + (room.private ? " (private)" : ""), title, badge, "Open"));
  }
}

function showMembers() {
  const list = $("members");
  list.replaceChildren();
  const mine = (state.members.get(state.clientId) || {}).role;
  for (const [clientId, member] of state.members) {
    const li = document.createElement("li");
    li.dataset.client = clientId;
    const label = document.createElement("span");
    label.textContent = memberName(clientId) + (member.role !== "member" ? ` · ${member.role}` : "");
    label.title = member.user ? `${member.user} (${clientId})` : clientId;
    li.append(label);
    // What the owner and the moderators may do to the others.
    const actions = [];
    if (clientId !== state.clientId && member.role !== "owner" && (mine === "owner" || (mine === "moderator" && member.role === "member"))) {
      actions.push(["kick", "Kick"], ["ban", "Ban"]);
    }
    if (clientId !== state.clientId && mine === "owner") {
      actions.push(member.role === "moderator" ? ["deop", "Deop"] : ["op", "Op"]);
    }
    for (const [action, title] of actions) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = `member-${action}`;
      button.textContent = title;
      button.onclick = () => ask(action, { client_id: clientId });
      li.append(button);
    }
    list.append(li);
  }
  showInvite();
}

// The invitation form: in a private room, for its owner and moderators.
function showInvite() {
  const mine = (state.members.get(state.clientId) || {}).role;
  $("invite-form").hidden = !state.roomId || !state.private || !(mine === "owner" || mine === "moderator");
  $("delete").hidden = !state.roomId || !state.persistent || mine !== "owner" || !state.user;
}

// A line typed with a slash: a direct message or a room action.
function slashCommand(text) {
  const [, name, rest] = /^\/(\S+)\s*(.*)$/.exec(text) || [];
  const [who, ...why] = (rest || "").split(/\s+/);
  const target = (byId) => (byId || /^[0-9a-f]{8}$/.test(who)) ? { client_id: who } : { user: who.replace(/^@/, "") };
  if (name === "msg") {
    const body = (rest || "").slice(who.length).trim();
    if (!who || !body) return showError("/msg needs a client ID or user, then the message");
    ask("direct", { to: who, body: body });
    addLine(`you → ${who}: ${body}`, "direct", new Date().toISOString());
    return;
  }
  if (!["invite", "kick", "ban", "unban", "op", "deop"].includes(name)) return showError(`Unknown command /${name}`);
  if (!who) return showError(`/${name} needs a client ID or a user`);
  const body = target(["kick", "op", "deop"].includes(name));
  if (why.join(" ").trim() && (name === "kick" || name === "ban")) body.reason = why.join(" ").trim();
  ask(name, body);
}

function setStatus(kind, text) {
  const status = $("status");
  status.className = `status ${kind}`;
  status.textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

$("send-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  if (text.startsWith("/") && !text.startsWith("//")) {
    slashCommand(text.trim());
    $("text").value = "";
    return;
  }
  ask("message", text.startsWith("//") ? text.slice(1) : text);
  addMessage({ from: state.clientId, nick: state.nick, user: state.user, body: text, timestamp: new Date().toISOString() },
             false);
  $("text").value = "";
};
$("create-form").onsubmit = (e) => {
  e.preventDefault();
  const name = $("room-name").value.trim();
  // A public room is created the seed's way, with its name alone.
  const body = { name: name };
  if ($("private").checked) body.private = true;
  if ($("persistent").checked) body.persistent = true;
  ask("create", Object.keys(body).length > 1 ? body : name);
};
$("invite-form").onsubmit = (e) => {
  e.preventDefault();
  const who = $("invitee").value.trim();
  if (!who) return;
  ask("invite", /^[0-9a-f]{8}$/.test(who) ? { client_id: who } : { user: who.replace(/^@/, "") });
  $("invitee").value = "";
};
$("join-form").onsubmit = (e) => {
  e.preventDefault();
  ask("join", { room_id: $("room-id").value.trim() });
};
$("nick-form").onsubmit = (e) => {
  e.preventDefault();
  ask("nick", $("nick").value.trim());
};
$("auth-form").onsubmit = (e) => {
  e.preventDefault();
  signIn($("token").value.trim());
  $("token").value = "";
};
$("sign-in").onclick = () => askSignIn("Sign in: paste your token");

function signIn(token) {
  if (!token) return;
  state.token = token;
  if (state.ws && state.clientId) ask("auth", { token: token });  // else at the next welcome
}

// An app that signs its users in hands the page a token, and a fresh one
// before the last expires, from a window of the same origin (the page
// that opened this one): window.postMessage({type: "chatd-token", token}).
window.addEventListener("message", (event) => {
  if (event.origin !== location.origin || !event.data || event.data.type !== "chatd-token") return;
  if (typeof event.data.token === "string") signIn(event.data.token);
});
$("leave").onclick = () => ask("leave");
$("delete").onclick = () => {
  if (window.confirm(`Delete ${state.roomName} and all its messages, for everyone?`)) {
    ask("delete", { room_id: state.roomId });
  }
};
$("refresh").onclick = () => { hideError(); refreshLists(); };
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 20) loadOlder();
  markReadSoon();
});
document.addEventListener("visibilitychange", markReadSoon);
setInterval(() => { if (state.ws && state.clientId) refreshLists(); }, 15000);

connect();
