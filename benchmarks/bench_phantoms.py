"""Seconds per case of the data engine (make_case, write_case), median of several.

    .venv/bin/python benchmarks/bench_phantoms.py [--n 5] [--grid brats] [--threads 2] [--acquisition brats]

--acquisition clinical times clinical cases (whole head, each contrast on its own grid; --grid unused).
The first call loads the MNI152 anatomy (and, for clinical cases, the head grid; once per process); it is
reported apart. Classes cycle through the four so the median covers all of them. CPU seconds (all
threads) are printed beside wall seconds: on a shared machine the wall time mostly measures the other
users. --threads also sets NumPy's (OpenMP) threads when given before NumPy starts: set OMP_NUM_THREADS
in the environment for a one-core figure.
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
from DareFuseSlicerLib.phantoms.headspace import candidate_points, head_space  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--grid", default="brats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--acquisition", choices=("brats", "clinical"), default="brats")
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    clinical = args.acquisition == "clinical"

    t0 = time.perf_counter()
    load_anatomy()
    for kind in ("deep_wm", "junction", "surface"):
        candidates(kind)
    if clinical:
        head_space()
        candidate_points()
    print(f"anatomy load (once per process): {time.perf_counter() - t0:.2f} s")

    make_s, write_s, cpu_s, write_cpu_s = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            cls = CLASSES[i % len(CLASSES)]
            t0, c0 = time.perf_counter(), time.process_time()
            if clinical:
                case = make_case(args.seed + i, cls, acquisition="clinical")
            else:
                case = make_case(args.seed + i, cls, args.grid)
            t1, c1 = time.perf_counter(), time.process_time()
            write_case(case, tmp)
            t2, c2 = time.perf_counter(), time.process_time()
            make_s.append(t1 - t0)
            write_s.append(t2 - t1)
            cpu_s.append(c1 - c0)
            write_cpu_s.append(c2 - c1)
            print(f"  {case.case_id} {cls:<10} make {t1 - t0:5.2f} s (CPU {c1 - c0:5.2f} s)  "
                  f"write {t2 - t1:5.2f} s (CPU {c2 - c1:5.2f} s)")
    result = {"make": statistics.median(make_s), "write": statistics.median(write_s),
              "make_cpu": statistics.median(cpu_s), "write_cpu": statistics.median(write_cpu_s),
              "total": statistics.median([m + w for m, w in zip(make_s, write_s)]),
              "total_cpu": statistics.median([m + w for m, w in zip(cpu_s, write_cpu_s)])}
    what = "clinical acquisition" if clinical else f"{args.grid} grid"
    files = 10 if clinical else 9
    print(f"{what}, {args.threads} threads, median of {args.n}: make_case {result['make']:.2f} s "
          f"(CPU {result['make_cpu']:.2f} s), write_case {result['write']:.2f} s (CPU {result['write_cpu']:.2f} s, "
          f"{files} files), total {result['total']:.2f} s (CPU {result['total_cpu']:.2f} s) per case")
    return result


if __name__ == "__main__":
    main()
