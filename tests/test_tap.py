"""
The twistd plugin: option parsing and the service it builds.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage

from chatd import tap
from chatd.service import ChatService
from chatd.settings import Settings


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults() -> None:
    assert asdict(parse().settings()) == asdict(Settings())
    assert Settings().listen == ("tcp:8765:interface=127.0.0.1",)


def test_every_option() -> None:
    settings = parse(
        "--listen", "tcp:9000",
        "--listen", "unix:/tmp/chatd.sock",
        "--max-message-size", "1000",
        "--max-outgoing-buffer", "2000",
        "--ping-interval", "0",
        "--ping-timeout", "7.5",
        "--handshake-timeout", "3",
        "--close-timeout", "2",
        "--shutdown-timeout", "4",
    ).settings()
    assert asdict(settings) == {
        "listen": ("tcp:9000", "unix:/tmp/chatd.sock"),
        "max_message_size": 1000,
        "max_outgoing_buffer": 2000,
        "ping_interval": 0.0,
        "ping_timeout": 7.5,
        "handshake_timeout": 3.0,
        "close_timeout": 2.0,
        "shutdown_timeout": 4.0,
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-message-size", "0"], "--max-message-size must be greater than 0"),
        (["--max-message-size", "-5"], "--max-message-size must be greater than 0"),
        (["--max-outgoing-buffer", "lots"], "--max-outgoing-buffer must be a whole number"),
        (["--ping-interval", "-1"], "--ping-interval must be a finite number of seconds >= 0"),
        (["--ping-timeout", "nan"], "--ping-timeout must be a finite number of seconds >= 0"),
        (["--handshake-timeout", "0"], "--handshake-timeout must be at least 1 second, not 0"),
        (["--close-timeout", "0.5"], "--close-timeout must be at least 1 second, not 0.5"),
        (["--ping-timeout", "0.2"], "--ping-timeout must be at least 1 second (or 0 to turn it off)"),
        (["--shutdown-timeout", "soon"], "--shutdown-timeout must be a number of seconds"),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse(*argv)
    assert message in str(caught.value)


def test_make_service_listens_on_the_default() -> None:
    reactor = MemoryReactor()
    service = tap.makeService(parse(), reactor=reactor)
    assert isinstance(service, ChatService)
    service.startService()
    [(port, factory, backlog, interface)] = reactor.tcpServers
    assert (port, interface) == (8765, "127.0.0.1")
    assert factory is service.factory


def test_make_service_listens_on_every_listen_option() -> None:
    reactor = MemoryReactor()
    service = tap.makeService(
        parse("--listen", "tcp:9001", "--listen", "unix:/tmp/chatd-test.sock"), reactor=reactor
    )
    service.startService()
    assert [(p, i) for p, _, _, i in reactor.tcpServers] == [(9001, "")]
    assert [u[0] for u in reactor.unixServers] == ["/tmp/chatd-test.sock"]


def test_the_plugin_is_found() -> None:
    makers = {p.tapname: p for p in getPlugins(IPlugin) if hasattr(p, "tapname")}
    assert makers["chatd"].module == "chatd.tap"
    assert makers["chatd"].options is tap.Options
