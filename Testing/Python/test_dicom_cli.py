"""`darefuse segment` / `batch` / `phantoms` with DICOM: a study written from a data-engine case (the bundled sample,
at 3 mm to stay small) segmented from its series gives the same labels as from its NIfTI files, in a DICOM SEG on
the source grid that highdicom reads back and dciodvfy passes; folder problems are one line before any heavy
work; report.json and the console name series, never the patient."""
import csv
import json
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer  # noqa: F401  slicer-core is a hard dependency: without it these tests fail, never skip

from DareFuseSlicerLib import cli
from DareFuseSlicerLib.cli import segment as segment_cli
from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS
from DareFuseSlicerLib.dicom import export, series, synthetic
from DareFuseSlicerLib.phantoms import sample_case_paths
from DareFuseSlicerLib.pipeline.outputs import DICOM_RESULT_FILES, NIFTI_RESULT_FILES
from pydicom.encaps import encapsulate
from dicom_helpers import CASE_ID, SEED, assert_no_patient_data, assert_on_grid, files, geometry_of, small_image

SPACING_MM = 3.0


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The sample case on a 3 mm grid (int16, as scanners store it) as NIfTI files and as a DICOM study."""
    folder = tmp_path_factory.mktemp("dicom_case")
    sample = sample_case_paths()
    images, nifti = {}, {}
    for contrast in CONTRASTS:
        image = sitk.ReadImage(str(sample[BRATS_SUFFIX[contrast]]))
        grid = sitk.Image([int(round(s * p / SPACING_MM)) for s, p in zip(image.GetSize(), image.GetSpacing())],
                          sitk.sitkInt16)
        grid.SetSpacing([SPACING_MM] * 3)
        grid.SetOrigin(image.GetOrigin())
        grid.SetDirection(image.GetDirection())
        images[contrast] = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0, sitk.sitkInt16)
        nifti[contrast] = str(folder / f"small-{BRATS_SUFFIX[contrast]}.nii.gz")
        sitk.WriteImage(images[contrast], nifti[contrast], True)
    study = synthetic.write_study(images, folder / "study", CASE_ID, SEED)
    return {"folder": folder, "nifti": nifti, "study": folder / "study", "series": study, "images": images}


def refused(capsys, argv, out, *fragments):
    status = cli.main(argv + ["--output-dir", str(out), "--quiet"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("darefuse: error: "), captured
    assert "Traceback" not in captured.err + captured.out
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()
    assert_no_patient_data([captured.err, captured.out])
    return lines[0]


def test_folder_problems_are_one_line_before_any_work(case, tmp_path, capsys):
    study, t1 = case["study"], case["series"]["t1"]
    out = tmp_path / "out"
    refused(capsys, ["segment", "--t1", str(study)], out, f"--t1 {study}: the folder holds 4 series",
            "('T1 MPRAGE post Gd', ", "by its UID (--series)", "with --dicom")
    refused(capsys, ["segment", "--t1", str(case["series"]["localizer"])], out, "holds only a localizer")
    refused(capsys, ["segment", "--t1", str(t1), "--series", "1.2.3"], out,
            "--series 1.2.3: no such series was used")
    refused(capsys, ["segment", "--t1", case["nifti"]["t1"], "--flair", str(case["series"]["flair"]),
                     "--output-format", "dicom"], out, "--output-format dicom: the DICOM results reference",
            "(T1), which was given as a file")
    broken = tmp_path / "t1-gap"
    shutil.copytree(t1, broken)
    files(broken)[10].unlink()
    refused(capsys, ["segment", "--t1", str(broken)], out, f"--t1 {broken}: series ", "about 1 missing slice")
    unreadable = tmp_path / "t1-htj2k"
    shutil.copytree(t1, unreadable)
    for path in files(unreadable)[:1]:
        dataset = pydicom.dcmread(str(path))
        dataset.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
        dataset.PixelData = encapsulate([dataset.PixelData])
        dataset["PixelData"].VR = "OB"
        dataset.save_as(str(path))
    refused(capsys, ["segment", "--t1", str(unreadable)], out, "High-Throughput JPEG 2000", "cannot be read")


@pytest.mark.slow  # two runs of the bundled model on a 3 mm case: ~10 s on an idle 2-core CPU
def test_round_trip_dicom_study_to_seg_matches_the_nifti_path(case, tmp_path, capsys):
    common = ["--skip", "prior", "--quiet"]
    nifti_out, dicom_out = tmp_path / "nifti", tmp_path / "dicom"
    argv = ["segment", "--output-dir", str(nifti_out)] + common
    for contrast in CONTRASTS:
        argv += [f"--{contrast}", case["nifti"][contrast]]
    assert cli.main(argv) == 0
    capsys.readouterr()
    # A localizer image mixed into the T1 folder: left out with a warning. T1 given as its folder, the others
    # assigned from the study by their descriptions.
    t1 = tmp_path / "t1"
    shutil.copytree(case["series"]["t1"], t1)
    localizer = files(case["series"]["localizer"])[0]
    mixed = pydicom.dcmread(str(localizer))
    mixed.SeriesInstanceUID = pydicom.dcmread(str(files(t1)[0])).SeriesInstanceUID
    mixed.save_as(str(t1 / "zz-localizer.dcm"))
    assert cli.main(["segment", "--t1", str(t1), "--dicom", str(case["study"]), "--output-dir", str(dicom_out),
                     "--output-format", "both"] + common) == 0
    captured = capsys.readouterr()
    assert "('T1 MPRAGE post Gd', " in captured.err and "images): T1ce" in captured.err
    assert "('T1 MPRAGE', " in captured.err and "left aside (T1 was given on its own)" in captured.err
    assert "darefuse: warning: --t1 " in captured.err and "1 localizer image(s) mixed in" in captured.err

    expected = sitk.ReadImage(str(nifti_out / "segmentation.nii.gz"))
    labels = sitk.GetArrayFromImage(expected)
    assert (labels == 3).sum() > 50 and (labels == 2).sum() > 50  # the model finds the sample's tumour
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(dicom_out / "segmentation.nii.gz"))), labels)
    seg = hd.seg.segread(str(dicom_out / export.SEG_FILE))
    volume = seg.get_volume(combine_segments=True)
    assert np.array_equal(volume.match_geometry(geometry_of(expected), tol=1e-3).array, labels)
    assert_on_grid(volume, expected)  # origin and direction within 1e-3 mm of the NIfTI path's
    uncertainty = sitk.GetArrayFromImage(sitk.ReadImage(str(dicom_out / "uncertainty.nii.gz")))
    pmap = hd.imread(str(dicom_out / export.MAP_FILES["uncertainty"])).get_volume()
    assert np.abs(pmap.match_geometry(geometry_of(expected), tol=1e-3).array - uncertainty).max() < 1e-4

    report_text = (dicom_out / "report.json").read_text()
    report = json.loads(report_text)
    without_prior = set(NIFTI_RESULT_FILES) - {"difference_prior.nii.gz", "tumour_free.nii.gz"}
    assert set(report["files"]) == without_prior | set(DICOM_RESULT_FILES)
    source = report["inputs"]["t1"]["dicom"]
    assert source["series_description"] == "T1 MPRAGE" and source["slices"] == labels.shape[0]
    assert source["series_instance_uid"] == seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert report["inputs"]["flair"]["dicom"]["series_description"] == "FLAIR ax"
    assert len(report["dicom_study"]["series"]) == 5
    assert_no_patient_data([report_text, captured.err, captured.out])
    for name in DICOM_RESULT_FILES:
        if shutil.which("dciodvfy"):
            run = subprocess.run(["dciodvfy", str(dicom_out / name)], capture_output=True, text=True, timeout=60)
            assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def test_batch_takes_folders_and_a_study_column(case, tmp_path, capsys):
    table = tmp_path / "cases.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=segment_cli.BATCH_COLUMNS + ("dicom",))
        writer.writeheader()
        writer.writerow({"case_id": "mixed", "t1": str(case["study"]), "output_dir": "out/mixed"})
        writer.writerow({"case_id": "study", "dicom": "study", "output_dir": "out/study"})
    shutil.copytree(case["study"], tmp_path / "study")
    cases = segment_cli.read_batch(table)
    assert cases[1]["dicom"] == str(tmp_path / "study") and cases[0]["t1"] == str(case["study"])
    rows = segment_cli.run_batch(cases[:1], quiet=True, output_format="dicom")
    assert rows[0]["status"] == "failed" and "the folder holds 4 series" in rows[0]["message"]
    assert "by its UID (--series)" in rows[0]["message"]


@pytest.mark.slow  # one data-engine case on the 2 mm test grid (and the MNI152 anatomy, once per process)
def test_phantoms_writes_dicom_studies(tmp_path, capsys):
    out = tmp_path / "set"
    assert cli.main(["phantoms", "--out", str(out), "--n", "1", "--seed", "11", "--grid", "test_2mm",
                     "--format", "dicom"]) == 0
    with open(out / "manifest.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    label = sitk.ReadImage(str(out / row["seg"]))
    studies = set()
    for contrast, description in (("t1", "T1 MPRAGE"), ("t1ce", "T1 MPRAGE post Gd"), ("t2", "T2 TSE ax"),
                                  ("flair", "FLAIR ax")):
        stack = series.load(out / row[BRATS_SUFFIX[contrast]], contrast)
        image = series.read(stack)
        assert stack.series.description == description and not row[f"{BRATS_SUFFIX[contrast]}_free"]
        assert image.GetSize() == label.GetSize() and np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-4)
        assert np.allclose(image.GetDirection(), label.GetDirection()) and sitk.GetArrayViewFromImage(image).max() > 0
        header = stack.headers[0]
        studies.add((header.StudyInstanceUID, header.FrameOfReferenceUID, str(header.PatientID)))
        assert header.Modality == "MR" and header.MRAcquisitionType in ("2D", "3D") and header.EchoTime > 0
    assert len(studies) == 1 and next(iter(studies))[2] == "PH000011"  # one study, one synthetic patient


def test_the_same_case_gives_the_same_files(tmp_path):
    images = {"t1": small_image(size=(10, 12, 6)), "flair": small_image(size=(10, 12, 6), seed=1)}
    first = synthetic.write_study(images, tmp_path / "a", CASE_ID, SEED)
    second = synthetic.write_study(images, tmp_path / "b", CASE_ID, SEED)
    assert [p.read_bytes() for p in files(first["flair"])] == [p.read_bytes() for p in files(second["flair"])]
