""".env.example names every variable Compose uses and every setting, at the code's defaults."""

from __future__ import annotations

from typing import Any

from tests.deploy.files import (
    COMPOSE_FILE,
    COMPOSE_VARIABLE,
    SETTINGS_VARIABLES,
    compose_default,
    compose_service,
)
from worker.settings import Settings


def test_every_compose_variable_is_in_env_example(env_example: dict[str, str]) -> None:
    used = set(COMPOSE_VARIABLE.findall(COMPOSE_FILE.read_text()))
    missing = sorted({name for name, _, _ in used} - env_example.keys())
    assert not missing, f"used in docker-compose.yml, missing from .env.example: {missing}"
    assert "$" not in COMPOSE_VARIABLE.sub("", COMPOSE_FILE.read_text()).replace("$$", "")


def test_every_setting_is_in_env_example_and_reaches_the_worker(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    missing = [name for name in SETTINGS_VARIABLES if name not in env_example]
    assert not missing, f"settings missing from .env.example: {missing}"
    for name in ("FLOWER_BASIC_AUTH", "POSTGRES_PASSWORD"):
        assert name in env_example
    worker_env = compose_service(compose, "worker")["environment"]
    assert sorted(name for name in worker_env if name in SETTINGS_VARIABLES) == (SETTINGS_VARIABLES)
    # The example values are valid settings, safe for a worker but for the node hosts.
    settings = Settings.from_env(env_example)
    assert settings.task_time_limit_s == Settings().task_time_limit_s
    assert not [p for p in settings.worker_problems() if "REDLOCK" not in p]


#: Settings the deployment files set on purpose to other than the code's default:
#: where the services are, and metrics on (off by default in the code).
DEPLOYMENT_VALUES = ("CELERY_BROKER_URL", "DATABASE_URL", "REDLOCK_NODES", "WORKER_METRICS_PORT")


def test_the_deployment_files_restate_the_code_defaults_only(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    # The defaults are defined once, in worker.settings; Compose and .env.example
    # name every setting (above), so each copy must equal the code's value.
    worker_env = compose_service(compose, "worker")["environment"]
    code = Settings.from_env({})
    for name in sorted(set(SETTINGS_VARIABLES) - set(DEPLOYMENT_VALUES)):
        in_compose = compose_default(str(worker_env[name]), {})
        assert Settings.from_env({name: in_compose}) == code, f"compose default of {name}"
        assert Settings.from_env({name: env_example[name]}) == code, f".env.example {name}"
