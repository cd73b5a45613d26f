"""One connection to one lock node: pipelined sends, deadline-bounded reads, suspicion.

The connection is a plain socket with hiredis' reply parser rather than a redis-py
pool: the lock sends one command to every node before reading any reply, and it
must keep a connection whose reply was late instead of discarding it.

Every command sent counts as *in flight* until its reply is parsed, and a read
returns the reply to the last command sent, skipping the older ones. So a round
that ends early (a timeout, or an exception raised between its send and its read,
e.g. a task's soft time limit fired by a signal handler) leaves its replies to be
skipped: a reply is never attributed to another request. The few steps that move
bytes or replies between the socket, the parser and the count are marked busy;
an exception inside one leaves the mark, and the next use closes the connection
instead of trusting a count that may be off by one.

Because a node executes the commands of one connection in order, a release sent
after a timed-out SET on the same connection always runs after that SET, so a late
SET can never outlive the release. That order is lost only when the connection is
replaced while a request is still queued at the node: after `MAX_OWED_REPLIES`
unread replies, or after an interruption inside a busy step. A late grant may then
hold its keys on that node until their TTL, under a token no lease has.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

import hiredis

from locking.address import NodeAddress
from locking.errors import NodeError
from locking.protocol import encode_command
from locking.resolver import Resolver
from locking.scripts import ALL_SCRIPTS

logger = logging.getLogger(__name__)

#: A connection with more unread replies than this is replaced before the next send.
MAX_OWED_REPLIES = 64
#: How long a read polls the socket without sleeping before it waits in poll().
SPIN_S = 0.0002
_RECV_BYTES = 65536
#: Error replies that mean the credentials or the ACL user's permissions, not the node.
_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM", "ERR AUTH", "ERR invalid password")


class NodeHealth:
    """Whether one node answers; each change is logged once and every error reported.

    Shared by every connection to the node (the lock's and the waits'), so a state
    change is logged once whichever connection saw it.

    :param name: the node's display name (``host:port``, never the password).
    :param on_error: called with every `NodeError` met while contacting the node;
        an exception it raises is logged and swallowed.
    """

    def __init__(self, name: str, on_error: Callable[[NodeError], None] | None = None) -> None:
        self.name = name
        self._on_error = on_error
        self._down = False
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        """True from an error until the node's next timely answer."""
        return self._down

    def failed(self, error: NodeError) -> None:
        """Record an error: log the first one of an outage, report every one."""
        with self._lock:
            changed, self._down = not self._down, True
        if changed:
            logger.warning("Lock node %r is down (%s): %s", self.name, error.kind, error.reason)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                logger.exception("The lock's on_node_error callback failed for %r.", self.name)

    def answered(self) -> None:
        """Record a timely answer: log the end of an outage."""
        if not self._down:
            return
        with self._lock:
            changed, self._down = self._down, False
        if changed:
            logger.info("Lock node %r is up again.", self.name)

    def reset_after_fork(self) -> None:
        """Give a forked child a fresh lock (a parent thread may have held this one)."""
        self._lock = threading.Lock()


