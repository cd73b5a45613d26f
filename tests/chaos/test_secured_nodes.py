"""Lock nodes behind TLS, a password or an ACL user; wrong credentials; secrets kept out of logs.

* TLS: three redis-server nodes on ``--tls-port`` with a certificate for
  127.0.0.1 signed by a throw-away CA (made with the ``openssl`` CLI); a Redlock
  over ``rediss://`` verifies it, acquires and releases; a client that trusts
  another CA, or speaks plain TCP to the TLS port, gets no lease.
* A worker whose lock nodes need a password, or an ACL user limited to the lock's
  keys and commands, sells; with a wrong password it refuses to start, saying
  why without the password, and no secret reaches its log.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from locking import NO_RETRY, NotAcquired, Redlock, ReleaseOutcome
from tests.chaos.figures import assert_sound
from tests.chaos.harness import FlashSale
from tests.chaos.report import Recorder
from worker.demo.redis_server import RedisServer, free_port
from worker.demo.stack import LocalStack, StackError

SECRET = "s3cret-" + uuid.uuid4().hex[:12]
ACL_SECRET = "acl-" + uuid.uuid4().hex[:12]
WRONG_SECRET = "wrong-" + uuid.uuid4().hex[:12]
#: The least a Redlock needs: its lock and fence keys, its scripts' commands, a ping.
#: Without ~redlock-wake:* +rpush +ltrim +blpop, releases wake no waiter and waiters
#: wait out their timeouts (slower under contention, still correct).
ACL_RULES = (
    "--user", "locker", "on", f">{ACL_SECRET}", "~redlock:*", "~redlock-fence:*",
    "+ping", "+select", "+evalsha", "+script|load", "+get", "+set", "+del", "+exists",
    "+pexpire",
)  # fmt: skip
SMALL_SALE = 200


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
    )  # fmt: skip
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for CN and SAN IP 127.0.0.1 signed by ``ca``: (certificate, key)."""
    request, key = directory / "server.csr", directory / "server.key"
    cert, extensions = directory / "server.crt", directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request),
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(extensions),
    )  # fmt: skip
    return cert, key


