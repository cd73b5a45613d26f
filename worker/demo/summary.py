"""The demo's result: figures, invariant verdict, and its two renderings (table, JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from worker.demo.audit import Audit
from worker.demo.stats import percentile


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """How the sale was run, for the summary's heading.

    :param skus: number of products on sale.
    :param stock_per_sku: units per product.
    :param workers: ``celery worker`` processes.
    :param concurrency: pool processes per worker.
    :param producers: threads that submitted orders.
    :param database: a human label of the database used.
    """

    skus: int
    stock_per_sku: int
    workers: int
    concurrency: int
    producers: int
    database: str


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Everything the demo reports.

    :param orders: orders handed to the broker.
    :param unsent: orders the broker did not take (not counted in ``orders``).
    :param pending: orders not decided at the end (no row yet, or ``pending``).
    :param duration_s: from the first submission until every order was decided
        (or until the timeout).
    :param timed_out: the demo stopped waiting before every order was decided.
    :param republished: orders the intake relay published (a lost or refused message).
    """

    run: RunInfo
    orders: int
    unsent: int
    confirmed: int
    rejected: int
    failed: int
    pending: int
    oversold: int
    initial_units: int
    sold_units: int
    duration_s: float
    timed_out: bool
    lock_waits_ms: list[float] = field(repr=False)
    ledger_problems: list[str]
    republished: int = 0

    @property
    def ledger_ok(self) -> bool:
        """True when stock, movements and confirmed lines agree on every SKU."""
        return not self.ledger_problems

    @property
    def orders_per_s(self) -> float:
        """Decided orders per second of ``duration_s``."""
        decided = self.confirmed + self.rejected + self.failed
        return decided / self.duration_s if self.duration_s > 0 else 0.0

    def problems(self) -> list[str]:
        """Return every broken invariant (empty when the sale was correct)."""
        found = []
        if self.oversold:
            found.append(f"{self.oversold} units oversold")
        if self.pending:
            found.append(f"{self.pending} orders still pending at the end")
        if self.unsent:
            found.append(f"{self.unsent} orders could not be handed to the broker")
        found += [f"ledger: {problem}" for problem in self.ledger_problems]
        return found

    def to_json(self) -> str:
        """Return the summary as one JSON object on one line."""
        data: dict[str, Any] = {
            "orders": self.orders,
            "confirmed": self.confirmed,
            "rejected": self.rejected,
            "failed": self.failed,
            "pending": self.pending,
            "unsent": self.unsent,
            "oversold": self.oversold,
            "republished": self.republished,
            "units_on_sale": self.initial_units,
            "units_sold": self.sold_units,
            "duration_s": round(self.duration_s, 3),
            "orders_per_s": round(self.orders_per_s, 1),
            "timed_out": self.timed_out,
            "lock_wait_p50_ms": _round(percentile(self.lock_waits_ms, 0.50)),
            "lock_wait_p99_ms": _round(percentile(self.lock_waits_ms, 0.99)),
            "lock_wait_samples": len(self.lock_waits_ms),
            "ledger_ok": self.ledger_ok,
            "problems": self.problems(),
            "skus": self.run.skus,
            "stock_per_sku": self.run.stock_per_sku,
            "workers": self.run.workers,
            "concurrency": self.run.concurrency,
            "producers": self.run.producers,
            "database": self.run.database,
        }
        return json.dumps(data)

    def table(self) -> str:
        """Return the summary as an aligned, human-readable table."""
        run = self.run
        p50 = percentile(self.lock_waits_ms, 0.50)
        p99 = percentile(self.lock_waits_ms, 0.99)
        waits = (
            f"{p50:.1f} / {p99:.1f} ms" if p50 is not None and p99 is not None else "n/a"
        ) + f"  (over the {len(self.lock_waits_ms)} orders whose own task took the lock)"
        rows = [
            ("orders", f"{self.orders}"),
            ("confirmed", f"{self.confirmed}"),
            ("rejected", f"{self.rejected}"),
            ("failed", f"{self.failed}"),
            ("still pending", f"{self.pending}" + ("  (timed out)" if self.timed_out else "")),
            ("units sold / on sale", f"{self.sold_units} / {self.initial_units}"),
            ("oversold units", f"{self.oversold}"),
            ("republished by the relay", f"{self.republished}"),
            ("duration", f"{self.duration_s:.1f} s"),
            ("orders per second", f"{self.orders_per_s:.0f}"),
            ("lock wait p50 / p99", waits),
            ("ledger", "match" if self.ledger_ok else "MISMATCH"),
        ]
        if self.unsent:
            rows.insert(1, ("not enqueued", f"{self.unsent}"))
        width = max(len(label) for label, _ in rows)
        lines = [
            f"Flash sale: {run.skus} SKUs x {run.stock_per_sku} units, "
            f"{run.workers} workers x {run.concurrency} processes, "
            f"{run.producers} producer threads, {run.database}",
            *(f"  {label:<{width}}  {value}" for label, value in rows),
            "  Orders decided on behalf of others (flat combining) have no lock wait of their own;",
            "  percentiles are over the non-null orders.lock_wait_ms values only.",
        ]
        problems = self.problems()
        lines.append(
            "Invariants: OK (no oversell, nothing pending, ledger matches)"
            if not problems
            else "Invariants BROKEN:\n" + "\n".join(f"  - {p}" for p in problems)
        )
        return "\n".join(lines)


def build_summary(
    audit: Audit,
    *,
    run: RunInfo,
    submitted: int,
    unsent: int,
    duration_s: float,
    timed_out: bool,
) -> Summary:
    """Combine the audit of the database with what the demo itself counted.

    :param submitted: orders handed to the broker.
    :param unsent: orders the broker refused.
    :param duration_s: seconds from the first submission to the last decision seen.
    """
    confirmed = audit.counts.get("confirmed", 0)
    rejected = audit.counts.get("rejected", 0)
    failed = audit.counts.get("failed", 0)
    return Summary(
        run=run,
        orders=submitted,
        unsent=unsent,
        confirmed=confirmed,
        rejected=rejected,
        failed=failed,
        pending=max(0, submitted - confirmed - rejected - failed),
        oversold=audit.oversold_units,
        initial_units=audit.initial_units,
        sold_units=audit.sold_units,
        duration_s=duration_s,
        timed_out=timed_out,
        lock_waits_ms=audit.lock_waits_ms,
        ledger_problems=audit.ledger_problems,
        republished=audit.republished,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
