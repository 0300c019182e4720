"""
``twistd chatd``: command-line options and the service they describe.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.application.service import Service
from twisted.python import usage

from chatd import __version__, config
from chatd.moderation import ModeratorError, build
from chatd.service import ChatService
from chatd.settings import DEFAULT_LISTEN, Settings
from chatd.listening import FAMILIES, check_endpoint
from chatd.workers import WorkerPool

_DEFAULTS = Settings()


def _help(option: config.Option) -> str:
    default = getattr(_DEFAULTS, option.field)
    if option.kind != "value" or default is None:
        return option.help
    if isinstance(default, float) and default.is_integer():
        default = int(default)  # "60", not "60.0"
    return f"{option.help} [default: {default}]"


def _usage(longdesc: str) -> str:
    """``twistd chatd --help``: the options by section (config.SECTIONS),
    each with its help and default, wrapped to 79 columns."""
    import textwrap

    width, indent = 79, 30
    lines = ["", *textwrap.wrap(longdesc, width), ""]

    def entry(flag: str, text: str) -> None:
        head = f"  {flag}"
        body = textwrap.wrap(text, width - indent)
        if len(head) >= indent:
            lines.append(head)
            head = ""
        lines.append(head.ljust(indent) + (body[0] if body else ""))
        lines.extend(" " * indent + more for more in body[1:])

    for title, names in config.SECTIONS:
        lines.append(f"{title}:")
        for name in names:
            option = config.BY_NAME[name]
            entry(f"--{name}" + ("" if option.kind == "flag" else "=VALUE"), _help(option))
        lines.append("")
    lines.append("Other:")
    entry("-c, --config=PATH", "A TOML file of options (see etc/chatd.toml).")
    entry("--version", "Print chatd's version (and its libraries') and exit.")
    entry("--help", "Print this help and exit.")
    return "\n".join(lines) + "\n"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the chatd multi-room WebSocket chat server. "
        f"By default it listens on {DEFAULT_LISTEN} (ws://localhost:8765). "
        "Every option can also be set in the --config file, under the same "
        "name; the command line wins."
    )

    optParameters = [
        ["config", "c", None, "A TOML file of options (see etc/chatd.toml)."],
    ] + [[o.name, None, None, _help(o)] for o in config.OPTIONS if o.kind == "value"]
    optFlags = [[o.name, None, o.help] for o in config.OPTIONS if o.kind == "flag"]

    settings: Settings

    def __init__(self) -> None:
        super().__init__()
        for option in config.OPTIONS:
            if option.kind == "list":
                self[option.name] = []
        self.inherited: list[tuple[int, int, bool]] = []
        self.raw_args: list[str] = []
        self.moderators: list[Any] = []
        self.portal: Optional[Any] = None

    def getUsage(self, width: Optional[int] = None) -> str:
        return _usage(self.longdesc)

    def opt_version(self) -> None:
        """Print chatd's version (and its libraries') and exit."""
        import platform

        import autobahn
        import twisted

        sys.stdout.write(
            f"chatd {__version__} (Twisted {twisted.__version__}, Autobahn {autobahn.__version__}, "
            f"Python {platform.python_version()})\n")
        raise SystemExit(0)

    def parseOptions(self, options: Optional[list[str]] = None) -> None:
        # Kept as given: --workers passes them on to each worker.
        self.raw_args = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

    def opt_inherit_fd(self, value: str) -> None:
        """(Internal, for --workers) serve on the inherited listening socket
        FD:FAMILY, or FD:FAMILY:haproxy for the PROXY protocol."""
        fd, _, rest = value.partition(":")
        family, _, proxy = rest.partition(":")
        if not fd.isdigit() or family not in FAMILIES or proxy not in ("", "haproxy"):
            raise usage.UsageError(
                f"--inherit-fd {value!r}: expected FD:INET, FD:INET6 or FD:UNIX, then :haproxy or nothing")
        self.inherited.append((int(fd), FAMILIES[family], bool(proxy)))

    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    opt_listen.__doc__ = config.BY_NAME["listen"].help

    def opt_allowed_origin(self, origin: str) -> None:
        self["allowed-origin"].append(origin)

    opt_allowed_origin.__doc__ = config.BY_NAME["allowed-origin"].help

    def opt_trusted_proxy(self, network: str) -> None:
        self["trusted-proxy"].append(network)

    opt_trusted_proxy.__doc__ = config.BY_NAME["trusted-proxy"].help

    def opt_redis(self, url: str) -> None:
        self["redis"].append(url)

    opt_redis.__doc__ = config.BY_NAME["redis"].help

    def opt_moderator(self, spec: str) -> None:
        self["moderator"].append(spec)

    opt_moderator.__doc__ = config.BY_NAME["moderator"].help

    def opt_room(self, spec: str) -> None:
        self["room"].append(spec)

    opt_room.__doc__ = config.BY_NAME["room"].help

    def postOptions(self) -> None:
        given: dict[str, Any] = {}
        for option in config.OPTIONS:
            value = self[option.name]
            if value or (option.kind == "value" and value is not None):
                given[option.name] = value
        try:
            self.settings = config.load(given, self["config"])
            self._check_listeners(bool(self["listen"]))
            self.moderators = self._moderators(bool(self["moderator"]))
            self.portal = self._portal(bool(self["auth"]))
        except config.ConfigError as e:
            # Before anything listens: one line naming the key, and status 2.
            sys.stderr.write(f"chatd: {e}\n")
            raise SystemExit(2) from None

    def _check_listeners(self, from_command_line: bool) -> None:
        """Each --listen built once, here: a bad one stops start-up in a line."""
        from twisted.internet import reactor

        for description in self.settings.listen:
            try:
                check_endpoint(reactor, description)
            except ValueError as e:
                where = "--listen" if from_command_line else f"{self['config']}: listen"
                raise config.ConfigError(f"{where} {description!r}: {e}") from None

    def _portal(self, from_command_line: bool) -> Optional[Any]:
        """The token checker made once, here: a bad one stops start-up."""
        if self.settings.auth is None:
            return None
        from chatd.auth import AuthError, build_portal

        try:
            return build_portal(self.settings.auth)
        except AuthError as e:
            where = "--auth" if from_command_line else f"{self['config']}: auth"
            raise config.ConfigError(f"{where}: {e}") from None

    def _moderators(self, from_command_line: bool) -> list[Any]:
        """Each moderator made once, here: a bad one stops start-up."""
        made = []
        for spec in self.settings.moderators:
            try:
                made.append(build(spec))
            except ModeratorError as e:
                where = "--moderator" if from_command_line else f"{self['config']}: moderator"
                raise config.ConfigError(f"{where} {e}") from None
        return made


def makeService(options: Options, reactor: Optional[Any] = None) -> Service:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    settings = options.settings
    if settings.workers > 1 and not options.inherited:
        try:
            return WorkerPool(settings, options.raw_args, reactor)
        except config.ConfigError as e:
            sys.stderr.write(f"chatd: {e}\n")
            raise SystemExit(2) from None
    # twistd's own options (when it parsed these): whether it daemonizes.
    parent = getattr(options, "parent", None)
    daemon = parent is not None and not parent.get("nodaemon", True)
    return ChatService(
        settings, reactor, inherited=options.inherited, moderators=options.moderators, portal=options.portal,
        daemon=daemon)
