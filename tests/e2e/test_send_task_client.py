"""A web app in another codebase: it has only Celery and the task's name, and its order lands.

The client runs in a separate, isolated Python process that imports ``celery``
and nothing of this project (it checks so itself before exiting).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from sqlalchemy import Engine

from tests.domain import cart, movements, payload, status
from tests.sale import seed_products, wait_until_decided
from worker.demo.stack import LocalStack

CLIENT = textwrap.dedent(
    """
    import json, sys
    from celery import Celery

    broker_url, kwargs = sys.argv[1], json.loads(sys.argv[2])
    with Celery("web", broker=broker_url) as app:
        app.conf.task_serializer = "json"
        app.send_task("tasks.place_order", kwargs=kwargs)
    ours = sorted({m.split(".")[0] for m in sys.modules} & {"tasks", "worker", "locking"})
    if ours:
        sys.exit(f"the client imported project packages: {ours}")
    print("sent")
    """
)


def run_client(broker_url: str, kwargs: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """Run the foreign client in isolated mode (no cwd or PYTHONPATH on sys.path)."""
    return subprocess.run(
        [sys.executable, "-I", "-c", CLIENT, broker_url, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_order_sent_by_name_from_a_foreign_client_is_confirmed(
    stack: LocalStack, engine: Engine
) -> None:
    seed_products(engine, {"A": 5, "B": 5})
    stack.start_worker(concurrency=2)
    order = payload({"A": 2, "B": 1}, customer="web-42")
    done = run_client(stack.env["CELERY_BROKER_URL"], order)
    assert (done.returncode, done.stdout.strip()) == (0, "sent"), done.stderr
    wait_until_decided(engine, [order["order_id"]], timeout_s=60)
    assert status(engine, order["order_id"]) == "confirmed"
    assert cart(engine, order["order_id"]) == {"A": 2, "B": 1}
    assert movements(engine, order["order_id"]) == [("A", -2), ("B", -1)]
