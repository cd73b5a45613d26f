"""Connections: closed ones noticed before sending, bad names and refused ports bounded
and suspected, node errors typed, reported and logged once per state change.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from locking import NO_RETRY, NODE_ERROR_KINDS, NodeAddress, NodeError, Redlock, ReleaseOutcome
from locking.node import Node
from locking.protocol import encode_command
from tests.locking._support import MakeRedlock
from worker.demo.redis_server import RedisServer, free_port, redis_servers

UNRESOLVABLE = "redis://lock-node.invalid:6379"
#: Generous: one per-node timeout (200 ms) plus scheduling noise on a loaded host.
BOUND_S = 0.6


def kill_lock_connections(clients: list[redis.Redis]) -> None:
    for client in clients:
        client.client_kill_filter(_type="normal", skipme=True)


def keys_left(clients: list[redis.Redis], key: str) -> list[bytes | None]:
    return [client.get(key) for client in clients]


def collector() -> tuple[list[NodeError], Callable[[NodeError], None]]:
    errors: list[NodeError] = []
    return errors, errors.append


# -- closed connections -------------------------------------------------------------------------


def test_an_acquire_after_every_node_killed_its_connections_succeeds(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    redlock.release(redlock.acquire("warm", ttl_ms=1000))
    kill_lock_connections(clients)
    lease = redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY)
    assert keys_left(clients, "redlock:k") == [lease.token.encode()] * 3
    assert redlock.release(lease) is ReleaseOutcome.RELEASED


def test_a_release_without_confirmation_is_not_lost_into_a_closed_connection(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    lease = redlock.acquire("k", ttl_ms=10_000)
    kill_lock_connections(clients)
    assert redlock.release(lease, confirm=False) is ReleaseOutcome.SENT
    deadline = time.monotonic() + 2.0
    while any(keys_left(clients, "redlock:k")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert keys_left(clients, "redlock:k") == [None] * 3


def test_connections_closed_by_the_server_idle_timeout_are_replaced(
    redlock: Redlock, clients: list[redis.Redis]
) -> None:
    for client in clients:
        client.config_set("timeout", 1)
    try:
        redlock.release(redlock.acquire("warm", ttl_ms=1000))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # until the servers closed the idle connections
            if all(len(client.client_list(_type="normal")) == 1 for client in clients):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the servers never closed the idle connections")
        lease = redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY)
        assert keys_left(clients, "redlock:k") == [lease.token.encode()] * 3
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
    finally:
        for client in clients:
            client.config_set("timeout", 0)


def test_a_release_after_every_node_restarted_with_aof_reaches_them(
    make_redlock: MakeRedlock,
) -> None:
    with redis_servers(3, appendonly=True) as servers:
        redlock = make_redlock([server.url for server in servers], connect_timeout_ms=1000)
        lease = redlock.acquire("k", ttl_ms=30_000)
        for server in servers:
            server.stop()
            server.start()
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
        redlock.release(redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY))


# -- bad names and refused ports ----------------------------------------------------------------


@pytest.fixture
def refused_url() -> str:
    return f"redis://127.0.0.1:{free_port()}"


@pytest.fixture
def slow_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A host name whose lookup hangs for 3 s (what a stopped container's name can do).

    The only stand-in in this module: no real resolver can be made to hang on cue.
    """
    original = socket.getaddrinfo
    release = threading.Event()

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host == "hanging.invalid":
            release.wait(3.0)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return original(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield "redis://hanging.invalid:6379"
    release.set()


@pytest.mark.parametrize("bad", ["unresolvable", "hanging", "refused"])
def test_a_bad_node_costs_at_most_the_connect_timeout_and_is_suspected(
    make_redlock: MakeRedlock,
    node_urls: list[str],
    refused_url: str,
    request: pytest.FixtureRequest,
    bad: str,
) -> None:
    url = {
        "unresolvable": UNRESOLVABLE,
        "refused": refused_url,
        "hanging": "",
    }[bad] or request.getfixturevalue("slow_lookups")
    errors, report = collector()
    redlock = make_redlock(
        [node_urls[0], node_urls[1], url],
        connect_timeout_ms=200,
        read_timeout_ms=200,
        suspect_ms=30_000,  # longer than the test, however loaded the host
        on_node_error=report,
    )
    started = time.monotonic()
    lease = redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY)
    assert time.monotonic() - started < BOUND_S
    assert [error.kind for error in errors] == ["refused" if bad == "refused" else "unresolvable"]
    redlock.release(lease)
    # Suspected: the next rounds skip it instead of paying for it again.
    for _ in range(5):
        started = time.monotonic()
        redlock.release(redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY))
        assert time.monotonic() - started < BOUND_S
    assert len(errors) == 1


