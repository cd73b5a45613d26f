"""``flashsale``: the operator's command line (migrate, stock, orders, checks, demo)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select

from tasks.db import create_db_engine, session_factory
from tasks.errors import OrderError
from tasks.migrate import downgrade, upgrade
from tasks.models import Product, StockMovement
from tasks.producer import get_order, submit_order
from worker.logformat import configure_cli_logging
from worker.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flashsale`` command; return the process exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(with_demo=arguments[:1] == ["demo"])
    args = parser.parse_args(arguments)
    try:
        settings = Settings.from_env()
        configure_cli_logging(settings.log_format)
        return int(args.run(args, settings) or 0)
    except (SettingsError, OrderError) as error:
        print(f"flashsale: {error}", file=sys.stderr)
        return 2


def _parser(*, with_demo: bool) -> argparse.ArgumentParser:
    """Return the command-line parser; the demo's options (and modules) only when asked."""
    parser = argparse.ArgumentParser(prog="flashsale", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    db = commands.add_parser("db", help="migrate the database (DATABASE_URL)")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?", default=None, help="default: head / one step down")
    db.set_defaults(run=_db)

    stock = commands.add_parser("stock", help="create a product or set its stock")
    stock.add_argument("sku")
    stock.add_argument("quantity", type=int)
    stock.add_argument("--name", default=None)
    stock.set_defaults(run=_stock)

    submit = commands.add_parser("submit", help="enqueue an order and print its id")
    submit.add_argument("--customer", required=True)
    submit.add_argument("--item", action="append", required=True, metavar="SKU:QTY")
    submit.add_argument("--order-id", default=None)
    submit.set_defaults(run=_submit)

    show = commands.add_parser("show", help="print an order as JSON")
    show.add_argument("order_id")
    show.set_defaults(run=_show)

    check = commands.add_parser(
        "check", help="check the settings, the lock nodes, the database and the broker"
    )
    check.add_argument(
        "--strict",
        action="store_true",
        help="also fail on a degraded setup: any lock node down, database behind, broker down",
    )
    check.set_defaults(run=_check)

    exporter = commands.add_parser(
        "exporter", help="serve the database-derived metrics (open orders) on /metrics"
    )
    exporter.add_argument("--port", type=int, default=9809)
    exporter.add_argument("--host", default="0.0.0.0")
    exporter.set_defaults(run=_exporter)

    demo = commands.add_parser("demo", help="run a complete flash sale on embedded defaults")
    if with_demo:
        # Only `flashsale demo` loads the demo: `db upgrade` in a release step must not.
        from worker.demo.run import add_arguments

        add_arguments(demo)
    return parser


def _db(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "upgrade":
        upgrade(settings.database_url, args.revision or "head")
    else:
        downgrade(settings.database_url, args.revision or "-1")
    return 0


def _stock(args: argparse.Namespace, settings: Settings) -> int:
    if args.quantity < 0:
        print("flashsale: stock cannot be negative", file=sys.stderr)
        return 2
    sessions = session_factory(create_db_engine(settings.database_url))
    with sessions.begin() as session:
        moved = session.scalar(
            select(func.coalesce(func.sum(StockMovement.delta), 0)).where(
                StockMovement.sku == args.sku
            )
        )
        product = session.get(Product, args.sku, with_for_update=True)
        if product is None:
            product = Product(sku=args.sku, name=args.name or args.sku, fence=0)
            session.add(product)
        # Keep the ledger true: initial stock + sum(movements) == stock.
        product.stock = args.quantity
        product.initial_stock = args.quantity - int(moved or 0)
        if args.name:
            product.name = args.name
    print(f"{args.sku}: stock {args.quantity}")
    return 0


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from worker.celery_app import create_app

    items = []
    for spec in args.item:
        sku, _, quantity = spec.rpartition(":")
        if not sku or not quantity.isdecimal() or not quantity.isascii():
            print(f"flashsale: --item must be SKU:QTY, got {spec!r}", file=sys.stderr)
            return 2
        items.append({"sku": sku, "quantity": int(quantity)})
    app = create_app(settings)
    print(submit_order(app, customer_id=args.customer, items=items, order_id=args.order_id))
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    try:
        order_id = uuid.UUID(args.order_id)
    except ValueError:
        print(f"flashsale: not an order id (a UUID): {args.order_id!r}", file=sys.stderr)
        return 2
    sessions = session_factory(create_db_engine(settings.database_url))
    with sessions() as session:
        view = get_order(session, order_id)
    if view is None:
        print(f"flashsale: no order {args.order_id}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "order_id": view.order_id,
                "customer_id": view.customer_id,
                "status": view.status.value,
                "reason": view.reason,
                "items": [{"sku": sku, "quantity": qty} for sku, qty in view.items],
                "created_at": view.created_at.isoformat(),
                "decided_at": view.decided_at.isoformat() if view.decided_at else None,
            },
            indent=2,
        )
    )
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from worker.health import check

    health = check(settings)
    for problem in health.problems:
        print(f"problem: {problem}", file=sys.stderr)
    for warning in health.warnings:
        print(f"{'problem' if args.strict else 'warning'}: {warning}", file=sys.stderr)
    if health.failed(strict=args.strict):
        return 1
    print("configuration OK" if not health.warnings else "configuration OK (degraded)")
    return 0


def _exporter(args: argparse.Namespace, settings: Settings) -> int:
    from worker.exporter import serve_forever

    serve_forever(settings.database_url, port=args.port, host=args.host)
    return 0
