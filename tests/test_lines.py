"""The scripts' answers and the channels' lines, decoded by kind."""

from __future__ import annotations

from chatd.backplane import lines


def test_replies_are_read_by_name_not_position() -> None:
    assert lines.Left.decode([b"r1", 1]) == lines.Left("r1", True)
    assert lines.Created.decode([b"ok", b"r2", 1700000000, b"r1", 0]) == lines.Created(
        "ok", 1700000000, lines.Left("r1", False))
    assert lines.Created.decode([b"taken"]).outcome == "taken"
    joined = lines.Joined.decode([b"ok", b"Den", b"2026-12-07T00:00:00.000Z", b"a1", 5, 7, b"", 0, 1,
                                  [b'{"id": 7}'], b"a1", b"1"])
    assert (joined.name, joined.seq, joined.last_id, joined.recovered, joined.messages, joined.owner,
            joined.private) == ("Den", 5, 7, True, [{"id": 7}], "a1", True)
    assert lines.Joined.decode([b"ok", b"", b"", b"", 1, 0, b"", 0, -1, [], b"", b"0"]).recovered is None
    assert lines.Joined.decode([b"banned"]) == lines.Joined("banned")
    [listed] = lines.ListedRoom.decode_all([b"r1", b"Den", 3, b"t", b"42", b"0"])
    assert (listed.seq, listed.entry["name"], listed.entry["members"]) == (42, "Den", 3)
    assert lines.Read.of([]).refusal is None and lines.Read.of(b"notin").refusal == "notin"
    state = lines.RoomState.decode([b"ok", b"r1", b"4", b"Den", b"a1", b"1", [b"b1"], [b"u:bob"], [],
                                    [b"a1", b"", b"b1", b"bob"], b"", b""])
    assert (state.version, state.private, state.moderators, state.members, state.target_user) == (
        "4", True, frozenset({"b1"}), [("a1", None), ("b1", "bob")], None)


def test_channel_lines() -> None:
    assert lines.batch(b"M7 a1 {\"x\": 1}\n8 b2 {\"y\": 2}") == (
        [("a1", b'{"x": 1}'), ("b2", b'{"y": 2}')], 8)
    assert lines.RoomEvent.decode("enick a1 3 bobBöb".encode()) == lines.RoomEvent("nick", "a1", "bob", "Böb")
    assert lines.RoomEvent.decode(b"eleave a1 0 ") == lines.RoomEvent("leave", "a1", None, None)
    assert lines.Kick.decode(b"ka1 b2 too loud") == lines.Kick("a1", "b2", "too loud")
