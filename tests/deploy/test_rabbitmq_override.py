"""docker-compose.rabbitmq.yml: the override that runs RabbitMQ instead of the Redis broker."""

from __future__ import annotations

from urllib.parse import urlsplit

import yaml  # type: ignore[import-untyped]

from tests.deploy.files import COMPOSE_VARIABLE, RABBITMQ_OVERRIDE, compose_default, compose_service
from worker.settings import Settings


def test_the_rabbitmq_override_points_every_broker_user_at_rabbitmq(
    env_example: dict[str, str],
) -> None:
    override = yaml.safe_load(RABBITMQ_OVERRIDE.read_text())
    rabbitmq = compose_service(override, "rabbitmq")
    assert "rabbitmq-diagnostics" in rabbitmq["healthcheck"]["test"]
    assert any(str(volume).endswith(":/var/lib/rabbitmq") for volume in rabbitmq["volumes"])
    assert "ports" not in rabbitmq, "the broker must not be published outside Compose"
    for name in ("migrate", "worker", "beat", "flower"):
        url = compose_default(
            compose_service(override, name)["environment"]["CELERY_BROKER_URL"], env_example
        )
        assert Settings(broker_url=url).broker_kind == "amqp", (name, url)
        assert urlsplit(url).hostname == "rabbitmq"
    for name in ("worker", "beat", "flower"):
        condition = compose_service(override, name)["depends_on"]["rabbitmq"]["condition"]
        assert condition == "service_healthy"
    used = {name for name, _, _ in COMPOSE_VARIABLE.findall(RABBITMQ_OVERRIDE.read_text())}
    assert used <= env_example.keys(), used - env_example.keys()
