"""
The twistd plugin: option parsing, the config file, and the service they
build.
"""

from __future__ import annotations

import gc
import re
from dataclasses import asdict
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactor
from twisted.plugin import IPlugin, getPlugins

from chatd import config, tap
from chatd.runtime import GC_THRESHOLD, CollectorTuning
from chatd.service import ChatService
from chatd.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> Settings:
    options = tap.Options()
    options.parseOptions(list(argv))
    return options.settings


def parse_error(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        parse(*argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("chatd: ") and err.count("\n") == 1
    return err.strip()


def test_defaults() -> None:
    # twistd chatd keeps persistent rooms in ./chatd.db (memory with --redis).
    assert asdict(parse()) == asdict(Settings(store="sqlite:chatd.db"))
    assert Settings().listen == ("tcp:8765:interface=127.0.0.1",)


def test_every_option_on_the_command_line(tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("darn\n")
    secret = tmp_path / "jwt.key"
    secret.write_bytes(b"a long enough shared secret for HS256 tokens")
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
        "--log-format", "json",
        "--log-messages",
        "--metrics", "tcp:9108:interface=127.0.0.1",
        "--api", "tcp:8766:interface=127.0.0.1", "--api-keys", "/etc/chatd/api-keys",
        "--max-connections", "500",
        "--max-connections-per-ip", "0",
        "--allowed-origin", "https://chat.example.org",
        "--allowed-origin", "HTTP://Example.org:8080/",
        "--rate-messages", "5.5",
        "--rate-messages-burst", "11",
        "--rate-creates", "0",
        "--rate-creates-burst", "3",
        "--rate-connections-per-ip", "120",
        "--trusted-proxy", "10.0.0.0/8",
        "--trusted-proxy", "2001:db8::7",
        "--limit-loopback",
        "--rate-commands", "5", "--rate-commands-burst", "7",
        "--forwarded-header", "forwarded",
        "--history-size", "0",
        "--history-bytes", "1000",
        "--max-rooms-per-connection", "5",
        "--moderator", f"banned-words:file={words}",
        "--moderator", f"banned-words:file={words}:mode=mask",
        "--moderation-failure", "pass",
        "--moderation-timeout", "2",
        "--auth", f"jwt:key={secret}:leeway=5",
        "--guests", "deny",
        "--message-log", "sqlite:/var/lib/chatd/messages.db", "--message-log-keep", "90",
        "--store", "memory", "--persistent-rooms", "anyone",
        "--history-memory", "1048576",
        "--redis", "redis://:s%40cret@redis.internal:6380/2",
        "--redis-lease", "20",
        "--redis-timeout", "3",
        "--workers", "1",
        "--permessage-deflate",
    )
    assert asdict(settings) == {
        "listen": ("tcp:9000", "unix:/tmp/chatd.sock"),
        "max_message_size": 1000,
        "max_outgoing_buffer": 2000,
        "ping_interval": 0.0,
        "ping_timeout": 7.5,
        "handshake_timeout": 3.0,
        "close_timeout": 2.0,
        "shutdown_timeout": 4.0,
        "log_format": "json",
        "log_messages": True,
        "metrics": "tcp:9108:interface=127.0.0.1",
        "api": "tcp:8766:interface=127.0.0.1",
        "api_keys": "/etc/chatd/api-keys",
        "max_connections": 500,
        "max_connections_per_ip": 0,
        "allowed_origins": ("https://chat.example.org:443", "http://example.org:8080"),
        "rate_messages": 5.5,
        "rate_messages_burst": 11,
        "rate_creates": 0.0,
        "rate_creates_burst": 3,
        "rate_connections_per_ip": 120.0,
        "trusted_proxies": ("10.0.0.0/8", "2001:db8::7/128"),
        "limit_loopback": True,
        "rate_commands": 5.0,
        "rate_commands_burst": 7,
        "forwarded_header": "forwarded",
        "history_size": 0,
        "max_rooms_per_connection": 5,
        "history_bytes": 1000,
        "moderators": (f"banned-words:file={words}", f"banned-words:file={words}:mode=mask"),
        "moderation_failure": "pass",
        "moderation_timeout": 2.0,
        "auth": f"jwt:key={secret}:leeway=5",
        "guests": "deny",
        "message_log": "sqlite:/var/lib/chatd/messages.db",
        "message_log_keep": 90.0,
        "store": "memory",
        "persistent_rooms": "anyone",
        "history_keep": None,
        "rooms": (),
        "history_memory": 1048576,
        "redis": ("redis://:s%40cret@redis.internal:6380/2",),
        "redis_lease": 20.0,
        "redis_timeout": 3.0,
        "workers": 1,
        "permessage_deflate": True,
    }


def test_stores_and_declared_rooms(tmp_path: Path) -> None:
    # Without --store: the message log's database is the store (the log a
    # part of it); with --redis, memory.
    assert parse("--message-log", "sqlite:/tmp/m.db").store == "sqlite:/tmp/m.db"
    assert parse("--redis", "redis://127.0.0.1:6379/0").store == "memory"
    assert parse("--store", "postgresql://chatd@127.0.0.1:5432/chatd").store == "postgresql://chatd@127.0.0.1:5432/chatd"
    assert parse("--room", "Team:private:owner=alice", "--room", "Lobby").rooms == (
        ("Team", True, "alice"), ("Lobby", False, None))
    config = tmp_path / "chatd.toml"
    config.write_text('room = [{name = "Team", private = true, owner = "alice"}, "Lobby"]\nhistory-keep = 30\n')
    settings = parse("--config", str(config))
    assert settings.rooms == (("Team", True, "alice"), ("Lobby", False, None))
    assert settings.history_keep == 30.0


def test_every_option_is_documented_in_the_example_config() -> None:
    # Each option stands in etc/chatd.toml as a key set to its default, or
    # commented out where the default is "off" (TOML has no null).
    path = ROOT / "etc" / "chatd.toml"
    text = path.read_text()
    for option in config.OPTIONS:
        assert re.search(rf"^(# )?{option.name} = ", text, re.M), option.name
    assert asdict(parse("--config", str(path))) == asdict(Settings(store="sqlite:chatd.db"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-message-size", "0"], "--max-message-size must be at least 1, not 0"),
        (["--max-message-size", "-5"], "--max-message-size must be at least 1, not -5"),
        (["--max-outgoing-buffer", "lots"], "--max-outgoing-buffer must be a whole number, not 'lots'"),
        (["--ping-interval", "-1"], "--ping-interval must be a finite number of seconds >= 0, not -1"),
        (["--ping-timeout", "nan"], "--ping-timeout must be a finite number of seconds >= 0, not nan"),
        (["--handshake-timeout", "0"], "--handshake-timeout must be at least 1 second, not 0"),
        (["--close-timeout", "0.5"], "--close-timeout must be at least 1 second, not 0.5"),
        (["--ping-timeout", "0.2"], "--ping-timeout must be at least 1 second (or 0 to turn it off), not 0.2"),
        (["--shutdown-timeout", "soon"], "--shutdown-timeout must be a number, not 'soon'"),
        (["--listen", "tcp:99999"], "--listen 'tcp:99999': port 99999 is out of range (0-65535)"),
        (["--listen", "tcp:http"], "--listen 'tcp:http': the port must be a number, not 'http'"),
        (["--log-format", "xml"], "--log-format must be one of text, json, not 'xml'"),
        (["--max-connections", "-1"], "--max-connections must be at least 0, not -1"),
        (["--rate-messages", "-2"], "--rate-messages must be a finite number >= 0 (0 turns the limit off), not -2"),
        (["--rate-messages-burst", "0"], "--rate-messages-burst must be at least 1, not 0"),
        (["--moderator", "nope"], "--moderator no moderator named 'nope' (installed: banned-words)"),
        (["--moderator", "banned-words"], "--moderator banned-words: needs file=PATH, a list of words one a line"),
        (["--moderator", "banned-words:file=/nonexistent/words.txt"],
         "--moderator banned-words: cannot read the word list /nonexistent/words.txt: No such file or directory"),
        (["--moderator", "banned-words:mode"], "--moderator 'banned-words:mode': options are key=value, not 'mode'"),
        (["--moderation-failure", "shrug"], "--moderation-failure must be one of reject, pass, not 'shrug'"),
        (["--message-log", "/tmp/x.db"], "--message-log must be sqlite:PATH, not '/tmp/x.db'"),
        (["--store", "mysql://x"], "--store must be memory, sqlite:PATH or postgresql://USER@HOST:PORT/DB, not 'mysql://x'"),
        (["--store", "sqlite:/tmp/x.db", "--redis", "redis://127.0.0.1:6379/0"],
         "--store sqlite: is one process's; a cluster (--redis) keeps its rooms in --store postgresql://... (or memory)"),
        (["--store", "sqlite:/tmp/x.db", "--message-log", "sqlite:/tmp/y.db"],
         "--message-log sqlite:/tmp/y.db is not the store (sqlite:/tmp/x.db): the message log is kept in the "
         "store's database; leave it out or name the same one"),
        (["--store", "memory", "--room", "Team"], "--room needs a store (--store sqlite:PATH or postgresql://...)"),
        (["--api", "tcp:8766"], "--api needs --api-keys PATH: a file of keys, one a line"),
        (["--api", "tcp:8766", "--api-keys", "k", "--workers", "2", "--redis", "redis://127.0.0.1:6379/0"],
         "--api with --workers is not supported: serve the API from a chatd without --workers "
         "(any node of a cluster acts on the whole cluster)"),
        (["--store", "memory", "--history-keep", "3"],
         "--history-keep needs a store (--store sqlite:PATH or postgresql://...)"),
        (["--room", "Team:public"], "--room must be NAME[:private][:owner=USER], not 'Team:public'"),
        (["--persistent-rooms", "all"], "--persistent-rooms must be one of users, anyone, not 'all'"),
        (["--redis", "localhost:6379"], "--redis 'localhost:6379' must start with redis://, unix:// or sentinel://"),
        (["--redis", "redis://host/db1"], "--redis 'redis://host/db1': the database must be a number, not 'db1'"),
        (["--redis", "redis://:99999"], "--redis 'redis://:99999' is not a Redis URL: Port out of range 0-65535"),
        (["--redis", "sentinel://h1/chatd"], "--redis 'sentinel://h1/chatd': each sentinel must be HOST:PORT, not 'h1'"),
        (["--redis", "sentinel://h1:26379"],
         "--redis 'sentinel://h1:26379' names no service: sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"),
        (["--redis", "sentinel://h1:26379/chatd/x"],
         "--redis 'sentinel://h1:26379/chatd/x': the database must be a number, not 'x'"),
        (["--redis", "redis://a:6379/0", "--redis", "redis://a:6379/0"],
         "--redis names 'redis://a:6379/0' twice: each shard is one Redis"),
        (["--workers", "0"], "--workers must be at least 1, not 0"),
        (["--workers", "2"], "--workers 2 needs --redis: workers share their rooms through Redis"),
        (["--allowed-origin", "chat.example.org"],
         "--allowed-origin 'chat.example.org' is not an origin like https://chat.example.org"),
        (["--allowed-origin", "https://x.org/path"],
         "--allowed-origin 'https://x.org/path' is not an origin like https://chat.example.org"),
        (["--trusted-proxy", "proxy.example.org"],
         "--trusted-proxy 'proxy.example.org' is not an IP address or network like 10.0.0.0/8"),
        (["--listen", "haproxy:tcp:http"], "--listen 'tcp:http': the port must be a number, not 'http'"),
        (["--auth", "nope"], "--auth: no token checker named 'nope' (installed: jwt)"),
        (["--auth", "jwt"], "--auth: jwt: key=PATH is required (an HMAC secret file or a PEM public key)"),
        (["--auth", "jwt:key=/nonexistent/jwt.key"],
         "--auth: jwt: cannot read the key /nonexistent/jwt.key: No such file or directory"),
        (["--auth", "jwt:file=x"], "--auth: jwt: unknown option 'file'"),
        (["--guests", "deny"], "--guests deny needs --auth: nobody could authenticate"),
        (["--auth", ":key=x"], "--auth must be a checker like 'jwt:key=/etc/chatd/jwt.key', not ':key=x'"),
        (["--guests", "maybe"], "--guests must be one of allow, deny, not 'maybe'"),
        (["--message-log-keep", "30"], "--message-log-keep needs --message-log"),
        (["--message-log", "sqlite:/tmp/x.db", "--message-log-keep", "0"],
         "--message-log-keep must be a number of days above 0, not 0"),
        (["--history-memory", "-1"], "--history-memory must be at least 0, not -1"),
    ],
)
def test_bad_values_stop_with_status_2(argv: list[str], message: str, capsys) -> None:
    assert parse_error(*argv, capsys=capsys) == f"chatd: {message}"


def test_a_jwt_key_is_checked_against_its_algorithms(tmp_path: Path, capsys) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    secret = tmp_path / "secret"
    secret.write_bytes(b"a shared secret of 32 bytes or more")
    short = tmp_path / "short"
    short.write_bytes(b"shared secret")
    rsa_key = tmp_path / "rsa.pem"
    rsa_key.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for argv, message in [
        ([f"jwt:key={secret}:algorithms=HS256,XX999"], "jwt: unknown algorithm 'XX999'"),
        ([f"jwt:key={secret}:algorithms=none"], "jwt: unknown algorithm 'none'"),
        ([f"jwt:key={secret}:algorithms=RS256"], f"jwt: algorithm RS256 cannot be used with an HMAC secret ({secret})"),
        ([f"jwt:key={rsa_key}:algorithms=RS256,HS256"],
         f"jwt: algorithm HS256 cannot be used with a public key ({rsa_key})"),
        ([f"jwt:key={secret}:leeway=soon"], "jwt: leeway must be a number of seconds, not 'soon'"),
        ([f"jwt:key={empty}"], f"jwt: the key file {empty} is empty"),
        ([f"jwt:key={short}"], f"jwt: the key {short} has 13 bytes; an HMAC secret needs 32 at least "
                               "(make one with: chatd-token --new-key PATH)"),
    ]:
        assert parse_error("--auth", *argv, capsys=capsys) == f"chatd: --auth: {message}"
    # The algorithm a PEM key implies, and an HMAC secret's.
    for key, algorithm in ((secret, "HS256"), (rsa_key, "RS256"), (ec_key, "ES256")):
        options = tap.Options()
        options.parseOptions(["--auth", f"jwt:key={key}"])
        [checker] = options.portal.checkers.values()
        assert checker.algorithms == [algorithm]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "chatd.toml"
    path.write_text(text)
    return str(path)


def test_config_file_values_and_command_line_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, """
listen = ["tcp:9100", "tcp:9101"]
max-message-size = 1234
ping-interval = 0
shutdown-timeout = 2.5
""")
    settings = parse("--config", path, "--max-message-size", "999")
    assert settings.listen == ("tcp:9100", "tcp:9101")
    assert settings.max_message_size == 999  # the command line wins
    assert settings.ping_interval == 0
    assert settings.shutdown_timeout == 2.5
    assert settings.close_timeout == Settings().close_timeout
    # --listen on the command line replaces the file's list.
    assert parse("--config", path, "--listen", "tcp:7000").listen == ("tcp:7000",)


def test_redis_shards_from_the_command_line_or_the_config_file(tmp_path: Path) -> None:
    one, two = "redis://10.0.0.5:6379/0", "sentinel://10.0.1.1:26379,10.0.1.2:26379/chatd"
    assert parse("--redis", one, "--redis", two).redis == (one, two)  # in the order given
    assert parse("--config", write(tmp_path, f'redis = "{one}"')).redis == (one,)
    assert parse("--config", write(tmp_path, f'redis = ["{one}", "{two}"]')).redis == (one, two)


@pytest.mark.parametrize(
    "text, message",
    [
        ("max-mesage-size = 5", "unknown key 'max-mesage-size'"),
        ('max-message-size = "big"', "max-message-size must be a number, not a string"),
        ("max-message-size = 1.5", "max-message-size must be a whole number, not 1.5"),
        ("max-message-size = true", "max-message-size must be a number, not a boolean"),
        ("max-outgoing-buffer = -1", "max-outgoing-buffer must be at least 1, not -1"),
        ("listen = 8765", "listen must be a non-empty list of endpoint descriptions, not a number"),
        ("listen = []", "listen must be a non-empty list of endpoint descriptions, not a list"),
        ('listen = ["tcp:70000"]', "listen 'tcp:70000': port 70000 is out of range (0-65535)"),
        ("close-timeout = 0", "close-timeout must be at least 1 second, not 0"),
        ('log-messages = "yes"', "log-messages must be true or false, not a string"),
        ("allowed-origin = true", "allowed-origin must be a list of origins, not a boolean"),
        ("max-connections-per-ip = 2.5", "max-connections-per-ip must be a whole number, not 2.5"),
        ("redis = []", "redis must be a URL like redis://localhost:6379/0 or a list of them, not a list"),
        ('redis = ["redis://a/0", 5]', "redis must be a URL like redis://localhost:6379/0 or a list of them, "
                                       "not a list"),
        ('redis = ["redis://a/x"]', "redis 'redis://a/x': the database must be a number, not 'x'"),
    ],
)
def test_config_file_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str, capsys) -> None:
    path = write(tmp_path, text)
    assert parse_error("--config", path, capsys=capsys) == f"chatd: {path}: {message}"


