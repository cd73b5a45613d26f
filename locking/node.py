"""One connection to one lock node: pipelined sends, deadline-bounded reads, suspicion.

The connection is a plain socket with hiredis' reply parser rather than a redis-py
pool: the lock sends one command to every node before reading any reply, and it
must keep a connection whose reply was late instead of discarding it. A late
reply is *owed*: the next read skips it. Because a node executes the commands
of one connection in order, a release sent after a timed-out SET on the same
connection always runs after that SET, so a late SET can never outlive release.
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
from locking.errors import NodeError
from locking.protocol import encode_command
from locking.scripts import ALL_SCRIPTS

logger = logging.getLogger(__name__)

#: A node that owes more late replies than this is reconnected instead of waited on.
MAX_OWED_REPLIES = 64
#: How long a read polls the socket without sleeping before it waits in poll().
SPIN_S = 0.0002
_RECV_BYTES = 65536


class Node:
    """A lazily connected, fork-aware connection to one Redis lock node.

    :param address: where the node is and how to log in.
    :param connect_timeout_s: bound on connecting and on the login handshake.
    :param suspect_s: after a timeout, how long the node is skipped by acquisitions
        (unless it answers again first, or skipping it would make a quorum impossible).
    """

    def __init__(self, address: NodeAddress, *, connect_timeout_s: float, suspect_s: float) -> None:
        self.address = address
        self.name = address.name
        self._connect_timeout_s = connect_timeout_s
        self._suspect_s = suspect_s
        self._sock: socket.socket | None = None
        self._reader = hiredis.Reader()
        self._owed = 0
        self._pid = os.getpid()
        self._suspect_until = 0.0
        self._poller = select.poll()

    def is_suspect(self, now: float) -> bool:
        """Return true while the node is skipped after a recent timeout."""
        return now < self._suspect_until

    @property
    def connected(self) -> bool:
        """True when this process has an open connection to the node."""
        return self._sock is not None and self._pid == os.getpid()

    def send(self, payload: bytes) -> NodeError | None:
        """Send one encoded command; return the error instead of raising it."""
        try:
            sock = self._sock if self._sock is not None and self._pid == os.getpid() else None
            if sock is None:
                sock = self._connect()
            sock.sendall(payload)
        except NodeError as error:
            self.close()
            return error
        except OSError as error:
            self.close()
            return self._failed(f"send failed: {error.strerror or error}", error)
        return None

    def read(self, deadline: float, *, spin: bool = True) -> object:
        """Return the next reply, or a `NodeError` if none comes before ``deadline``.

        :param deadline: ``time.monotonic()`` value after which the node is late.
        :param spin: poll the socket for up to `SPIN_S` before sleeping; False for
            replies that are expected to take long (a blocked wait for a release).
        """
        sock = self._sock
        if sock is None:
            return NodeError(self.name, "not connected")
        try:
            while True:
                reply = self._reader.gets()
                if reply is not False:
                    if self._owed:
                        self._owed -= 1
                        continue
                    self._suspect_until = 0.0  # it answered in time: trust it again
                    if isinstance(reply, hiredis.ReplyError):
                        return NodeError(self.name, f"redis error: {reply}")
                    return reply
                data = self._receive(sock, deadline, spin)
                if not data:
                    self.close()
                    return NodeError(self.name, "connection closed by the node")
                self._reader.feed(data)
        except TimeoutError:
            return self.abandon_reply()
        except OSError as error:
            self.close()
            return self._failed(f"read failed: {error.strerror or error}", error)
        except hiredis.ProtocolError:
            self.close()
            return NodeError(self.name, "protocol error in the node's reply")

    def _receive(self, sock: socket.socket, deadline: float, spin: bool = True) -> bytes:
        """Return the next bytes from ``sock``; raise `TimeoutError` at ``deadline``."""
        if isinstance(sock, ssl.SSLSocket):
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError
            sock.settimeout(remaining_s)
            return sock.recv(_RECV_BYTES)
        # A reply on loopback or a LAN usually lands within tens of microseconds:
        # polling the non-blocking socket that long avoids a sleep and a wake-up,
        # which cost more than the round trip itself. Past SPIN_S, sleep in poll().
        spin_until = time.monotonic() + (SPIN_S if spin else 0.0)
        while True:
            try:
                return sock.recv(_RECV_BYTES)
            except BlockingIOError:
                pass
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError
            if now >= spin_until:
                self._poller.poll(max(1, math.ceil((deadline - now) * 1000)))

    def owe_reply(self) -> None:
        """Skip the reply to the command just sent when it arrives, instead of waiting now."""
        self._owed += 1
        if self._owed > MAX_OWED_REPLIES:
            self.close()

    def abandon_reply(self) -> NodeError:
        """Give up waiting for one reply: owe it, and suspect the node for a while."""
        self.owe_reply()
        self._suspect_until = time.monotonic() + self._suspect_s
        logger.warning("Lock node %r did not answer in time; suspecting it.", self.name)
        return NodeError(self.name, "timed out", timed_out=True)

    def close(self) -> None:
        """Drop the connection; in a forked child only this process's copy is closed."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._reader = hiredis.Reader()
        self._owed = 0
        self._pid = os.getpid()

    def _failed(self, reason: str, error: OSError) -> NodeError:
        timed_out = isinstance(error, TimeoutError)
        if timed_out:
            self._suspect_until = time.monotonic() + self._suspect_s
        return NodeError(self.name, reason, timed_out=timed_out)

    def _connect(self) -> socket.socket:
        """Open the socket, log in, select the db and preload the scripts."""
        self.close()
        address = self.address
        try:
            raw = socket.create_connection((address.host, address.port), self._connect_timeout_s)
        except OSError as error:
            raise self._failed(f"connect failed: {error.strerror or error}", error) from None
        except UnicodeError:  # a host name IDNA cannot encode (e.g. a label > 63 chars)
            raise NodeError(self.name, "connect failed: invalid host name") from None
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock = _wrap_tls(raw, address) if address.tls else raw
            self._handshake(sock)
        except (OSError, ssl.SSLError) as error:
            raw.close()
            raise self._failed(f"handshake failed: {error}", error) from None
        except NodeError:
            raw.close()
            raise
        except hiredis.ProtocolError:
            # Something that does not speak RESP (an HTTP server, a TLS-only port...).
            raw.close()
            raise NodeError(self.name, "handshake failed: not a Redis server") from None
        if not isinstance(sock, ssl.SSLSocket):
            # Non-blocking: sends never hang on a frozen node, reads spin then poll.
            sock.setblocking(False)
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)
        self._sock = sock
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        address = self.address
        commands: list[list[bytes | str | int]] = []
        if address.password is not None:
            login = [address.username] if address.username else []
            commands.append(["AUTH", *login, address.password])
        elif address.username:
            raise NodeError(self.name, "an ACL user needs a password")
        if address.db:
            commands.append(["SELECT", address.db])
        commands.extend(["SCRIPT", "LOAD", script.body] for script in ALL_SCRIPTS)
        sock.settimeout(self._connect_timeout_s)
        sock.sendall(b"".join(encode_command(command) for command in commands))
        reader = hiredis.Reader()
        for command in commands:
            reply = reader.gets()
            while reply is False:
                data = sock.recv(_RECV_BYTES)
                if not data:
                    raise NodeError(self.name, "connection closed during login")
                reader.feed(data)
                reply = reader.gets()
            if isinstance(reply, hiredis.ReplyError):
                # The reply names the failure (WRONGPASS, NOAUTH...) but never the secret.
                raise NodeError(self.name, f"{command[0]!s} refused: {reply}")


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
