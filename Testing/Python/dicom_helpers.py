"""Small DICOM series for the dicom tests (torch-free): written by the package's own synthetic-study writer, then
edited with pydicom where a test needs a broken folder."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, List, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk

from DareFuseSlicerLib.dicom import privacy, synthetic

#: The synthetic patient of every test series; no message or report may quote these.
CASE_ID, SEED = "DicomTest-000042", 42


def small_image(size: Sequence[int] = (20, 24, 18), spacing: Sequence[float] = (1.5, 1.25, 3.0),
                direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(-12.0, 30.5, -20.0),
                seed: int = 0) -> sitk.Image:
    """An int16 image with distinct values everywhere (so any slice mix-up shows) and the given geometry."""
    rng = np.random.default_rng(seed)
    array = rng.integers(1, 2000, size=tuple(size)[::-1]).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction])
    image.SetOrigin([float(v) for v in origin])
    return image


def rotation(x_deg: float, y_deg: float, z_deg: float) -> tuple:
    """A direction matrix (row-major) rotated about x, then y, then z."""
    a, b, c = np.radians([x_deg, y_deg, z_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


def study():
    return synthetic.study_header(CASE_ID, SEED)


def write_series(image: sitk.Image, folder: Path, contrast: str = "t1", number: int = 2,
                 transfer_syntax: str = "1.2.840.10008.1.2.1") -> Path:
    return synthetic.write_series(image, folder, study(), synthetic.PROTOCOLS[contrast], number,
                                  synthetic.uid(CASE_ID, SEED, "series", contrast, str(folder)), transfer_syntax)


def files(folder: Path) -> List[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def edit(path: Path, **attributes) -> None:
    dataset = pydicom.dcmread(str(path))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    dataset.save_as(str(path))


def patient_values() -> List[str]:
    """The synthetic patient's values of the privacy check list (name parts, ID, dates, ...)."""
    return privacy.patient_values(study())


def assert_no_patient_data(texts: Iterable[str]) -> None:
    values = patient_values()
    assert "PH000042" in values and any("PHANTOM" in v for v in values)  # the check list finds the patient
    for text in texts:
        for value in values:
            assert not re.search(re.escape(value), text, re.IGNORECASE), (value, text)


def geometry_of(image: sitk.Image):
    """The image's grid as highdicom's volume geometry (axes: slice, row, column)."""
    import highdicom as hd

    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    affine = np.eye(4)
    for axis in range(3):
        affine[:3, 2 - axis] = direction[:, axis] * spacing[axis]
    affine[:3, 3] = image.GetOrigin()
    return hd.VolumeGeometry(affine, image.GetSize()[::-1], coordinate_system="PATIENT")


def assert_on_grid(volume, image: sitk.Image, atol_mm: float = 1e-3) -> None:
    """A highdicom volume lies on the image's grid: its axes are the image's (up to sign) and its first voxel
    is one of the image's voxel centres, within atol_mm."""
    source = np.array(image.GetDirection()).reshape(3, 3)
    directions = np.array(volume.direction)  # unit vectors of the (slice, row, column) axes
    for axis in range(3):
        assert min(np.abs(directions[:, axis] - sign * source[:, 2 - axis]).max() for sign in (1, -1)) < atol_mm
    corner = volume.map_indices_to_reference(np.array([[0, 0, 0]]))[0]
    index = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in corner]))
    nearest = image.TransformIndexToPhysicalPoint([int(i) for i in np.round(index)])
    assert np.linalg.norm(np.array(nearest) - corner) < atol_mm, (nearest, corner)
