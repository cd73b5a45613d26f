"""A TCP proxy on a loopback port that a test can cut, partition and heal.

One proxy stands for one network link (one client group to one server). It
forwards bytes both ways, one thread per direction per connection, and offers
the three faults a network gives:

- `cut`: every open connection is closed at once (a dropped connection, a
  load balancer reset, a server-side ``CLIENT KILL``); new connections work.
- `partition`: nothing moves any more in either direction, and nothing is lost:
  bytes wait in the kernel buffers, as TCP keeps retransmitting them through a
  real partition, and new connections are accepted but hang. With
  ``refuse=True`` instead, open connections are closed and new ones are closed
  as soon as they are accepted (a peer that answers with RST).
- `heal`: the link works again; bytes held during a partition arrive late.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType

#: How often a forwarding thread looks at the link's state while idle.
_POLL_S = 0.02
_CHUNK_BYTES = 65536


class TcpProxy:
    """Forward ``listen_host:<free port>`` to ``target_host:target_port``.

    :param target_host: the server's host (a loopback address).
    :param target_port: the server's port.
    :param listen_host: where the proxy listens.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self._listener = socket.create_server((listen_host, 0))
        self.host = listen_host
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self.connections_accepted = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        """``host:port`` where clients connect."""
        return f"{self.host}:{self.port}"

    def url(self, scheme: str = "redis", path: str = "") -> str:
        """A URL that points at the proxy, e.g. ``redis://127.0.0.1:PORT/0``."""
        return f"{scheme}://{self.address}{path}"

    def cut(self) -> int:
        """Close every open connection; return how many were closed."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, server in pairs:
            _close(client)
            _close(server)
        return len(pairs)

    def partition(self, *, refuse: bool = False) -> None:
        """Stop the link: hold every byte (default), or reset every connection."""
        self._refusing = refuse
        self._flowing.clear()
        if refuse:
            self.cut()

    def heal(self) -> None:
        """Let bytes flow again (held bytes are delivered now)."""
        self._refusing = False
        self._flowing.set()

    @property
    def partitioned(self) -> bool:
        """True between `partition` and `heal`."""
        return not self._flowing.is_set()

    def close(self) -> None:
        """Stop accepting, close every connection and let the threads end."""
        self._stopped.set()
        self._flowing.set()
        _close(self._listener)
        self.cut()
        self._acceptor.join(timeout=2)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections_accepted += 1
            if self._refusing:
                # SO_LINGER 0: the close sends RST, as a refusing peer would.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                _close(client)
                continue
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        # A partitioned link accepts (the SYN was answered by the kernel) but goes nowhere.
        while not self._flowing.wait(_POLL_S):
            if self._stopped.is_set() or self._refusing:
                _close(client)
                return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pairs.append((client, server))
        for source, sink in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._stopped.is_set():
                if not self._flowing.wait(_POLL_S):
                    continue
                readable, _, _ = select.select([source], [], [], _POLL_S)
                if not readable or not self._flowing.is_set():
                    continue
                data = source.recv(_CHUNK_BYTES)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            _close(source)
            _close(sink)
            with self._lock:
                self._pairs = [p for p in self._pairs if source not in p]


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
