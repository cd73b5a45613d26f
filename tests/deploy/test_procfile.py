"""The Procfile, read and run: its commands run for real through ``sh -c``, as honcho runs them."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import create_engine, inspect

from tests.deploy.files import shell_env
from worker.demo.flower import flower_command, http_status, wait_until_answering
from worker.demo.redis_server import free_port
from worker.demo.stack import LocalStack


def _expand_words(command: str, **env: str) -> list[str]:
    """Return the words ``sh`` makes of ``command`` (variables expanded, nothing run)."""
    result = subprocess.run(
        ["sh", "-c", f"for word in {command.removeprefix('exec ')}; do echo \"$word\"; done"],
        capture_output=True, text=True, timeout=10, env=shell_env(**env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_procfile_has_release_worker_and_flower(procfile: dict[str, str]) -> None:
    assert {"release", "worker", "beat", "flower"} <= procfile.keys()
    assert procfile["release"].split() == ["flashsale", "db", "upgrade"]
    assert "celery -A worker beat" in procfile["beat"]
    assert "celery -A worker worker" in procfile["worker"]
    assert "celery -A worker flower" in procfile["flower"]


def test_procfile_workers_get_distinct_node_names(procfile: dict[str, str]) -> None:
    # honcho gives each process its own PORT (5000, 5001... for worker.1, worker.2...).
    names = set()
    for port in ("5000", "5001", "5002"):
        words = _expand_words(procfile["worker"], PORT=port)
        names.add(next(word for word in words if word.startswith("--hostname=")))
        # Each worker serves its metrics on its own PORT, whatever .env says.
        assert f"WORKER_METRICS_PORT={port}" in words
    assert len(names) == 3, names


def test_procfile_flower_refuses_to_start_without_auth(procfile: dict[str, str]) -> None:
    result = subprocess.run(
        ["sh", "-c", procfile["flower"]],
        capture_output=True, text=True, timeout=30, env=shell_env(PORT=str(free_port())),
    )  # fmt: skip
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_procfile_release_migrates(procfile: dict[str, str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'release.sqlite3'}"
    result = subprocess.run(
        ["sh", "-c", procfile["release"]],
        capture_output=True, text=True, timeout=60, env=shell_env(DATABASE_URL=url),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"products", "orders", "order_items", "stock_movements"} <= tables


@pytest.mark.slow
def test_procfile_worker_and_flower_lines_run(
    procfile: dict[str, str], procfile_stack: LocalStack
) -> None:
    stack = procfile_stack
    # Free ports, not honcho's 5000 and 5001: each worker binds its PORT for metrics.
    ports = [str(free_port()), str(free_port())]
    for port in ports:
        stack.env["PORT"] = port
        stack.start_process(["sh", "-c", procfile["worker"]], log_name=f"worker.{port}.log")
    flower_port = free_port()
    stack.env.update(PORT=str(flower_port), FLOWER_BASIC_AUTH="ops:procfile-pw")
    flower = stack.start_process(["sh", "-c", procfile["flower"]], log_name="flower.log")
    host = socket.gethostname()
    expected = {f"worker.{port}@{host}" for port in ports}
    replies: set[str] = set()
    with Celery("procfile-test", broker=stack.env["CELERY_BROKER_URL"]) as control:
        control.conf.accept_content = ["json"]
        for _ in range(60):
            for reply in control.control.ping(timeout=0.5) or []:
                replies |= set(reply)
            if expected <= replies:
                break
    assert expected <= replies, (replies, (stack.workdir / f"worker.{ports[0]}.log").read_text())
    url = f"http://127.0.0.1:{flower_port}"
    wait_until_answering(flower, f"{url}/api/workers", timeout_s=30)
    assert http_status(f"{url}/api/workers") == 401
    assert http_status(f"{url}/api/workers", credentials="ops:procfile-pw") == 200
    assert flower_command(flower_port)[3:5] == ["-A", "worker"]  # same app as the demo's
