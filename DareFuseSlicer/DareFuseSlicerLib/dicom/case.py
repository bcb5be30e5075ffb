"""The inputs of one case when some are DICOM: folders given for contrasts, series picked by UID, and a study
folder whose series are assigned to the contrasts by their descriptions. Header work only (no pixel data): it
runs with the other header checks, before torch or Slicer is imported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ..constants import CONTRASTS, contrast_name
from ..errors import OptionError
from ..pipeline.validate import Geometry
from . import assign, series
from .series import Stack


@dataclass
class CaseInputs:
    """contrast -> image file or checked DICOM stack, how each is named in messages, and what the DICOM reading
    has to say (assignment lines, warnings)."""

    files: Dict[str, str] = field(default_factory=dict)
    stacks: Dict[str, Stack] = field(default_factory=dict)
    labels: Dict[str, str] = field(default_factory=dict)
    assignment: List[str] = field(default_factory=list)  # one line per series of the study folder
    warnings: List[str] = field(default_factory=list)

    @property
    def given(self) -> List[str]:
        return [c for c in CONTRASTS if c in self.files or c in self.stacks]

    def geometries(self) -> Dict[str, Geometry]:
        """What the DICOM headers say about each stack's volume (for the shape checks and the memory guard)."""
        return {c: Geometry(s.size, s.spacing, 1, s.pixel_type) for c, s in self.stacks.items()}

    def report(self, contrast: str) -> dict:
        """What report.json records about a DICOM input: the series used, never the patient."""
        stack = self.stacks[contrast]
        return dict(stack.series.summary(), slices=len(stack.files))


def gather(paths: Dict[str, Optional[str]], labels: Dict[str, str], series_uids: Sequence[str] = (),
           study: Optional[str] = None, study_label: Optional[str] = None) -> CaseInputs:
    """Split the given inputs into image files and DICOM folders (each read down to one checked stack), and add
    the contrasts a study folder's series descriptions name (contrasts given otherwise win).
    series_uids: series the user picked; each must be found in one of the folders."""
    inputs = CaseInputs()
    for contrast in CONTRASTS:
        path = paths.get(contrast)
        if not path:
            continue
        inputs.labels[contrast] = labels[contrast]
        if os.path.isdir(path):
            inputs.stacks[contrast] = series.load(path, labels[contrast], series_uids, contrast)
        else:
            inputs.files[contrast] = str(path)
    if study:
        _assign_study(inputs, study, study_label or f"dicom {study}", series_uids)
    used = {stack.series.uid for stack in inputs.stacks.values()}
    unknown = [uid for uid in series_uids if uid not in used]
    if unknown:
        raise OptionError(f"{{series}} {', '.join(unknown)}: no such series was used from the folders given (a "
                          "UID picks one series of a contrast's folder, or one of look-alike series in a study).",
                          "series")
    inputs.warnings = [w for stack in inputs.stacks.values() for w in stack.warnings]
    return inputs


def _assign_study(inputs: CaseInputs, folder: str, label: str, series_uids: Sequence[str]) -> None:
    found = series.discover(folder, label)
    chosen, inputs.assignment = assign.assign(found, label, skip=inputs.given, wanted=series_uids)
    for contrast, item in chosen.items():
        inputs.labels[contrast] = f"{label} ({contrast_name(contrast)})"
        inputs.stacks[contrast] = series.check(item, inputs.labels[contrast])
