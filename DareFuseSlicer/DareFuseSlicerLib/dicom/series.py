"""DICOM series in a folder: find them, check them, sort their slices in space, read them as SimpleITK images.

Headers are read with pydicom (no pixel data), voxels with SimpleITK's GDCM reader (ITK's codecs: JPEG,
JPEG-LS, JPEG 2000, RLE). The slices are ordered by their position along the slice normal, computed from
ImagePositionPatient and ImageOrientationPatient, never by file name or InstanceNumber; origin, spacing and
direction are computed here from the same headers and set on the image (LPS, as DICOM and ITK have it).

What a folder can hold that this refuses, each with one line naming the folder (InputError):
missing slices or non-uniform spacing, a tilted stack (gantry tilt), images in several orientations, several
images at one position, a compressed transfer syntax that cannot be read, several series when one is wanted,
a series that is only a localizer or a multi-frame object. A localizer or multi-frame image mixed into a
series of slices is left out with a warning.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..constants import contrast_of_name
from ..errors import InputError, OptionError
from . import privacy

#: Transfer syntaxes ITK's GDCM reader decodes (uncompressed, deflate, JPEG, JPEG-LS, JPEG 2000, RLE).
READABLE_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
#: Objects that carry Rows/Columns but are results, not images to segment (a SEG or map written beside them).
RESULT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.30"}
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
#: Slice steps may differ from their median by this much (relative) plus DS rounding (mm) and count as even.
SPACING_TOLERANCE = (0.01, 0.02)
#: A step this many times the median is a gap: slices are missing.
GAP_FACTOR = 1.5
#: Largest in-plane drift of the stack (mm) before it counts as tilted; DS strings round to ~1e-5 mm.
TILT_TOLERANCE_MM = 0.05
ORIENTATION_TOLERANCE = 1e-4


@dataclass
class Series:
    """The image files of one SeriesInstanceUID in a folder, with their headers (no pixel data)."""

    uid: str
    folder: Path  # the folder the user gave (messages name it)
    files: List[Path] = field(default_factory=list)
    headers: List = field(default_factory=list)  # pydicom Datasets, aligned with files

    def _text(self, keyword: str) -> str:
        header = self.headers[0]
        return privacy.redact(str(header.get(keyword, "") or "").strip(), privacy.patient_values(header))

    @property
    def description(self) -> str:
        return self._text("SeriesDescription")

    @property
    def protocol(self) -> str:
        return self._text("ProtocolName")

    @property
    def number(self) -> int:
        value = self.headers[0].get("SeriesNumber")
        return int(value) if value not in (None, "") else 0

    @property
    def contrast(self) -> Optional[str]:
        """The contrast its description names, else the one its protocol name names (constants.contrast_of_name,
        the module's one name rule), else None."""
        for text in (self.description, self.protocol):
            contrast = contrast_of_name(text)[0] if text else None
            if contrast is not None:
                return contrast
        return None

    @property
    def kind(self) -> str:
        """"volume" when it has single-frame slices placed in space, else "localizer", "multi-frame" or
        "no geometry" (what most of its images are)."""
        kinds = [image_kind(h) for h in self.headers]
        if "slice" in kinds:
            return "volume"
        return max(set(kinds), key=kinds.count)

    def name(self) -> str:
        return f"series {self.uid} ('{self.description}')" if self.description else f"series {self.uid}"

    def listing(self) -> str:
        return f"{self.uid} ('{self.description}', {len(self.files)} images)"

    def summary(self) -> dict:
        """What report.json records: identifiers and descriptions of the series, never patient attributes."""
        header = self.headers[0]
        return {
            "folder": str(self.folder), "series_instance_uid": self.uid, "series_number": self.number,
            "series_description": self.description, "protocol_name": self.protocol,
            "modality": str(header.get("Modality", "")),
            "study_instance_uid": str(header.get("StudyInstanceUID", "")),
            "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "")),
            "images": len(self.files),
        }


def image_kind(header) -> str:
    """"localizer", "multi-frame", "slice" (single frame with position and orientation) or "no geometry"."""
    if "LOCALIZER" in [str(v).upper() for v in (header.get("ImageType") or [])]:
        return "localizer"
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame"
    if header.get("ImagePositionPatient") and header.get("ImageOrientationPatient") and header.get("PixelSpacing"):
        return "slice"
    return "no geometry"


# -- finding series ------------------------------------------------------------------------------------------
def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None  # not DICOM, or damaged: a damaged slice then shows as a missing one


def _is_image(header) -> bool:
    sop_class = str(header.get("SOPClassUID", ""))
    return ("Rows" in header and "Columns" in header and sop_class not in RESULT_SOP_CLASSES
            and sop_class != MEDIA_DIRECTORY)


def _files(folder: Path) -> Iterator[Path]:
    for root, directories, names in os.walk(folder):
        directories.sort()
        for name in sorted(names):
            if not name.startswith("."):
                yield Path(root) / name


def discover(folder, label: str) -> List[Series]:
    """Every series of DICOM images under `folder` (subfolders too), by SeriesNumber then UID.
    `label` names the folder in messages (e.g. "--t1 /data/t1")."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{label}: {folder} does not exist.")
    if not folder.is_dir():
        raise InputError(f"{label}: {folder} is not a folder.")
    groups: Dict[str, Series] = {}
    for path in _files(folder):
        header = _read_header(path)
        if header is None or not _is_image(header):
            continue
        uid = str(header.get("SeriesInstanceUID", "") or "") or "(no SeriesInstanceUID)"
        series = groups.setdefault(uid, Series(uid, folder))
        series.files.append(path)
        series.headers.append(header)
    if not groups:
        raise InputError(f"{label}: {folder} is a folder that holds no DICOM image files; give an image file "
                         "(NIfTI, NRRD) or a folder of DICOM slices.")
    return sorted(groups.values(), key=lambda s: (s.number, s.uid))


def refuse_non_volume(series: Series, label: str) -> None:
    """The error for a series without slices to stack: a localizer, a multi-frame object, or unplaced images."""
    kind = series.kind
    if kind == "localizer":
        raise InputError(f"{label}: the folder holds only a localizer ({series.name()}), not a volume.")
    if kind == "multi-frame":
        raise InputError(f"{label}: the folder holds a multi-frame (enhanced) DICOM object ({series.name()}), "
                         "which is not read; export the series as single-frame slices (classic MR images).")
    raise InputError(f"{label}: the folder holds images without position and orientation ({series.name()}); "
                     "they cannot be placed in space.")


def pick(series: Sequence[Series], label: str, wanted: Sequence[str] = (),
         contrast: Optional[str] = None) -> Tuple[Series, List[str]]:
    """The one series of a folder to use: the one whose UID is in `wanted` (where several are, the one whose
    description names `contrast`), else the only volume series.
    Returns it and warnings about the other series left aside (localizers, multi-frame objects)."""
    chosen = [s for s in series if s.uid in set(wanted)]
    if len(chosen) > 1 and contrast is not None:
        chosen = [s for s in chosen if s.contrast == contrast] or chosen
    if len(chosen) > 1:
        raise OptionError(f"{label}: the folder holds several of the series given with {{series}} "
                          f"({', '.join(s.uid for s in chosen)}); give each contrast its own series.", "series")
    if chosen:
        return chosen[0], []
    volumes = [s for s in series if s.kind == "volume"]
    if len(volumes) > 1:
        raise OptionError(
            f"{label}: the folder holds {len(volumes)} series: {'; '.join(s.listing() for s in volumes)}. Pick one "
            "by its UID ({series}), or give the study folder with {dicom} to assign its series by their descriptions.",
            "series", "dicom")
    if not volumes:
        refuse_non_volume(series[0], label)
    others = [s for s in series if s is not volumes[0]]
    warnings = [f"{label}: the folder also holds {s.name()}, a {s.kind} series; it was left aside." for s in others]
    return volumes[0], warnings


# -- checking and sorting a series ---------------------------------------------------------------------------
@dataclass
class Stack:
    """A checked series: its slices sorted along the normal and the geometry they make (LPS, as ITK)."""

    series: Series
    label: str
    files: List[str]
    headers: List
    size: Tuple[int, int, int]  # (columns, rows, slices), as SimpleITK
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]  # row-major 3x3: columns are the row direction, column direction, normal
    float_pixels: bool  # rescale slopes that are not 1, or that differ between slices
    warnings: List[str] = field(default_factory=list)

    @property
    def pixel_type(self) -> str:
        header = self.headers[0]
        if self.float_pixels:
            return "32-bit float"
        signed = int(header.get("PixelRepresentation", 0) or 0) == 1
        return f"{int(header.get('BitsAllocated', 16) or 16)}-bit {'signed' if signed else 'unsigned'} integer"


def _where(series: Series, label: str) -> str:
    """The label (which names the folder given) and the series, with its subfolder when it lies deeper."""
    location = series.files[0].parent
    return f"{label}: {series.name()}" + (f" in {location}" if location != series.folder else "")


def _leave_out_mixed_in(series: Series, label: str) -> Tuple[List[Path], List, List[str]]:
    """The series' slices; localizer and multi-frame images among them are left out with a warning."""
    files, headers, left_out = [], [], {}
    for path, header in zip(series.files, series.headers):
        kind = image_kind(header)
        if kind == "slice":
            files.append(path)
            headers.append(header)
        else:
            left_out[kind] = left_out.get(kind, 0) + 1
    if not files:
        refuse_non_volume(series, label)
    warnings = [f"{_where(series, label)}: {count} {kind} image(s) mixed in among its slices were left out."
                for kind, count in sorted(left_out.items())]
    return files, headers, warnings


def _check_syntax(series: Series, headers: List, label: str) -> None:
    for header in headers:
        syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
        if syntax not in READABLE_SYNTAXES:
            import pydicom.uid

            name = pydicom.uid.UID(syntax).name
            raise InputError(f"{_where(series, label)} is stored with the transfer syntax {name} ({syntax}), "
                             "which cannot be read here; decompress it first (e.g. gdcmconv --raw or dcmdjpeg).")


def _vector(header, keyword: str, length: int, where: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in header.get(keyword)], float)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (length,) or not np.all(np.isfinite(values)):
        raise InputError(f"{where} has a damaged {keyword} ({length} numbers expected); the header is damaged.")
    return values


