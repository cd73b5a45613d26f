"""The order domain and its Celery task ``tasks.place_order``.

Web apps enqueue with ``submit_order(app, customer_id=..., items=[...])`` (or with
``app.send_task("tasks.place_order", kwargs={...})`` from any codebase) and read
the outcome with ``get_order(session, order_id)``.
"""

from tasks.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    InvalidOrder,
    OrderConflict,
    OrderError,
    StaleFence,
    StockUnavailable,
)
from tasks.place_order import TASK_NAME, place_order
from tasks.producer import OrderView, get_order, submit_order

__all__ = [
    "TASK_NAME",
    "BrokerUnavailable",
    "DatabaseUnavailable",
    "InvalidOrder",
    "OrderConflict",
    "OrderError",
    "OrderView",
    "StaleFence",
    "StockUnavailable",
    "get_order",
    "place_order",
    "submit_order",
]
