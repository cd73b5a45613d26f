"""``flashsale demo``: a complete flash sale on local child processes, then its summary.

It starts three redis-server lock nodes and a separate broker on free loopback
ports (never the configured ones), real ``celery -A worker worker`` processes and,
with ``--flower``, Flower; it seeds products, fires orders from several producer
threads through ``submit_order``, draws progress on stderr and prints a summary
(a table, or one JSON object with ``--json``). The database is a fresh SQLite
file, unless DATABASE_URL is PostgreSQL (see `worker.demo.database`). Every child
is stopped on exit, on error and on Ctrl-C. Exit status: 0 when every invariant
held, 1 when one broke, 3 when the local stack could not run, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import secrets
import shutil
import sys
import time

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from tasks.models import OPEN
from worker.demo import interrupts
from worker.demo.audit import SaleScope, audit_sale, status_counts
from worker.demo.database import DemoDatabase
from worker.demo.flower import Flower, start_flower
from worker.demo.options import declare_options
from worker.demo.progress import ProgressBar
from worker.demo.redis_server import RedisServerError, redis_server_binary
from worker.demo.shoppers import Shoppers, make_carts, web_client
from worker.demo.stack import LocalStack, StackError
from worker.demo.summary import RunInfo, Summary, build_summary
from worker.settings import Settings

logger = logging.getLogger(__name__)

EXIT_BROKEN = 1
EXIT_ENVIRONMENT = 3
EXIT_INTERRUPTED = 130
#: Seconds between two progress polls of the database.
POLL_INTERVAL_S = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the demo's options on ``parser`` and make it run the demo."""
    declare_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo; return the exit status."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    interrupts.install()
    try:
        redis_server_binary()
        return _run(args, settings)
    except KeyboardInterrupt:
        _say("interrupted; every process the demo started has been stopped")
        return EXIT_INTERRUPTED
    except (RedisServerError, StackError) as error:
        _say(str(error))
        return EXIT_ENVIRONMENT
    except OperationalError as error:
        _say(f"the database cannot be used: {str(error.orig).strip()}")
        return EXIT_ENVIRONMENT
    finally:
        interrupts.restore()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    run_id = secrets.token_hex(4)
    stock = args.stock if args.stock is not None else max(1, args.orders // 10)
    skus = [f"DEMO-{run_id}-{number}" for number in range(1, args.skus + 1)]
    with DemoDatabase(settings.database_url) as database:
        _say(f"database: {database.kind}")
        if database.temp_dir and settings.database_url != Settings().database_url:
            _say("DATABASE_URL is not PostgreSQL, so it is left alone")
        database.migrate()
        database.seed(dict.fromkeys(skus, stock))
        stack = LocalStack(env={"DATABASE_URL": database.url})
        keep_logs = True
        try:
            flower = _start_stack(stack, args)
            summary = _sale(
                args, stack, database, SaleScope(f"demo-{run_id}-c", tuple(skus)), stock
            )
            print(summary.to_json() if args.json else summary.table(), flush=True)
            keep_logs = bool(summary.problems())
            if args.keep_running:
                _hold(flower)
            return EXIT_BROKEN if keep_logs else 0
        except KeyboardInterrupt:
            keep_logs = False
            raise
        finally:
            interrupts.ignore_from_now()
            stack.stop()
            if keep_logs and stack.workers:
                _say(f"worker logs kept in {stack.workdir}")
            else:
                shutil.rmtree(stack.workdir, ignore_errors=True)


def _start_stack(stack: LocalStack, args: argparse.Namespace) -> Flower | None:
    """Start lock nodes, broker, workers (and Flower); each child is recorded before a signal."""
    started_s = time.monotonic()
    _say(
        f"starting 3 lock nodes, a broker and {args.workers} workers x {args.concurrency} processes"
    )
    with interrupts.shielded():
        stack.start_lock_nodes(3)
    with interrupts.shielded():
        stack.start_broker()
    for _ in range(args.workers):
        with interrupts.shielded():
            stack.start_worker(concurrency=args.concurrency, wait=False)
    with interrupts.shielded():
        # The intake relay's clock: republishes what a broker lost (counted in the summary).
        stack.start_beat()
    for worker in stack.workers:
        stack.wait_ready(worker)
    _say(f"workers ready in {time.monotonic() - started_s:.1f} s")
    if not args.flower:
        return None
    with interrupts.shielded():
        flower = start_flower(stack, basic_auth=os.environ.get("FLOWER_BASIC_AUTH"))
    flower.wait_ready()
    if flower.generated_password:
        hint = f"user {flower.user!r}, password {flower.generated_password!r} (generated)"
    else:
        hint = f"user {flower.user!r}, password from FLOWER_BASIC_AUTH"
    _say(f"Flower: {flower.url}  ({hint})")
    return flower


def _sale(
    args: argparse.Namespace,
    stack: LocalStack,
    database: DemoDatabase,
    scope: SaleScope,
    stock: int,
) -> Summary:
    """Fire the orders, follow them until decided (or the timeout), and audit the result."""
    rng = random.Random(args.seed)
    carts = make_carts(
        args.orders,
        scope.skus,
        multi_line=args.multi_line,
        max_quantity=args.max_quantity,
        rng=rng,
    )
    app = web_client(stack.env["CELERY_BROKER_URL"], send_sent_events=args.flower)
    shoppers = Shoppers(app, carts, scope.customer_prefix, threads=args.producers)
    reader = database.reader()
    _say(f"firing {len(carts)} orders from {args.producers} producer threads")
    shoppers.start()
    try:
        duration_s, timed_out = _follow(stack, shoppers, reader, scope, args.timeout)
    finally:
        shoppers.stop()
        app.close()
    run = RunInfo(
        skus=len(scope.skus),
        stock_per_sku=stock,
        workers=args.workers,
        concurrency=args.concurrency,
        producers=args.producers,
        database=database.kind,
    )
    return build_summary(
        audit_sale(reader, scope),
        run=run,
        submitted=len(shoppers.order_ids),
        unsent=len(shoppers.errors),
        duration_s=duration_s,
        timed_out=timed_out,
    )


def _follow(
    stack: LocalStack, shoppers: Shoppers, reader: Engine, scope: SaleScope, timeout_s: float
) -> tuple[float, bool]:
    """Poll the database until every submitted order is decided; return (duration_s, timed_out).

    :param timeout_s: seconds to wait after the last submission.
    """
    bar = ProgressBar(len(shoppers.carts))
    deadline_s: float | None = None
    try:
        while True:
            counts = status_counts(reader, scope)
            elapsed_s = time.monotonic() - shoppers.started_s
            decided = sum(n for status, n in counts.items() if status not in OPEN)
            if shoppers.done:
                bar.total = len(shoppers.order_ids)
                if decided >= bar.total:
                    bar.finish(counts, elapsed_s)
                    return elapsed_s, False
                deadline_s = deadline_s or time.monotonic() + timeout_s
                if time.monotonic() > deadline_s:
                    bar.finish(counts, elapsed_s)
                    return elapsed_s, True
            bar.update(counts, elapsed_s)
            _check_workers(stack)
            time.sleep(POLL_INTERVAL_S)
    finally:
        bar.close()


def _check_workers(stack: LocalStack) -> None:
    for worker in stack.workers:
        if worker.process.poll() is not None:
            raise StackError(
                f"worker {worker.name} exited with status {worker.process.returncode}:\n"
                f"{worker.log()[-2000:]}"
            )


def _hold(flower: Flower | None) -> None:
    where = f" (Flower at {flower.url})" if flower else ""
    _say(f"everything stays up{where}; press Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        _say("stopping")


def _say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)
