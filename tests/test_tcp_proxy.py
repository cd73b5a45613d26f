"""The test proxy forwards, cuts, holds bytes through a partition, refuses and heals."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.tcp_proxy import TcpProxy
from worker.demo.redis_server import RedisServer


@pytest.fixture
def proxy(broker: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", broker.port) as link:
        yield link


def _ping(sock: socket.socket) -> bytes:
    sock.sendall(b"PING\r\n")
    return sock.recv(64)


def test_forwards_and_cut_closes_open_connections(proxy: TcpProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        assert _ping(sock) == b"+PONG\r\n"
        assert proxy.cut() == 1
        assert sock.recv(64) == b""  # the proxy closed it
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        assert _ping(sock) == b"+PONG\r\n"  # new connections still work


def test_partition_holds_bytes_until_heal(proxy: TcpProxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        assert _ping(sock) == b"+PONG\r\n"
        proxy.partition()
        sock.settimeout(0.3)
        sock.sendall(b"PING\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(64)
        proxy.heal()
        sock.settimeout(2)
        assert sock.recv(64) == b"+PONG\r\n"  # late, not lost


def test_refusing_partition_resets_connections(proxy: TcpProxy) -> None:
    proxy.partition(refuse=True)
    try:
        with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
            try:
                data = sock.recv(64)
            except ConnectionResetError:
                data = b""
    except (BrokenPipeError, ConnectionResetError):
        data = b""  # the reset came while the connection was being set up
    assert data == b""  # reset or closed, never forwarded
    proxy.heal()
    with socket.create_connection((proxy.host, proxy.port), timeout=2) as sock:
        assert _ping(sock) == b"+PONG\r\n"
