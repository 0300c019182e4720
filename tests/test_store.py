"""The one loop that decides through a room store, on a store written here."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from chatd.errors import ChatError, Unavailable
from chatd.rooms.rules import RoomView, nick_refusal
from chatd.rooms.state import Client, Room
from chatd.rooms.store import DECISIONS, Change, Done, Rename, decide, settled
from tests.fakes import FakeSink


class Store:
    """Assumes an empty room; reads ``read``; applies once ``stale`` runs out."""

    def __init__(self, read: Room, exact: bool = False, stale: int = 0) -> None:
        self.read, self.exact, self.stale = read, exact, stale
        self.looks: list[str] = []
        self.applied: list[Change] = []

    def assume(self, room_id: str) -> tuple[RoomView, bool]:
        return (self.read if self.exact else Room(room_id, "", "", "", 0)), self.exact

    def look(self, room_id: str, client: Client, nick: Optional[str], user: Optional[str], reader: bool) -> Done:
        self.looks.append(room_id)
        return Done(self.read)

    def apply(self, room_id: str, client: Client, view: RoomView, change: Change) -> Done:
        if self.stale:
            self.stale -= 1
            return Done(None)
        self.applied.append(change)
        return Done("applied")


def room_with_nick(nick: str) -> tuple[Room, Client]:
    room, holder, client = Room("r1", "", "", "", 0), Client("h", FakeSink()), Client("c", FakeSink())
    holder.nick = nick
    room.members["h"] = holder
    return room, client


def renaming(store: Store, client: Client, nick: str) -> Any:
    return settled(decide(store, "r1", client, lambda view: nick_refusal(view, client, nick), lambda view: Rename(nick)))


def test_a_decision_on_what_was_assumed_is_applied_without_a_read() -> None:
    room, client = room_with_nick("Sam")
    store = Store(room)
    assert renaming(store, client, "Max") == "applied"
    assert (store.looks, store.applied) == ([], [Rename("Max")])


def test_a_decision_that_no_longer_holds_is_made_again_on_the_room_as_read() -> None:
    room, client = room_with_nick("Sam")
    store = Store(room, stale=1)  # the assumed room had no Sam: applied, it no longer holds
    with pytest.raises(ChatError) as caught:
        renaming(store, client, "sam")
    assert caught.value.message == "Nick 'sam' is already taken in this room"
    assert (store.looks, store.applied) == (["r1"], [])


def test_a_refusal_on_an_exact_room_stands_at_once() -> None:
    room, client = room_with_nick("Sam")
    store = Store(room, exact=True)
    with pytest.raises(ChatError):
        renaming(store, client, "SAM")
    assert store.looks == []


def test_a_room_that_keeps_changing_is_given_up_on() -> None:
    room, client = room_with_nick("Sam")
    store = Store(room, stale=DECISIONS)
    with pytest.raises(Unavailable):
        renaming(store, client, "Max")
    assert len(store.looks) == DECISIONS and store.applied == []
