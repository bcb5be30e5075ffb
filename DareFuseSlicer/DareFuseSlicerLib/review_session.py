"""The review of one run's segmentation, GUI-free (issue 18): walk the ranked regions, centre the slice views on
each, record which were reviewed, measure what the reviewer changed, export the review and save the result.

The module panel only calls these methods (so the workflow is tested here on a real scene): a row click is
go_to(row), Next and Previous are next() and previous(), the Reviewed box is set_reviewed(), the counts come from
counts(), the volumes from volumes_ml() after each edit, and "Export review" is export(). The region list and the
reviewed state live in the run's table node (scene/review.py), so a saved scene resumes where it stopped; the
segmentation as it was when the review started is kept here, to count the changes against.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

import slicer

from .constants import LABELS
from .errors import InputError
from .pipeline.postprocess import volumes_ml
from .scene import files, review, segmentation, volumes

VOLUME_NAMES = ("NETC", "SNFH", "ET", "WT", "TC")
CSV_COLUMNS = ("kind", "name", "volume_before_ml", "volume_after_ml", "voxels_added", "voxels_removed",
               "segments", "expected_error_ml", "reviewed", "seconds")


def reference_image(node: slicer.vtkMRMLScalarVolumeNode) -> sitk.Image:
    """An empty (zero) image with a volume node's grid, in LPS: the geometry labels are read back onto."""
    dims = node.GetImageData().GetDimensions()
    image = sitk.Image(int(dims[0]), int(dims[1]), int(dims[2]), sitk.sitkUInt8)
    volumes.set_geometry_from_ras(image, volumes.node_ijk_to_ras(node))
    return image


class ReviewSession:
    """One reviewer's pass over the regions of a segmentation (see the module docstring).

    segmentation: the run's segmentation node; table: its review table node; markups: its point list (or None);
    clock: seconds, monotonic (time.monotonic; tests pass their own).
    """

    def __init__(self, segmentation_node: slicer.vtkMRMLSegmentationNode, table: slicer.vtkMRMLTableNode,
                 markups: Optional[slicer.vtkMRMLMarkupsFiducialNode] = None,
                 clock: Callable[[], float] = time.monotonic):
        geometry = segmentation_node.GetNodeReference(segmentation_node.GetReferenceImageGeometryReferenceRole())
        if geometry is None or geometry.GetImageData() is None:
            raise InputError(f"Segmentation '{segmentation_node.GetName()}' has no reference volume; the review "
                             "needs the grid it was computed on.")
        self.segmentation, self.table, self.markups = segmentation_node, table, markups
        self.reference = reference_image(geometry)
        self.voxel_ml = float(np.prod(self.reference.GetSpacing())) / 1000.0
        self.before = segmentation.labels_array(segmentation_node, self.reference)
        self.clock = clock
        self.started = clock()
        self.started_utc = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.current: Optional[int] = None
        self._since = self.started
        self.seconds = [0.0] * table.GetNumberOfRows()

    # -- walking the regions -----------------------------------------------------------------------------------
    @property
    def regions(self) -> List[dict]:
        return review.read_regions(self.table)

    def _book_time(self) -> None:
        now = self.clock()
        if self.current is not None:
            self.seconds[self.current] += now - self._since
        self._since = now

    def go_to(self, index: int) -> dict:
        """Make region `index` (0-based row) the current one and centre the slice views on it. Returns the region
        with "segment_id": the segment it touches most (for the Segment Editor), or None."""
        regions = self.regions
        if not 0 <= index < len(regions):
            raise IndexError(f"no review region {index + 1}; there are {len(regions)}")
        self._book_time()
        self.current = index
        region = dict(regions[index])
        review.jump_slices(self.segmentation.GetScene(), region["centre_ras"])
        segment_ids = [self.segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)
                       for name in region["segments"]]
        region["segment_id"] = next((segment_id for segment_id in segment_ids if segment_id), None)
        return region

    def next(self) -> Optional[dict]:
        """The next region (the first when none is current); None after the last."""
        index = 0 if self.current is None else self.current + 1
        return self.go_to(index) if index < self.table.GetNumberOfRows() else None

    def previous(self) -> Optional[dict]:
        """The previous region; None before the first."""
        if self.current is None or self.current == 0:
            return None
        return self.go_to(self.current - 1)

    def set_reviewed(self, reviewed: bool = True, index: Optional[int] = None) -> None:
        """Mark region `index` (the current one when None) as reviewed, or not; its point follows."""
        index = self.current if index is None else index
        if index is None:
            raise IndexError("no review region is current")
        review.set_reviewed(self.table, self.markups, index, reviewed)

    def counts(self) -> Tuple[int, int]:
        """(reviewed, remaining)."""
        flags = [region["reviewed"] for region in self.regions]
        return sum(flags), len(flags) - sum(flags)

    # -- what changed --------------------------------------------------------------------------------------------
    def labels_now(self) -> np.ndarray:
        return segmentation.labels_array(self.segmentation, self.reference)

    def volumes_ml(self, labels: Optional[np.ndarray] = None) -> Dict[str, float]:
        """Volumes (mL) of NETC, SNFH, ET, WT and TC in the segmentation as it is now."""
        now = volumes_ml(self.labels_now() if labels is None else labels, self.voxel_ml)
        return {name: round(now[name], 4) for name in VOLUME_NAMES}

    def changes(self, labels: Optional[np.ndarray] = None) -> Dict[str, Dict[str, int]]:
        """Voxels the reviewer added to and removed from each segment since the review started."""
        after = self.labels_now() if labels is None else labels
        changed = {}
        for value, name in LABELS.items():
            was, now = self.before == value, after == value
            changed[name] = {"added": int(np.count_nonzero(now & ~was)), "removed": int(np.count_nonzero(was & ~now))}
        changed["total_voxels_changed"] = int(np.count_nonzero(after != self.before))
        return changed

    def summary(self) -> dict:
        """Everything the export holds (JSON-ready)."""
        self._book_time()
        after = self.labels_now()
        regions = self.regions
        for region, seconds in zip(regions, self.seconds):
            region["seconds"] = round(seconds, 1)
        reviewed, remaining = self.counts()
        return {
            "segmentation": self.segmentation.GetName(),
            "started_utc": self.started_utc,
            "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "time_in_review_s": round(self.clock() - self.started, 1),
            "regions_reviewed": reviewed,
            "regions_remaining": remaining,
            "volumes_ml": {"before": self.volumes_ml(self.before), "after": self.volumes_ml(after)},
            "voxels_changed": self.changes(after),
            "voxel_ml": self.voxel_ml,
            "regions": regions,
        }

    @staticmethod
    def export_names(stem: str = "review") -> Tuple[str, str]:
        return f"{stem}.json", f"{stem}.csv"

    def segmentation_names(self, stem: Optional[str] = None) -> Tuple[str, str]:
        stem = stem or self.segmentation.GetName()
        return f"{stem}.seg.nrrd", f"{stem}.nii.gz"

    def export(self, folder, stem: str = "review", overwrite: bool = False) -> Tuple[Path, ...]:
        """Write <stem>.json and <stem>.csv into `folder` (both or neither); existing files only with overwrite."""
        summary = self.summary()
        json_name, csv_name = self.export_names(stem)
        return _write_together(folder, {json_name: lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"),
                                        csv_name: lambda path: path.write_text(summary_csv(summary))}, overwrite)

    def save_segmentation(self, folder, stem: Optional[str] = None, overwrite: bool = False) -> Tuple[Path, ...]:
        """The segmentation as it is now, as <stem>.seg.nrrd (segments, colours, terminology) and <stem>.nii.gz
        (BraTS labels on the reference grid), both or neither; the stem defaults to the node's name."""
        image = sitk.GetImageFromArray(self.labels_now())
        image.CopyInformation(self.reference)
        seg_name, nifti_name = self.segmentation_names(stem)
        return _write_together(folder, {
            seg_name: lambda path: files.save_segmentation(self.segmentation, path),
            nifti_name: lambda path: sitk.WriteImage(image, str(path), useCompression=True),
        }, overwrite)


