"""Start-up of `darefuse`: a bad call fails before the heavy imports; the first window's time is measured."""
import subprocess
import sys
import time

import pytest
import torch

from DareFuseSlicerLib.pipeline import inference
from DareFuseSlicerLib.pipeline.process_stats import process_age_s

MARK = time.perf_counter()  # this module's import: the process is at least this old

#: Imported by a run, not needed to refuse a bad call.
HEAVY = ("torch", "monai", "slicer", "vtk", "scipy", "DareFuseSlicerLib.phantoms.engine")


def test_a_bad_input_is_refused_before_torch_slicer_or_scipy_are_imported(tmp_path):
    out = tmp_path / "out"
    code = ("import sys; from DareFuseSlicerLib.cli import main; status = main(sys.argv[1:]); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules)); sys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, "segment", "--t1", str(tmp_path / "nope.nii.gz"),
                           "--output-dir", str(out), "--threads", "2"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("darefuse: error: ") and "does not exist" in lines[0]
    assert "Traceback" not in done.stderr and not out.exists()
    assert done.stdout.strip() == "[]", done.stdout  # --threads no longer imports torch first


def test_process_age_counts_from_the_process_start():
    first = process_age_s()
    if first is None:
        pytest.skip("no /proc on this platform")
    assert first >= time.perf_counter() - MARK - 0.02  # 10 ms clock ticks
    time.sleep(0.05)
    assert process_age_s() - first >= 0.04


def test_the_predictor_notes_when_its_first_window_starts():
    predictor = inference.WindowPredictor(lambda x, present: {"out": x}, torch.ones(1, 4), n_windows=2)
    assert predictor.first_window_s is None
    predictor(torch.zeros(1, 4, 8, 8, 8))
    first = predictor.first_window_s
    if first is None:
        pytest.skip("no /proc on this platform")
    time.sleep(0.03)
    predictor(torch.zeros(1, 4, 8, 8, 8))
    assert predictor.first_window_s == first and predictor.done == 2
