// The seed's chat protocol on Node.js with the `ws` package: what a user
// might pick for speed. For chatd-bench: node server.js PORT
"use strict";
const { WebSocketServer } = require("ws");
const crypto = require("crypto");

const port = Number(process.argv[2]);
const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false, maxPayload: 65536 });
const clients = new Map(); // client id -> socket
const rooms = new Map(); // room id -> { clients: Set, name }
const clientRooms = new Map(); // client id -> room id

const newId = () => crypto.randomUUID().slice(0, 8);
const reply = (ws, obj) => ws.send(JSON.stringify(obj));

function leaveRoom(id) {
  const roomId = clientRooms.get(id);
  if (roomId === undefined) return;
  clientRooms.delete(id);
  const room = rooms.get(roomId);
  if (!room) return;
  room.clients.delete(id);
  if (room.clients.size === 0) rooms.delete(roomId);
}

wss.on("connection", (ws) => {
  const id = newId();
  clients.set(id, ws);
  reply(ws, { status: "connected", client_id: id, message: "Welcome!" });
  ws.on("message", (raw, isBinary) => {
    let data;
    try { data = JSON.parse(raw.toString()); } catch (e) {
      return reply(ws, { status: "error", message: "Invalid JSON format" });
    }
    const { action, body } = data;
    if (action === "create") {
      leaveRoom(id);
      const roomId = newId();
      rooms.set(roomId, { clients: new Set([id]), name: body });
      clientRooms.set(id, roomId);
      reply(ws, { status: "success", room_id: roomId, message: `Room '${body}' created` });
    } else if (action === "join") {
      const roomId = body && body.room_id;
      const room = rooms.get(roomId);
      if (!room) return reply(ws, { status: "error", message: `Room ${roomId} does not exist` });
      leaveRoom(id);
      room.clients.add(id);
      clientRooms.set(id, roomId);
      reply(ws, { status: "success", message: `Joined room '${room.name}'`, room_id: roomId });
    } else if (action === "leave") {
      if (!clientRooms.has(id)) return reply(ws, { status: "error", message: "Not in any room" });
      leaveRoom(id);
      reply(ws, { status: "success", message: "Left room" });
    } else if (action === "message") {
      const roomId = clientRooms.get(id);
      if (roomId === undefined) return reply(ws, { status: "error", message: "You must join a room first" });
      const payload = JSON.stringify({ from: id, body, timestamp: new Date().toISOString() });
      for (const other of rooms.get(roomId).clients) {
        if (other !== id) clients.get(other).send(payload);
      }
      reply(ws, { status: "success", message: "Message sent" });
    } else {
      reply(ws, { status: "error", message: "Invalid action" });
    }
  });
  ws.on("close", () => { leaveRoom(id); clients.delete(id); });
  ws.on("error", () => {});
});
