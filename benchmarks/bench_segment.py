"""Issue 5: the whole `darefuse segment` run against a plain MONAI SegResNet segmentation, same case, same threads.

    .venv/bin/python benchmarks/bench_segment.py --runs 3 [--scales 0.5 1 1.5] [--only darefuse] [--json out.json]
    .venv/bin/python benchmarks/bench_segment.py --runs 3 --clinical T1 T1CE T2 FLAIR   # a raw whole-head study

Each run is its own process, so its peak resident memory (ru_maxrss) is its own. The case is the bundled
BraTS-grid sample; the scaled versions resample it to 0.5x and 1.5x the voxel count (same field of view).
Prints a markdown table of medians; the README quotes its output. Start-up is its own row: seconds from the
process's start to the start of the network's first sliding window (report.json's timings_s.first_window_s;
segresnet_plain.py notes the same moment), so it holds the imports, reading the inputs, building the scene,
loading the model and pre-processing. The JSON also holds each child's CPU time (cpu_user_s, cpu_system_s):
on a busy machine, compare those.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.constants import BRATS_SUFFIX  # noqa: E402
from DareFuseSlicerLib.phantoms import sample_case_paths  # noqa: E402
from DareFuseSlicerLib.pipeline.process_stats import cpu_description  # noqa: E402

CONTRAST_KEYS = ("t1", "t1ce", "t2", "flair")


def scaled_case(paths: dict, scale: float, folder: Path) -> dict:
    """The sample case resampled to `scale` times the voxel count over the same field of view."""
    if scale == 1.0:
        return {k: str(paths[k]) for k in CONTRAST_KEYS}
    out = {}
    for key in CONTRAST_KEYS:
        image = sitk.ReadImage(str(paths[key]))
        factor = scale ** (1.0 / 3.0)
        size = [max(1, int(round(s * factor))) for s in image.GetSize()]
        spacing = [sp * s / n for sp, s, n in zip(image.GetSpacing(), image.GetSize(), size)]
        reference = sitk.Image(size, image.GetPixelID())
        reference.SetSpacing(spacing)
        reference.SetDirection(image.GetDirection())
        # Keep the outer faces of the field of view in place.
        corner = image.TransformContinuousIndexToPhysicalPoint([-0.5] * 3)
        reference.SetOrigin(reference.TransformContinuousIndexToPhysicalPoint([0.0] * 3))
        shift = [c - o for c, o in zip(corner, reference.TransformContinuousIndexToPhysicalPoint([-0.5] * 3))]
        reference.SetOrigin([o + s for o, s in zip(reference.GetOrigin(), shift)])
        resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
        target = folder / f"{key}-x{scale}.nii.gz"
        sitk.WriteImage(resampled, str(target), useCompression=True)
        out[key] = str(target)
    return out


def run_child(command: list) -> tuple:
    """Run a command; return (wall seconds, stdout, {cpu_user_s, cpu_system_s}). Each child reports its own
    peak memory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cpu = {"cpu_user_s": after.ru_utime - before.ru_utime, "cpu_system_s": after.ru_stime - before.ru_stime}
    return wall, done.stdout, cpu


#: Runs the real command line in a child that reports its own peak resident memory at exit.
CHILD = ("import resource, sys; from DareFuseSlicerLib.cli import main; code = main(sys.argv[1:]); "
         "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0); sys.exit(code)")


def ours(case: dict, threads: int, folder: Path) -> dict:
    out_dir = folder / "ours"
    command = [sys.executable, "-c", CHILD, "segment", "--output-dir", str(out_dir), "--overwrite", "--quiet",
               "--threads", str(threads)]
    for key in CONTRAST_KEYS:
        command += [f"--{key}", case[key]]
    wall, stdout, cpu = run_child(command)
    report = json.loads((out_dir / "report.json").read_text())
    timings = {k: v for k, v in report["timings_s"].items() if isinstance(v, (int, float))}
    timings["wall"] = wall
    timings.update(cpu)
    timings["peak_rss_mb"] = float(stdout.split("PEAK_RSS_MB")[-1].split()[0])
    return timings


