"""Checks on every input before any work is done, so that a bad input gets one clear sentence, not a traceback.

What each bad input gets (the README's reliability table is built from this list):

- not a 3-D scalar volume (2-D, 4-D with several volumes, a single slice, colour/vector voxels): InputError.
- a 4-D volume holding one single 3-D volume: recovered (the 3-D volume is used) with a warning.
- NaN or infinite voxels: recovered. They are set to the image's lowest finite value (the background of an MR
  image, so they are treated as outside the brain) and the count is reported as a warning. An image with no
  finite voxel at all is an InputError. (ITK's NIfTI reader, and so Slicer's, already turns NaN into 0 when
  it reads a .nii file; NRRD and MetaImage files and images built in memory keep NaN and come here.)
- a constant or empty image: InputError.
- a label map given as an image (a handful of distinct integer values): InputError.
- direction cosines so small (below 1e-12) that they are 0 to any precision that matters: set to 0 (ITK's
  inverse of a subnormal one is NaN; a normal 2.6e-300 left the analysis grid empty).
- any integer or float pixel type (8 to 64 bits, signed or not): accepted, analysed as float32.
- a volume too large for this computer's memory: InputError with the estimate and the memory available, checked
  from the file header before any voxel is read.
- contrasts on different grids or orientations: recovered by resampling onto the reference grid (in
  preprocess); a contrast that does not overlap the reference in physical space is an InputError.
- a missing, unreadable, truncated or non-image file: InputError naming the file.
- an image that does not look like a brain: the result is computed and flagged as low-confidence
  (`brain_plausibility`), with the reasons among the report's warnings.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..constants import CONTRASTS, OUTPUTS, contrast_name, reference_contrast
from ..errors import InputError

#: Fewer voxels than this along an axis is a slice or a thin slab, not a volume the network can use.
MIN_VOXELS_PER_AXIS = 3
#: An image with at most this many distinct integer values is a label map (BraTS labels have 4, masks 2).
LABEL_MAP_MAX_VALUES = 12
#: Fixed cost of a run besides the images: Python, torch, MONAI, the network and its activations.
BASE_MEMORY_BYTES = 1.5e9
#: Bytes per reference-grid voxel per given contrast (the input, its float32 copy on the reference grid and
#: its tumour-free reconstruction) and for the outputs shared by all contrasts (four class probabilities,
#: label, uncertainty, prior, Grad-CAM, foreground and temporaries). Measured on BraTS-size cases.
BYTES_PER_VOXEL_PER_CONTRAST = 12
BYTES_PER_VOXEL_SHARED = 48
#: Bytes per voxel of the 2 mm network grid: input, stitched outputs, MONAI's count map and Grad-CAM.
BYTES_PER_LOW_VOXEL = 200
#: Assumed memory when the platform does not say (no /proc/meminfo and no psutil).
FALLBACK_AVAILABLE_BYTES = 8e9

_INTEGER_TYPES = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
    sitk.sitkUInt64, sitk.sitkInt64,
}
_FLOAT_TYPES = {sitk.sitkFloat32, sitk.sitkFloat64}


def check_outputs(outputs: Iterable[str]) -> frozenset:
    """The requested layers as a set; InputError naming any unknown one."""
    wanted = frozenset(outputs)
    unknown = sorted(wanted - set(OUTPUTS))
    if unknown:
        raise InputError(f"Unknown output(s) {unknown}; choose among {list(OUTPUTS)}.")
    return wanted


@dataclass
class Geometry:
    """What the header says about an image: enough for the shape and memory checks before reading voxels."""

    size: Tuple[int, ...]
    spacing: Tuple[float, ...]
    components: int = 1
    pixel_type: str = "float32"

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), image.GetNumberOfComponentsPerPixel(),
                   image.GetPixelIDTypeAsString())


def _shape_text(size: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


def check_geometry(label: str, geometry: Geometry) -> Optional[str]:
    """Raise InputError unless the image is a usable 3-D scalar volume. Returns a warning for a recovered
    4-D volume that holds a single 3-D volume, else None."""
    size = geometry.size
    if geometry.components != 1:
        raise InputError(
            f"{label} has {geometry.components} values per voxel (a colour or vector image); "
            "give a single-valued (scalar) MR volume."
        )
    if len(size) == 4 and size[3] == 1:
        warning = f"{label} is stored as 4-D with a single volume ({_shape_text(size)}); its 3-D volume was used."
        size = size[:3]
    else:
        warning = None
    if len(size) == 2:
        raise InputError(f"{label} is a 2-D image ({_shape_text(size)}); a 3-D volume is needed.")
    if len(size) == 4:
        raise InputError(
            f"{label} is a 4-D image ({_shape_text(size)}: {size[3]} volumes); give each contrast as its own "
            "3-D volume."
        )
    if len(size) != 3:
        raise InputError(f"{label} has {len(size)} dimensions ({_shape_text(size)}); a 3-D volume is needed.")
    if min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(
            f"{label} is {_shape_text(size)} voxels: a single slice or a thin slab, not a 3-D volume "
            f"(at least {MIN_VOXELS_PER_AXIS} voxels along every axis are needed)."
        )
    if "complex" in geometry.pixel_type.lower():
        raise InputError(f"{label} holds complex numbers; give a real-valued (magnitude) MR volume.")
    return warning


def available_memory_bytes() -> float:
    """Memory the run can still take: MemAvailable on Linux, psutil elsewhere, else a cautious guess."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        import psutil  # not a dependency: present in Slicer's Python on some platforms

        return float(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - any failure means "unknown"
        return FALLBACK_AVAILABLE_BYTES


def estimate_memory_bytes(geometries: Dict[str, Geometry], reference: str, spacing_mm: float = 2.0) -> float:
    """Peak memory of a run, from the geometry alone (see the constants above for what each term holds).

    The network grid covers the brain's bounding box; the reference's whole field of view bounds it.
    """
    ref = geometries[reference]
    n_reference = float(np.prod(ref.size[:3]))
    extent_mm = np.array(ref.size[:3], float) * np.array(ref.spacing[:3], float)
    n_low = float(np.prod(np.ceil(extent_mm / spacing_mm) + 6))
    n_inputs = sum(float(np.prod(g.size[:3])) * 4 for g in geometries.values())  # inputs read as given
    return (BASE_MEMORY_BYTES + n_inputs
            + n_reference * (BYTES_PER_VOXEL_PER_CONTRAST * len(geometries) + BYTES_PER_VOXEL_SHARED)
            + n_low * BYTES_PER_LOW_VOXEL)


def check_memory(geometries: Dict[str, Geometry], reference: str, labels: Optional[Dict[str, str]] = None,
                 available: Optional[float] = None, spacing_mm: float = 2.0) -> None:
    """The memory guard: refuse a run that would not fit, before reading or allocating anything."""
    need = estimate_memory_bytes(geometries, reference, spacing_mm)
    have = available_memory_bytes() if available is None else available
    if need <= have:
        return
    labels = labels or {}
    # Name the largest input: the one to resample or crop (not necessarily the reference).
    name = max(geometries, key=lambda n: (float(np.prod(geometries[n].size[:3])), n == reference))
    culprit = geometries[name]
    extent = [s * p for s, p in zip(culprit.size[:3], culprit.spacing[:3])]
    raise InputError(
        f"{labels.get(name, contrast_name(name))} is too large for this computer's memory: "
        f"{_shape_text(culprit.size)} voxels of {'x'.join(f'{p:g}' for p in culprit.spacing[:3])} mm "
        f"({'x'.join(f'{e:.0f}' for e in extent)} mm) need about {need / 1e9:.1f} GB, "
        f"and {have / 1e9:.1f} GB is available. Resample it to about 1 mm voxels, crop it to the head, "
        "or check the voxel spacing in its header."
    )


def read_header(label: str, path: str) -> Geometry:
    """Check that `path` is an image file that can be read, from its header only (no voxels are read).
    check_nifti_complete checks the voxel data's length; call it after the memory guard, which must answer
    for a huge file before anything reads through it."""
    if not path:
        raise InputError(f"{label}: no file name was given.")
    if not os.path.exists(path):
        raise InputError(f"{label}: {path} does not exist.")
    if os.path.isdir(path):
        raise InputError(f"{label}: {path} is a folder, not an image file.")
    if not os.access(path, os.R_OK):
        raise InputError(f"{label}: {path} cannot be read (permission denied).")
    if os.path.getsize(path) == 0:
        raise InputError(f"{label}: {path} is empty (0 bytes).")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(
            f"{label}: {path} is not a readable image (unknown format, or a damaged header); give a NIfTI "
            "(.nii, .nii.gz), NRRD or MetaImage volume."
        ) from None
    pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), reader.GetNumberOfComponents(), pixel_type)


