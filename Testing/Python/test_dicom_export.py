"""DICOM SEG and Parametric Maps: read back with highdicom onto the source grid (oblique here), the terminology
file's codes, the algorithm identification, references to the source series, fresh UIDs, the patient and
study copied from the source, and dciodvfy (Debian's dicom3tools) finds no error."""
import shutil
import subprocess
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib import terminology
from DareFuseSlicerLib.dicom import export, series
from DareFuseSlicerLib.errors import InputError
from dicom_helpers import assert_on_grid, files, geometry_of, rotation, small_image, write_series

MODEL = {"name": "darefuse-test", "version": "7", "sha256": "ab" * 32}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    source = small_image(size=(24, 20, 14), spacing=(1.2, 1.0, 2.5), direction=rotation(15.0, -8.0, 25.0))
    stack = series.load(write_series(source, folder / "t1"), "--t1 source")
    image = series.read(stack)
    z, y, x = np.indices(sitk.GetArrayFromImage(image).shape)
    labels = np.zeros(z.shape, np.uint8)
    labels[3:10, 4:15, 5:18] = 2
    labels[4:8, 6:12, 7:12] = 1
    labels[8:9, 10:13, 12:16] = 3
    label = sitk.GetImageFromArray(labels)
    label.CopyInformation(image)
    maps = {}
    for kind, values in (("uncertainty", (x + y + z) / float(x.max() + y.max() + z.max())),
                         ("gradcam", np.exp(-((z - 6) ** 2 + (y - 10) ** 2) / 30.0))):
        maps[kind] = sitk.GetImageFromArray(values.astype(np.float32))
        maps[kind].CopyInformation(image)
    result = SimpleNamespace(label=label, uncertainty=maps["uncertainty"], gradcam=maps["gradcam"],
                             gradcam_class="glioma")
    names = export.write_results(result, stack, MODEL, folder)
    return SimpleNamespace(folder=folder, stack=stack, image=image, labels=labels, maps=maps, names=names)


def test_the_segmentation_reads_back_onto_the_source_grid(written):
    assert written.names == [export.SEG_FILE, export.MAP_FILES["uncertainty"], export.MAP_FILES["gradcam"]]
    seg = hd.seg.segread(str(written.folder / export.SEG_FILE))
    volume = seg.get_volume(combine_segments=True)
    expected = geometry_of(written.image)
    # The SEG holds the frames with a segment only; placed on the source grid without resampling (highdicom
    # refuses when the grids differ by more than its tolerance), every voxel is the label written.
    matched = volume.match_geometry(expected, tol=1e-3)
    assert np.array_equal(matched.array, written.labels)
    assert_on_grid(volume, written.image)  # origin and direction within 1e-3 mm


def test_segments_codes_and_algorithm(written):
    seg = hd.seg.segread(str(written.folder / export.SEG_FILE))
    _, codes = terminology.load()
    assert [s.segment_label for s in seg.SegmentSequence] == ["NETC", "SNFH", "ET"]
    for item, name in zip(seg.SegmentSequence, ("NETC", "SNFH", "ET")):
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == codes[name].type.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == codes[name].category.value
        assert item.AnatomicRegionSequence[0].CodeValue == terminology.BRAIN.value
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "DareFuse darefuse-test" and algorithm.AlgorithmVersion == "7"
        assert "sha256=" + "ab" * 32 in algorithm.AlgorithmParameters


def test_every_object_references_the_source_series_and_lands_in_its_study(written):
    source = written.stack.headers
    source_uids = {h.SOPInstanceUID for h in source}
    seen = set()
    for name in written.names:
        dataset = pydicom.dcmread(str(written.folder / name))
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
                        "FrameOfReferenceUID"):
            assert dataset.get(keyword) == source[0].get(keyword), keyword
        assert dataset.SeriesInstanceUID != source[0].SeriesInstanceUID
        seen |= {dataset.SeriesInstanceUID, dataset.SOPInstanceUID}
        referenced = dataset.ReferencedSeriesSequence[0]
        assert referenced.SeriesInstanceUID == source[0].SeriesInstanceUID
        assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} <= source_uids
    assert len(seen) == 2 * len(written.names)  # fresh series and instance UIDs for every object
    assert not seen & source_uids


def test_parametric_maps_read_back_as_values(written):
    expected = geometry_of(written.image)
    for kind, image in written.maps.items():
        pmap = hd.imread(str(written.folder / export.MAP_FILES[kind]))
        assert pmap.ContentLabel == kind.upper() and pmap.file_meta.TransferSyntaxUID == export.MAP_TRANSFER_SYNTAX
        values = pmap.get_volume().match_geometry(expected, tol=1e-3).array  # real-world values (slope applied)
        assert np.abs(values - sitk.GetArrayFromImage(image)).max() <= 0.5 / export.MAP_SCALE + 1e-9


def test_an_empty_segmentation_is_still_a_valid_seg(written, tmp_path):
    empty = sitk.Image(written.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(written.image)
    path = export.write_segmentation(empty, written.stack, MODEL, tmp_path / "empty.dcm")
    assert not hd.seg.segread(str(path)).get_volume(combine_segments=True).array.any()


def test_a_result_off_the_source_grid_is_refused(written, tmp_path):
    shifted = sitk.Image(written.image.GetSize(), sitk.sitkUInt8)
    shifted.CopyInformation(written.image)
    shifted.SetOrigin([v + 0.5 for v in written.image.GetOrigin()])
    with pytest.raises(ValueError, match="not on the grid"):
        export.write_segmentation(shifted, written.stack, MODEL, tmp_path / "off.dcm")


def dciodvfy(path) -> str:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed; .ci/run installs it")
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr


def test_dciodvfy_finds_no_error(written):
    for name, iod in ((export.SEG_FILE, "Segmentation"), (export.MAP_FILES["uncertainty"], "ParametricMap"),
                      (export.MAP_FILES["gradcam"], "ParametricMap")):
        report = dciodvfy(written.folder / name)
        assert iod in report, report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, (name, errors)


def test_a_de_identified_source_without_patient_attributes_still_gets_a_valid_seg(tmp_path):
    folder = write_series(small_image(size=(8, 8, 4)), tmp_path / "t1")
    for path in files(folder):
        dataset = pydicom.dcmread(str(path))
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyID", "AccessionNumber"):
            delattr(dataset, keyword)
        dataset.save_as(str(path))
    stack = series.load(folder, "--t1 t1")
    export.check_source(stack)
    label = sitk.Image(stack.size, sitk.sitkUInt8)
    label.CopyInformation(series.read(stack))
    label[2, 3, 1] = 3
    path = export.write_segmentation(label, stack, MODEL, tmp_path / "seg.dcm")
    assert pydicom.dcmread(str(path)).PatientName == ""
    if shutil.which("dciodvfy"):
        assert "Error" not in dciodvfy(path)


def test_a_source_without_frame_of_reference_is_refused_before_a_run(tmp_path):
    folder = write_series(small_image(size=(8, 8, 4)), tmp_path / "t1")
    for path in files(folder):
        dataset = pydicom.dcmread(str(path))
        del dataset.FrameOfReferenceUID
        dataset.save_as(str(path))
    with pytest.raises(InputError, match=r"^--t1 t1: series .* has no FrameOfReferenceUID, which DICOM results"):
        export.check_source(series.load(folder, "--t1 t1"))
