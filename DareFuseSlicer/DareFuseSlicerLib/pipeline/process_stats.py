"""How long this process has run and how much memory it holds, from Linux's /proc.

Standard library only: the benchmarks' children import it before torch and MONAI, whose import time they
measure.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional


def process_age_s() -> Optional[float]:
    """Seconds since this process started, from the kernel's record of its start time (Linux, 10 ms
    resolution); None where that is not available. The start-up time of a run counts from here."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the command name (field 2) may hold spaces
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime: clock ticks after boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def resident_mb() -> float:
    """Current resident memory of this process in MB (peak where the current value is not available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
        return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6
