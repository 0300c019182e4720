"""
Moderation in the real daemon: banned words in both modes, a third-party
moderator found as a Twisted plugin, and an asynchronous moderator that
never reorders one sender's messages.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted

from tests.support.clients import two_in_a_room


@pytest_twisted.ensureDeferred
async def test_banned_words_reject_and_mask(tmp_path: Path, daemon_factory) -> None:
    words = tmp_path / "words.txt"
    words.write_text("darn\nheck no\n")
    for mode, expected in (("reject", None), ("mask", "oh ****, that is fine")):
        chatd = daemon_factory(
            "--listen", "tcp:0:interface=127.0.0.1", "--moderator", f"banned-words:file={words}:mode={mode}",
        )
        a, _, b = await two_in_a_room(await chatd.wait_listening())
        reply = await a.request({"action": "message", "body": "oh DARN, that is fine"})
        if expected is None:
            assert reply == {"status": "error", "message": "Message rejected by moderation"}
        else:
            assert reply == {"status": "success", "message": "Message sent"}
            assert (await b.next())["body"] == expected
        await a.request({"action": "message", "body": "all clean"})
        assert (await b.next())["body"] == "all clean"  # and nothing before it


PLUGIN = '''
from zope.interface import implementer
from twisted.plugin import IPlugin
from chatd.moderation import IModeratorFactory, Rewrite


class Shouting:
    def moderate(self, submission):
        return Rewrite(str(submission.body).upper() + "!")


@implementer(IPlugin, IModeratorFactory)
class ShoutingFactory:
    name = "shouting"

    def create(self, options):
        return Shouting()


shouting = ShoutingFactory()
'''


@pytest_twisted.ensureDeferred
async def test_a_third_party_moderator_is_found_as_a_twisted_plugin(tmp_path: Path, daemon_factory) -> None:
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "shouting_moderator.py").write_text(PLUGIN)  # no __init__.py: a namespace
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--moderator", "shouting",
        env={"PYTHONPATH": pythonpath},
    )
    a, _, b = await two_in_a_room(await chatd.wait_listening())
    await a.request({"action": "message", "body": "quiet please"})
    assert (await b.next())["body"] == "QUIET PLEASE!"


@pytest_twisted.ensureDeferred
async def test_an_asynchronous_moderator_never_reorders_a_senders_messages(daemon_factory) -> None:
    # tests.moderators.delaying holds bodies starting with "slow" for 0.3 s
    # and answers the others at once.
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--moderator", "tests.moderators.delaying:seconds=0.3",
    )
    a, a_id, b = await two_in_a_room(await chatd.wait_listening())
    bodies = ["slow one", "fast two", "slow three", "fast four", "fast five"]
    for body in bodies:
        a.send({"action": "message", "body": body})
    a.send({"action": "members"})
    for _ in bodies:
        assert await a.next() == {"status": "success", "message": "Message sent"}
    assert (await a.next())["members"][0]["client_id"] == a_id  # after them, in order
    assert [(await b.next())["body"] for _ in bodies] == [body.upper() for body in bodies]


@pytest_twisted.ensureDeferred
async def test_a_moderator_that_never_answers_times_out_into_the_policy(daemon_factory) -> None:
    chatd = daemon_factory(
        "--listen", "tcp:0:interface=127.0.0.1", "--moderator", "tests.moderators.never",
        "--moderation-timeout", "1", "--moderation-failure", "pass",
    )
    a, _, b = await two_in_a_room(await chatd.wait_listening())
    assert (await a.request({"action": "message", "body": "eventually"}))["status"] == "success"
    assert (await b.next())["body"] == "eventually"
    assert b"Moderator" in chatd.output and b"failed" in chatd.output
