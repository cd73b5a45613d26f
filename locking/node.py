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
import time

import hiredis

from locking.address import NodeAddress
from locking.connect import RECV_BYTES, error_kind, handshake, open_socket, wrap_tls
from locking.errors import NodeError
from locking.health import NodeHealth
from locking.resolver import Resolver

logger = logging.getLogger(__name__)

#: A connection with more unread replies than this is replaced before the next send.
MAX_OWED_REPLIES = 64
#: How long a read polls the socket without sleeping before it waits in poll().
SPIN_S = 0.0002
#: What a read that may run late returns when no reply came (None is a nil reply).
_STILL_BLOCKED = object()


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
        self._blocked_on = b""  # the `wait` whose blocking command is in flight
        self._pid = os.getpid()
        self._suspect_until = 0.0
        self._suspect_kind = ""
        self._poller = select.poll()

    def is_suspect(self, now: float) -> bool:
        """Return true while the node is skipped after a recent failure."""
        return now < self._suspect_until

    @property
    def fails_fast(self) -> bool:
        """True when the last suspicion came from a refused connection: contacting
        the node again costs no timeout, and no request of an earlier connection can
        still be queued there (nothing listened). Not after a failed lookup, which
        may have taken the whole connect timeout (a hanging resolver)."""
        return self._suspect_kind == "refused"

    @property
    def connected(self) -> bool:
        """True when this process has an open connection to the node."""
        return self._sock is not None and self._pid == os.getpid()

    @property
    def in_flight(self) -> int:
        """How many commands sent on this connection still await their reply."""
        return self._in_flight if self.connected else 0

    def send(self, payload: bytes, *, report: bool = True) -> NodeError | None:
        """Send one encoded command; return the error instead of raising it.

        An idle connection the node closed (restart, idle ``timeout``, ``CLIENT
        KILL``) is noticed here and replaced before sending.

        :param report: False for a best-effort send to a suspect node: an error is
            returned but not reported (`NodeHealth`), since the node is known down.
        """
        error = self._send(payload)
        if error is not None and report:
            self.health.failed(error)
        return error

    def read(self, deadline: float, *, spin: bool = True) -> object:
        """Return the reply to the last command sent, or a `NodeError` if it is late.

        Replies to earlier commands (owed by rounds that ended early) are skipped.

        :param deadline: ``time.monotonic()`` value after which the node is late.
        :param spin: poll the socket for up to `SPIN_S` before sleeping; False for
            replies that are expected to take long (a blocked wait for a release).
        """
        reply = self._read(deadline, spin, False)
        if isinstance(reply, NodeError):
            self.health.failed(reply)
        else:
            self.health.answered()
        return reply

    def wait(self, payload: bytes, *, resume: bytes, until: float) -> object:
        """Send a blocking command, or resume the one an earlier call left waiting.

        Returns its reply (or a `NodeError`), or None when none came by ``until``:
        the command stays blocked, neither late nor an error, and the next call with
        the same ``resume`` waits for it again rather than queue another behind it
        (`locking.waiting`); one that timed out on the node meanwhile is sent again.

        :param payload: the blocking command (BLPOP), with its own timeout.
        :param resume: what identifies the command across calls (its keys).
        :param until: ``time.monotonic()`` value at which the caller stops waiting.
        """
        while True:
            if not (self.in_flight == 1 and self._blocked_on == resume):
                self.drop_if_owed()  # another command may still block the connection
                error = self.send(payload)
                if error is not None:
                    return error
                self._blocked_on = resume
            reply = self._read(until, False, True)
            if reply is _STILL_BLOCKED:
                return None
            self._blocked_on = b""
            if isinstance(reply, NodeError):
                self.health.failed(reply)
            else:
                self.health.answered()
            if reply is not None or time.monotonic() >= until:
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
        self._blocked_on = b""

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
                    data = sock.recv(RECV_BYTES)
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

    def _read(self, deadline: float, spin: bool, late_ok: bool) -> object:
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
                        if str(reply).startswith("NOSCRIPT"):
                            # The node lost its script cache (SCRIPT FLUSH, a restart or
                            # failover behind a proxy: Redis does not persist it). Every
                            # EVALSHA on this connection would fail: log in again on the
                            # next use, which loads the scripts. Nothing else is owed.
                            self.close()
                        return NodeError(self.name, f"redis error: {reply}", kind=error_kind(reply))
                    return reply
                self._busy = False
                if not self._receive(sock, deadline, spin):
                    self.close()
                    return NodeError(self.name, "connection closed by the node", kind="closed")
        except TimeoutError:
            self._busy = False
            if late_ok:
                return _STILL_BLOCKED
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
            # `_feed`, inlined: this loop turns once per empty recv() while spinning.
            self._busy = True
            try:
                data = sock.recv(RECV_BYTES)
            except BlockingIOError:
                self._busy = False
            else:
                if data:
                    self._reader.feed(data)
                self._busy = False
                return bool(data)
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            if now >= spin_until:
                self._poller.poll(max(1, math.ceil((deadline - now) * 1000)))

    def _feed(self, sock: socket.socket) -> bool:
        """Move one recv() worth of bytes into the parser, as one busy step."""
        self._busy = True
        data = sock.recv(RECV_BYTES)
        if data:
            self._reader.feed(data)
        self._busy = False
        return bool(data)

    def _suspected(self, error: NodeError) -> NodeError:
        """Skip the node for a while: it is silent, refusing or not resolving."""
        self._suspect_until = time.monotonic() + self._suspect_s
        self._suspect_kind = error.kind
        return error

    def _os_error(self, step: str, error: OSError) -> NodeError:
        kind = error_kind(error)
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
            raw = open_socket(self._resolver, deadline, self._connect_timeout_s)
        except OSError as error:
            raise self._suspected(self._os_error("connect failed", error)) from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = wrap_tls(raw, address) if address.tls else raw
            handshake(sock, address, self.name, deadline)
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
            kind = "io" if isinstance(error, ssl.SSLError) else error_kind(error)
            raise self._suspected(
                NodeError(self.name, f"handshake failed: {error}", kind=kind)
            ) from None
        except BaseException:
            raw.close()  # interrupted: do not leak the socket
            raise
        self._sock = sock
        return sock
