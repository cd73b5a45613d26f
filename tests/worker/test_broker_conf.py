"""`worker.broker` and `worker.consumer`: what the Celery app asks of each broker kind."""

from __future__ import annotations

from worker import create_app
from worker.settings import Settings

NODES = ("redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003")


def conf_for(url: str, **changes: object) -> dict[str, object]:
    app = create_app(Settings(broker_url=url, redlock_nodes=NODES, **changes))  # type: ignore[arg-type]
    return dict(app.conf)


def test_redis_gets_a_visibility_timeout_and_no_amqp_options() -> None:
    conf = conf_for("redis://127.0.0.1:6400/0", broker_visibility_timeout_s=60.0)
    assert conf["broker_transport_options"] == {
        "visibility_timeout": 60.0,
        "unacked_restore_interval": 15,
        "unacked_restore_throttle": 1,
    }
    assert conf["task_default_queue_type"] == "classic"


def test_rabbitmq_gets_confirms_persistent_messages_and_a_classic_durable_queue() -> None:
    conf = conf_for("amqp://guest:guest@127.0.0.1:5672/sale")
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    assert conf["task_default_delivery_mode"] == "persistent"
    assert conf["task_default_queue_type"] == "classic"


def test_quorum_queues_keep_a_direct_exchange() -> None:
    conf = conf_for("amqp://guest:guest@127.0.0.1:5672/sale", broker_quorum_queues=True)
    assert conf["task_default_queue_type"] == "quorum"
    # Native delayed delivery (topic exchanges) fails on sub-second retry countdowns.
    assert conf["task_default_exchange_type"] == "direct"


def test_every_worker_uses_the_project_consumer() -> None:
    conf = conf_for("redis://127.0.0.1:6400/0")
    assert conf["worker_consumer"] == "worker.consumer:Consumer"
    assert conf["broker_connection_retry_on_startup"] is True
    assert conf["broker_connection_max_retries"] is None