def summary_csv(summary: dict) -> str:
    """The review as one table: a row per volume (before, after, voxels changed), a row per region (reviewed,
    seconds), and a total row (regions reviewed, time in review)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    before, after = summary["volumes_ml"]["before"], summary["volumes_ml"]["after"]
    changed = summary["voxels_changed"]
    for name in VOLUME_NAMES:
        row = {"kind": "volume", "name": name, "volume_before_ml": before[name], "volume_after_ml": after[name]}
        if name in changed:
            row.update(voxels_added=changed[name]["added"], voxels_removed=changed[name]["removed"])
        writer.writerow(row)
    for region in summary["regions"]:
        writer.writerow({"kind": "region", "name": region["rank"], "segments": " ".join(region["segments"]),
                         "expected_error_ml": region["expected_error_ml"], "reviewed": int(region["reviewed"]),
                         "seconds": region["seconds"]})
    writer.writerow({"kind": "total", "name": "review", "reviewed": summary["regions_reviewed"],
                     "seconds": summary["time_in_review_s"]})
    return text.getvalue()


def existing_files(folder, names) -> List[str]:
    """Which of `names` already exist in `folder` (the panel asks before replacing them)."""
    return [name for name in names if (Path(folder) / name).exists()]


def _write_together(folder, writers: Dict[str, Callable[[Path], object]], overwrite: bool) -> Tuple[Path, ...]:
    """Write every file completely into a staging folder inside `folder` before moving any of them in (renames in
    one folder), so that a failed write leaves neither."""
    target = Path(folder).expanduser().absolute()
    if not target.is_dir():
        raise InputError(f"Folder '{target}' does not exist.")
    existing = [name for name in writers if (target / name).exists()]
    if existing and not overwrite:
        raise InputError(f"'{target / existing[0]}' already exists; nothing was written. Choose another folder or "
                         "name, or allow overwriting.")
    staging = Path(tempfile.mkdtemp(prefix=".darefuse-review-", dir=target))
    try:
        for name, write in writers.items():
            write(staging / name)
        for name in writers:
            os.replace(staging / name, target / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tuple(target / name for name in writers)


# -- what the panel shows (kept here so it is tested without Qt) -----------------------------------------------
def table_rows(regions: List[dict]) -> List[Tuple[str, str, str, str, str]]:
    """The panel's review table: rank, segments, volume (mL), expected error (mL), reviewed."""
    return [(str(r["rank"]), ", ".join(r["segments"]) or "-", f"{r['volume_ml']:.2f}", f"{r['expected_error_ml']:.2f}",
             "yes" if r["reviewed"] else "") for r in regions]


def counts_text(reviewed: int, remaining: int) -> str:
    if reviewed + remaining == 0:
        return "No review regions: nothing in this segmentation was found to be in doubt."
    return f"{reviewed} reviewed, {remaining} remaining of {reviewed + remaining} regions."
