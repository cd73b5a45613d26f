"""Servers the tests start by the handful, and the faults they inject into them.

The demo (`worker.demo`) starts and stops redis-server and Celery worker children
as a whole; stopping one worker of a stack, crashing, freezing and thawing them
is only what tests do, so it lives here, out of the installed packages.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

from worker.demo.redis_server import RedisServer
from worker.demo.stack import WorkerProcess, stop_group


@contextlib.contextmanager
def redis_servers(count: int, **kwargs: object) -> Iterator[list[RedisServer]]:
    """Start ``count`` independent servers and clean them all up on exit.

    :param count: how many servers.
    :param kwargs: `RedisServer` fields (password, appendonly, extra_args, port).
    """
    servers: list[RedisServer] = []
    try:
        for _ in range(count):
            servers.append(RedisServer(**kwargs).start())  # type: ignore[arg-type]
        yield servers
    finally:
        for server in servers:
            server.cleanup()


def kill_server(server: RedisServer) -> None:
    """SIGKILL the server, as a crash would; `RedisServer.start` brings it back."""
    process = server.process
    if process is not None:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
        server.process = None


def freeze_server(server: RedisServer) -> None:
    """SIGSTOP the server: it keeps its sockets but answers nothing (a black hole)."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)


def thaw_server(server: RedisServer) -> None:
    """SIGCONT a frozen server."""
    assert server.process is not None
    server.process.send_signal(signal.SIGCONT)


def stop_worker(worker: WorkerProcess, *, timeout_s: float = 15.0) -> None:
    """Warm-shut one worker down (TERM), killing its whole group if it hangs."""
    stop_group(worker.process, timeout_s)


def kill_worker(worker: WorkerProcess) -> None:
    """SIGKILL a worker and all its pool processes at once, as a machine crash would."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
