"""Where the deployment files are, and how the tests read them as Compose and sh do."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROCFILE = ROOT / "Procfile"
RABBITMQ_OVERRIDE = ROOT / "docker-compose.rabbitmq.yml"
LOCK_SERVICES = ("lock1", "lock2", "lock3")
#: ``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}`` and friends.
COMPOSE_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
SETTINGS_VARIABLES = sorted(spec.metadata["env"] for spec in fields(Settings))


def compose_service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    """Return the service ``name`` of a parsed compose file, failing when it is missing."""
    service = compose["services"].get(name)
    assert isinstance(service, dict), f"service {name!r} missing"
    return service


def service_command(service: dict[str, Any]) -> list[str]:
    """Return a service's command as a list of words (a string command is split)."""
    command = service.get("command", [])
    return [str(part) for part in (command.split() if isinstance(command, str) else command)]


def compose_default(value: str, env_example: dict[str, str]) -> str:
    """Resolve ``${NAME:-default}`` as compose does with .env.example as its .env."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        given = env_example.get(name, "")
        if operator in (":-", "-") and not given:
            return default
        return given

    return COMPOSE_VARIABLE.sub(substitute, value)


def shell_env(**extra: str) -> dict[str, str]:
    """The test's environment with the venv's scripts on PATH, as an activated venv has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}
