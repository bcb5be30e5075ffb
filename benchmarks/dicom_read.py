"""Seconds to load a BraTS-size case from DICOM series against the same case from NIfTI files, as
`darefuse segment` loads them: NIfTI through Slicer's storage nodes, DICOM through dicom.series (headers,
checks, GDCM pixel reading) into volume nodes. The case is the bundled sample, written as a DICOM study first.

    .venv/bin/python benchmarks/dicom_read.py [--repeats 5] [--threads 2]

Prints the median of each over the repeats (after one warm-up read of each, so both read from the page cache)
and the difference per case (four contrasts), in wall and CPU seconds (on a shared machine the wall time also
measures the other users). Goal (issue 19): DICOM adds at most 2 s.
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

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS  # noqa: E402
from DareFuseSlicerLib.dicom import series, synthetic  # noqa: E402
from DareFuseSlicerLib.phantoms import sample_case_paths  # noqa: E402
from DareFuseSlicerLib.scene import files, volumes  # noqa: E402


def load_nifti(paths) -> tuple:
    """(wall s, CPU s) to read the four files into volume nodes through Slicer's storage nodes."""
    scene = files.new_scene()
    started, cpu = time.perf_counter(), time.process_time()
    for contrast in CONTRASTS:
        files.load_volume(scene, paths[contrast])
    seconds = (time.perf_counter() - started, time.process_time() - cpu)
    scene.Clear(0)
    return seconds


def load_dicom(folders) -> tuple:
    """(wall s, CPU s) to find, check, sort and read the four series into volume nodes."""
    scene = files.new_scene()
    started, cpu = time.perf_counter(), time.process_time()
    for contrast in CONTRASTS:
        stack = series.load(folders[contrast], f"--{contrast} {folders[contrast]}")
        volumes.add_volume(scene, series.read(stack), contrast)
    seconds = (time.perf_counter() - started, time.process_time() - cpu)
    scene.Clear(0)
    return seconds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    sample = sample_case_paths()
    nifti = {c: str(sample[BRATS_SUFFIX[c]]) for c in CONTRASTS}
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folders = synthetic.write_sample_study(tmp)
        size = sitk.ReadImage(nifti["t1"]).GetSize()
        written = list(Path(tmp).rglob("*.dcm"))
        print(f"sample case {'x'.join(map(str, size))} x 4 contrasts written as DICOM in "
              f"{time.perf_counter() - started:.2f} s ({len(written)} files, "
              f"{sum(p.stat().st_size for p in written) / 1e6:.0f} MB)")
        load_nifti(nifti), load_dicom(folders)  # warm-up: both from the page cache
        times = {"nifti": [], "dicom": []}
        for _ in range(args.repeats):
            times["nifti"].append(load_nifti(nifti))
            times["dicom"].append(load_dicom(folders))
    result = {}
    for clock, column in (("wall", 0), ("CPU", 1)):
        nifti_s, dicom_s = (statistics.median(t[column] for t in times[name]) for name in ("nifti", "dicom"))
        result[clock] = {"nifti": nifti_s, "dicom": dicom_s, "added": dicom_s - nifti_s}
        print(f"load per case, median of {args.repeats} ({args.threads} threads), {clock}: NIfTI {nifti_s:.2f} s, "
              f"DICOM {dicom_s:.2f} s, DICOM adds {dicom_s - nifti_s:+.2f} s (goal: at most 2 s)")
    return result


if __name__ == "__main__":
    main()
