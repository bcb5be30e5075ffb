"""Seconds per BraTS-grid case of the data engine (make_case, write_case), median of several.

    .venv/bin/python benchmarks/bench_phantoms.py [--n 5] [--grid brats] [--threads 2]

The first call loads the MNI152 anatomy (once per process); it is reported apart. Classes cycle
through the four so the median covers all of them. CPU seconds (all threads) are printed beside wall
seconds: on a shared machine the wall time mostly measures the other users.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

import SimpleITK as sitk  # noqa: E402

from DareFuseSlicerLib.constants import CLASSES  # noqa: E402
from DareFuseSlicerLib.phantoms import make_case, write_case  # noqa: E402
from DareFuseSlicerLib.phantoms.anatomy import candidates, load_anatomy  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--grid", default="brats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=500)
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    t0 = time.perf_counter()
    load_anatomy()
    for kind in ("deep_wm", "junction", "surface"):
        candidates(kind)
    print(f"anatomy load (once per process): {time.perf_counter() - t0:.2f} s")

    make_s, write_s, cpu_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            cls = CLASSES[i % len(CLASSES)]
            t0, c0 = time.perf_counter(), time.process_time()
            case = make_case(args.seed + i, cls, args.grid)
            t1, c1 = time.perf_counter(), time.process_time()
            write_case(case, tmp)
            t2 = time.perf_counter()
            make_s.append(t1 - t0)
            write_s.append(t2 - t1)
            cpu_s.append(c1 - c0)
            print(f"  {case.case_id} {cls:<10} make {t1 - t0:5.2f} s (CPU {c1 - c0:5.2f} s)  write {t2 - t1:5.2f} s")
    result = {"make": statistics.median(make_s), "write": statistics.median(write_s),
              "make_cpu": statistics.median(cpu_s),
              "total": statistics.median([m + w for m, w in zip(make_s, write_s)])}
    print(f"{args.grid} grid, {args.threads} threads, median of {args.n}: make_case {result['make']:.2f} s "
          f"(CPU {result['make_cpu']:.2f} s), "
          f"write_case {result['write']:.2f} s (9 files), total {result['total']:.2f} s per case")
    return result


if __name__ == "__main__":
    main()
