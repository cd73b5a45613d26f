"""Failing nodes: killed, frozen (SIGSTOP), lying about their protocol, refusing commands.

Whatever the nodes do, the lock answers within a bound derived from its timeouts,
never leaves its token behind after a release, and raises only `LockError`s.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from locking import (
    NO_RETRY,
    Lease,
    LeaseLost,
    LockContended,
    LockError,
    NodeError,
    QuorumUnavailable,
    Redlock,
    ReleaseOutcome,
    RetryPolicy,
)
from tests.locking._support import FOREIGN, MakeRedlock
from tests.spawners import freeze_server, kill_server, redis_servers, thaw_server
from worker.demo.redis_server import RedisServer, free_port


@contextlib.contextmanager
def frozen(*servers: RedisServer) -> Iterator[None]:
    """SIGSTOP the servers for the block; always SIGCONT them again."""
    try:
        for server in servers:
            freeze_server(server)
        yield
    finally:
        for server in servers:
            thaw_server(server)


def timed(call: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def our_tokens_left(
    clients: list[redis.Redis], tokens: set[bytes]
) -> list[tuple[int, bytes | str]]:
    """Every (node index, key) that still holds one of ``tokens``."""
    found = []
    for index, client in enumerate(clients):
        for key in client.keys("redlock:*"):
            if client.get(key) in tokens:
                found.append((index, key))
    return found


# -- killed nodes -----------------------------------------------------------------------------


@pytest.mark.parametrize("connect_first", [False, True], ids=["cold", "connected"])
def test_one_killed_node_still_acquires_and_releases(
    redlock: Redlock,
    lock_nodes: list[RedisServer],
    clients: list[redis.Redis],
    connect_first: bool,
) -> None:
    if connect_first:  # the dead node's connection is then broken, not refused
        redlock.release(redlock.acquire("k", ttl_ms=2000))
    kill_server(lock_nodes[1])
    for _ in range(5):
        lease = redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY)
        assert [clients[0].get("redlock:k"), clients[2].get("redlock:k")] == [
            lease.token.encode()
        ] * 2
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
        assert clients[0].exists("redlock:k") + clients[2].exists("redlock:k") == 0


def test_two_killed_nodes_raise_quorum_unavailable_in_bounded_time(
    redlock: Redlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    dead = [lock_nodes[0], lock_nodes[2]]
    for server in dead:
        kill_server(server)
    started = time.monotonic()
    with pytest.raises(QuorumUnavailable) as caught:
        redlock.acquire("k", ttl_ms=2000)  # the default policy: 10 attempts
    elapsed = time.monotonic() - started
    error = caught.value
    default = RetryPolicy()
    # Every attempt; refusals are instant, so the sleeps are all it costs (< 1 s in total).
    assert error.attempts == default.attempts
    assert elapsed < 5.0 + default.attempts * default.max_delay_ms / 1000
    assert {node_error.node for node_error in error.node_errors} == {
        f"127.0.0.1:{server.port}" for server in dead
    }
    assert all("connect failed" in node_error.reason for node_error in error.node_errors)
    # The one live node granted every attempt; each failed attempt took its grant back.
    assert clients[1].exists("redlock:k") == 0


def test_a_restarted_node_is_used_again(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    redlock = make_redlock(suspect_ms=100)
    redlock.release(redlock.acquire("k", ttl_ms=2000))
    kill_server(lock_nodes[2])
    redlock.release(redlock.acquire("k", ttl_ms=2000))  # refused: suspected for 100 ms
    lock_nodes[2].start()
    time.sleep(0.15)
    # Node 0 now refuses: the grant needs nodes 1 and 2, so the restarted node must count.
    clients[0].set("redlock:k", FOREIGN, px=10_000)
    lease = redlock.acquire("k", ttl_ms=2000, retry=NO_RETRY)
    restarted = redis.Redis(host="127.0.0.1", port=lock_nodes[2].port)
    try:
        assert restarted.get("redlock:k") == lease.token.encode()
    finally:
        restarted.close()
    assert redlock.release(lease) is ReleaseOutcome.RELEASED


# -- frozen nodes -----------------------------------------------------------------------------


def test_one_frozen_node_costs_one_read_timeout_then_is_skipped(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    redlock = make_redlock(read_timeout_ms=1000, connect_timeout_ms=1000, suspect_ms=30_000)
    redlock.release(redlock.acquire("warm", ttl_ms=1000))  # connected before the freeze
    tokens: set[bytes] = set()
    with frozen(lock_nodes[2]):
        lease, first = timed(lambda: redlock.acquire("f", ttl_ms=10_000, retry=NO_RETRY))
        assert isinstance(lease, Lease)
        tokens.add(lease.token.encode())
        assert 0.99 <= first < 3.0  # it waited for the frozen node, once, for the read timeout
        assert redlock.release(lease) is ReleaseOutcome.RELEASED
        for _ in range(100):  # more releases than the node may owe replies on one connection
            # While the node is suspect it is neither waited on by acquire nor by release
            # (nor reconnected to, once its connection is dropped for owing too much).
            lease, elapsed = timed(lambda: redlock.acquire("f", ttl_ms=10_000, retry=NO_RETRY))
            assert isinstance(lease, Lease)
            tokens.add(lease.token.encode())
            outcome, release_elapsed = timed(functools.partial(redlock.release, lease))
            assert outcome is ReleaseOutcome.RELEASED
            assert elapsed < 0.5 and release_elapsed < 0.5  # < half the read timeout
    # Thawed, the node runs the late SET and then, on the same connection, its release.
    time.sleep(0.3)
    assert our_tokens_left(clients, tokens) == []


def test_one_frozen_node_with_a_short_read_timeout(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    redlock = make_redlock(read_timeout_ms=50, suspect_ms=200)
    tokens: set[bytes] = set()
    deadline = time.monotonic() + 1.0
    with frozen(lock_nodes[0]):
        # Cold connections too: the frozen node accepts TCP but never answers the login.
        while time.monotonic() < deadline:  # spans several suspicion windows
            lease, elapsed = timed(lambda: redlock.acquire("f", ttl_ms=10_000, retry=NO_RETRY))
            assert isinstance(lease, Lease)
            assert elapsed < 0.5
            tokens.add(lease.token.encode())
            assert redlock.release(lease) is ReleaseOutcome.RELEASED
            time.sleep(0.02)
    time.sleep(0.3)
    assert len(tokens) > 10
    assert our_tokens_left(clients, tokens) == []


def test_late_replies_of_a_thawed_node_are_skipped(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    """The frozen node owes a SET reply ("OK") and a release reply; neither may be mistaken
    for the answer to the next request."""
    redlock = make_redlock(read_timeout_ms=50, suspect_ms=100)
    redlock.release(redlock.acquire("warm", ttl_ms=1000))
    with frozen(lock_nodes[2]):
        lease = redlock.acquire("late", ttl_ms=10_000, retry=NO_RETRY)
        redlock.release(lease)
    time.sleep(0.3)  # past the suspicion; the node has run the SET and the release by now
    clients[0].set("redlock:late", FOREIGN, px=10_000)
    clients[2].set("redlock:late", FOREIGN, px=10_000)
    with pytest.raises(LockContended) as caught:
        redlock.acquire("late", ttl_ms=10_000, retry=NO_RETRY)
    assert caught.value.votes == {"granted": 1, "held": 2, "failed": 0}
    clients[2].delete("redlock:late")
    lease = redlock.acquire("late", ttl_ms=10_000, retry=NO_RETRY)
    assert clients[2].get("redlock:late") == lease.token.encode()
    assert redlock.release(lease) is ReleaseOutcome.RELEASED


def test_two_frozen_nodes_raise_quorum_unavailable_in_bounded_time(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    redlock = make_redlock(read_timeout_ms=50)
    redlock.release(redlock.acquire("warm", ttl_ms=1000))
    with frozen(lock_nodes[0], lock_nodes[1]):
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(QuorumUnavailable) as caught:
                redlock.acquire("f", ttl_ms=5000, retry=NO_RETRY)
            assert time.monotonic() - started < 0.5
            assert all(error.timed_out for error in caught.value.node_errors)
            assert len(caught.value.node_errors) == 2
        assert clients[2].exists("redlock:f") == 0  # the live node's grant was taken back
    time.sleep(0.3)
    assert [client.exists("redlock:f") for client in clients] == [0, 0, 0]


def test_nodes_that_were_only_briefly_late_are_asked_again_within_their_suspicion(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    """Skipping two suspects of three would make every attempt fail for the whole window."""
    redlock = make_redlock(read_timeout_ms=50, suspect_ms=60_000)
    redlock.release(redlock.acquire("warm", ttl_ms=1000))
    with frozen(lock_nodes[0], lock_nodes[1]), pytest.raises(QuorumUnavailable):
        redlock.acquire("blip", ttl_ms=5000, retry=NO_RETRY)
    time.sleep(0.1)  # thawed: the owed replies arrive
    lease = redlock.acquire("blip", ttl_ms=5000, retry=NO_RETRY)
    assert [client.get("redlock:blip") for client in clients] == [lease.token.encode()] * 3
    assert redlock.release(lease) is ReleaseOutcome.RELEASED
    assert [client.exists("redlock:blip") for client in clients] == [0, 0, 0]


def test_extend_with_two_frozen_nodes_marks_the_lease_lost(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer]
) -> None:
    redlock = make_redlock(read_timeout_ms=50)
    lease = redlock.acquire("x", ttl_ms=5000)
    with frozen(lock_nodes[1], lock_nodes[2]):
        started = time.monotonic()
        with pytest.raises(LeaseLost, match="confirmed by 1 of 3"):
            redlock.extend(lease)
        assert time.monotonic() - started < 0.5
        assert lease.lost.is_set()
        with pytest.raises(LeaseLost):
            lease.check()
        assert redlock.release(lease) is ReleaseOutcome.UNCONFIRMED


# -- nothing raw escapes ----------------------------------------------------------------------


class RawTcpService:
    """A loopback TCP service that is not Redis: it answers every connection with ``reply``
    (or closes it at once when ``reply`` is empty)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                if self.reply:
                    with contextlib.suppress(OSError):
                        connection.settimeout(1.0)
                        connection.recv(4096)
                        connection.sendall(self.reply)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.listener.close()


