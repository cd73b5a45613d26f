"""The rows of RELIABILITY.md: what each chaos test saw, recorded before it asserts.

The ``reliability`` fixture (tests/chaos/conftest.py) gives every test a
`Recorder`; at the end of the run its rows, with each test's outcome and
duration, go to the JSON file named by ``RELIABILITY_REPORT``, and
``bench/reliability_report.py`` renders them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tests.chaos.figures import Figures


@dataclass
class Recorder:
    """Collects what one test reports; `record` may be called more than once."""

    nodeid: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self,
        scenario: str,
        title: str,
        figures: Figures | None = None,
        *,
        notes: str = "",
        **metrics: object,
    ) -> None:
        """Keep one row of the report: the sale's figures and any scenario metric."""
        self.rows.append(
            {
                "scenario": scenario,
                "title": title,
                "test": self.nodeid,
                "figures": asdict(figures) if figures else None,
                "notes": notes,
                "metrics": metrics,
            }
        )

    def tally(self, scenario: str, title: str, outcome: str, *, notes: str = "") -> None:
        """Count one more ``outcome`` in the row (scenario, title), made on first use."""
        for row in self.rows:
            if (row["scenario"], row["title"]) == (scenario, title):
                break
        else:
            self.record(scenario, title, notes=notes)
            row = self.rows[-1]
        row["metrics"][outcome] = row["metrics"].get(outcome, 0) + 1
