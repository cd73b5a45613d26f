"""The order domain and its Celery task ``tasks.place_order``.

Web apps store and enqueue with ``submit_order(app, customer_id=..., items=[...],
session=session)`` (the intake record: the order is in their transaction, and the
relay publishes it if the broker never got it), or enqueue only, without
``session`` or with ``app.send_task("tasks.place_order", kwargs={...})`` from any
codebase; they read the outcome with ``get_order(session, order_id)``.
"""

from typing import TYPE_CHECKING, Any

from tasks.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    InvalidOrder,
    OrderConflict,
    OrderError,
    StaleFence,
    TryLater,
)
from tasks.producer import OrderView, get_order, submit_order
from tasks.validation import TASK_NAME

if TYPE_CHECKING:
    from celery import Task

    place_order: Task


def __getattr__(name: str) -> Any:
    # Imported on demand: importing the task registers it with every Celery app,
    # which a process that only enqueues (or the benchmark's no-op worker) must not do.
    if name == "place_order":
        from tasks.celery_task import place_order

        return place_order
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")


__all__ = [
    "TASK_NAME",
    "BrokerUnavailable",
    "DatabaseUnavailable",
    "InvalidOrder",
    "OrderConflict",
    "OrderError",
    "OrderView",
    "StaleFence",
    "TryLater",
    "get_order",
    "place_order",
    "submit_order",
]
