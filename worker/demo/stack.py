"""Run the whole system as local child processes: lock nodes, broker, workers, Flower.

Used by ``flashsale demo``, the end-to-end tests and the benchmarks. Every child
runs in its own process group and is stopped (TERM, then KILL) by `LocalStack.stop`,
which is also what leaving the ``with`` block does, on success, error or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worker.demo.redis_server import RedisServer, free_port


class StackError(RuntimeError):
    """A child process of the local stack failed to start."""


@dataclass
class WorkerProcess:
    """One ``celery worker`` child (a main process and its prefork pool)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Return what the worker logged so far."""
        return self.log_path.read_text(errors="replace")

    def pool_pids(self) -> list[int]:
        """Return the pids of the worker's pool processes (its children)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        with contextlib.suppress(OSError):
            return [int(pid) for pid in children.read_text().split()]
        return []


@dataclass
class LocalStack:
    """Child processes for one local run; use as a context manager.

    :param env: base environment of the workers (DATABASE_URL...); the stack adds
        CELERY_BROKER_URL and REDLOCK_NODES of the servers it starts.
    :param workdir: where logs go (a temporary directory by default).
    """

    env: dict[str, str] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flashsale-")))
    lock_nodes: list[RedisServer] = field(default_factory=list)
    broker: RedisServer | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_lock_nodes(self, count: int = 3, **kwargs: object) -> list[RedisServer]:
        """Start ``count`` independent redis-server lock nodes."""
        for _ in range(count):
            self.lock_nodes.append(RedisServer(**kwargs).start())  # type: ignore[arg-type]
        self.env["REDLOCK_NODES"] = ",".join(node.url for node in self.lock_nodes)
        return self.lock_nodes

    def start_broker(self) -> RedisServer:
        """Start a redis-server used only as the Celery broker."""
        self.broker = RedisServer().start()
        self.env["CELERY_BROKER_URL"] = self.broker.url
        return self.broker

    def worker_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Return the environment a worker of this stack runs with."""
        return {**os.environ, **self.env, **(extra or {})}

    def start_worker(
        self,
        *,
        concurrency: int = 2,
        name: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        loglevel: str = "WARNING",
        wait: bool = True,
        app_module: str = "worker",
    ) -> WorkerProcess:
        """Start ``celery -A <app_module> worker`` (prefork) and wait until it is ready."""
        name = name or f"w{len(self.workers) + 1}-{free_port()}"
        log_path = self.workdir / f"{name}.log"
        command = [
            sys.executable, "-m", "celery", "-A", app_module, "worker",
            "--pool=prefork", f"--concurrency={concurrency}", f"--hostname={name}@%h",
            f"--loglevel={loglevel}", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                env=self.worker_env(extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(name=name, process=process, log_path=log_path)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: WorkerProcess, *, timeout_s: float = 60.0) -> None:
        """Wait until the worker's pool is up and consuming."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise StackError(f"worker {worker.name} exited:\n{worker.log()[-3000:]}")
            if worker.pool_pids() and _consuming(worker, self.env["CELERY_BROKER_URL"]):
                return
            time.sleep(0.1)
        raise StackError(
            f"worker {worker.name} not ready after {timeout_s} s:\n{worker.log()[-3000:]}"
        )

    def start_process(self, command: list[str], *, log_name: str) -> subprocess.Popen[bytes]:
        """Start any other child (Flower...) with the stack's environment."""
        with (self.workdir / log_name).open("wb") as log:
            process = subprocess.Popen(
                command, env=self.worker_env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.others.append(process)
        return process

    def start_beat(
        self, *, extra_env: Mapping[str, str] | None = None, app_module: str = "worker"
    ) -> subprocess.Popen[bytes]:
        """Start ``celery -A <app_module> beat``, which sends the intake relay's rounds."""
        with (self.workdir / "beat.log").open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", app_module, "beat", "--loglevel=INFO",
                    f"--schedule={self.workdir / 'beat-schedule'}",
                ],
                env=self.worker_env(extra_env), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.others.append(process)
        return process

    def stop(self) -> None:
        """Stop every child: workers and others first, then broker and lock nodes."""
        for worker in self.workers:
            # Warm shutdown for all workers at once, then wait for each.
            with contextlib.suppress(ProcessLookupError):
                worker.process.terminate()
        for worker in self.workers:
            stop_group(worker.process, 10.0)
        for process in self.others:
            stop_group(process, 5.0)
        for server in [*self.lock_nodes, *([self.broker] if self.broker else [])]:
            server.cleanup()


def _consuming(worker: WorkerProcess, broker_url: str) -> bool:
    """Return true once the worker answers a control ping through the broker."""
    from celery import Celery

    with Celery("flashsale-stack", broker=broker_url) as control:
        control.conf.accept_content = ["json"]
        replies = control.control.ping([f"{worker.name}@{socket.gethostname()}"], timeout=0.5)
    return bool(replies)


def stop_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop a child and its process group: TERM, then KILL after ``timeout_s`` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGCONT)
        process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
