"""Name resolution of one lock node, bounded by the connect timeout and cached.

``socket.create_connection`` resolves the host name at every connect, and a lookup
has no timeout of its own: a stopped container's name can make it hang or fail
slowly (EAI_AGAIN). Here the lookup runs on a daemon thread that the caller waits
on for at most the connect timeout; its addresses are reused for
`RESOLVE_TTL_S`, after which a new lookup starts in the background while the
old addresses stay in use. At most one lookup per node runs at a time, so a
hanging resolver costs one thread, not one per attempt.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Sequence

#: One ``getaddrinfo`` entry: (family, type, proto, canonname, sockaddr).
AddrInfo = tuple[
    socket.AddressFamily,
    socket.SocketKind,
    int,
    str,
    tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes],
]

#: How long resolved addresses are used before they are refreshed in the background.
RESOLVE_TTL_S = 5.0


class Resolver:
    """The addresses of one ``host:port``, looked up off the caller's thread.

    :param host: a host name or an IP literal (a literal is never looked up).
    :param port: the TCP port.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._literal = _numeric(host, port)
        self._cached: Sequence[AddrInfo] | None = None
        self._resolved_at_s = 0.0
        self._lookup: _Lookup | None = None

    def addresses(self, timeout_s: float) -> Sequence[AddrInfo]:
        """Return the host's addresses, waiting at most ``timeout_s`` for a lookup.

        :param timeout_s: the longest wait for a lookup when none has succeeded yet.
        :raises socket.gaierror: the name does not resolve, or not within ``timeout_s``.
        """
        if self._literal is not None:
            return self._literal
        error = self._collect()
        if self._cached is not None and time.monotonic() - self._resolved_at_s < RESOLVE_TTL_S:
            return self._cached
        lookup = self._start()
        if self._cached is not None:
            return self._cached  # stale but usable; the refresh runs in the background
        if not lookup.done.wait(timeout_s):
            raise socket.gaierror(
                socket.EAI_AGAIN, f"lookup of {self._host!r} took over {timeout_s * 1000:.0f} ms"
            )
        error = self._collect()
        if self._cached is not None:
            return self._cached
        raise error or socket.gaierror(socket.EAI_FAIL, f"no address for {self._host!r}")

    def _start(self) -> _Lookup:
        lookup = self._lookup
        if lookup is None or lookup.pid != os.getpid():  # a forked child has no thread
            lookup = self._lookup = _Lookup(self._host, self._port)
        return lookup

    def _collect(self) -> socket.gaierror | None:
        """Take the result of a finished lookup; return its error, if it failed."""
        lookup = self._lookup
        if lookup is None or lookup.pid != os.getpid() or not lookup.done.is_set():
            return None
        self._lookup = None
        if lookup.result:
            self._cached = lookup.result
            self._resolved_at_s = lookup.finished_s
            return None
        return lookup.error


class _Lookup:
    """One ``getaddrinfo`` call on a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        self.pid = os.getpid()
        self.done = threading.Event()
        self.result: Sequence[AddrInfo] = ()
        self.error: socket.gaierror | None = None
        self.finished_s = 0.0
        self._host = host
        self._port = port
        threading.Thread(target=self._run, name=f"redlock-resolve-{host}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            self.error = error
        except (OSError, UnicodeError) as error:  # e.g. a label IDNA cannot encode
            self.error = socket.gaierror(socket.EAI_NONAME, f"invalid host name: {error}")
        self.finished_s = time.monotonic()
        self.done.set()


def _numeric(host: str, port: int) -> Sequence[AddrInfo] | None:
    """Return the address of an IP literal without any lookup, else None."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None