class Node:
    """A lazily connected, fork-aware connection to one Redis lock node.

    :param address: where the node is and how to log in.
    :param connect_timeout_s: bound on name lookup, connecting and the login handshake.
    :param suspect_s: after a timeout, refused connection or failed lookup, how long
        the node is skipped by acquisitions (unless it answers again first, or
        skipping it would make a quorum impossible).
    :param health: the node's shared state; a private one when omitted.
    """

    def __init__(
        self,
        address: NodeAddress,
        *,
        connect_timeout_s: float,
        suspect_s: float,
        health: NodeHealth | None = None,
    ) -> None:
        self.address = address
        self.name = address.name
        self.health = health or NodeHealth(address.name)
        self._connect_timeout_s = connect_timeout_s
        self._suspect_s = suspect_s
        self._resolver = Resolver(address.host, address.port)
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader()
        self._in_flight = 0
        self._busy = False
        self._pid = os.getpid()
        self._suspect_until = 0.0
        self._poller = select.poll()

    def is_suspect(self, now: float) -> bool:
        """Return true while the node is skipped after a recent failure."""
        return now < self._suspect_until

    @property
    def connected(self) -> bool:
        """True when this process has an open connection to the node."""
        return self._sock is not None and self._pid == os.getpid()

    @property
    def in_flight(self) -> int:
        """How many commands sent on this connection still await their reply."""
        return self._in_flight if self.connected else 0

    def send(self, payload: bytes) -> NodeError | None:
        """Send one encoded command; return the error instead of raising it.

        An idle connection the node closed (restart, idle ``timeout``, ``CLIENT
        KILL``) is noticed here and replaced before sending.
        """
        error = self._send(payload)
        if error is not None:
            self.health.failed(error)
        return error

    def read(self, deadline: float, *, spin: bool = True) -> object:
        """Return the reply to the last command sent, or a `NodeError` if it is late.

        Replies to earlier commands (owed by rounds that ended early) are skipped.

        :param deadline: ``time.monotonic()`` value after which the node is late.
        :param spin: poll the socket for up to `SPIN_S` before sleeping; False for
            replies that are expected to take long (a blocked wait for a release).
        """
        reply = self._read(deadline, spin)
        if isinstance(reply, NodeError):
            self.health.failed(reply)
        else:
            self.health.answered()
        return reply

    def drop_if_owed(self) -> None:
        """Close the connection if a command on it still awaits its reply.

        For blocking commands (BLPOP): an earlier one that ended early (a timeout, an
        exception) may still block the connection and take what the next one waits for.
        """
        if self.in_flight:
            self.close()

    def close(self) -> None:
        """Drop the connection; in a forked child only this process's copy is closed."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._reader = hiredis.Reader()
        self._in_flight = 0
        self._pid = os.getpid()
        self._busy = False

    def _send(self, payload: bytes) -> NodeError | None:
        if self._busy:  # an exception interrupted a step: the count cannot be trusted
            self.close()
        self._busy = True
        try:
            sock = self._sock if self._pid == os.getpid() else None
            if sock is not None and self._in_flight >= MAX_OWED_REPLIES:
                # The node has not answered for many rounds: drop the connection now, and
                # reconnect only when asked to contact it again (not while it is suspect).
                self.close()
                return self._suspected(
                    NodeError(self.name, "too many replies outstanding", kind="timeout")
                )
            if sock is not None and not self._idle_ok(sock):
                self.close()
                self._busy = True
                sock = None
            if sock is None:
                sock = self._connect()
            if isinstance(sock, ssl.SSLSocket):  # a read left its own timeout on it
                sock.settimeout(self._connect_timeout_s)
            self._in_flight += 1
            sock.sendall(payload)
        except NodeError as error:
            self.close()
            return error
        except BlockingIOError:
            # The send buffer is full: the node has not read for a while. Part of the
            # command may have left, so the connection cannot be reused.
            self.close()
            return self._suspected(NodeError(self.name, "send buffer full", kind="timeout"))
        except OSError as error:
            self.close()
            return self._os_error("send failed", error)
        self._busy = False
        return None

    def _idle_ok(self, sock: socket.socket) -> bool:
        """Consume what already arrived; False when the node closed the connection.

        Costs one poll() when nothing arrived. Replies still in flight are parsed
        (and then skipped by the next read); bytes nobody is owed mean the stream is
        out of step and the connection must go.
        """
        tls = isinstance(sock, ssl.SSLSocket)
        try:
            while self._poller.poll(0):
                if tls:
                    sock.settimeout(0.0)
                try:
                    data = sock.recv(_RECV_BYTES)
                except (BlockingIOError, ssl.SSLWantReadError):
                    return True
                finally:
                    if tls:  # TLS sockets block (with a timeout) in sendall
                        sock.settimeout(self._connect_timeout_s)
                if not data:
                    return False  # EOF: the node closed it, so nothing queued there runs
                self._reader.feed(data)
                while self._reader.gets() is not False:
                    if self._in_flight == 0:
                        return False  # a reply nobody asked for
                    self._in_flight -= 1
        except (OSError, hiredis.ProtocolError):
            return False
        return True

    def _read(self, deadline: float, spin: bool) -> object:
        sock = self._sock
        if sock is None or self._busy or self._in_flight == 0 or self._pid != os.getpid():
            return NodeError(self.name, "no reply to read: not connected", kind="closed")
        try:
            while True:
                self._busy = True
                reply = self._reader.gets()
                if reply is not False:
                    self._in_flight -= 1
                    self._busy = False
                    if self._in_flight:
                        continue  # owed by a round that ended early: skip it
                    self._suspect_until = 0.0  # it answered in time: trust it again
                    if isinstance(reply, hiredis.ReplyError):
                        return NodeError(self.name, f"redis error: {reply}", kind=_kind_of(reply))
                    return reply
                self._busy = False
                if not self._receive(sock, deadline, spin):
                    self.close()
                    return NodeError(self.name, "connection closed by the node", kind="closed")
        except TimeoutError:
            self._busy = False
            return self._suspected(NodeError(self.name, "timed out", kind="timeout"))
        except OSError as error:
            self.close()
            return self._os_error("read failed", error)
        except hiredis.ProtocolError:
            self.close()
            return NodeError(self.name, "protocol error in the node's reply", kind="protocol")

    def _receive(self, sock: socket.socket, deadline: float, spin: bool) -> bool:
        """Feed the parser the next bytes from ``sock``; False at EOF.

        :param spin: poll without sleeping for up to `SPIN_S` first.
        :raises TimeoutError: nothing arrived before ``deadline``.
        """
        if isinstance(sock, ssl.SSLSocket):
            # Wait outside the busy step: an exception while waiting (the likely place
            # for one, with a silent node) then leaves a connection that can be kept.
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0 or not (
                sock.pending() or self._poller.poll(max(1, math.ceil(remaining_s * 1000)))
            ):
                raise TimeoutError
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            return self._feed(sock)
        # A reply on loopback or a LAN usually lands within tens of microseconds:
        # polling the non-blocking socket that long avoids a sleep and a wake-up,
        # which cost more than the round trip itself. Past SPIN_S, sleep in poll().
        spin_until = time.monotonic() + SPIN_S if spin else 0.0
        while True:
            try:
                return self._feed(sock)
            except BlockingIOError:
                self._busy = False
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            if now >= spin_until:
                self._poller.poll(max(1, math.ceil((deadline - now) * 1000)))

    def _feed(self, sock: socket.socket) -> bool:
        """Move one recv() worth of bytes into the parser, as one busy step."""
        self._busy = True
        data = sock.recv(_RECV_BYTES)
        if data:
            self._reader.feed(data)
        self._busy = False
        return bool(data)

    def _suspected(self, error: NodeError) -> NodeError:
        """Skip the node for a while: it is silent, refusing or not resolving."""
        self._suspect_until = time.monotonic() + self._suspect_s
        return error

    def _os_error(self, step: str, error: OSError) -> NodeError:
        kind = _kind_of(error)
        node_error = NodeError(self.name, f"{step}: {error.strerror or error}", kind=kind)
        if kind in ("timeout", "refused", "unresolvable"):
            self._suspected(node_error)
        return node_error

    def _connect(self) -> socket.socket:
        """Resolve, connect, log in, select the db and preload the scripts.

        The whole takes at most the connect timeout; any failure suspects the node.
        """
        self.close()
        self._busy = True
        deadline = time.monotonic() + self._connect_timeout_s
        address = self.address
        try:
            raw = self._open(deadline)
        except OSError as error:
            raise self._suspected(self._os_error("connect failed", error)) from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = _wrap_tls(raw, address) if address.tls else raw
            self._handshake(sock, deadline)
            if not isinstance(sock, ssl.SSLSocket):
                # Non-blocking: sends never hang on a frozen node, reads spin then poll.
                sock.setblocking(False)
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)
        except NodeError as error:
            raw.close()
            raise self._suspected(error) from None
        except hiredis.ProtocolError:
            # Something that does not speak RESP (an HTTP server, a TLS-only port...).
            raw.close()
            raise NodeError(
                self.name, "handshake failed: not a Redis server", kind="protocol"
            ) from None
        except (OSError, ssl.SSLError) as error:
            raw.close()
            kind = "io" if isinstance(error, ssl.SSLError) else _kind_of(error)
            raise self._suspected(
                NodeError(self.name, f"handshake failed: {error}", kind=kind)
            ) from None
        except BaseException:
            raw.close()  # interrupted: do not leak the socket
            raise
        self._sock = sock
        return sock

    def _open(self, deadline: float) -> socket.socket:
        """Connect to the first of the host's addresses that accepts, by ``deadline``."""
        last: OSError = socket.gaierror(socket.EAI_FAIL, "no address")
        for family, kind, proto, _, sockaddr in self._resolver.addresses(self._connect_timeout_s):
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError("connect timed out")
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(remaining_s)
                sock.connect(sockaddr)
            except OSError as error:
                sock.close()
                last = error
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise last

    def _handshake(self, sock: socket.socket, deadline: float) -> None:
        address = self.address
        commands: list[list[bytes | str | int]] = []
        if address.password is not None:
            login = [address.username] if address.username else []
            commands.append(["AUTH", *login, address.password])
        elif address.username:
            raise NodeError(self.name, "an ACL user needs a password", kind="auth")
        if address.db:
            commands.append(["SELECT", address.db])
        commands.extend(["SCRIPT", "LOAD", script.body] for script in ALL_SCRIPTS)
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(b"".join(encode_command(command) for command in commands))
        reader = hiredis.Reader()
        for command in commands:
            reply = reader.gets()
            while reply is False:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(_RECV_BYTES)
                if not data:
                    raise NodeError(self.name, "connection closed during login", kind="closed")
                reader.feed(data)
                reply = reader.gets()
            if isinstance(reply, hiredis.ReplyError):
                # The reply names the failure (WRONGPASS, NOAUTH...) but never the secret.
                kind = "auth" if command[0] == "AUTH" else _kind_of(reply)
                raise NodeError(self.name, f"{command[0]!s} refused: {reply}", kind=kind)


def _kind_of(error: BaseException) -> str:
    """Return the `NodeError.kind` of a socket error or an error reply."""
    if isinstance(error, hiredis.ReplyError):
        return "auth" if str(error).startswith(_AUTH_REPLIES) else "redis_error"
    if isinstance(error, socket.gaierror):
        return "unresolvable"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "closed"
    return "io"


def _wrap_tls(raw: socket.socket, address: NodeAddress) -> socket.socket:
    context = ssl.create_default_context(cafile=address.ssl_ca_certs)
    if address.ssl_cert_reqs != "required":
        context.check_hostname = False
        context.verify_mode = (
            ssl.CERT_NONE if address.ssl_cert_reqs == "none" else ssl.CERT_OPTIONAL
        )
    if address.ssl_certfile:
        context.load_cert_chain(address.ssl_certfile, address.ssl_keyfile)
    return context.wrap_socket(raw, server_hostname=address.host)
