"""A data-engine case as a DICOM study: one MR series per contrast and a 3-plane localizer, in one study and one
frame of reference, with the tags a scanner writes (sequence, timing, geometry) and a synthetic patient.

The voxels are the case's int16 values, as the NIfTI files hold them, so that the DICOM and NIfTI paths of one
case can be compared voxel for voxel. UIDs are derived from the case id and seed: the same case gives the
same files. Written with pydicom: a study is a few hundred small files, written from one header per series.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..constants import CONTRASTS

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class Protocol:
    """How a scanner describes one contrast's series (a 3 T Siemens-like brain protocol)."""

    description: str
    protocol: str
    sequence_name: str
    scanning_sequence: Tuple[str, ...]
    sequence_variant: Tuple[str, ...]
    scan_options: Tuple[str, ...]
    acquisition: str  # MRAcquisitionType: 2D or 3D
    repetition_ms: float
    echo_ms: float
    inversion_ms: Optional[float]
    flip_degrees: float
    echo_train: int


PROTOCOLS = {
    "t1": Protocol("T1 MPRAGE", "t1_mprage", "*tfl3d1_16ns", ("GR", "IR"), ("SP", "MP"), ("IR",), "3D",
                   2300.0, 2.98, 900.0, 9.0, 1),
    "t1ce": Protocol("T1 MPRAGE post Gd", "t1_mprage_post_gd", "*tfl3d1_16ns", ("GR", "IR"), ("SP", "MP"), ("IR",),
                     "3D", 2300.0, 2.98, 900.0, 9.0, 1),
    "t2": Protocol("T2 TSE ax", "t2_tse_tra", "*tse2d1_16", ("SE",), ("SK", "SP", "OSP"), ("PFP",), "2D",
                   5000.0, 98.0, None, 150.0, 16),
    "flair": Protocol("FLAIR ax", "t2_flair_tra", "*tir2d1_16", ("SE", "IR"), ("SK", "SP", "MP"), ("IR",), "2D",
                      9000.0, 81.0, 2500.0, 150.0, 16),
}
LOCALIZER = Protocol("localizer", "localizer", "*fl2d1", ("GR",), ("SP",), ("",), "2D", 8.6, 4.0, None, 20.0, 1)


def uid(*parts) -> str:
    """A UID derived from the parts (the same parts give the same UID)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def study_header(case_id: str, seed: int) -> "Dataset":
    """Patient, study and equipment attributes shared by every series of the study (a synthetic patient)."""
    from pydicom.dataset import Dataset

    header = Dataset()
    header.SpecificCharacterSet = "ISO_IR 100"
    header.PatientName = f"PHANTOM^CASE{int(seed):06d}"
    header.PatientID = f"PH{int(seed):06d}"
    header.PatientBirthDate = "19700101"
    header.PatientSex = "O"
    header.PatientAge = "056Y"
    header.StudyInstanceUID = uid(case_id, seed, "study")
    header.StudyDate = header.SeriesDate = header.ContentDate = "20260101"
    header.StudyTime = header.SeriesTime = header.ContentTime = "090000"
    header.AccessionNumber = f"DF{int(seed):08d}"
    header.StudyID = "1"
    header.StudyDescription = "MR BRAIN WITH AND WITHOUT CONTRAST"
    header.ReferringPhysicianName = ""
    header.InstitutionName = "DareFuse data engine"
    header.Manufacturer = "DareFuse"
    header.ManufacturerModelName = "data engine (synthetic MR)"
    header.SoftwareVersions = __version__
    header.MagneticFieldStrength = 3
    header.Modality = "MR"
    header.BodyPartExamined = "HEAD"
    header.PatientPosition = "HFS"
    header.FrameOfReferenceUID = uid(case_id, seed, "frame of reference")
    header.PositionReferenceIndicator = ""
    return header


def _series_header(study, protocol: Protocol, series_uid: str, number: int, image_type: Sequence[str]):
    from copy import deepcopy

    header = deepcopy(study)
    header.SeriesInstanceUID = series_uid
    header.SeriesNumber = number
    header.SeriesDescription = protocol.description
    header.ProtocolName = protocol.protocol
    header.SequenceName = protocol.sequence_name
    header.ImageType = list(image_type)
    header.ScanningSequence = list(protocol.scanning_sequence)
    header.SequenceVariant = list(protocol.sequence_variant)
    header.ScanOptions = list(protocol.scan_options)
    header.MRAcquisitionType = protocol.acquisition
    header.RepetitionTime = protocol.repetition_ms
    header.EchoTime = protocol.echo_ms
    if protocol.inversion_ms is not None:
        header.InversionTime = protocol.inversion_ms
    header.FlipAngle = protocol.flip_degrees
    header.EchoTrainLength = protocol.echo_train
    header.SOPClassUID = MR_IMAGE_STORAGE
    header.SamplesPerPixel = 1
    header.PhotometricInterpretation = "MONOCHROME2"
    header.BitsAllocated = header.BitsStored = 16
    header.HighBit = 15
    header.PixelRepresentation = 1  # signed: the engine's int16 values, as in its NIfTI files
    return header


def _ds(value: float) -> str:
    """A decimal string (DS, at most 16 characters) as close to `value` as it allows."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _window(array: np.ndarray) -> Tuple[float, float]:
    sample = array[::4, ::4, ::4]
    values = sample[sample > 0] if np.any(sample > 0) else sample.ravel()
    low, high = np.percentile(values, [1.0, 99.5])
    return float((low + high) / 2), float(max(high - low, 1.0))