def segresnet(case: dict, threads: int, folder: Path) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "segresnet_plain.py"), "--out", str(folder / "sr.nii.gz"),
               "--threads", str(threads)]
    for key in CONTRAST_KEYS:
        # A whole-head study's contrasts have grids of their own: SegResNet gets the reference (T1) four times,
        # the same voxel count as the outputs of DareFuse's run.
        command += [f"--{key}", case["t1"] if case.get("clinical") else case[key]]
    wall, stdout, cpu = run_child(command)
    timings = json.loads(stdout.strip().splitlines()[-1])
    timings["wall"] = wall
    timings.update(cpu)
    return timings


def median_of(runs: list) -> dict:
    keys = [k for k in runs[0] if all(isinstance(r.get(k), (int, float)) for r in runs)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


#: Keys of a run's timings that are not stages of the run.
NOT_STAGES = ("wall", "peak_rss_mb", "first_window_s", "cpu_user_s", "cpu_system_s")


def cell(side: Optional[dict], key: str, spec: str = ".1f") -> str:
    """A table cell: the median, or n/a where it was not measured (or that side was not run, --only)."""
    value = None if side is None else side.get(key)
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=("darefuse", "segresnet"), help="run one side only (n/a for the other)")
    parser.add_argument("--clinical", nargs=4, metavar=("T1", "T1CE", "T2", "FLAIR"),
                        help="a raw whole-head study instead of the sample (each contrast on its own grid; the "
                             "front end runs; SegResNet gets the T1's voxel count, four channels); --scales 1 only")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    results = {"machine": f"{cpu_description()}, {os.cpu_count()} cores, "
                          f"{args.threads} threads, Python {platform.python_version()}", "scales": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {k: sample_case_paths()[BRATS_SUFFIX[k]] for k in CONTRAST_KEYS}
        for scale in args.scales:
            case = scaled_case(paths, scale, folder)
            if args.clinical:
                case = {**dict(zip(CONTRAST_KEYS, args.clinical)), "clinical": True}
            row = {"voxels": sitk.ReadImage(case["t1"]).GetNumberOfPixels(), "runs": args.runs}
            for name, measure in (("darefuse", ours), ("segresnet", segresnet)):
                if args.only in (None, name):
                    row[name] = median_of([measure(case, args.threads, folder) for _ in range(args.runs)])
            results["scales"][str(scale)] = row

    print(f"Machine: {results['machine']}; medians of {args.runs} runs per row.\n")
    print("| voxels | DareFuse whole run (s) | SegResNet plain (s) | ratio | DareFuse peak RSS (MB) | SegResNet peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for scale, row in results["scales"].items():
        d, s = row.get("darefuse"), row.get("segresnet")
        ratio = f"{d['wall'] / s['wall']:.2f}" if d and s else "n/a"
        print(f"| {row['voxels']:,} ({scale}x) | {cell(d, 'wall')} | {cell(s, 'wall')} | {ratio} "
              f"| {cell(d, 'peak_rss_mb', '.0f')} | {cell(s, 'peak_rss_mb', '.0f')} |")
    print("\n| voxels | start-up, process start to first window: DareFuse (s) | SegResNet plain (s) "
          "| DareFuse whole run CPU, user (s) | SegResNet whole run CPU, user (s) |")
    print("|---|---|---|---|---|")
    for scale, row in results["scales"].items():
        d, s = row.get("darefuse"), row.get("segresnet")
        print(f"| {row['voxels']:,} ({scale}x) | {cell(d, 'first_window_s')} | {cell(s, 'first_window_s')} "
              f"| {cell(d, 'cpu_user_s')} | {cell(s, 'cpu_user_s')} |")
    scale = "1.0" if "1.0" in results["scales"] else next(iter(results["scales"]))
    one = results["scales"][scale]
    print()
    for name, label in (("darefuse", "DareFuse"), ("segresnet", "SegResNet")):
        if name in one:
            print(f"{label} stages at {scale}x (median s): " + ", ".join(
                f"{k} {v:.2f}" for k, v in one[name].items() if k not in NOT_STAGES))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
