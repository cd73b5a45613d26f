"""Fixtures of the deployment-file tests: the parsed files, and a stack to run them on."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.deploy.files import COMPOSE_FILE, ENV_EXAMPLE, PROCFILE, shell_env
from worker.demo.stack import LocalStack


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file (anchors and merge keys resolved by YAML itself)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    """NAME -> value of every assignment in .env.example."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="module")
def procfile() -> dict[str, str]:
    """Process type -> command, parsed as honcho and foreman do."""
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line.strip())
        if match:
            assert match.group(1) not in entries, f"duplicate {match.group(1)}"
            entries[match.group(1)] = match.group(2)
        else:
            assert not line.strip() or line.lstrip().startswith("#"), f"bad line {line!r}"
    return entries


@pytest.fixture
def procfile_stack(tmp_path: Path) -> Iterator[LocalStack]:
    """Lock nodes and a broker for the Procfile's own worker and Flower lines."""
    env = shell_env(DATABASE_URL=f"sqlite:///{tmp_path / 'procfile.sqlite3'}")
    with LocalStack(env=env) as stack:
        stack.start_lock_nodes(3)
        stack.start_broker()
        yield stack
        for process in stack.others:  # warm shutdown of all at once, then the stack waits
            process.terminate()
