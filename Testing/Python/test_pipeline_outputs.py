"""Writing results: every file on the reference grid, report.json, overview.png, all or nothing, no overwrite."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib.constants import CLASSES
from DareFuseSlicerLib.errors import Cancelled, InputError
from DareFuseSlicerLib.pipeline.outputs import RESULT_FILES, check_output_dir, describe_model, write_outputs
from DareFuseSlicerLib.pipeline.run import run
from pipeline_helpers import four_contrasts, same_grid, tiny_model

IMAGE_FILES = ("segmentation.nii.gz", "uncertainty.nii.gz", "difference_prior.nii.gz", "tumour_free.nii.gz",
               "gradcam.nii.gz", "review_regions.nii.gz")


@pytest.fixture(scope="module")
def case():
    images = four_contrasts(lesion_mm=15.0)
    del images["t1ce"]
    model = tiny_model()
    model.card = {"name": "tiny", "version": "9.9", "sha256": "ab" * 32, "architecture": "DareFuseNet"}
    return images, run(images, model, spacing_mm=4.0), describe_model(model)


def leftovers(folder: Path):
    """Staging or backup folders a write may have left beside its target."""
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".previous-" in p.name]


def test_every_file_is_written_on_the_reference_grid_with_a_full_report(case, tmp_path):
    images, result, model_info = case
    target = tmp_path / "out"
    written = write_outputs(result, target, model_info=model_info)
    assert sorted(written) == sorted(IMAGE_FILES + ("overview.png", "report.json", "review.csv"))
    for name in ("segmentation.nii.gz", "uncertainty.nii.gz", "difference_prior.nii.gz", "gradcam.nii.gz",
                 "review_regions.nii.gz"):
        assert same_grid(sitk.ReadImage(str(target / name)), images["t1"]), name
    assert sitk.ReadImage(str(target / "segmentation.nii.gz")).GetPixelID() == sitk.sitkUInt8
    report = json.loads((target / "report.json").read_text())
    # The 4-D reconstruction holds the given contrasts in the order the report names.
    free = sitk.ReadImage(str(target / "tumour_free.nii.gz"))
    assert report["tumour_free_contrasts"] == ["t1", "t2", "flair"] and free.GetSize()[3] == 3
    flair = sitk.GetArrayFromImage(free)[2]
    np.testing.assert_allclose(flair, sitk.GetArrayFromImage(result.tumour_free["flair"]), rtol=1e-6)
    assert report["predicted_class"] in CLASSES and set(report["class_probabilities"]) == set(CLASSES)
    assert set(report["volumes_ml"]) == {"NETC", "SNFH", "ET", "WT", "TC"}
    assert report["model"] == model_info and report["model"]["sha256"] == "ab" * 32
    assert report["inputs"]["reference"] == "t1" and report["inputs"]["t1ce"] == {"given": False}
    assert report["timings_s"]["write"] > 0 and report["timings_s"]["network"] > 0
    assert isinstance(report["warnings"], list) and report["files"] == sorted(written)
    # Review regions: the report's list, review.csv's rows and the label map's ranks agree.
    regions = report["review_regions"]
    assert regions == result.review.table() and report["review_message"] == result.review.message
    ranks = sitk.GetArrayFromImage(sitk.ReadImage(str(target / "review_regions.nii.gz")))
    assert sorted(set(np.unique(ranks).tolist()) - {0}) == [r["rank"] for r in regions]
    csv_lines = (target / "review.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,centre_r,centre_a,centre_s,volume_ml") and len(csv_lines) == len(regions) + 1
    import matplotlib.image

    png = matplotlib.image.imread(str(target / "overview.png"))
    assert png.shape[0] > 500 and png.shape[1] > 500 and png[..., :3].std() > 0.05
    assert not leftovers(tmp_path)


def test_results_are_never_overwritten_without_overwrite(case, tmp_path):
    _, result, model_info = case
    target = tmp_path / "out"
    write_outputs(result, target, model_info=model_info)
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}
    with pytest.raises(InputError, match=r"already holds results.*Allow overwriting \(overwrite=True\)"):
        write_outputs(result, target, model_info=model_info)
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == before
    # With overwrite: results replaced, a user's own file kept, a result this run does not make removed.
    (target / "notes.txt").write_text("mine")
    (target / "scene.mrb").write_text("an older run's bundle")
    result.gradcam, saved = None, result.gradcam
    try:
        write_outputs(result, target, overwrite=True, model_info=model_info)
    finally:
        result.gradcam = saved
    assert (target / "notes.txt").read_text() == "mine"
    assert not (target / "scene.mrb").exists() and not (target / "gradcam.nii.gz").exists()
    assert (target / "segmentation.nii.gz").exists() and not leftovers(tmp_path)


def test_an_empty_or_foreign_folder_is_fine_and_a_file_is_not(case, tmp_path):
    _, result, _ = case
    (tmp_path / "empty").mkdir()
    write_outputs(result, tmp_path / "empty", overview=False)
    assert (tmp_path / "empty" / "report.json").exists()
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "t1.nii.gz").write_bytes(b"not ours")
    write_outputs(result, tmp_path / "inputs", overview=False)
    assert (tmp_path / "inputs" / "t1.nii.gz").read_bytes() == b"not ours"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_output_dir(tmp_path / "afile")


def test_cancel_or_failure_while_writing_leaves_nothing(case, tmp_path):
    _, result, model_info = case
    calls = []
    with pytest.raises(Cancelled):
        write_outputs(result, tmp_path / "out", cancel=lambda: calls.append(1) or len(calls) > 2)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)

    def failing_writer(staging):
        (staging / "segmentation.seg.nrrd").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_outputs(result, tmp_path / "out", extra_writers=[failing_writer])
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)

    # A failed overwrite keeps the earlier results as they were.
    write_outputs(result, tmp_path / "out", model_info=model_info, overview=False)
    before = (tmp_path / "out" / "report.json").read_bytes()
    with pytest.raises(RuntimeError):
        write_outputs(result, tmp_path / "out", overwrite=True, extra_writers=[failing_writer])
    assert (tmp_path / "out" / "report.json").read_bytes() == before and not leftovers(tmp_path)


def test_extra_writers_join_the_same_all_or_nothing_set(case, tmp_path):
    _, result, _ = case

    def seg_writer(staging):
        (staging / "segmentation.seg.nrrd").write_bytes(b"seg")
        return ["segmentation.seg.nrrd"]

    written = write_outputs(result, tmp_path / "out", extra_writers=[seg_writer], overview=False)
    assert "segmentation.seg.nrrd" in written and set(written) <= set(RESULT_FILES)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "segmentation.seg.nrrd" in report["files"]


def test_overview_orientation_matches_dicom_orient_without_copying():
    import itertools

    from DareFuseSlicerLib.pipeline.outputs import _lps_array
    from pipeline_helpers import head

    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            direction = np.zeros((3, 3))
            for row, column in enumerate(permutation):
                direction[row, column] = signs[row]
            for matrix in (direction, rotation @ direction):
                image = head(size=(7, 9, 11), spacing=(1.0, 2.0, 3.0), direction=matrix.ravel().tolist())
                expected = sitk.DICOMOrient(image, "LPS")
                view, spacing = _lps_array(image)
                assert np.array_equal(view, sitk.GetArrayFromImage(expected))
                assert np.allclose(spacing, expected.GetSpacing()) and not view.flags.owndata


def test_dicom_format_leaves_out_nifti_and_a_result_folder_is_replaced_whole(case, tmp_path):
    """--output-format dicom writes no NIfTI layer; a folder among the results (the demo's sample-dicom study)
    appears, and is replaced with --overwrite, like a file."""
    _, result, model_info = case

    def study(marker: str):
        def write(staging: Path):
            (staging / "sample-dicom" / "02_T1").mkdir(parents=True)
            (staging / "sample-dicom" / "02_T1" / "0001.dcm").write_text(marker)
            return ["sample-dicom"]
        return write

    target = tmp_path / "out"
    written = write_outputs(result, target, model_info=model_info, nifti=False, extra_writers=[study("first")],
                            report_extra={"dicom_study": {"series": ["a: T1"]}}, overview=False)
    assert sorted(written) == ["report.json", "review.csv", "sample-dicom"]  # the review table is in every format
    assert json.loads((target / "report.json").read_text())["dicom_study"] == {"series": ["a: T1"]}
    with pytest.raises(InputError, match="already holds results"):
        write_outputs(result, target, nifti=False, extra_writers=[study("second")], overview=False)
    write_outputs(result, target, overwrite=True, nifti=False, extra_writers=[study("second")], overview=False)
    assert (target / "sample-dicom" / "02_T1" / "0001.dcm").read_text() == "second"
    assert not leftovers(tmp_path)