def _save_slice(header, pixels: np.ndarray, path: Path, position, instance: int, location: float,
                series_uid: str, transfer_syntax: str) -> None:
    from pydicom.dataset import FileMetaDataset

    sop_uid = uid(series_uid, "instance", instance)
    header.SOPInstanceUID = sop_uid
    header.InstanceNumber = instance
    header.ImagePositionPatient = [_ds(v) for v in position]
    header.SliceLocation = _ds(location)
    header.Rows, header.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    header.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    header.file_meta = meta
    if transfer_syntax != meta.TransferSyntaxUID:
        header.compress(transfer_syntax)  # RLE or JPEG-LS (pydicom's encoders); decompressed again below
    header.save_as(str(path), enforce_file_format=True)
    if transfer_syntax != "1.2.840.10008.1.2.1":
        header.decompress()


def write_series(image: sitk.Image, folder, study, protocol: Protocol, number: int, series_uid: str,
                 transfer_syntax: str = "1.2.840.10008.1.2.1") -> Path:
    """One series of axial/sagittal/oblique slices: the image's slices along its third index axis, one file each
    (0001.dcm ...), with ImagePositionPatient and ImageOrientationPatient from its geometry (LPS, as DICOM)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkInt16))  # (z, y, x): slice, row, column
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    spacing, origin = np.array(image.GetSpacing(), float), np.array(image.GetOrigin(), float)
    header = _series_header(study, protocol, series_uid, number, ("ORIGINAL", "PRIMARY", "M", "ND"))
    header.ImageOrientationPatient = [_ds(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    header.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (y), column spacing (x)
    header.SliceThickness = header.SpacingBetweenSlices = _ds(spacing[2])
    header.WindowCenter, header.WindowWidth = (_ds(v) for v in _window(array))
    normal = direction[:, 2]
    for k in range(array.shape[0]):
        position = origin + normal * spacing[2] * k
        _save_slice(header, array[k], folder / f"{k + 1:04d}.dcm", position, k + 1, float(position @ normal),
                    series_uid, transfer_syntax)
    return folder


def write_localizer(image: sitk.Image, folder, study, number: int, series_uid: str) -> Path:
    """A 3-plane localizer: the middle axial, coronal and sagittal planes of the image's grid, one file each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkInt16))
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    spacing, origin = np.array(image.GetSpacing(), float), np.array(image.GetOrigin(), float)
    header = _series_header(study, LOCALIZER, series_uid, number, ("ORIGINAL", "PRIMARY", "LOCALIZER"))
    header.SliceThickness = _ds(spacing.min())
    header.WindowCenter, header.WindowWidth = (_ds(v) for v in _window(array))
    middle = [s // 2 for s in image.GetSize()]  # x, y, z
    planes = (  # (pixels, row axis, column axis, fixed axis): the plane's columns run along `row axis`
        (array[middle[2]], 0, 1, 2), (array[:, middle[1], :], 0, 2, 1), (array[:, :, middle[0]], 1, 2, 0))
    for instance, (pixels, along_row, along_column, fixed) in enumerate(planes, start=1):
        header.ImageOrientationPatient = [_ds(v) for v in np.concatenate(
            [direction[:, along_row], direction[:, along_column]])]
        header.PixelSpacing = [_ds(spacing[along_column]), _ds(spacing[along_row])]
        position = origin + direction[:, fixed] * spacing[fixed] * middle[fixed]
        normal = np.cross(direction[:, along_row], direction[:, along_column])
        _save_slice(header, pixels, folder / f"{instance:04d}.dcm", position, instance, float(position @ normal),
                    series_uid, "1.2.840.10008.1.2.1")
    return folder


def write_study(images: Dict[str, sitk.Image], folder, case_id: str, seed: int = 0, localizer: bool = True,
                transfer_syntax: str = "1.2.840.10008.1.2.1") -> Dict[str, Path]:
    """The given contrasts as one study under `folder` (one subfolder per series: 01_localizer, 02_T1_MPRAGE,
    ...). Returns contrast -> series folder (and "localizer" -> its folder when written)."""
    folder = Path(folder)
    study = study_header(case_id, seed)
    written: Dict[str, Path] = {}
    number = 1
    if localizer:
        reference = next(images[c] for c in CONTRASTS if images.get(c) is not None)
        written["localizer"] = write_localizer(reference, folder / "01_localizer", study, number,
                                               uid(case_id, seed, "series", "localizer"))
    for contrast in CONTRASTS:
        if images.get(contrast) is None:
            continue
        number += 1
        protocol = PROTOCOLS[contrast]
        name = f"{number:02d}_{protocol.description.replace(' ', '_')}"
        written[contrast] = write_series(images[contrast], folder / name, study, protocol, number,
                                         uid(case_id, seed, "series", contrast), transfer_syntax)
    return written


def write_case(case, folder) -> Dict[str, Path]:
    """A data-engine case as a DICOM study in folder/<case_id>/, its label beside it as <case_id>-seg.nii.gz
    (ground truth for evaluation stays NIfTI). Returns contrast -> series folder, and "seg" -> the label."""
    folder = Path(folder)
    written = write_study(case.images, folder / case.case_id, case.case_id, int(case.meta.get("seed", 0)))
    written["seg"] = folder / f"{case.case_id}-seg.nii.gz"
    sitk.WriteImage(sitk.Cast(case.label, sitk.sitkUInt8), str(written["seg"]), True)
    return written


#: Seed of the bundled sample case's synthetic patient and UIDs.
SAMPLE_SEED = 1
#: Where `darefuse demo` puts the sample's DICOM study among its results (the SEG references it).
SAMPLE_STUDY_DIR = "sample-dicom"


def write_sample_study(folder) -> Dict[str, Path]:
    """The bundled sample case (SHA256-checked NIfTI) as a DICOM study under `folder` (the sample itself stays
    NIfTI: four series of 155 slices would add megabytes to the extension)."""
    from ..constants import BRATS_SUFFIX
    from ..phantoms.io import SAMPLE_PREFIX, sample_case_paths

    paths = sample_case_paths()
    images = {c: sitk.ReadImage(str(paths[BRATS_SUFFIX[c]])) for c in CONTRASTS if BRATS_SUFFIX[c] in paths}
    return write_study(images, folder, SAMPLE_PREFIX, SAMPLE_SEED)
