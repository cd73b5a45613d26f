"""Fixtures of the chaos suite, and the recorder behind RELIABILITY.md.

Each scenario calls ``reliability.record(...)`` with the figures of its sale
(computed from the database before any assertion, so a failing run still
reports what it saw). When ``RELIABILITY_REPORT=path.json`` is set, every record,
with the test's outcome and duration, is written there at the end of the run;
``bench/reliability_report.py`` renders RELIABILITY.md from that file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.chaos.figures import observer_engine
from tests.chaos.report import Recorder

#: Where the records go; unset means nothing is written.
REPORT_ENV = "RELIABILITY_REPORT"
_RECORDS = pytest.StashKey[list[dict[str, Any]]]()
_STARTED = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RECORDS] = []
    config.stash[_STARTED] = time.monotonic()


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[Recorder]:
    """The recorder of this test; its rows join the report with the test's outcome."""
    recorder = Recorder(nodeid=request.node.nodeid)
    started_s = time.monotonic()
    yield recorder
    outcome = getattr(request.node, "chaos_outcome", "unknown")
    for row in recorder.rows:
        row.update(outcome=outcome, duration_s=round(time.monotonic() - started_s, 1))
        request.config.stash[_RECORDS].append(row)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.chaos_outcome = report.outcome  # type: ignore[attr-defined]
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(REPORT_ENV)
    records = session.config.stash.get(_RECORDS, [])
    if not path or not records:
        return
    document = {
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "wall_s": round(time.monotonic() - session.config.stash[_STARTED], 1),
        "machine": _machine(),
        "records": records,
    }
    Path(path).write_text(json.dumps(document, indent=2) + "\n")


def _machine() -> dict[str, object]:
    def version(*command: str) -> str:
        try:
            output = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
        except OSError:
            return "unknown"
        return output.strip().splitlines()[0] if output.strip() else "unknown"

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "redis_server": version("redis-server", "--version"),
        "postgres": version("psql", "--version"),
    }


@pytest.fixture
def observer(database_url: str) -> Iterator[Engine]:
    """An engine that opens a fresh, tagged connection per use.

    It survives ``pg_terminate_backend`` storms (scenario 7 spares its tag) and holds
    no pooled connection that a killed backend could leave broken.
    """
    engine = observer_engine(database_url)
    yield engine
    engine.dispose()