def test_unreadable_or_invalid_config_file(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "nope.toml")
    assert parse_error("--config", missing, capsys=capsys) == (
        f"chatd: {missing}: cannot read the config file: No such file or directory"
    )
    path = write(tmp_path, "max-message-size = \n")
    assert parse_error("--config", path, capsys=capsys).startswith(f"chatd: {path}: not valid TOML: ")


def test_make_service_listens_on_the_default(collector) -> None:
    reactor = MemoryReactor()
    options = tap.Options()
    options.parseOptions([])
    service = tap.makeService(options, reactor=reactor)
    assert isinstance(service, ChatService)
    service.startService()
    [(port, factory, backlog, interface)] = reactor.tcpServers
    assert (port, backlog, interface) == (8765, 1024, "127.0.0.1")
    assert factory is service.factory


def test_make_service_listens_on_every_listen_option(collector) -> None:
    reactor = MemoryReactor()
    options = tap.Options()
    options.parseOptions([
        "--listen", "tcp:9001", "--listen", "tcp:9002:backlog=7", "--listen", "unix:/tmp/chatd-test.sock",
    ])
    service = tap.makeService(options, reactor=reactor)
    service.startService()
    # A backlog the description names is kept; otherwise chatd asks for 1024.
    assert [(p, b, i) for p, _, b, i in reactor.tcpServers] == [(9001, 1024, ""), (9002, 7, "")]
    assert [u[0] for u in reactor.unixServers] == ["/tmp/chatd-test.sock"]


