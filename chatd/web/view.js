// How the page draws what it knows: messages grouped by sender and day,
// the lists of the sidebar, the members. Every piece of text from the
// server goes in with textContent, never as HTML.

export const $ = (id) => document.getElementById(id);

// How people read a person: the nick, else the user name; a guest without a
// nick by its client ID (the one thing that tells two such guests apart).
export function nameOf(nick, user, clientId) {
  return nick || user || `guest ${clientId}`;
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function localTime(timestamp) {
  const date = timestamp ? new Date(timestamp) : new Date();
  return isNaN(date) ? "" : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function dayOf(timestamp) {
  const date = timestamp ? new Date(timestamp) : new Date();
  return isNaN(date) ? "" : date.toDateString();
}

function dayLabel(timestamp) {
  const date = timestamp ? new Date(timestamp) : new Date();
  const today = new Date();
  const yesterday = new Date(today.getTime() - 86400000);
  if (date.toDateString() === today.toDateString()) return "Today";
  if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
  return date.toLocaleDateString([], { weekday: "long", day: "numeric", month: "long", year: "numeric" });
}

// Messages from one sender within five minutes of each other, on one day,
// show its name once.
const GROUP_MS = 5 * 60 * 1000;

// What a list's last (or first) message was, for grouping the next.
function tail(message) {
  return { from: message.from, day: dayOf(message.timestamp), at: Date.parse(message.timestamp) || Date.now() };
}

// The items one message adds after ``before`` (the list's tail, or null):
// a day separator when the day changes, then the message.
export function messageItems(message, before, mine) {
  const items = dayItems(message.timestamp, before);
  const after = tail(message);
  const grouped = before && before.day === after.day && before.from === after.from
    && after.at - before.at < GROUP_MS && !!message.direct === !!before.direct;
  const li = el("li", "msg");
  if (typeof message.id === "number") li.dataset.id = String(message.id);
  if (mine) li.classList.add("mine");
  if (grouped) li.classList.add("cont");
  const head = el("div", "head");
  const who = el("span", "who", nameOf(message.nick, message.user, message.from) + (mine ? " (you)" : ""));
  who.title = message.user ? `${message.user} (${message.from})` : message.from;
  const time = el("time", "meta", localTime(message.timestamp));
  if (message.timestamp) time.dateTime = message.timestamp;
  time.title = new Date(message.timestamp || Date.now()).toLocaleString();
  head.append(who, time);
  const body = el("div", "body", typeof message.body === "string" ? message.body : JSON.stringify(message.body));
  li.append(head, body);
  items.push(li);
  return { items, tail: { ...after, direct: message.direct } };
}

// A day separator, when ``timestamp`` is on another day than ``before``.
export function dayItems(timestamp, before) {
  if (before && before.day === dayOf(timestamp)) return [];
  const day = el("li", "day");
  day.append(el("span", null, dayLabel(timestamp)));
  return [day];
}

// What follows a line that is not a message: the day goes on, no group does.
export function lineTail(timestamp) {
  return { from: null, day: dayOf(timestamp), at: Date.parse(timestamp) || Date.now() };
}

export function lineItem(text, kind, timestamp) {
  const li = el("li", kind || "event");
  const time = el("time", "meta", localTime(timestamp));
  li.append(time, document.createTextNode(" " + text));
  return li;
}

export function badge(count, label) {
  const b = el("span", "badge", String(count));
  b.title = `${count} ${label}`;
  b.setAttribute("aria-label", `${count} ${label}`);
  return b;
}

// One conversation of the sidebar: a button that opens it, with its
// unread count.
export function convItem(conv, viewing, open) {
  const li = el("li");
  li.dataset.room = conv.key;
  const button = el("button", "conv");
  button.type = "button";
  if (conv.key === viewing) {
    li.classList.add("current");
    button.setAttribute("aria-current", "true");
  }
  const name = el("span", "name", (conv.kind === "room" ? "# " : "@ ") + conv.name);
  name.title = conv.kind === "room"
    ? `${conv.id}${conv.private ? ", private" : ""}${conv.persistent ? ", lasting" : ""}` : conv.id;
  button.append(name);
  if (conv.private) button.append(el("span", "tag", "private"));
  if (conv.unread > 0 && conv.key !== viewing) button.append(badge(conv.unread, "unread"));
  button.onclick = () => open(conv.key);
  li.append(button);
  return li;
}