@pytest.fixture
def raw_services() -> Iterator[Callable[[bytes], RawTcpService]]:
    made: list[RawTcpService] = []

    def make(reply: bytes) -> RawTcpService:
        made.append(RawTcpService(reply))
        return made[-1]

    yield make
    for service in made:
        service.close()


def assert_clean_lock_error(error: BaseException) -> None:
    """A `LockError` that chains no raw redis or socket exception."""
    assert isinstance(error, LockError)
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def exercise(redlock: Redlock, expected_reason: str, *, ping_fails: bool = True) -> None:
    """Every public operation fails with a LockError (or an outcome), never a raw exception.

    :param expected_reason: a regular expression every node's error must match.
    """
    with pytest.raises(QuorumUnavailable) as caught:
        redlock.acquire("r", ttl_ms=1000, retry=NO_RETRY)
    assert_clean_lock_error(caught.value)
    assert all(re.search(expected_reason, str(error)) for error in caught.value.node_errors), (
        caught.value
    )
    with pytest.raises(QuorumUnavailable):
        redlock.acquire(["r", "s"], ttl_ms=1000, fence=True, retry=NO_RETRY)
    forged = Lease(
        resources=("r",), token="0" * 32, ttl_ms=1000, validity_ms=990.0,
        valid_until_s=time.monotonic() + 0.99, clock=time.monotonic,
    )  # fmt: skip
    with pytest.raises(LeaseLost) as lost:
        redlock.extend(forged)
    assert_clean_lock_error(lost.value)
    assert redlock.release(forged) in (ReleaseOutcome.UNCONFIRMED, ReleaseOutcome.EXPIRED)
    pings = redlock.ping()
    assert all(isinstance(error, NodeError) == ping_fails for error in pings.values())


