"""
The seed's chat server as its design document describes it (Python asyncio
and the websockets library), for chatd-bench to measure chatd against.

    python bench/peers/seed_server.py PORT [--broadcast]

Default: the seed's fan-out, ``asyncio.gather`` of one awaited ``send`` per
recipient.  ``--broadcast``: ``websockets.broadcast()``, the best a user of
that library would do.  Everything else is the same code.
"""

import asyncio
import json
import sys
import uuid
from datetime import datetime

import websockets

clients = {}  # client_id -> websocket
rooms = {}  # room_id -> {"clients": set, "metadata": {...}}
client_rooms = {}  # client_id -> room_id
USE_BROADCAST = "--broadcast" in sys.argv


async def send_to_room(room_id, message, exclude):
    payload = json.dumps(message)
    targets = [clients[c] for c in rooms[room_id]["clients"] if c != exclude and c in clients]
    if USE_BROADCAST:
        websockets.broadcast(targets, payload)
    else:
        await asyncio.gather(*(ws.send(payload) for ws in targets), return_exceptions=True)


def leave_room(client_id):
    room_id = client_rooms.pop(client_id, None)
    if room_id is not None and room_id in rooms:
        rooms[room_id]["clients"].discard(client_id)
        if not rooms[room_id]["clients"]:
            del rooms[room_id]


async def handle_connection(websocket):
    client_id = str(uuid.uuid4())[:8]
    clients[client_id] = websocket
    await websocket.send(json.dumps({"status": "connected", "client_id": client_id, "message": "Welcome!"}))
    try:
        async for raw in websocket:
            try:
                data = json.loads(raw)
            except json.JSONDecodeError:
                await websocket.send(json.dumps({"status": "error", "message": "Invalid JSON format"}))
                continue
            action, body = data.get("action"), data.get("body")
            if action == "create":
                leave_room(client_id)
                room_id = str(uuid.uuid4())[:8]
                rooms[room_id] = {"clients": {client_id}, "metadata": {
                    "name": body, "created_at": datetime.now().isoformat(), "created_by": client_id}}
                client_rooms[client_id] = room_id
                await websocket.send(json.dumps(
                    {"status": "success", "room_id": room_id, "message": f"Room '{body}' created"}))
            elif action == "join":
                room_id = body.get("room_id")
                if room_id not in rooms:
                    await websocket.send(json.dumps({"status": "error", "message": f"Room {room_id} does not exist"}))
                    continue
                leave_room(client_id)
                rooms[room_id]["clients"].add(client_id)
                client_rooms[client_id] = room_id
                name = rooms[room_id]["metadata"]["name"]
                await websocket.send(json.dumps(
                    {"status": "success", "message": f"Joined room '{name}'", "room_id": room_id}))
            elif action == "leave":
                if client_id not in client_rooms:
                    await websocket.send(json.dumps({"status": "error", "message": "Not in any room"}))
                    continue
                leave_room(client_id)
                await websocket.send(json.dumps({"status": "success", "message": "Left room"}))
            elif action == "message":
                room_id = client_rooms.get(client_id)
                if room_id is None:
                    await websocket.send(json.dumps({"status": "error", "message": "You must join a room first"}))
                    continue
                await send_to_room(room_id, {
                    "from": client_id, "body": body, "timestamp": datetime.now().isoformat()}, client_id)
                await websocket.send(json.dumps({"status": "success", "message": "Message sent"}))
            else:
                await websocket.send(json.dumps({"status": "error", "message": "Invalid action"}))
    except websockets.ConnectionClosed:
        pass
    finally:
        leave_room(client_id)
        clients.pop(client_id, None)


async def main(port):
    async with websockets.serve(handle_connection, "127.0.0.1", port, max_size=65536):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
