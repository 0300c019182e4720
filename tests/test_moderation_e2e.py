"""
Moderation in the real daemon: banned words in both modes, a third-party
moderator found as a Twisted plugin, and an asynchronous moderator that
never reorders one sender's messages.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted

from tests.helpers import WSClient, connect, spawn_chatd, stop_chatd


async def pair(port: int) -> tuple[WSClient, str, WSClient]:
    a, b = await connect(port), await connect(port)
    a_id = (await a.next())["client_id"]
    await b.next()
    room_id = (await a.request({"action": "create", "body": "moderated"}))["room_id"]
    await b.request({"action": "join", "body": {"room_id": room_id}})
    return a, a_id, b


@pytest_twisted.ensureDeferred
async def test_banned_words_reject_and_mask(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("darn\nheck no\n")
    for mode, expected in (("reject", None), ("mask", "oh ****, that is fine")):
        chatd = spawn_chatd(
            "--listen", "tcp:0:interface=127.0.0.1", "--moderator", f"banned-words:file={words}:mode={mode}",
        )
        try:
            a, _, b = await pair(await chatd.wait_listening())
            reply = await a.request({"action": "message", "body": "oh DARN, that is fine"})
            if expected is None:
                assert reply == {"status": "error", "message": "Message rejected by moderation"}
            else:
                assert reply == {"status": "success", "message": "Message sent"}
                assert (await b.next())["body"] == expected
            await a.request({"action": "message", "body": "all clean"})
            assert (await b.next())["body"] == "all clean"  # and nothing before it
        finally:
            await stop_chatd(chatd)


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
async def test_a_third_party_moderator_is_found_as_a_twisted_plugin(tmp_path: Path) -> None:
    plugins = tmp_path / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "shouting_moderator.py").write_text(PLUGIN)  # no __init__.py: a namespace
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    chatd = spawn_chatd(
        "--listen", "tcp:0:interface=127.0.0.1", "--moderator", "shouting",
        env={"PYTHONPATH": pythonpath},
    )
    try:
        a, _, b = await pair(await chatd.wait_listening())
        await a.request({"action": "message", "body": "quiet please"})
        assert (await b.next())["body"] == "QUIET PLEASE!"
    finally:
        await stop_chatd(chatd)


@pytest_twisted.ensureDeferred
async def test_an_asynchronous_moderator_never_reorders_a_senders_messages() -> None:
    # tests.moderators.delaying holds bodies starting with "slow" for 0.3 s
    # and answers the others at once.
    chatd = spawn_chatd(
        "--listen", "tcp:0:interface=127.0.0.1", "--moderator", "tests.moderators.delaying:seconds=0.3",
    )
    try:
        a, a_id, b = await pair(await chatd.wait_listening())
        bodies = ["slow one", "fast two", "slow three", "fast four", "fast five"]
        for body in bodies:
            a.send({"action": "message", "body": body})
        a.send({"action": "members"})
        for _ in bodies:
            assert await a.next() == {"status": "success", "message": "Message sent"}
        assert (await a.next())["members"][0]["client_id"] == a_id  # after them, in order
        assert [(await b.next())["body"] for _ in bodies] == [body.upper() for body in bodies]
    finally:
        await stop_chatd(chatd)


@pytest_twisted.ensureDeferred
async def test_a_moderator_that_never_answers_times_out_into_the_policy() -> None:
    chatd = spawn_chatd(
        "--listen", "tcp:0:interface=127.0.0.1", "--moderator", "tests.moderators.never",
        "--moderation-timeout", "1", "--moderation-failure", "pass",
    )
    try:
        a, _, b = await pair(await chatd.wait_listening())
        assert (await a.request({"action": "message", "body": "eventually"}))["status"] == "success"
        assert (await b.next())["body"] == "eventually"
        assert b"Moderator" in chatd.output and b"failed" in chatd.output
    finally:
        await stop_chatd(chatd)