def _plane(headers: List, where: str) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
    """Row direction, column direction (unit vectors), pixel spacing (row, column) and matrix, the same for all."""
    orientation = _vector(headers[0], "ImageOrientationPatient", 6, where)
    pixel_spacing = _vector(headers[0], "PixelSpacing", 2, where)
    matrix = (int(headers[0].Rows), int(headers[0].Columns))
    for header in headers[1:]:
        if not np.allclose(_vector(header, "ImageOrientationPatient", 6, where), orientation,
                           atol=ORIENTATION_TOLERANCE):
            raise InputError(f"{where} holds images in several orientations (a localizer or several stacks in one "
                             "series); export one stack per series.")
        if (int(header.Rows), int(header.Columns)) != matrix or not np.allclose(
                _vector(header, "PixelSpacing", 2, where), pixel_spacing, atol=1e-4):
            raise InputError(f"{where} mixes images of different sizes or pixel spacings; export one stack per "
                             "series.")
    row, column = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise InputError(f"{where} has an ImageOrientationPatient that is not two orthogonal unit vectors; the "
                         "header is damaged.")
    return np.stack([row / np.linalg.norm(row), column / np.linalg.norm(column)]), pixel_spacing, matrix


def _check_steps(steps: np.ndarray, where: str) -> None:
    """Distances between neighbouring slices: no two at one place, no gap (missing slices), even spacing."""
    median = float(np.median(steps))
    if np.min(steps) < 1e-3 or median < 1e-3:
        raise InputError(f"{where} has {int(np.sum(steps < 1e-3))} image(s) at a position another image already "
                         "takes (several echoes, time points or stacks in one series); export one volume per series.")
    if np.max(steps) > GAP_FACTOR * median:
        gaps = np.flatnonzero(steps > GAP_FACTOR * median)
        missing = int(sum(round(steps[i] / median) - 1 for i in gaps))
        raise InputError(f"{where} has about {max(missing, 1)} missing slice(s): a gap of {steps[gaps[0]]:.2f} mm "
                         f"after slice {gaps[0] + 1} of {len(steps) + 1}, where the others are {median:.2f} mm apart.")
    relative, absolute = SPACING_TOLERANCE
    if np.max(np.abs(steps - median)) > relative * median + absolute:
        raise InputError(f"{where} has non-uniform slice spacing ({np.min(steps):.3f} to {np.max(steps):.3f} mm); "
                         "resample it to even slices first.")