def tls_args(port: int, cert: Path, key: Path, ca: Path) -> tuple[str, ...]:
    """redis-server options for TLS on ``port`` (the plain port stays for readiness checks)."""
    return (
        "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
    )  # fmt: skip


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[list[int], Path, Path]]:
    """Three TLS lock nodes: (their TLS ports, the CA that signed them, an unrelated CA)."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command line tool is required (apt-get install openssl)")
    ca = make_ca(tmp_path, "chaos-ca")
    stranger, _ = make_ca(tmp_path, "stranger-ca")
    cert, key = make_server_cert(tmp_path, ca)
    ports = [free_port() for _ in range(3)]
    servers = [RedisServer(extra_args=tls_args(port, cert, key, ca[0])) for port in ports]
    try:
        for server in servers:
            server.start()
        yield ports, ca[0], stranger
    finally:
        for server in servers:
            server.cleanup()


def tls_urls(ports: list[int], ca: Path) -> list[str]:
    return [
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required" for port in ports
    ]


def test_a_redlock_over_tls_nodes_acquires_and_releases(
    tls: tuple[list[int], Path, Path], reliability: Recorder
) -> None:
    ports, ca, _ = tls
    redlock = Redlock(tls_urls(ports, ca), connect_timeout_ms=2000, read_timeout_ms=2000)
    try:
        first = redlock.acquire("sku:tls", ttl_ms=5000, fence=True)
        assert redlock.release(first) is ReleaseOutcome.RELEASED
        second = redlock.acquire("sku:tls", ttl_ms=5000, fence=True)
        redlock.release(second)
    finally:
        redlock.close()
    reliability.record(
        "H-secured",
        "Redlock over 3 TLS nodes (rediss://, CA-verified certificate for 127.0.0.1)",
        notes=f"fenced leases acquired and released; fences {first.fence} then {second.fence}",
    )
    assert first.fence is not None and second.fence is not None
    assert second.fence > first.fence


@pytest.mark.parametrize("mistake", ["untrusted CA", "plain TCP to the TLS port"])
def test_tls_nodes_refuse_a_client_that_cannot_verify_or_speak_tls(
    tls: tuple[list[int], Path, Path], reliability: Recorder, mistake: str
) -> None:
    ports, _, stranger = tls
    urls = (
        tls_urls(ports, stranger)
        if mistake == "untrusted CA"
        else [f"redis://127.0.0.1:{port}/0" for port in ports]
    )
    redlock = Redlock(urls, connect_timeout_ms=1000, read_timeout_ms=1000)
    try:
        with pytest.raises(NotAcquired) as refused:
            redlock.acquire("sku:tls", ttl_ms=5000, retry=NO_RETRY)
    finally:
        redlock.close()
    reliability.record(
        "H-secured",
        f"TLS nodes, client with {mistake}",
        notes=f"no lease: {type(refused.value).__name__}",
    )


@contextmanager
def secured_stack(database_url: str, node_url: str, **node_options: object) -> Iterator[LocalStack]:
    """A stack whose lock nodes get ``node_options`` and are reached as ``node_url``.

    :param node_url: a URL with a ``{port}`` placeholder (and the credentials to use).
    """
    with LocalStack(env={"DATABASE_URL": database_url}) as stack:
        stack.start_lock_nodes(3, **node_options)
        stack.env["REDLOCK_NODES"] = ",".join(
            node_url.format(port=server.port) for server in stack.lock_nodes
        )
        stack.start_broker()
        yield stack


PASSWORD_URL = f"redis://:{SECRET}@127.0.0.1:{{port}}/0"
ACL_URL = f"redis://locker:{ACL_SECRET}@127.0.0.1:{{port}}/0"


@pytest.mark.parametrize(
    ("protection", "url", "options"),
    [
        pytest.param("a password", PASSWORD_URL, {"password": SECRET}, id="password"),
        pytest.param(
            "an ACL user",
            ACL_URL,
            {"password": SECRET, "extra_args": ACL_RULES},
            id="acl-user",
        ),
    ],
)
def test_a_worker_sells_with_protected_lock_nodes_and_logs_no_secret(
    database_url: str,
    observer: Engine,
    reliability: Recorder,
    protection: str,
    url: str,
    options: dict[str, object],
) -> None:
    with secured_stack(database_url, url, **options) as stack:
        sale = FlashSale(stack, observer, orders=SMALL_SALE)
        sale.start_workers(1, env={}, loglevel="INFO")
        sale.open()
        result = sale.finish(timeout_s=60)
        log = stack.workers[0].log()
    leaked = SECRET in log or ACL_SECRET in log
    reliability.record(
        "H-secured",
        f"Worker (INFO logs) with lock nodes behind {protection}",
        result,
        notes=f"sold; secret in the worker log: {'YES' if leaked else 'no'}",
    )
    assert_sound(observer, sale.ids, result)
    assert result.confirmed > 0
    assert not leaked


def test_a_wrong_password_stops_the_worker_at_start_without_showing_it(
    database_url: str, reliability: Recorder
) -> None:
    wrong = f"redis://:{WRONG_SECRET}@127.0.0.1:{{port}}/0"
    with secured_stack(database_url, wrong, password=SECRET) as stack:
        with pytest.raises(StackError) as refused:
            stack.start_worker(concurrency=1, loglevel="INFO")
        worker = stack.workers[0]
        log = worker.log()
    reliability.record(
        "H-secured",
        "Worker with a wrong lock-node password",
        notes=(f"refused to start (exit {worker.process.returncode}), says why, shows no password"),
    )
    assert worker.process.returncode not in (None, 0)
    assert "refused to start" in log
    assert "AUTH refused" in log or "WRONGPASS" in log
    for secret in (SECRET, WRONG_SECRET):
        assert secret not in log
        assert secret not in str(refused.value)
