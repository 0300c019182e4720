"""
What a cluster node hears from Redis: each room's channel (its batches of
messages, its events, kicks, deletion and the call for a new owner) and
the node's own channel of direct messages, delivered to this node's
clients.  :class:`~chatd.backplane.cluster.ClusterChat` is the listener
Redis calls, and hands each message here.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from chatd import codec
from chatd.backplane import lines, redis_store, scripts
from chatd.backplane.batches import RoomBatches
from chatd.backplane.calls import ShardCalls
from chatd.backplane.membership import Membership
from chatd.backplane.shards import Shards
from chatd.core import ChatCore
from chatd.rooms import rules
from chatd.rooms.state import Room, blocks


class ChannelListener:
    """A node's deliveries of what its channels bring."""

    def __init__(
        self, core: ChatCore, membership: Membership, batches: RoomBatches, calls: ShardCalls, shards: Shards,
        rooms: redis_store.RedisRooms, clock: IReactorTime,
    ) -> None:
        self.core = core
        self.membership = membership
        self.batches = batches
        self.calls = calls
        self.shards = shards
        self.rooms = rooms
        self.clock = clock

    def channel_message(self, room_id: str, data: bytes) -> None:
        room = self.core.rooms.get(room_id)
        if data[:1] != b"M" or room is None:
            self.batches.release(room_id)  # any other news of the room: the frames wait no more
        if room is None:
            return  # nobody here is in it any more
        now = self.clock.seconds()
        if data[:1] == b"M":
            messages, message_id = lines.batch(data)
            self.membership.saw(room, message_id)
            counts = self.batches.deliver(room, messages, now)
            # Counted once for the batch.
            self.core.events.delivered(
                sum(counts), sum(len(payload) * n for (_, payload), n in zip(messages, counts, strict=True))
            )
        elif data[:1] == b"e":
            event = lines.RoomEvent.decode(data)
            kind, subject, nick = event.kind, event.subject, event.nick
            self.membership.event(room, kind, subject)
            if kind == "nick" and not nick:
                self._nick_claimed(room_id, subject)
            if kind != "create":
                # A nick taken away (by a user's own name) is news to its holder too.
                self.core.announce(room, kind, subject, nick, now, user=event.user,
                                   everyone=kind in ("op", "deop", "owner") or (kind == "nick" and not nick))
        elif data[:1] == b"k":
            kick = lines.Kick.decode(data)  # out of the room, and told so
            self._kicked(room, kick.subject, kick.by, kick.reason, now)
        elif data[:1] == b"x":
            # Its owner deleted it: everyone here is out, and told so.
            members = list(room.members.values())
            for member in members:
                self.membership.kicked(member, room)
            self.core.deliver_payload(members, codec.encode(codec.deleted(room_id)), now)
        elif data[:1] == b"h":
            # Its owner has gone: this node, as every node with members in
            # it, tries to put the successor in; one of them does.
            self.calls.background(Deferred.fromCoroutine(self.rooms.succeed(room_id, self.shards.of(room_id))),
                             "naming a room's owner")

    def _kicked(self, room: Room, client_id: str, by: str, reason: str, now: float) -> None:
        client = self.core.clients.get(client_id)
        if client is None:
            return
        self.membership.kicked(client, room)
        self.core.deliver_payload([client], codec.encode(codec.kick(room.room_id, by, reason)), now)

    def _nick_claimed(self, room_id: str, client_id: str) -> None:
        """A client of this node lost its nick to a user's own name in its
        room (rules.name_holders): it has none from now on, on every shard."""
        client = self.core.clients.get(client_id)
        if client is None or client.nick is None:
            return
        client.nick = None
        self.calls.on_each(scripts.CHANGE, self.shards.node, client_id, "[]", redis_store.renamed(client_id, None, client.user),
                      but=self.shards.of(room_id))

    def direct_message(self, data: bytes) -> None:
        # <sender> <client>,<client>...[ n]\n<the encoded message>, where n
        # marks a notice (an invitation): only for those who asked for events.
        head, _, payload = data.partition(b"\n")
        sender, _, rest = head.decode().partition(" ")
        targets, _, kind = rest.partition(" ")
        recipients = [
            client for client in map(self.core.clients.get, targets.split(","))
            if client is not None and client.client_id != sender
        ]
        if kind == "n":
            notice = json.loads(payload)  # an invitation: rare, and read by the same rule as one process's
            recipients = [client for client in recipients
                          if rules.hears_invitation(client, notice["room_id"], sender, notice.get("user"))]
        elif any(client.blocked for client in recipients):
            user = json.loads(payload).get("user")
            recipients = [client for client in recipients if not blocks(client, sender, user)]
        if recipients:
            reached = self.core.deliver_payload(recipients, payload, self.clock.seconds())
            self.core.events.delivered(reached, reached * len(payload))