def _check_tilt(positions: np.ndarray, normal: np.ndarray, where: str) -> None:
    """The slices must be stacked along their normal; a stack sheared sideways is a gantry tilt."""
    offsets = positions - positions[0]
    drift = offsets - np.outer(offsets @ normal, normal)
    if np.max(np.linalg.norm(drift, axis=1)) > TILT_TOLERANCE_MM:
        angle = float(np.degrees(np.arctan2(np.linalg.norm(drift[-1]), offsets[-1] @ normal)))
        raise InputError(f"{where} is tilted: its slices are stacked {angle:.1f} degrees off the slice normal "
                         "(gantry tilt), so they do not form a regular volume; resample it first (e.g. dcm2niix "
                         "corrects gantry tilt).")


def _order_and_spacing(headers: List, normal: np.ndarray, where: str) -> Tuple[np.ndarray, float]:
    """Slice order along the normal (never file names or InstanceNumber) and the slice spacing, checked."""
    positions = np.array([_vector(h, "ImagePositionPatient", 3, where) for h in headers])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    if len(headers) < 2:
        return order, float(headers[0].get("SpacingBetweenSlices") or headers[0].get("SliceThickness") or 1.0)
    _check_steps(np.diff(along[order]), where)
    _check_tilt(positions[order], normal, where)
    return order, float((along[order][-1] - along[order][0]) / (len(headers) - 1))