def test_nothing_listening(make_redlock: MakeRedlock) -> None:
    exercise(make_redlock([f"redis://127.0.0.1:{free_port()}" for _ in range(3)]), "connect")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a Redis server"),
        (b"", "handshake failed|closed during login"),
        (b"+OK\r\n" * 2 + b"\x00garbage", "not a Redis server"),
    ],
    ids=["http", "closes-at-once", "garbage-after-ok"],
)
def test_services_that_are_not_redis(
    make_redlock: MakeRedlock,
    raw_services: Callable[[bytes], RawTcpService],
    reply: bytes,
    reason: str,
) -> None:
    services = [raw_services(reply) for _ in range(3)]
    exercise(make_redlock([f"redis://127.0.0.1:{s.port}" for s in services]), reason)


def test_one_service_that_is_not_redis_still_leaves_a_quorum(
    make_redlock: MakeRedlock, node_urls: list[str], raw_services: Callable[[bytes], RawTcpService]
) -> None:
    service = raw_services(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    redlock = make_redlock([*node_urls[:2], f"redis://127.0.0.1:{service.port}"])
    lease = redlock.acquire("r", ttl_ms=1000, retry=NO_RETRY)
    assert redlock.release(lease) is ReleaseOutcome.RELEASED


def test_nodes_that_refuse_the_commands(make_redlock: MakeRedlock) -> None:
    renamed = ("--rename-command", "SET", "", "--rename-command", "EVALSHA", "")
    with redis_servers(3, extra_args=renamed) as servers:
        exercise(make_redlock([server.url for server in servers]), "redis error", ping_fails=False)


def test_nodes_without_the_configured_database(
    make_redlock: MakeRedlock, node_urls: list[str]
) -> None:
    exercise(make_redlock([url.replace("/0", "/999") for url in node_urls]), "SELECT refused")


def test_frozen_nodes(make_redlock: MakeRedlock, lock_nodes: list[RedisServer]) -> None:
    with frozen(*lock_nodes):
        exercise(make_redlock(read_timeout_ms=50, connect_timeout_ms=50), "timed out")
