"""Flower next to a local stack: start it with basic auth, wait until it refuses strangers.

Flower reads ``FLOWER_BASIC_AUTH`` (``user:password[,user2:password2]``) from its
environment, which keeps the password out of the process list. A Flower that
answers an anonymous API call with anything but 401 is stopped as unsafe.
"""

from __future__ import annotations

import base64
import logging
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from worker.demo.redis_server import free_port
from worker.demo.stack import LocalStack, StackError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flower:
    """A Flower child process: where it listens and who may log in.

    :param url: its base URL, ``http://127.0.0.1:<port>``.
    :param user: the first basic-auth user.
    :param generated_password: the password when it was generated here, else None.
    :param log_path: where its output goes.
    """

    url: str
    user: str
    generated_password: str | None
    process: subprocess.Popen[bytes]
    log_path: Path

    def wait_ready(self, *, timeout_s: float = 30.0) -> None:
        """Wait until Flower answers, and make sure it refuses anonymous API calls.

        :param timeout_s: bound on waiting until Flower answers.
        :raises StackError: Flower exited, did not answer, or served its API without auth.
        """
        try:
            wait_until_answering(self.process, f"{self.url}/api/workers", timeout_s=timeout_s)
        except StackError as error:
            log = self.log_path.read_text(errors="replace")[-2000:]
            raise StackError(f"{error}:\n{log}") from None
        status = http_status(f"{self.url}/api/workers")
        if status != 401:
            raise StackError(f"Flower answered an anonymous API call with {status}, not 401")


def flower_command(port: int, *, address: str = "127.0.0.1") -> list[str]:
    """Return the command that serves Flower for ``worker``'s app on ``address:port``."""
    return [
        sys.executable, "-m", "celery", "-A", "worker", "flower",
        f"--address={address}", f"--port={port}",
    ]  # fmt: skip


def basic_auth_header(credentials: str) -> str:
    """Return the ``Authorization`` header value for ``user:password``."""
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def http_status(url: str, *, credentials: str | None = None, timeout_s: float = 2.0) -> int:
    """Return the HTTP status of GET ``url`` (0 when nothing answers)."""
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", basic_auth_header(credentials))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return 0


def start_flower(stack: LocalStack, *, basic_auth: str | None) -> Flower:
    """Start Flower on a free loopback port as a child of ``stack``, with basic auth.

    Returns at once; call `Flower.wait_ready` before relying on it.

    :param basic_auth: ``user:password``; None generates a password for user ``demo``.
    """
    generated = None
    if not basic_auth:
        generated = secrets.token_urlsafe(12)
        basic_auth = f"demo:{generated}"
    stack.env["FLOWER_BASIC_AUTH"] = basic_auth
    port = free_port()
    process = stack.start_process(flower_command(port), log_name="flower.log")
    return Flower(
        url=f"http://127.0.0.1:{port}",
        user=basic_auth.split(",")[0].split(":", 1)[0],
        generated_password=generated,
        process=process,
        log_path=stack.workdir / "flower.log",
    )


def wait_until_answering(
    process: subprocess.Popen[bytes], url: str, *, timeout_s: float = 30.0
) -> None:
    """Wait until ``url`` gives any HTTP answer, failing early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"Flower exited with status {process.returncode}")
        if http_status(url, timeout_s=0.5):
            return
        time.sleep(0.2)
    raise StackError(f"Flower did not answer at {url} within {timeout_s} s")
