"""Reading DICOM series: slices sorted by position (never by file name or InstanceNumber), the geometry of axial,
sagittal and oblique series, and one clear line naming the folder for every problem a folder can have; no
message quotes the patient."""
import re
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate

from DareFuseSlicerLib.dicom import privacy, series, synthetic
from DareFuseSlicerLib.errors import InputError
from dicom_helpers import (assert_no_patient_data, edit, files, rotation, small_image, study, write_series)

def read(folder, wanted=()):
    stack = series.load(folder, f"--t1 {folder}", wanted)
    assert_no_patient_data(stack.warnings)  # every warning checked against the patient attributes' list
    return series.read(stack), stack


def refused(folder, *fragments, wanted=()):
    with pytest.raises(InputError) as caught:
        read(folder, wanted)
    message = str(caught.value)
    assert_no_patient_data([message])
    assert "\n" not in message and message.startswith(f"--t1 {folder}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def assert_same(image, expected, atol=1e-4):
    assert image.GetSize() == expected.GetSize()
    assert np.allclose(image.GetOrigin(), expected.GetOrigin(), atol=atol)
    assert np.allclose(image.GetSpacing(), expected.GetSpacing(), atol=atol)
    assert np.allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


def test_slices_are_sorted_by_position_not_by_file_name_or_instance_number(tmp_path):
    image = small_image()
    folder = write_series(image, tmp_path / "t1")
    paths = files(folder)
    rng = np.random.default_rng(1)
    names, numbers = rng.permutation(len(paths)), rng.permutation(len(paths)) + 1
    for path, name, number in zip(paths, names, numbers):
        edit(path, InstanceNumber=int(number))
        path.rename(folder / f"IMG{name:05d}")  # no extension, as many exports
    read_back, stack = read(folder)
    assert_same(read_back, image)
    names_in_order = [path.split("/")[-1] for path in stack.files]
    assert names_in_order != sorted(names_in_order)  # neither by file name
    assert [int(h.InstanceNumber) for h in stack.headers] != sorted(numbers.tolist())  # nor by InstanceNumber


@pytest.mark.parametrize("name, direction", [
    ("axial top-down", (1, 0, 0, 0, -1, 0, 0, 0, -1)),
    ("sagittal", (0, 0, -1, 1, 0, 0, 0, -1, 0)),
    ("coronal", (1, 0, 0, 0, 0, 1, 0, -1, 0)),
    ("oblique", rotation(20.0, -12.0, 31.0)),
])
def test_axial_sagittal_coronal_and_oblique_geometry(tmp_path, name, direction):
    image = small_image(direction=direction, spacing=(0.9, 1.1, 2.5))
    read_back, _ = read(write_series(image, tmp_path / "s"))
    assert_same(read_back, image)
    # The same voxel is at the same place in space (the check that matters for the SEG).
    index = (3, 17, 11)
    assert np.allclose(read_back.TransformIndexToPhysicalPoint(index), image.TransformIndexToPhysicalPoint(index),
                       atol=1e-3)


def test_a_sagittal_stack_of_an_engine_like_head_keeps_its_voxels_in_place(tmp_path):
    axial = small_image(size=(24, 20, 16))
    sagittal = sitk.PermuteAxes(axial, [1, 2, 0])  # slices along x: same voxels in space, another stacking
    read_back, _ = read(write_series(sagittal, tmp_path / "sag"))
    assert_same(read_back, sagittal)
    resampled = sitk.Resample(read_back, axial, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(axial))


def test_readable_compression_is_read(tmp_path):
    image = small_image(size=(12, 10, 6))
    read_back, _ = read(write_series(image, tmp_path / "rle", transfer_syntax="1.2.840.10008.1.2.5"))
    assert_same(read_back, image)


def test_missing_slice(tmp_path):
    folder = write_series(small_image(), tmp_path / "t1")
    files(folder)[7].unlink()
    refused(folder, "about 1 missing slice", "gap of 6.00 mm after slice 7 of 17", "3.00 mm apart",
            "('T1 MPRAGE')")


def test_non_uniform_spacing(tmp_path):
    folder = write_series(small_image(), tmp_path / "t1")
    for path in files(folder)[9:]:
        position = [float(v) for v in pydicom.dcmread(str(path)).ImagePositionPatient]
        edit(path, ImagePositionPatient=[position[0], position[1], position[2] + 0.8])
    refused(folder, "non-uniform slice spacing", "3.000 to 3.800 mm")


def test_gantry_tilt(tmp_path):
    folder = write_series(small_image(), tmp_path / "t1")
    shear = np.tan(np.radians(15.0))
    for path in files(folder):
        position = [float(v) for v in pydicom.dcmread(str(path)).ImagePositionPatient]
        edit(path, ImagePositionPatient=[position[0], position[1] + shear * (position[2] + 20.0), position[2]])
    refused(folder, "is tilted", "15.0 degrees", "gantry tilt")


def test_a_damaged_position(tmp_path):
    folder = write_series(small_image(), tmp_path / "t1")
    edit(files(folder)[3], ImagePositionPatient=[1.0, 2.0])
    refused(folder, "has a damaged ImagePositionPatient (3 numbers expected)")


def test_several_images_at_one_position(tmp_path):
    folder = write_series(small_image(), tmp_path / "t1")
    second_echo = pydicom.dcmread(str(files(folder)[4]))
    second_echo.SOPInstanceUID = second_echo.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    second_echo.save_as(str(folder / "echo2.dcm"))
    refused(folder, "1 image(s) at a position another image already takes", "several echoes, time points")


def _localizer_image(folder, series_uid):
    localizer = synthetic.write_localizer(small_image(), folder.parent / "loc", study(), 1, "1.2.3.4")
    dataset = pydicom.dcmread(str(files(localizer)[1]))
    dataset.SeriesInstanceUID = series_uid
    shutil.rmtree(localizer)
    return dataset


def test_a_localizer_mixed_in_is_left_out_with_a_warning(tmp_path):
    image = small_image()
    folder = write_series(image, tmp_path / "t1")
    uid = pydicom.dcmread(str(files(folder)[0])).SeriesInstanceUID
    _localizer_image(folder, uid).save_as(str(folder / "zz_localizer.dcm"))
    read_back, stack = read(folder)
    assert_same(read_back, image)
    assert len(stack.warnings) == 1 and "1 localizer image(s) mixed in among its slices were left out" in \
        stack.warnings[0] and str(folder) in stack.warnings[0]


def test_a_multi_frame_object_mixed_in_is_left_out_with_a_warning(tmp_path):
    image = small_image()
    folder = write_series(image, tmp_path / "t1")
    enhanced = pydicom.dcmread(str(files(folder)[0]))
    enhanced.SOPInstanceUID = enhanced.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    enhanced.NumberOfFrames = 2
    enhanced.PixelData = enhanced.PixelData * 2
    enhanced.save_as(str(folder / "enhanced.dcm"))
    read_back, stack = read(folder)
    assert_same(read_back, image)
    assert "1 multi-frame image(s) mixed in" in stack.warnings[0]
    for path in files(folder):  # only the multi-frame object left
        if path.name != "enhanced.dcm":
            path.unlink()
    refused(folder, "multi-frame (enhanced) DICOM object", "single-frame slices")


def test_a_folder_holding_only_a_localizer(tmp_path):
    folder = synthetic.write_localizer(small_image(), tmp_path / "loc", study(), 1, "1.2.3.4")
    refused(folder, "the folder holds only a localizer", "1.2.3.4 ('localizer')")


def test_a_localizer_series_beside_the_volume_is_left_aside_with_a_warning(tmp_path):
    image = small_image()
    write_series(image, tmp_path / "study" / "t1")
    synthetic.write_localizer(image, tmp_path / "study" / "loc", study(), 1, "1.2.3.4")
    read_back, stack = read(tmp_path / "study")
    assert_same(read_back, image)
    assert "the folder also holds series 1.2.3.4 ('localizer'), a localizer series; it was left aside" \
        in stack.warnings[0]


def test_a_compressed_transfer_syntax_that_cannot_be_read(tmp_path):
    folder = write_series(small_image(size=(8, 8, 4)), tmp_path / "t1")
    for path in files(folder):
        dataset = pydicom.dcmread(str(path))
        dataset.file_meta.TransferSyntaxUID = pydicom.uid.HTJ2KLossless
        dataset.PixelData = encapsulate([dataset.PixelData])
        dataset["PixelData"].VR = "OB"
        dataset.save_as(str(path))
    refused(folder, "transfer syntax High-Throughput JPEG 2000", "(1.2.840.10008.1.2.4.201)",
            "cannot be read here", "decompress it first")


def test_damaged_pixel_data_is_one_line(tmp_path):
    folder = write_series(small_image(size=(8, 8, 4)), tmp_path / "t1", transfer_syntax="1.2.840.10008.1.2.5")
    path = files(folder)[2]
    dataset = pydicom.dcmread(str(path))
    dataset.PixelData = encapsulate([b"\x00" * 64])
    dataset.save_as(str(path))
    refused(folder, "the pixel data could not be read")


def test_mixed_series_in_one_folder(tmp_path):
    t1 = write_series(small_image(), tmp_path / "study" / "a", "t1")
    write_series(small_image(seed=3), tmp_path / "study" / "b", "flair", number=5)
    message = refused(tmp_path / "study", "holds 2 series", "('T1 MPRAGE', 18 images)", "('FLAIR ax', 18 images)",
                      "Pick one by its UID (series)", "with dicom")
    flair_uid = message.split("; ")[1].split(" (")[0]
    read_back, stack = read(tmp_path / "study", wanted=[flair_uid, "1.2.3"])
    assert stack.series.uid == flair_uid and stack.series.description == "FLAIR ax"
    assert_same(read_back, small_image(seed=3))
    assert t1.exists()


def test_folders_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    refused(tmp_path, "holds no DICOM image files")
    refused(tmp_path / "absent", "does not exist")


def test_odd_patient_values_reach_no_warning_or_log(tmp_path, recwarn, caplog):
    folder = write_series(small_image(size=(8, 8, 4)), tmp_path / "t1")
    for path in files(folder):
        dataset = pydicom.dcmread(str(path))
        dataset["PatientBirthDate"].value = "01.02.1945x"  # not a valid DA: a validating reader would quote it
        dataset.save_as(str(path))
    recwarn.clear()
    caplog.clear()
    stack = series.load(folder, "--t1 t1")
    series.read(stack)
    texts = [str(w.message) for w in recwarn] + [r.getMessage() for r in caplog.records] + [str(stack.series.summary())]
    # UIDs are random digits and can hold "1945" by chance: look for the value everywhere but in them.
    assert not any("1945" in re.sub(r"\d+(\.\d+){3,}", "<uid>", text) for text in texts), texts
    assert_no_patient_data(texts)


def test_descriptions_quoting_the_patient_are_redacted(tmp_path):
    folder = write_series(small_image(size=(8, 8, 4)), tmp_path / "t1")
    for path in files(folder):
        edit(path, SeriesDescription="T1 for phantom^case000042 PH000042")
    found = series.discover(folder, "--t1 x")[0]
    assert found.description == f"T1 for {privacy.REDACTED} {privacy.REDACTED}"
    assert_no_patient_data([found.listing(), str(found.summary())])

