"""The scripts' answers and the channels' lines, decoded by kind."""

from __future__ import annotations

from chatd.backplane import lines


def test_replies_are_read_by_name_not_position() -> None:
    assert lines.Left.decode([b"r1", 1]) == lines.Left("r1", True)
    assert lines.Created.decode([b"ok", b"r2", 1700000000, b"r1", 0]) == lines.Created(
        "ok", 1700000000, lines.Left("r1", False))
    assert lines.Created.decode([b"taken"]).outcome == "taken"
    entered = lines.Entered.decode([b"ok", [b"7", b"Den", b"t", b"a1", b"5", b"1"], [[b"a1"]], b"", 0,
                                    [b'{"id": 7}']])
    assert (entered.last_id, entered.fields, entered.reads, entered.missed, entered.left) == (
        7, ["Den", "t", "a1", "5", "1"], [[b"a1"]], [{"id": 7}], lines.Left("", False))
    assert lines.Entered.decode([b"stale"]) == lines.Entered("stale")
    [listed] = lines.ListedRoom.decode_all([[b"r1", b"42", 3, [b"Den", b"t", b"0"], [1, 0]]])
    assert (listed.room_id, listed.seq, listed.members, listed.fields, listed.flags) == (
        "r1", 42, 3, ["Den", "t", "0"], [True, False])
    assert lines.Read.of([]).refusal is None and lines.Read.of(b"notin").refusal == "notin"
    state = lines.RoomState.decode("r1", [[b"Den", b"1", b"4"], [b"u:bob"], [], [b"a1", b"b1"],
                                          [b"0 ", b"3 bobBob"], [b"a1"], [b"b1"], [None, None], []])
    assert (state.version, state.private, state.invited, state.target_user) == ("4", True, {"u:bob"}, None)
    assert (state.members.members, state.members.owner, state.members.moderators) == (
        [("a1", None, None), ("b1", "Bob", "bob")], "a1", {"b1"})
    assert not state.members.persistent
    # A persistent room a user owns: nobody's connection holds it, and no successor is due.
    lasting = lines.Members.decode([[b"b1"], [b"3 bobBob"], [], [], [b"1", b"alice"], [b"bob"]])
    assert (lasting.persistent, lasting.owner_user, lasting.moderator_users, lasting.owner) == (
        True, "alice", {"bob"}, "")
    assert lines.Members.decode([[b"b1"], [b"3 bobBob"], [], [], [None, None], []]).owner is None
    assert lines.unwho("3 bobBöb".encode()) == ("Böb", "bob")


def test_channel_lines() -> None:
    assert lines.batch(b"M7 a1 {\"x\": 1}\n8 b2 {\"y\": 2}") == (
        [("a1", b'{"x": 1}'), ("b2", b'{"y": 2}')], 8)
    assert lines.RoomEvent.decode("enick a1 3 bobBöb".encode()) == lines.RoomEvent("nick", "a1", "bob", "Böb")
    assert lines.RoomEvent.decode(b"eleave a1 0 ") == lines.RoomEvent("leave", "a1", None, None)
    assert lines.Kick.decode(b"ka1 b2 too loud") == lines.Kick("a1", "b2", "too loud")
