"""Issue 17: the inference process stays warm. The second run on the sample case against the first.

    .venv/bin/python benchmarks/bench_worker.py [--runs 2] [--skip gradcam ...]

This process is the scene process (as Slicer is): it loads the bundled sample case (240x240x155, four contrasts)
into a headless MRML scene and runs DareFuseLogic.start -> finish `--runs` times with one logic, every layer
unless skipped. The first run starts the inference process (imports, model load); later runs reuse it. Each
wall time is from start() to finish() returning: inputs written, the pipeline in the worker, the results read
back and added to the scene. Prints the CPU, each run's wall time, the pipeline's own time (report.json's
timings_s.total), the worker's process id, and the ratio of run 2 to run 1 (goal: at most 0.60). The machine's
load average is printed too: on a shared machine wall times move with it, so each run's CPU time (this process
plus the worker, from /proc on Linux) and its ratio are printed beside them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import OUTPUTS  # noqa: E402
from DareFuseSlicerLib.pipeline.process_stats import cpu_description  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; NaN elsewhere or once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], choices=[o for o in OUTPUTS if o != "segmentation"])
    args = parser.parse_args()

    from DareFuseSlicerLib.inputs import load_sample_case
    from DareFuseSlicerLib.logic import DareFuseLogic
    from DareFuseSlicerLib.scene import files

    outputs = tuple(o for o in OUTPUTS if o not in args.skip)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"CPU: {cpu_description()} ({os.cpu_count()} cores, load average {load}); "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; outputs: {', '.join(outputs)}")
    scene = files.new_scene()
    inputs = load_sample_case(scene)
    logic = DareFuseLogic()
    walls, cpus = [], []
    worker_cpu = 0.0  # the worker's CPU time at the end of the previous run (it is new at run 1)
    try:
        for number in range(1, args.runs + 1):
            started, started_cpu = time.perf_counter(), time.process_time()
            run = logic.start(**inputs, outputs=outputs)
            run.wait()
            pid = run.worker_pid
            used = cpu_seconds(pid)  # read before finish(): the worker is still known to be alive
            added = run.finish()
            walls.append(time.perf_counter() - started)
            cpus.append(time.process_time() - started_cpu + used - worker_cpu)
            worker_cpu = used
            pipeline = added.report["timings_s"].get("total", float("nan"))
            print(f"run {number}: {walls[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU (pipeline {pipeline:.1f} s wall), "
                  f"worker pid {pid}", flush=True)
    finally:
        logic.end_worker()
    heavy = [name for name in ("torch", "monai", "pytorch_grad_cam") if name in sys.modules]
    print(f"scene process imported: {', '.join(heavy) or 'none of torch, monai, pytorch_grad_cam'}")
    if len(walls) >= 2:
        print(f"second / first: {walls[1] / walls[0]:.2f} wall (goal: at most 0.60), {cpus[1] / cpus[0]:.2f} CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
