"""Opening a connection to a lock node: connect, TLS, login, scripts; and naming its errors."""

from __future__ import annotations

import socket
import ssl
import time

import hiredis

from locking.address import NodeAddress
from locking.errors import NodeError
from locking.protocol import encode_command
from locking.resolver import Resolver
from locking.scripts import ALL_SCRIPTS

#: The most one recv() takes from a node's socket.
RECV_BYTES = 65536
#: Error replies that mean the credentials or the ACL user's permissions, not the node.
_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM", "ERR AUTH", "ERR invalid password")


def open_socket(resolver: Resolver, deadline: float, connect_timeout_s: float) -> socket.socket:
    """Connect to the first of the host's addresses that accepts, by ``deadline``."""
    last: OSError = socket.gaierror(socket.EAI_FAIL, "no address")
    for family, kind, proto, _, sockaddr in resolver.addresses(connect_timeout_s):
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


def handshake(sock: socket.socket, address: NodeAddress, name: str, deadline: float) -> None:
    """Log in, select the db and load every script, by ``deadline``.

    :raises NodeError: the node refused a step (credentials, ACL) or closed the connection.
    """
    commands: list[list[bytes | str | int]] = []
    if address.password is not None:
        login = [address.username] if address.username else []
        commands.append(["AUTH", *login, address.password])
    elif address.username:
        raise NodeError(name, "an ACL user needs a password", kind="auth")
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
            data = sock.recv(RECV_BYTES)
            if not data:
                raise NodeError(name, "connection closed during login", kind="closed")
            reader.feed(data)
            reply = reader.gets()
        if isinstance(reply, hiredis.ReplyError):
            # The reply names the failure (WRONGPASS, NOAUTH...) but never the secret.
            kind = "auth" if command[0] == "AUTH" else error_kind(reply)
            raise NodeError(name, f"{command[0]!s} refused: {reply}", kind=kind)


def error_kind(error: BaseException) -> str:
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


def wrap_tls(raw: socket.socket, address: NodeAddress) -> socket.socket:
    context = ssl.create_default_context(cafile=address.ssl_ca_certs)
    if address.ssl_cert_reqs != "required":
        context.check_hostname = False
        context.verify_mode = (
            ssl.CERT_NONE if address.ssl_cert_reqs == "none" else ssl.CERT_OPTIONAL
        )
    if address.ssl_certfile:
        context.load_cert_chain(address.ssl_certfile, address.ssl_keyfile)
    return context.wrap_socket(raw, server_hostname=address.host)
