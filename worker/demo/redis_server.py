"""Spawn and stop throw-away ``redis-server`` processes on free loopback ports.

The demo, the tests and the benchmarks start their own lock nodes (and the demo
its own broker) with this; nothing here is used by a production worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from locking.protocol import encode_command

logger = logging.getLogger(__name__)

INSTALL_HINT = "install it with: apt-get install redis-server (Debian/Ubuntu) or brew install redis"


class RedisServerError(RuntimeError):
    """A redis-server child could not be found or started."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def redis_server_binary() -> str:
    """Return the path of ``redis-server`` or raise with an install hint."""
    path = shutil.which("redis-server")
    if path is None:
        raise RedisServerError(f"redis-server was not found on PATH; {INSTALL_HINT}")
    return path


@dataclass(kw_only=True)
class RedisServer:
    """One redis-server child process on 127.0.0.1.

    :param port: the port, chosen free when 0.
    :param password: require this password (``requirepass``) when set.
    :param appendonly: persist with AOF (``appendfsync always``) when true.
    :param extra_args: further ``--option value`` arguments.
    """

    port: int = 0
    password: str | None = field(default=None, repr=False)
    appendonly: bool = False
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    workdir: str = field(default="", init=False)

    @property
    def url(self) -> str:
        """The redis:// URL of this server, password included."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 10.0) -> RedisServer:
        """Start the server (reusing its port and data directory) and wait until it answers."""
        if not self.port:
            self.port = free_port()
        if not self.workdir:
            self.workdir = tempfile.mkdtemp(prefix="flashsale-redis-")
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", self.workdir,
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--logfile", os.path.join(self.workdir, "redis.log"),
            *self.extra_args,
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        # Own session: a Ctrl-C at the terminal goes to the demo, which stops the
        # workers before the servers they depend on.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        """Stop the server (SIGKILL after SIGTERM grace) and keep the data directory."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            if self.process.stderr is not None:
                self.process.stderr.close()
            self.process = None

    def freeze(self) -> None:
        """SIGSTOP the server: it keeps its sockets but answers nothing (a black hole)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RedisServerError(f"redis-server on port {self.port} exited: {err.strip()}")
            if _answers_ping(self.port, self.password):
                return
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server on port {self.port} did not start in {timeout_s} s")


def _answers_ping(port: int, password: str | None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            auth = encode_command(["AUTH", password]) if password else b""
            sock.sendall(auth + encode_command(["PING"]))
            reply = b""
            while b"PONG" not in reply and len(reply) < 200:
                chunk = sock.recv(200)
                if not chunk:
                    return False
                reply += chunk
                if reply.startswith(b"-LOADING"):
                    return False
            return True
    except OSError:
        return False


@contextlib.contextmanager
def redis_servers(count: int, **kwargs: object) -> Iterator[list[RedisServer]]:
    """Start ``count`` independent servers and clean them all up on exit."""
    servers: list[RedisServer] = []
    try:
        for _ in range(count):
            servers.append(RedisServer(**kwargs).start())  # type: ignore[arg-type]
        yield servers
    finally:
        for server in servers:
            server.cleanup()