def check_input_files(paths: Dict[str, str], labels: Dict[str, str],
                      known: Optional[Dict[str, Geometry]] = None) -> None:
    """Every check the file headers allow (existence, format, shape, the memory guard, completeness), before
    any voxel is read. paths: contrast -> file for the given contrasts; labels: how to name each in messages;
    known: contrast -> geometry of inputs already read from other headers (DICOM series), checked alike."""
    geometries = dict(known or {})
    for contrast, path in paths.items():
        geometries[contrast] = read_header(labels[contrast], path)
    for contrast, geometry in geometries.items():
        check_geometry(labels[contrast], geometry)
    check_memory(geometries, reference_contrast(geometries), labels)
    for contrast, path in paths.items():
        check_nifti_complete(labels[contrast], path)


def _nifti_expected_bytes(header: bytes) -> Optional[int]:
    """Header plus voxel bytes a NIfTI-1 or NIfTI-2 file holds when complete (None if not NIfTI)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:  # NIfTI-1
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = max(int(struct.unpack(order + "f", header[108:112])[0]), 352)
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:  # NIfTI-2
            dims = struct.unpack(order + "8q", header[16:80])
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            offset = max(struct.unpack(order + "q", header[168:176])[0], 544)
            break
    else:
        return None
    n_dims = max(1, min(int(dims[0]), 7))
    voxels = int(np.prod([max(int(d), 1) for d in dims[1:n_dims + 1]], dtype=np.int64))
    return offset + voxels * max(int(bitpix), 8) // 8


def check_nifti_complete(label: str, path: str) -> None:
    """Refuse a truncated NIfTI file. ITK (and so Slicer) reads a truncated file without an error and fills
    the missing voxels with zeros, so the size is checked here: against the file size for .nii, and for
    .nii.gz against the uncompressed size gzip records in its last four bytes (modulo 2^32); only when that
    disagrees (a multi-member gzip file, or damage) is the whole stream decompressed to settle it."""
    lower = str(path).lower()
    if not (lower.endswith(".nii") or lower.endswith(".nii.gz")):
        return
    compressed = lower.endswith(".gz")
    problem = f"{label}: {path} is truncated or damaged (its voxel data is incomplete); copy or export it again."
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            expected = _nifti_expected_bytes(handle.read(544))
        if expected is None:
            return
        if not compressed:
            if os.path.getsize(path) < expected:
                raise InputError(problem)
            return
        with open(path, "rb") as raw:
            raw.seek(-4, os.SEEK_END)
            recorded = struct.unpack("<I", raw.read(4))[0]
        if recorded == expected % (1 << 32):
            return
        total = 0
        with gzip.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                total += len(block)
        if total < expected:
            raise InputError(problem)
    except (EOFError, OSError, zlib.error, struct.error):
        raise InputError(problem) from None


def _as_3d(image: sitk.Image) -> sitk.Image:
    if image.GetDimension() == 4:  # check_geometry allowed it only with a single volume
        size = list(image.GetSize())
        return sitk.Extract(image, size[:3] + [0], [0, 0, 0, 0])
    return image


def _check_label_map(label: str, array: np.ndarray) -> None:
    # A strided sample settles almost every real image at once (MR images have hundreds of values);
    # only images whose sample looks label-like pay for a full np.unique.
    sample = array.ravel()[:: max(1, array.size // 200_000)]
    if not _few_integer_values(sample):
        return
    values = np.unique(array)
    if len(values) <= LABEL_MAP_MAX_VALUES and np.all(np.mod(values, 1) == 0):
        shown = ", ".join(f"{v:g}" for v in values)
        raise InputError(
            f"{label} looks like a label map, not an MR image: it holds only {len(values)} distinct integer "
            f"values ({shown}). Give the MR volume itself."
        )


def _few_integer_values(values: np.ndarray) -> bool:
    distinct = np.unique(values)
    return len(distinct) <= LABEL_MAP_MAX_VALUES and bool(np.all(np.mod(distinct, 1) == 0))


def check_image(label: str, image: sitk.Image) -> Tuple[sitk.Image, List[str]]:
    """Check one input image; returns the image to use (possibly recovered, see the module docstring) and
    the warnings to report. Raises InputError when it cannot be used."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"{label} is not an image (got {type(image).__name__}).")
    warnings: List[str] = []
    geometry = Geometry.of(image)
    note = check_geometry(label, geometry)
    if note:
        warnings.append(note)
    image = _as_3d(image)
    image = _without_tiny_cosines(image)
    if image.GetPixelID() not in _INTEGER_TYPES | _FLOAT_TYPES:
        raise InputError(f"{label} has pixel type {geometry.pixel_type}; give an integer or float volume.")

    array = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() in _FLOAT_TYPES:
        finite = np.isfinite(array)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad == finite.size:
            raise InputError(f"{label} has no finite voxel (every voxel is NaN or infinite).")
        if n_bad:
            floor = float(array[finite].min())
            repaired = np.where(finite, array, floor).astype(array.dtype)
            recovered = sitk.GetImageFromArray(repaired)
            recovered.CopyInformation(image)
            image, array = recovered, repaired
            warnings.append(
                f"{label}: {n_bad} voxels ({100.0 * n_bad / finite.size:.2g}%) were NaN or infinite; they were "
                f"set to the image's lowest value ({floor:g}) and treated as background."
            )
    low, high = float(array.min()), float(array.max())
    if low == high:
        what = "empty" if low == 0 else "constant"
        raise InputError(f"{label} is {what}: every voxel is {low:g}. It holds no image.")
    _check_label_map(label, array)
    return image, warnings


