"""
Moderation: the banned-words moderator, the pipeline's rules (order,
rewrites, failures, timeouts), and the adapter keeping each sender's order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from chatd.moderation import (
    PASS,
    REJECT,
    Moderation,
    ModeratorError,
    Rewrite,
    Submission,
    build,
    factories,
)
from chatd.moderation.words import BannedWords, read_words
from chatd.settings import Settings
from tests.fakes import client_frame
from tests.test_ws import SETTINGS, make_factory, peers_in_room


def submission(body: Any) -> Submission:
    return Submission("abcd1234", None, "room0001", body)


# -- banned words ---------------------------------------------------------------


def test_whole_words_case_insensitive_in_every_string_of_a_json_body_keys_too() -> None:
    words = BannedWords(["darn", "heck no"])
    assert words.moderate(submission("Darn it")) == REJECT
    assert words.moderate(submission("well, HECK NO!")) == REJECT
    assert words.moderate(submission("darnation and heckler")) == PASS  # not whole words
    assert words.moderate(submission({"text": ["fine", {"deep": "oh DARN"}]})) == REJECT
    # Clients show keys too.
    assert words.moderate(submission({"darn it": 1})) == REJECT
    assert words.moderate(submission([{"fine": {"oh heck no": None}}])) == REJECT
    assert words.moderate(submission('{"as": "json darn string"}')) == REJECT
    assert words.moderate(submission(42)) == PASS


def test_mask_mode_replaces_matches_with_asterisks_keeping_the_shape() -> None:
    words = BannedWords(["darn", "heck no"], mode="mask")
    assert words.moderate(submission("Darn, heck no, darnation")) == Rewrite("****, *******, darnation")
    assert words.moderate(submission({"darn": ["x darn", 7, None]})) == Rewrite({"****": ["x ****", 7, None]})
    assert words.moderate(submission("clean")) == PASS


def test_the_word_list_file(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("# a comment\n\n  darn  \nheck no\n", encoding="utf-8")
    assert read_words(str(path)) == ["darn", "heck no"]
    with pytest.raises(ValueError, match="cannot read the word list"):
        read_words(str(tmp_path / "missing.txt"))


def test_banned_words_is_a_twisted_plugin_and_builds_from_a_spec(tmp_path: Path) -> None:
    assert "banned-words" in factories()
    path = tmp_path / "words.txt"
    path.write_text("darn\n")
    moderator = build(f"banned-words:file={path}:mode=mask")
    assert moderator.moderate(submission("darn")) == Rewrite("****")
    with pytest.raises(ModeratorError, match="mode must be reject or mask, not 'loud'"):
        build(f"banned-words:file={path}:mode=loud")
    with pytest.raises(ModeratorError, match="unknown option 'colour'"):
        build(f"banned-words:file={path}:colour=red")
    with pytest.raises(ModeratorError, match="the word list is empty"):
        (tmp_path / "empty.txt").write_text("# nothing\n")
        build(f"banned-words:file={tmp_path / 'empty.txt'}")


def test_a_moderator_by_dotted_path() -> None:
    moderator = build("tests.moderators.delaying:seconds=1")
    assert moderator.moderate(submission("quiet")) == Rewrite("QUIET")
    with pytest.raises(ModeratorError, match="cannot be imported"):
        build("tests.nowhere.thing")


# -- the pipeline -------------------------------------------------------------------


class Fixed:
    def __init__(self, verdict: Any) -> None:
        self.verdict = verdict
        self.seen: list[Any] = []

    def moderate(self, sub: Submission) -> Any:
        self.seen.append(sub.body)
        return self.verdict(sub) if callable(self.verdict) else self.verdict


def verdict_of(d: Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the verdict is not there yet"
    return results[0]


def test_rewrites_feed_the_next_moderator_and_a_reject_stops() -> None:
    first = Fixed(lambda sub: Rewrite(sub.body + "!"))
    second = Fixed(lambda sub: Rewrite(sub.body.upper()))
    outcomes: list[str] = []
    moderation = Moderation([first, second], Clock(), counted=outcomes.append)
    assert verdict_of(moderation.review(submission("hi"))) == Rewrite("HI!")
    assert second.seen == ["hi!"]
    stopper, after = Fixed(REJECT), Fixed(PASS)
    assert verdict_of(Moderation([stopper, after], Clock()).review(submission("x"))) == REJECT
    assert after.seen == []
    assert verdict_of(Moderation([Fixed(PASS)], Clock()).review(submission("x"))) == PASS
    assert outcomes == ["rewritten"]


@pytest.mark.parametrize("policy, expected", [("reject", REJECT), ("pass", PASS)])
def test_a_failing_moderator_is_logged_and_the_policy_applies(policy: str, expected: Any, caplog: Any) -> None:
    class Broken:
        def moderate(self, sub: Submission) -> Any:
            raise RuntimeError("moderator bug")

    outcomes: list[str] = []
    moderation = Moderation([Broken()], Clock(), on_failure=policy, counted=outcomes.append)
    assert verdict_of(moderation.review(submission("x"))) == expected
    assert "failed" in outcomes
    failing_deferred = Fixed(lambda sub: fail(OSError("service down")))
    assert verdict_of(Moderation([failing_deferred], Clock(), on_failure=policy).review(submission("x"))) == expected
    not_a_verdict = Fixed("looks fine to me")
    assert verdict_of(Moderation([not_a_verdict], Clock(), on_failure=policy).review(submission("x"))) == expected


def test_an_asynchronous_moderator_and_the_timeout() -> None:
    clock = Clock()
    pending: list[Deferred] = []

    class Later:
        def moderate(self, sub: Submission) -> Deferred:
            d: Deferred = Deferred()
            pending.append(d)
            return d

    moderation = Moderation([Later(), Fixed(lambda sub: Rewrite(sub.body * 2))], clock, timeout=5)
    d = moderation.review(submission("ab"))
    assert not d.called
    pending[0].callback(Rewrite("cd"))
    assert verdict_of(d) == Rewrite("cdcd")  # the next moderator ran on the rewrite

    slow = moderation.review(submission("x"))
    clock.advance(4.9)
    assert not slow.called
    clock.advance(0.2)
    assert verdict_of(slow) == REJECT  # too slow counts as failing; policy: reject


# -- the adapter keeps each sender's order -----------------------------------------


def test_commands_wait_behind_a_message_under_review_and_keep_their_order() -> None:
    pending: list[tuple[Submission, Deferred]] = []

    class Held:
        def moderate(self, sub: Submission) -> Any:
            if sub.body == "first":
                d: Deferred = Deferred()
                pending.append((sub, d))
                return d
            return PASS

    factory = make_factory(moderators=[Held()])
    room_id, [sender, other] = peers_in_room(factory, 2)
    assert sender.send({"action": "message", "body": "first"}) == []  # held
    assert sender.send({"action": "message", "body": "second"}) == []  # waits behind it
    assert sender.send({"action": "members"}) == []
    assert other.messages() == []
    pending[0][1].callback(PASS)
    replies = sender.messages()
    assert [r["message"] for r in replies[:2]] == ["Message sent", "Message sent"]
    assert replies[2]["members"][0]["client_id"] == sender.protocol._client.client_id
    assert [m["body"] for m in other.messages()] == ["first", "second"]


def test_a_rejected_message_gets_the_moderation_error() -> None:
    factory = make_factory(moderators=[Fixed(REJECT)])
    _, [sender, other] = peers_in_room(factory, 2)
    assert sender.send({"action": "message", "body": "nope"}) == [
        {"status": "error", "message": "Message rejected by moderation"}
    ]
    assert other.messages() == []
    assert factory.metrics.registry.get_sample_value("chatd_moderation_total", {"outcome": "rejected"}) == 1


def test_too_many_commands_waiting_for_moderation_close_1008() -> None:
    settings = Settings(**{**SETTINGS.__dict__, "rate_messages": 0, "moderation_timeout": 60})
    factory = make_factory(settings, moderators=[Fixed(lambda sub: Deferred())])
    _, [sender, _other] = peers_in_room(factory, 2)
    for _ in range(101):  # one under review, a hundred waiting
        sender.send({"action": "message", "body": "x"})
    sender.protocol.dataReceived(client_frame(b'{"action": "message", "body": "one too many"}'))
    frames = sender.frames()
    assert (8, b"\x03\xf0" + b"Too many messages awaiting moderation") in frames


def test_json_bodies_stay_json_through_masking(tmp_path: Path) -> None:
    path = tmp_path / "w.txt"
    path.write_text("darn\n")
    factory = make_factory(moderators=[build(f"banned-words:file={path}:mode=mask")])
    _, [sender, other] = peers_in_room(factory, 2)
    sender.send({"action": "message", "body": {"text": "darn it", "n": 1}})
    [message] = other.messages()
    assert message["body"] == {"text": "**** it", "n": 1}
    json.dumps(message)