def test_metrics_is_a_second_listener(collector) -> None:
    reactor = MemoryReactor()
    options = tap.Options()
    options.parseOptions(["--metrics", "tcp:9108:interface=127.0.0.1"])
    service = tap.makeService(options, reactor=reactor)
    service.startService()
    assert [(p, i) for p, _, _, i in reactor.tcpServers] == [(8765, "127.0.0.1"), (9108, "127.0.0.1")]
    assert reactor.tcpServers[1][1] is not service.factory


@pytest.fixture
def collector():
    """The collector's settings as they were, whatever a test did to them."""
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)
    gc.unfreeze()


def test_the_collector_is_tuned_while_the_service_runs(collector) -> None:
    options = tap.Options()
    options.parseOptions([])
    service = tap.makeService(options, reactor=MemoryReactor())
    assert gc.get_threshold() == collector
    service.startService()
    assert gc.get_threshold() == (GC_THRESHOLD, *collector[1:])
    assert gc.get_freeze_count() > 0  # what start-up built is left out of full passes
    stopped = service.stopService()
    assert stopped.called
    assert gc.get_threshold() == collector
    assert gc.get_freeze_count() == 0


def test_collector_tuning_undoes_itself_once(collector) -> None:
    tuning = CollectorTuning(threshold=12_345)
    tuning.start()
    tuning.start()  # a second start does not take the tuned values as the ones to restore
    assert gc.get_threshold()[0] == 12_345
    tuning.stop()
    tuning.stop()
    assert gc.get_threshold() == collector and gc.get_freeze_count() == 0


