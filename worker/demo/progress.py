"""A one-line text progress bar on stderr for orders being decided.

On a terminal the line is redrawn in place; in a log (not a TTY) a line is
written at each tenth of the way and at the end, so logs stay short.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tasks.models import OPEN


class ProgressBar:
    """Show how many of ``total`` orders are decided.

    :param total: orders expected (0 until the producers are done is fine: update it).
    :param stream: where to draw (stderr by default).
    :param width: characters of the bar itself.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = total
        self._stream = stream or sys.stderr
        self._width = width
        self._tty = self._stream.isatty()
        self._last_tenth = -1
        self._mid_line = False

    def update(self, counts: dict[str, int], elapsed_s: float) -> None:
        """Redraw with the current counts per status.

        :param counts: orders per status (``confirmed``, ``rejected``, ``failed``...).
        :param elapsed_s: seconds since the first order was submitted.
        """
        line = self._line(counts, elapsed_s)
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K")
            self._stream.flush()
            self._mid_line = True
            return
        tenth = int(10 * self._decided(counts) / self.total) if self.total else 0
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            self._stream.write(line + "\n")
            self._stream.flush()

    def finish(self, counts: dict[str, int], elapsed_s: float) -> None:
        """Draw the final state and end the line."""
        line = self._line(counts, elapsed_s)
        if self._tty:
            self._stream.write("\r" + line + "\x1b[K\n")
        elif self._last_tenth < 10:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._last_tenth = 10
        self._mid_line = False

    def close(self) -> None:
        """End a half-drawn line (after an interruption), so later messages start afresh."""
        if self._mid_line:
            self._stream.write("\n")
            self._stream.flush()
            self._mid_line = False

    def _line(self, counts: dict[str, int], elapsed_s: float) -> str:
        decided = self._decided(counts)
        fraction = min(1.0, decided / self.total) if self.total else 0.0
        filled = round(fraction * self._width)
        rate = decided / elapsed_s if elapsed_s > 0 else 0.0
        return (
            f"[{'#' * filled}{'.' * (self._width - filled)}] {decided}/{self.total} decided"
            f"  confirmed {counts.get('confirmed', 0)}  rejected {counts.get('rejected', 0)}"
            f"  failed {counts.get('failed', 0)}  {rate:.0f}/s  {elapsed_s:.1f} s"
        )

    @staticmethod
    def _decided(counts: dict[str, int]) -> int:
        return sum(n for status, n in counts.items() if status not in OPEN)