def test_a_full_send_buffer_suspects_the_node(lock_nodes: list[RedisServer]) -> None:
    node = Node(
        NodeAddress(host="127.0.0.1", port=lock_nodes[0].port),
        connect_timeout_s=1.0,
        suspect_s=30.0,
    )
    try:
        assert node.send(encode_command(["PING"])) is None
        assert node.read(time.monotonic() + 1.0) == b"PONG"
        lock_nodes[0].freeze()
        try:  # more than any socket buffer holds, to a node that reads nothing
            error = node.send(encode_command(["SET", "big", b"0" * 64_000_000]))
        finally:
            lock_nodes[0].thaw()
        assert node.is_suspect(time.monotonic())
        assert not node.connected  # part of the command left: the connection cannot stay
        assert isinstance(error, NodeError) and error.kind == "timeout"
    finally:
        node.close()


# -- error kinds, the callback, state logging -------------------------------------------------


@pytest.fixture
def closing_port() -> Iterator[int]:
    """A port that accepts connections and closes them at once."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def ping_error(redlock: Redlock, name: str) -> NodeError:
    error = redlock.ping()[name]
    assert error is not None
    return error


def test_node_error_kinds(
    make_redlock: MakeRedlock,
    node_urls: list[str],
    lock_nodes: list[RedisServer],
    closing_port: int,
) -> None:
    assert NODE_ERROR_KINDS == (
        "timeout",
        "refused",
        "unresolvable",
        "closed",
        "auth",
        "protocol",
        "redis_error",
        "io",
    )
    refused = f"127.0.0.1:{free_port()}"
    closing = f"127.0.0.1:{closing_port}"
    redlock = make_redlock(
        [f"redis://{refused}", f"redis://{closing}", UNRESOLVABLE], connect_timeout_ms=200
    )
    assert ping_error(redlock, refused).kind == "refused"
    assert ping_error(redlock, closing).kind == "closed"
    assert ping_error(redlock, "lock-node.invalid:6379").kind == "unresolvable"
    with redis_servers(1, password="right") as (secured,):
        wrong = make_redlock(
            [f"redis://:wrong@127.0.0.1:{secured.port}", *node_urls[1:]],
            connect_timeout_ms=1000,
        )
        assert ping_error(wrong, f"127.0.0.1:{secured.port}").kind == "auth"
    frozen = make_redlock(connect_timeout_ms=100, read_timeout_ms=100)
    lock_nodes[0].freeze()
    try:
        error = ping_error(frozen, f"127.0.0.1:{lock_nodes[0].port}")
    finally:
        lock_nodes[0].thaw()
    assert error.kind == "timeout" and error.timed_out
    assert NodeError("n", "r", timed_out=True).kind == "timeout"
    with pytest.raises(ValueError):
        NodeError("n", "r", kind="other")


def test_a_failing_callback_never_breaks_a_round(
    make_redlock: MakeRedlock,
    node_urls: list[str],
    refused_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(error: NodeError) -> None:
        raise RuntimeError("callback bug")

    redlock = make_redlock([*node_urls[:2], refused_url], on_node_error=explode)
    with caplog.at_level(logging.ERROR, logger="locking.node"):
        redlock.release(redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY))
    assert "on_node_error callback failed" in caplog.text


def test_each_state_change_is_logged_once(
    make_redlock: MakeRedlock, node_urls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    errors, report = collector()
    # suspect_ms=1: every round contacts the dead node again.
    redlock = make_redlock(
        [*node_urls[:2], f"redis://:secret@127.0.0.1:{port}"], suspect_ms=1, on_node_error=report
    )
    with caplog.at_level(logging.INFO, logger="locking.node"):
        for _ in range(20):
            redlock.release(redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY))
            time.sleep(0.002)
        assert len(errors) >= 20  # every contact reported...
        down = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(down) == 1  # ...but logged once
        assert f"127.0.0.1:{port}" in down[0].getMessage()
        assert "secret" not in caplog.text
        with redis_servers(1, port=port, password="secret"):
            for _ in range(20):
                redlock.release(redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY))
    up = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(up) == 1 and "up again" in up[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
