"""Disk space for a run's results: checked against an estimate before writing, and a full disk said as such.

Without this a full disk shows as whatever the writer says: ITK's "Could not write file", MRML's "Failed to save
... data bundle directory" for the scene bundle, or an OSError from Python. The user needs to hear that the disk
is full and how much space the results need.
"""
from __future__ import annotations

import dataclasses
import errno
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import SimpleITK as sitk

from ..errors import InputError

#: Share of the uncompressed image bytes taken as the space a run's files need. The layers are gzip-compressed
#: NIfTI and NRRD and mostly zero outside the brain: for the sample case (240x240x155, every layer) the result's
#: images hold 294.6 MB uncompressed (a uint8 label and eight float32 volumes of 8,928,000 voxels) and
#: `darefuse demo` writes 83 MB (`du -sb darefuse-demo`), of which 46 MB is scene.mrb, written once as a bundle
#: folder and once zipped (about 130 MB at the peak). Half the uncompressed size, counted for the layers and again
#: for the scene bundle (296 MB here), stays above that with a margin for noisier images.
ESTIMATE_SHARE = 0.5
#: Errors of the operating system that mean "no space".
NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFull(InputError):
    """Not enough free disk space for the results; nothing was written."""


def _images(value: Any) -> Iterator[sitk.Image]:
    if isinstance(value, sitk.Image):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _images(getattr(value, field.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _images(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _images(item)


def image_bytes(image: sitk.Image) -> int:
    return image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()


def estimate_bytes(result: Any, copies: int = 2) -> int:
    """The space a run's files need: ESTIMATE_SHARE of every image of the result, `copies` times (the layers
    and the scene bundle), plus 1 MB for the report, the overview and the file headers."""
    total = sum(image_bytes(image) for image in _images(result))
    return int(ESTIMATE_SHARE * copies * total) + (1 << 20)


def free_bytes(folder: Path) -> int:
    """Free space on the file system where `folder` is, or would be created."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(str(existing)).free


def megabytes(count: int) -> str:
    return f"{count / 1e6:.0f} MB" if count >= 1e6 else f"{count / 1e6:.1f} MB"


def disk_full(folder: Path, needed: int, free: Optional[int] = None) -> DiskFull:
    free = free_bytes(folder) if free is None else free
    return DiskFull(f"Not enough free disk space for the results in {folder}: they need about {megabytes(needed)}, "
                    f"{megabytes(free)} is free; nothing was written. Free some space or choose an output "
                    "folder on another disk.")


def check_free_space(folder: Path, needed: int) -> None:
    """Raise DiskFull before anything is written if the estimate does not fit."""
    free = free_bytes(folder)
    if free < needed:
        raise disk_full(folder, needed, free)


def ran_out_of_space(error: BaseException, folder: Path, needed: int) -> bool:
    """Whether a failed write failed for lack of space: an OSError saying so anywhere in the chain, or a writer's
    error (ITK, MRML: they give no errno) while the disk, with the partial files removed, has less free space
    than the results need."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, (OSError, RuntimeError)):
        try:
            return free_bytes(folder) < needed
        except OSError:
            return False
    return False
