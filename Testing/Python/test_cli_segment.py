"""`darefuse segment`: the module's logic on a real MRML scene, every file written; bad input gives exit
status 2, one line on stderr, no traceback and nothing in the output folder."""
import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # noqa: F401  slicer-core is a hard dependency: without it these tests fail, never skip

from DareFuseSlicerLib import cli, headless
from DareFuseSlicerLib.errors import Cancelled
from DareFuseSlicerLib.pipeline import inference
from DareFuseSlicerLib.pipeline.outputs import NIFTI_RESULT_FILES
from DareFuseSlicerLib.pipeline.process_stats import process_age_s
from pipeline_helpers import head, same_grid, save_tiny_model, write


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_inputs")
    t1 = head(lesion_mm=15.0)
    paths = {
        "model": str(save_tiny_model(folder)),
        "t1": write(t1, folder / "case-t1n.nii.gz"),
        "flair": write(head(seed=4, scale=900.0, lesion_mm=15.0), folder / "case-t2f.nii.gz"),
        "missing": str(folder / "nope.nii.gz"),
        "folder": str(folder),
        "empty": str(folder / "empty.nii.gz"),
        "text": str(folder / "notes.nii.gz"),
        "truncated": str(folder / "truncated.nii.gz"),
        "two_d": write(sitk.Image([64, 64], sitk.sitkFloat32) + 1.0, folder / "slice.nii.gz"),
        "four_d": write(sitk.JoinSeries([t1, t1, t1]), folder / "series.nii.gz"),
        "huge": str(folder / "huge.nii"),
    }
    Path(paths["empty"]).write_bytes(b"")
    Path(paths["text"]).write_bytes(gzip.compress(b"patient notes, not an image"))
    whole = Path(paths["t1"]).read_bytes()
    Path(paths["truncated"]).write_bytes(whole[: len(whole) // 2])
    # A header announcing 2048^3 voxels of 0.1 mm and no data: the memory guard must answer from the header.
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.int16)
    header.set_zooms((0.1, 0.1, 0.1))
    with open(paths["huge"], "wb") as handle:
        header.write_to(handle)
    labels = np.zeros((36, 48, 40), np.uint8)
    labels[10:30, 10:30, 10:30] = 2
    labels[15:25, 15:25, 15:25] = 3
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(t1)
    paths["labels"] = write(label_image, folder / "case-seg.nii.gz")
    # NRRD: ITK's NIfTI reader (and so Slicer's) turns NaN into 0 itself; NRRD keeps NaN for the pipeline.
    nan_image = sitk.GetImageFromArray(np.full((36, 48, 40), np.nan, np.float32))
    nan_image.CopyInformation(t1)
    paths["nan"] = write(nan_image, folder / "nan.nrrd")
    # A FLAIR on another grid and orientation (coarser, stored RAI), with NaN in its first two slices.
    flair = sitk.DICOMOrient(head(size=(27, 32, 24), spacing=(6.0, 6.0, 6.0), seed=4, scale=900.0), "RAI")
    some_nan = sitk.GetArrayFromImage(flair)
    some_nan[:2] = np.nan
    some_nan_image = sitk.GetImageFromArray(some_nan)
    some_nan_image.CopyInformation(flair)
    paths["some_nan"] = write(some_nan_image, folder / "some_nan.nrrd")
    paths["small_object"] = write(head(size=(30, 30, 30), spacing=(1.0, 1.0, 1.0), radii_mm=(10.0, 12.0, 9.0)),
                                  folder / "object.nii.gz")
    paths["constant"] = write(sitk.Cast(t1 * 0 + 5, sitk.sitkInt16), folder / "constant.nii.gz")
    return paths


def segment(files, out, *extra, **contrasts):
    argv = ["segment", "--output-dir", str(out), "--model", files["model"], "--quiet"]
    for name, path in contrasts.items():
        argv += [f"--{name}", path]
    return cli.main(argv + list(extra))


def assert_refused(capsys, status, out, *fragments):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured
    assert len(lines) == 1 and lines[0].startswith("darefuse: error: "), lines
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not Path(out).exists() or not any(Path(out).iterdir())
    assert not [p for p in Path(out).parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("key, fragments", [
    ("missing", ("does not exist",)),
    ("folder", ("is a folder",)),
    ("empty", ("is empty (0 bytes)",)),
    ("text", ("not a readable image",)),
    ("truncated", ("truncated or damaged",)),
    ("two_d", ("2-D image (64x64)",)),
    ("four_d", ("4-D image", "3 volumes")),
    ("huge", ("too large for this computer's memory", "2048x2048x2048")),
])
def test_bad_files_are_refused_from_their_header(files, tmp_path, capsys, key, fragments):
    out = tmp_path / "out"
    status = segment(files, out, t1=files["t1"], flair=files[key])
    assert_refused(capsys, status, out, f"--flair {files[key]}", *fragments)


@pytest.mark.parametrize("key, fragments", [
    ("labels", ("looks like a label map", "(0, 2, 3)")),
    ("nan", ("no finite voxel",)),
    ("constant", ("is constant: every voxel is 5",)),
])
def test_bad_voxels_are_refused_through_the_logic(files, tmp_path, capsys, key, fragments):
    out = tmp_path / "out"
    status = segment(files, out, t2=files[key])
    assert_refused(capsys, status, out, "T2", *fragments)


def test_other_grids_and_nan_voxels_are_recovered_and_reported(files, tmp_path, capsys):
    out = tmp_path / "out"
    status = segment(files, out, "--skip", "gradcam", "--skip", "prior", t1=files["t1"], flair=files["some_nan"])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    assert any("1728 voxels" in w and "NaN or infinite" in w for w in report["warnings"])
    assert "NaN or infinite" in capsys.readouterr().err  # warnings are also shown
    # Start-up: seconds from this process's start to the first window (benchmarks/bench_segment.py reports it).
    if process_age_s() is not None:
        assert 0 < report["timings_s"]["first_window_s"] < process_age_s()
    # Slicer's reader re-orders the slices of the RAI file (same voxels in space): its node is RAS.
    assert report["inputs"]["flair"]["resampled_to_reference"] and report["inputs"]["flair"]["orientation"] == "RAS"
    assert report["inputs"]["t1"]["orientation"] == "LPS" and not report["inputs"]["t1"]["resampled_to_reference"]
    assert same_grid(sitk.ReadImage(str(out / "segmentation.nii.gz")), sitk.ReadImage(files["t1"]))


def test_a_non_brain_image_is_flagged_low_confidence(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert segment(files, out, "--skip", "gradcam", "--skip", "prior", t2=files["small_object"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["low_confidence"] and any(w.startswith("Low confidence") for w in report["warnings"])
    assert "[LOW CONFIDENCE]" in capsys.readouterr().out


def test_the_summary_line_names_the_class_heads_answer_when_a_rule_replaced_it():
    from DareFuseSlicerLib.cli.segment import summary

    report = {"predicted_class": "glioma", "gradcam_class": "meningioma", "low_confidence": True,
              "class_probabilities": {"no_tumour": 0.01, "glioma": 0.03, "meningioma": 0.88, "metastasis": 0.08},
              "volumes_ml": {"WT": 14.2, "TC": 2.0, "ET": 0.0}}
    line = summary(report, "out")
    assert line.startswith("glioma (by a rule; class head: meningioma 88 %), WT 14.2 mL") and "3 %" not in line
    assert line.endswith("-> out [LOW CONFIDENCE]")
    agreed = dict(report, gradcam_class="glioma", low_confidence=False)
    assert summary(agreed, "out") == "glioma (3 %), WT 14.2 mL, TC 2.0 mL, ET 0.0 mL -> out"


def test_usage_errors(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert_refused(capsys, segment(files, out), out, "give at least one of --t1, --t1ce, --t2, --flair")
    if not __import__("torch").cuda.is_available():
        assert_refused(capsys, segment(files, out, "--device", "cuda", t1=files["t1"]), out, "no CUDA GPU")
    bad_model = tmp_path / "other.safetensors"
    bad_model.write_bytes(b"x")
    status = cli.main(["segment", "--t1", files["t1"], "--output-dir", str(out), "--model", str(bad_model),
                       "--quiet"])
    assert_refused(capsys, status, out, "no model card")


@pytest.mark.slow  # three full runs through the logic and the scene: ~5 s each on a busy 2-core CPU
def test_segment_writes_every_result_and_never_overwrites(files, tmp_path, capsys):
    out = tmp_path / "case"
    assert segment(files, out, t1=files["t1"], flair=files["flair"]) == 0
    assert sorted(os.listdir(out)) == sorted(NIFTI_RESULT_FILES)  # skull-stripped input: no front-end files
    t1 = sitk.ReadImage(files["t1"])
    seg = sitk.ReadImage(str(out / "segmentation.seg.nrrd"))
    assert same_grid(sitk.ReadImage(str(out / "segmentation.nii.gz")), t1)
    assert np.allclose(seg.GetSpacing(), t1.GetSpacing()) and np.allclose(seg.GetDirection(), t1.GetDirection())
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["name"] == "tiny-test-model" and len(report["model"]["sha256"]) == 64
    assert report["inputs"]["t1"]["path"] == str(Path(files["t1"]).absolute())
    assert report["tumour_free_contrasts"] == ["t1", "flair"]
    assert report["timings_s"]["load"] > 0 and report["timings_s"]["write"] > 0
    with zipfile.ZipFile(out / "scene.mrb") as bundle:
        names = bundle.namelist()
    assert any(n.endswith(".mrml") for n in names) and any(n.endswith(".seg.nrrd") for n in names)
    assert any(n.endswith(".mrk.json") for n in names) and any(n.endswith(".tsv") for n in names)  # review nodes
    summary = capsys.readouterr().out
    assert report["predicted_class"] in summary and "WT" in summary
    assert f"review: {report['review_message']}" in summary

    before = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    status = segment(files, out, t1=files["t1"])
    captured = capsys.readouterr()
    assert status == 2 and "already holds results" in captured.err and "--overwrite" in captured.err
    assert {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)} == before
    assert segment(files, out, "--overwrite", "--skip", "gradcam", t1=files["t1"]) == 0
    assert not (out / "gradcam.nii.gz").exists()
    assert json.loads((out / "report.json").read_text())["tumour_free_contrasts"] == ["t1"]


def test_cancel_between_windows_leaves_nothing_written(files, tmp_path, monkeypatch):
    # Small windows, so that the case takes several and the cancel lands between two of them.
    monkeypatch.setattr(inference, "plan_windows",
                        lambda shape, stride=8: inference.WindowPlan(
                            (16, 16, 16), 0.25, inference.count_windows(shape, (16, 16, 16), 0.25)))
    seen = []

    def cancel():
        return any("window 1 of" in message for message in seen)

    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        headless.segment_case({"t1": files["t1"]}, out, model_path=files["model"],
                              progress=lambda f, m: seen.append(m), cancel=cancel)
    assert any("window 1 of" in m for m in seen) and not any("window 2 of" in m for m in seen)
    assert not out.exists() and sorted(os.listdir(tmp_path)) == []


def run_cli(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "DareFuseSlicerLib.cli", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_subprocess_header_errors_are_one_line_with_status_2(files, tmp_path):
    for key, fragment in (("missing", "does not exist"), ("truncated", "truncated"), ("huge", "too large")):
        out = tmp_path / key
        done = run_cli("segment", "--t1", files[key], "--output-dir", str(out), cwd=tmp_path)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr
        assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.slow
def test_subprocess_voxel_errors_are_one_line_with_status_2(files, tmp_path):
    out = tmp_path / "out"
    done = run_cli("segment", "--t1ce", files["labels"], "--output-dir", str(out), "--model", files["model"],
                   "--quiet", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "label map" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    assert sorted(os.listdir(tmp_path)) == []


def test_class_gate_and_no_class_gate(files, tmp_path, capsys):
    """A model card with a class gate that always closes: the segmentation is written empty and the warning
    says why; --no-class-gate keeps what the network labelled."""
    from DareFuseSlicerLib.network.store import record_metrics

    model = Path(save_tiny_model(tmp_path))
    record_metrics(model, "held_out", {}, postprocess={"config": {"no_tumour_gate": 0.0}, "tuned_on": "val"})
    files = {**files, "model": str(model)}
    assert segment(files, tmp_path / "gated", t1=files["t1"]) == 0
    assert "class gate's 0.0 (tuned on val)" in capsys.readouterr().err
    assert not sitk.GetArrayViewFromImage(sitk.ReadImage(str(tmp_path / "gated" / "segmentation.nii.gz"))).any()
    assert segment(files, tmp_path / "kept", "--no-class-gate", t1=files["t1"]) == 0
    assert "class gate" not in capsys.readouterr().err
    assert sitk.GetArrayViewFromImage(sitk.ReadImage(str(tmp_path / "kept" / "segmentation.nii.gz"))).any()
    report = json.loads((tmp_path / "kept" / "report.json").read_text())
    assert report["settings"]["postprocess"]["source"] == "tuned on val; class gate turned off"
