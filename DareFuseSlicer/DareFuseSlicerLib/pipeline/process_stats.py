"""How long this process has run and how much memory it holds, from Linux's /proc; how it returns memory.

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


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model and whether it does bfloat16 matrix work in hardware (AMX or AVX512-BF16), which
    decides whether bf16 training is faster than fp32 on it; the platform's name where /proc is missing."""
    import platform

    try:
        with open(cpuinfo) as info:
            first_cpu = info.read().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first_cpu.splitlines())}
    model = " ".join(fields.get("model name", platform.machine()).split())
    flags = set(fields.get("flags", "").split())
    bf16 = [name for name in ("amx_bf16", "avx512_bf16") if name in flags]
    return f"{model}, bf16 in hardware: {' and '.join(bf16) if bf16 else 'no'}"


#: glibc's mallopt parameter for the size from which an allocation gets its own mapping.
M_MMAP_THRESHOLD = -3


def unmap_large_blocks(threshold: int = 1 << 20) -> bool:
    """Give every allocation of `threshold` bytes or more its own mapping, returned to the system when freed.

    glibc's default raises that threshold to the size of each such block freed, up to 32 MiB; from then on
    image-sized buffers and the network's activations come from its heap, which keeps them once freed: about
    300 MB of `darefuse segment`'s peak (benchmarks/bench_segment.py: 2669 -> 2362 MB at 1.5x the BraTS voxel
    count, 2246 -> 1995 MB at 1x). The price is page faults: the network pass takes about 0.4 s longer. Set
    for the segmenting commands only (process-wide, so not in Slicer's process nor for training).
    Returns False where the C library has no such setting (nothing changes there)."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError, TypeError):
        return False
