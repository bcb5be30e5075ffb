"""Progress and cancel callbacks: the one definition of the callables every long job takes.

progress(fraction, message) reports a fraction in [0, 1] and what is being done; cancel() -> bool says whether
the user asked to stop, and the job then raises errors.Cancelled between steps.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

from .errors import Cancelled

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


def check_cancel(cancel: Optional[CancelFn]) -> None:
    """Raise Cancelled if cancel() says so."""
    if cancel is not None and cancel():
        raise Cancelled()


def scaled(progress: Optional[ProgressFn], start: float, stop: float) -> Optional[ProgressFn]:
    """progress for a part of a job: its 0..1 mapped onto start..stop of the whole."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), message)


class ConsoleProgress:
    """progress(fraction, message) printing one line per new message on stderr (the report is on stdout)."""

    def __init__(self, prefix: str = "", stream=None, quiet: bool = False):
        self.prefix, self.stream, self.quiet = prefix, stream or sys.stderr, quiet
        self.last = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet or message == self.last:
            return
        self.last = message
        print(f"{self.prefix}[{100 * fraction:3.0f}%] {message}", file=self.stream, flush=True)


def format_time_left(elapsed_s: float, fraction: float) -> str:
    """'about 1 min 20 s left' from the time so far and the fraction done; '' until an estimate is sensible."""
    if fraction <= 0.02 or elapsed_s < 1.0 or fraction >= 1.0:
        return ""
    left = int(round(elapsed_s * (1.0 - fraction) / fraction))
    if left >= 60:
        return f"about {left // 60} min {left % 60:02d} s left"
    return f"about {max(left, 1)} s left"
