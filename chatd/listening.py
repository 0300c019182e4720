"""
Listening sockets: chatd's backlog, and the ``--workers`` sockets (one per
worker with ``SO_REUSEPORT``, or one they share) a worker adopts.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    serverFromString,
)
from twisted.internet.error import AlreadyListened
from twisted.internet.fdesc import setNonBlocking
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

from chatd import fastpath

#: The listen backlog chatd asks for unless a description names one; the
#: kernel caps it at net.core.somaxconn.  Twisted's default of 50 makes a
#: burst of connections (clients reconnecting after a restart) wait 1 s for
#: SYN retransmits once the accept queue is full.
BACKLOG = 1024


#: Twisted's prefix for a listener whose connections start with a PROXY
#: protocol header (HAProxy's ``send-proxy``/``send-proxy-v2``).
PROXY_PREFIX = "haproxy:"


def with_backlog(description: str) -> str:
    """The description with chatd's backlog, unless it names one."""
    if description.startswith(PROXY_PREFIX):
        return PROXY_PREFIX + with_backlog(description[len(PROXY_PREFIX):])
    kind = description.partition(":")[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in description:
        return f"{description}:backlog={BACKLOG}"
    return description


FAMILIES = {"INET": socket.AF_INET, "INET6": socket.AF_INET6, "UNIX": socket.AF_UNIX}


def family_name(port: IListeningPort) -> str:
    """INET, INET6 or UNIX: how a worker is told the family of a socket."""
    host = port.getHost()
    for name, kind in (("INET", IPv4Address), ("INET6", IPv6Address), ("UNIX", UNIXAddress)):
        if isinstance(host, kind):
            return name
    raise ValueError(f"cannot hand a listener on {host} to a worker")


class OneAtATime:
    """
    A listening port that accepts one connection each time it is readable.

    Twisted accepts up to 100 connections per wake-up (more while they keep
    coming).  On a socket that several workers share, every worker is woken
    for a new connection and the first to accept takes nearly the whole
    burst, and then does nearly all the work.  One at a time, the next connection goes to
    whichever worker comes back to its poll first: the one with the least
    to do.
    """

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass  # Twisted raises it after every full batch: it stays 1


_one_at_a_time: dict[type, type] = {}


def accept_one_at_a_time(port: Any) -> None:
    """Make a listening port of the reactor's accept one connection per wake-up."""
    kind = type(port)
    if kind not in _one_at_a_time:
        _one_at_a_time[kind] = type(f"OneAtATime{kind.__name__}", (OneAtATime, kind), {})
    port.__class__ = _one_at_a_time[kind]


@implementer(IStreamServerEndpoint)
class WorkerSocketEndpoint:
    """
    A worker's end of a listening socket the ``--workers`` parent bound (its
    own, or one all the workers share), accepted from one connection per
    wake-up (``OneAtATime``).
    """

    def __init__(self, reactor: Any, fileno: int, family: int) -> None:
        self.reactor = reactor
        self.fileno = fileno
        self.family = family
        self._used = False

    def listen(self, factory: Any) -> "Deferred[IListeningPort]":
        if self._used:
            return fail(AlreadyListened())
        self._used = True
        try:
            setNonBlocking(self.fileno)
            port = self.reactor.adoptStreamPort(self.fileno, self.family, factory)
            os.close(self.fileno)  # the port has its own copy
        except BaseException:
            return fail()
        accept_one_at_a_time(port)
        return succeed(port)


def reuseport_address(reactor: Any, description: str) -> Optional[tuple[int, str, int, int]]:
    """
    (family, interface, port, backlog) of a ``tcp:``/``tcp6:`` listener, as
    Twisted parses the description (with chatd's default backlog): it can be
    bound once per worker.  None for any other kind.
    """
    if description.partition(":")[0] not in ("tcp", "tcp6"):
        return None  # parsed once, where it is listened on (systemd's looks its socket up)
    endpoint = serverFromString(reactor, with_backlog(description))
    assert isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint))
    family = socket.AF_INET6 if isinstance(endpoint, TCP6ServerEndpoint) else socket.AF_INET
    address = fastpath.tcp_address(endpoint)
    if address is None:
        return None  # one socket that every worker shares
    return (family, *address)


def bind_reuseport(family: int, interface: str, port: int, backlog: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one address, ``SO_REUSEPORT`` on each
    (port 0: the first's port for all)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            handle = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(handle)
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            handle.bind((interface, port))
            port = handle.getsockname()[1]
            handle.listen(backlog)
            handle.setblocking(False)
    except OSError:
        for handle in sockets:
            handle.close()
        raise
    return sockets


def check_endpoint(reactor: Any, description: str) -> None:
    """
    Build the server endpoint ``description`` names, as chatd will listen
    on it, without listening: ValueError saying in one line what is wrong
    (an unknown endpoint type, a TLS key or certificate that cannot be
    read, a socket in a directory that does not exist).
    """
    described = with_backlog(description)
    plain = described[len(PROXY_PREFIX):] if described.startswith(PROXY_PREFIX) else described
    kind, _, rest = plain.partition(":")
    try:
        serverFromString(reactor, described)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        raise ValueError(f"cannot read{where}: {e.strerror or e}") from None
    except ValueError as e:
        if str(e).startswith("Unknown endpoint type"):
            raise ValueError(
                f"unknown endpoint type {kind!r} (tcp, tcp6, ssl, unix, systemd, or haproxy: before one)"
            ) from None
        raise ValueError(str(e)) from None
    except (KeyError, IndexError) as e:
        if kind == "systemd":
            which = f"named {e}" if isinstance(e, KeyError) else "at that index"
            raise ValueError(
                f"systemd passed no socket {which} (run chatd from its .socket unit, whose "
                "FileDescriptorName= names it)") from None
        raise ValueError(str(e)) from None
    except Exception as e:
        if kind != "ssl":
            raise ValueError(f"{type(e).__name__}: {e}") from None
        # pyOpenSSL's errors for a file that is no key or certificate.
        raise ValueError(f"not a usable TLS key and certificate ({e})") from None
    if kind == "unix":
        path = rest.split(":")[0].removeprefix("address=")
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            raise ValueError(f"the directory {directory} does not exist")