def test_the_plugin_is_found() -> None:
    makers = {p.tapname: p for p in getPlugins(IPlugin) if hasattr(p, "tapname")}
    assert makers["chatd"].module == "chatd.tap"
    assert makers["chatd"].options is tap.Options


def test_the_operations_guide_documents_every_option() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    for option in config.OPTIONS:
        assert f"`--{option.name}" in guide, option.name
    assert "`--config PATH`" in guide


def test_a_list_option_written_as_one_string_in_the_file_is_a_list_of_one(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "tcp:9100"\ntrusted-proxy = "10.0.0.0/8"\n')
    settings = parse("--config", path)
    assert (settings.listen, settings.trusted_proxies) == (("tcp:9100",), ("10.0.0.0/8",))


def test_help_groups_every_option_in_one_section_without_internals(capsys) -> None:
    named = [name for _, names in config.SECTIONS for name in names]
    assert sorted(named) == sorted(option.name for option in config.OPTIONS)
    with pytest.raises(SystemExit):
        tap.Options().parseOptions(["--help"])
    text = capsys.readouterr().out
    titles = [title for title, _ in config.SECTIONS]
    assert [line[:-1] for line in text.splitlines() if line[:-1] in titles] == titles
    assert "--inherit-fd" not in text
    assert "[default: 30]" in text and ".0]" not in text  # whole seconds are written whole
    assert all(len(line) <= 79 for line in text.splitlines())


def test_version_is_chatds(capsys) -> None:
    from chatd import __version__

    with pytest.raises(SystemExit) as exited:
        tap.Options().parseOptions(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"chatd {__version__} (Twisted ")
