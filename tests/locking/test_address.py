"""Node addresses and configuration: URLs, redis-py clients, secrets kept out of messages."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import redis

from locking import (
    ConfigurationError,
    NodeAddress,
    QuorumUnavailable,
    ReleaseOutcome,
    redact_url,
)
from tests.locking._support import MakeRedlock
from tests.spawners import redis_servers
from worker.demo.redis_server import RedisServer

SECRET = "s3cret"
WRONG = "wr0ng-hunter2"


def test_url_with_user_password_and_db() -> None:
    address = NodeAddress.from_url(f"redis://alice:{SECRET}@127.0.0.1:7001/2")
    assert (address.host, address.port, address.db) == ("127.0.0.1", 7001, 2)
    assert (address.username, address.password, address.tls) == ("alice", SECRET, False)
    assert address.name == "127.0.0.1:7001"


def test_url_defaults_and_password_only() -> None:
    address = NodeAddress.from_url(f"redis://:{SECRET}@127.0.0.1")
    assert (address.port, address.db, address.username, address.password) == (
        6379,
        0,
        None,
        SECRET,
    )
    assert NodeAddress.from_url("redis://127.0.0.1:7001?db=3").db == 3


def test_url_password_is_percent_decoded() -> None:
    address = NodeAddress.from_url("redis://bob:p%40ss%3Aword@127.0.0.1:7001")
    assert address.password == "p@ss:word"


def test_rediss_sets_tls_and_reads_the_certificate_options() -> None:
    address = NodeAddress.from_url(
        "rediss://127.0.0.1:7001/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=none"
    )
    assert address.tls
    assert (address.ssl_ca_certs, address.ssl_cert_reqs) == ("/etc/ca.pem", "none")
    assert NodeAddress.from_url("rediss://127.0.0.1:7001").ssl_cert_reqs == "required"


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{SECRET}@127.0.0.1:7001",
        f"unix://user:{SECRET}@127.0.0.1/tmp/redis.sock",
        f"redis://user:{SECRET}@127.0.0.1:notaport",
        f"redis://user:{SECRET}@127.0.0.1:99999",
        f"redis://user:{SECRET}@127.0.0.1:7001/notadb",
        f"redis://user:{SECRET}@[::1:7001",  # not even parseable
        f"redis://user:{SECRET}@:7001",
        f"rediss://user:{SECRET}@127.0.0.1:7001?ssl_cert_reqs=maybe",
    ],
)
def test_bad_urls_raise_configuration_errors_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        NodeAddress.from_url(url)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None


def test_redact_url_masks_only_the_password() -> None:
    assert redact_url(f"redis://alice:{SECRET}@127.0.0.1:7001/2") == (
        "redis://alice:***@127.0.0.1:7001/2"
    )
    assert redact_url(f"redis://:{SECRET}@127.0.0.1") == "redis://:***@127.0.0.1"
    assert redact_url("redis://127.0.0.1:7001") == "redis://127.0.0.1:7001"
    assert SECRET not in redact_url(f"redis://alice:{SECRET}@[::1:7001/0")


def test_repr_of_an_address_hides_the_password() -> None:
    address = NodeAddress.from_url(f"redis://alice:{SECRET}@127.0.0.1:7001")
    assert SECRET not in repr(address)
    assert "alice" in repr(address)


def test_address_of_a_redis_py_client() -> None:
    client = redis.Redis(host="127.0.0.1", port=7005, db=4, username="u", password=SECRET)
    try:
        address = NodeAddress.from_client(client)
    finally:
        client.close()
    assert (address.host, address.port, address.db) == ("127.0.0.1", 7005, 4)
    assert (address.username, address.password, address.tls) == ("u", SECRET, False)


@pytest.mark.parametrize(
    ("cert_reqs", "expected"),
    [
        ("required", "required"),
        ("none", "none"),
        ("optional", "optional"),
        (None, "none"),  # redis-py's spelling of "do not verify"
        (ssl.CERT_NONE, "none"),
        (ssl.CERT_OPTIONAL, "optional"),
        (ssl.CERT_REQUIRED, "required"),
    ],
)
def test_address_of_a_tls_client_keeps_its_verification_mode(
    cert_reqs: str | ssl.VerifyMode | None, expected: str
) -> None:
    # None is accepted by redis-py at run time, though its annotation leaves it out.
    client = redis.Redis(
        host="127.0.0.1",
        port=7005,
        ssl=True,
        ssl_cert_reqs=cert_reqs,  # type: ignore[arg-type]
    )
    try:
        address = NodeAddress.from_client(client)
    finally:
        client.close()
    assert address.tls
    assert address.ssl_cert_reqs == expected


def test_address_of_something_else_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"not a redis\.Redis client"):
        NodeAddress.from_client(object())  # type: ignore[arg-type]  # not a client, on purpose
    client = redis.Redis(unix_socket_path="/tmp/redis.sock")
    try:
        with pytest.raises(ConfigurationError, match="unix-socket"):
            NodeAddress.from_client(client)
    finally:
        client.close()


# -- Redlock configuration --------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2])
def test_fewer_than_three_nodes_are_refused_by_default(
    make_redlock: MakeRedlock, node_urls: list[str], count: int
) -> None:
    with pytest.raises(ConfigurationError, match="at least 3"):
        make_redlock(node_urls[:count])
    redlock = make_redlock(node_urls[:count], allow_fewer_than_three=True)
    assert redlock.quorum == count  # 1 of 1, 2 of 2
    lease = redlock.acquire("dev", ttl_ms=1000)
    assert redlock.release(lease) is ReleaseOutcome.RELEASED


def test_no_nodes_is_refused(make_redlock: MakeRedlock) -> None:
    with pytest.raises(ConfigurationError, match="at least one"):
        make_redlock([], allow_fewer_than_three=True)


def test_duplicate_nodes_are_refused(make_redlock: MakeRedlock, node_urls: list[str]) -> None:
    with pytest.raises(ConfigurationError, match="distinct"):
        make_redlock([node_urls[0], node_urls[1], node_urls[0]])
    # The same server under another db is still the same server.
    with pytest.raises(ConfigurationError, match="distinct"):
        make_redlock([node_urls[0], node_urls[1], node_urls[1].replace("/0", "/3")])


@pytest.mark.parametrize(
    "options",
    [{"connect_timeout_ms": 0}, {"read_timeout_ms": -1.0}, {"max_extensions": -1}],
)
def test_bad_timeouts_are_refused(make_redlock: MakeRedlock, options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        make_redlock(**options)


def test_bad_url_in_the_node_list_hides_its_password(
    make_redlock: MakeRedlock, node_urls: list[str]
) -> None:
    for bad in (f"http://u:{SECRET}@127.0.0.1:1", f"redis://u:{SECRET}@[::1:1"):
        with pytest.raises(ConfigurationError) as caught:
            make_redlock([*node_urls[:2], bad])
        assert SECRET not in str(caught.value)
        assert caught.value.__cause__ is None


def test_redlock_from_redis_py_clients(
    make_redlock: MakeRedlock, lock_nodes: list[RedisServer], clients: list[redis.Redis]
) -> None:
    redlock = make_redlock(clients)
    assert redlock.node_names == [f"127.0.0.1:{server.port}" for server in lock_nodes]
    lease = redlock.acquire("from-clients", ttl_ms=2000)
    assert [client.get("redlock:from-clients") for client in clients] == [lease.token.encode()] * 3
    assert redlock.release(lease) is ReleaseOutcome.RELEASED
    assert [client.exists("redlock:from-clients") for client in clients] == [0, 0, 0]


# -- password-protected nodes ----------------------------------------------------------------


@pytest.fixture
def protected_nodes() -> Iterator[list[RedisServer]]:
    with redis_servers(3, password=SECRET) as servers:
        yield servers


def _url(server: RedisServer, password: str | None) -> str:
    auth = f":{password}@" if password is not None else ""
    return f"redis://{auth}127.0.0.1:{server.port}/0"


def test_password_protected_nodes_work_with_the_right_password(
    make_redlock: MakeRedlock, protected_nodes: list[RedisServer]
) -> None:
    redlock = make_redlock([_url(server, SECRET) for server in protected_nodes])
    lease = redlock.acquire("protected", ttl_ms=2000)
    checker = redis.Redis(host="127.0.0.1", port=protected_nodes[0].port, password=SECRET)
    try:
        assert checker.get("redlock:protected") == lease.token.encode()
    finally:
        checker.close()
    assert redlock.release(lease) is ReleaseOutcome.RELEASED


@pytest.mark.parametrize(("password", "refusal"), [(WRONG, "WRONGPASS"), (None, "NOAUTH")])
def test_a_refused_login_is_reported_without_any_password(
    make_redlock: MakeRedlock,
    protected_nodes: list[RedisServer],
    password: str | None,
    refusal: str,
) -> None:
    redlock = make_redlock([_url(server, password) for server in protected_nodes])
    with pytest.raises(QuorumUnavailable) as caught:
        redlock.acquire("protected", ttl_ms=2000)
    error = caught.value
    assert "refused" in str(error)
    assert refusal in str(error)
    assert len(error.node_errors) == 3
    assert {node_error.node for node_error in error.node_errors} == set(redlock.node_names)
    texts = [str(error), repr(error), *(str(node_error) for node_error in error.node_errors)]
    for text in texts:
        assert WRONG not in text
        assert SECRET not in text


def test_one_node_with_a_wrong_password_still_leaves_a_quorum(
    make_redlock: MakeRedlock, protected_nodes: list[RedisServer]
) -> None:
    urls = [_url(protected_nodes[0], WRONG)] + [_url(s, SECRET) for s in protected_nodes[1:]]
    redlock = make_redlock(urls)
    lease = redlock.acquire("protected", ttl_ms=2000)
    assert redlock.release(lease) is ReleaseOutcome.RELEASED
    pings = redlock.ping()
    failing = pings[redlock.node_names[0]]
    assert failing is not None and "WRONGPASS" in failing.reason and WRONG not in str(failing)
    assert [pings[name] for name in redlock.node_names[1:]] == [None, None]