#: Direction cosines below this are set to 0: ITK's inverse is NaN for subnormal ones (found by CI), a normal
#: 2.6e-300 left the analysis grid empty (found by the property test), and 1e-12 moves no voxel by 1e-9 mm.
TINY_COSINE = 1e-12


def _without_tiny_cosines(image: sitk.Image) -> sitk.Image:
    """A cosine below TINY_COSINE is 0 to any precision that matters, but ITK's arithmetic on it can leave
    every resampling reading nothing; it is set to 0 on a copy."""
    direction = np.array(image.GetDirection())
    tiny = (direction != 0.0) & (np.abs(direction) < TINY_COSINE)
    if not tiny.any():
        return image
    image = sitk.Image(image)  # SimpleITK copies on write: the caller's image keeps its direction
    image.SetDirection(np.where(tiny, 0.0, direction).tolist())
    return image


def _physical_box(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    size = np.array(image.GetSize(), float)
    # The eight outer corners of the voxel grid (continuous index -0.5 and size - 0.5 on each axis).
    corners = np.array([
        image.TransformContinuousIndexToPhysicalPoint([-0.5 + bit * s for bit, s in zip(bits, size)])
        for bits in np.ndindex(2, 2, 2)
    ])
    return corners.min(0), corners.max(0)


def check_overlap(images: Dict[str, sitk.Image], reference: str, labels: Dict[str, str]) -> List[str]:
    """Contrasts on other grids are resampled onto the reference; they must share physical space with it."""
    warnings = []
    ref_lo, ref_hi = _physical_box(images[reference])
    for name, image in images.items():
        if name == reference:
            continue
        lo, hi = _physical_box(image)
        overlap = np.clip(np.minimum(hi, ref_hi) - np.maximum(lo, ref_lo), 0.0, None)
        own = np.prod(hi - lo)
        fraction = float(np.prod(overlap) / own) if own > 0 else 0.0
        if fraction == 0.0:
            raise InputError(
                f"{labels[name]} does not overlap {labels[reference]} (the reference) in physical space: "
                "they are not images of the same head, or one header's origin is wrong."
            )
        if fraction < 0.5:
            warnings.append(
                f"{labels[name]} overlaps {labels[reference]} (the reference) over only {100 * fraction:.0f}% "
                "of its field of view; outside the overlap it is treated as missing."
            )
    return warnings


def check_images(images: Dict[str, Optional[sitk.Image]], labels: Optional[Dict[str, str]] = None,
                 available_memory: Optional[float] = None) -> Tuple[Dict[str, sitk.Image], List[str]]:
    """Check every given contrast: names, each image, memory, physical overlap. Returns the images to use
    (recovered where documented) and the warnings."""
    unknown = sorted(set(images) - set(CONTRASTS))
    if unknown:
        raise InputError(f"Unknown contrast name(s) {unknown}; expected some of {list(CONTRASTS)}.")
    given = {name: images[name] for name in CONTRASTS if images.get(name) is not None}
    if not given:
        raise InputError("No input contrast was given: give at least one of T1, T1ce, T2 or FLAIR.")
    labels = {name: (labels or {}).get(name, contrast_name(name)) for name in given}
    for name, image in given.items():
        if not isinstance(image, sitk.Image):
            raise InputError(f"{labels[name]} is not an image (got {type(image).__name__}).")
    reference = reference_contrast(given)
    # Memory first: it needs only the geometry, and the pixel checks below make copies.
    check_memory({n: Geometry.of(i) for n, i in given.items()}, reference, labels, available_memory)
    checked: Dict[str, sitk.Image] = {}
    warnings: List[str] = []
    for name, image in given.items():
        checked[name], notes = check_image(labels[name], image)
        warnings.extend(notes)
    warnings.extend(check_overlap(checked, reference, labels))
    return checked, warnings


def brain_plausibility(foreground_ml: float, extent_mm: Sequence[float], mean_uncertainty: Optional[float],
                       max_mean_uncertainty: float = 0.6) -> List[str]:
    """Reasons to doubt that the input is a brain MR image (empty when it looks like one).

    Bounds: adult brains are about 1,000-1,600 mL and 130-200 mm across; the limits below leave room for
    children, atrophy, partial coverage and a skull left on. A high mean uncertainty inside the foreground
    means the network does not recognise what it sees.
    """
    reasons = []
    if not 300.0 <= foreground_ml <= 3500.0:
        reasons.append(f"the imaged object is {foreground_ml:.0f} mL, while a brain is about 1,000-1,600 mL")
    largest = max(extent_mm)
    if not 60.0 <= largest <= 300.0:
        reasons.append(f"the imaged object spans {largest:.0f} mm, while a head spans about 130-200 mm")
    if mean_uncertainty is not None and mean_uncertainty > max_mean_uncertainty:
        reasons.append(f"the network's mean uncertainty over the image is {mean_uncertainty:.2f} "
                       f"(above {max_mean_uncertainty:.2f})")
    return reasons