def _needs_float(headers: List) -> bool:
    pairs = {(float(h.get("RescaleSlope", 1) or 1), float(h.get("RescaleIntercept", 0) or 0)) for h in headers}
    return len(pairs) > 1 or any(slope != int(slope) or intercept != int(intercept) for slope, intercept in pairs)


def check(series: Series, label: str) -> Stack:
    """The series' slices checked and sorted along the normal, with the geometry they make."""
    files, headers, warnings = _leave_out_mixed_in(series, label)
    _check_syntax(series, headers, label)
    where = _where(series, label)
    (row, column), pixel_spacing, (rows, columns) = _plane(headers, where)
    normal = np.cross(row, column)
    order, slice_spacing = _order_and_spacing(headers, normal, where)
    headers = [headers[i] for i in order]
    direction = np.stack([row, column, normal], axis=1)  # columns: index axes x, y, z in LPS
    return Stack(
        series=series, label=label, files=[str(files[i]) for i in order], headers=headers,
        size=(columns, rows, len(headers)),
        spacing=(float(pixel_spacing[1]), float(pixel_spacing[0]), slice_spacing),
        origin=tuple(float(v) for v in _vector(headers[0], "ImagePositionPatient", 3, where)),
        direction=tuple(float(v) for v in direction.ravel()), float_pixels=_needs_float(headers),
        warnings=warnings)


# -- reading -------------------------------------------------------------------------------------------------
@contextmanager
def _itk_warnings_off() -> Iterator[None]:
    """ITK prints its own warnings (e.g. on slice spacing) on stderr; the checks above report them once."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read(stack: Stack) -> sitk.Image:
    """The stack's voxels as a SimpleITK image with the geometry computed from the headers."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(stack.files)
    if stack.float_pixels:
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        with _itk_warnings_off():
            image = reader.Execute()
    except RuntimeError:
        raise InputError(f"{_where(stack.series, stack.label)}: the pixel data could not be read (damaged or "
                         "unsupported encoding).") from None
    if tuple(image.GetSize()) != stack.size:
        raise InputError(f"{_where(stack.series, stack.label)}: the pixel data ({'x'.join(map(str, image.GetSize()))}) "
                         f"does not match the headers ({'x'.join(map(str, stack.size))}).")
    image.SetOrigin(stack.origin)
    image.SetSpacing(stack.spacing)
    image.SetDirection(stack.direction)
    return image


def load(folder, label: str, wanted: Sequence[str] = (), contrast: Optional[str] = None) -> Stack:
    """The checked stack of the one series to use in `folder` (see pick); its warnings say what was left aside."""
    series, warnings = pick(discover(folder, label), label, wanted, contrast)
    stack = check(series, label)
    stack.warnings = warnings + stack.warnings
    return stack
