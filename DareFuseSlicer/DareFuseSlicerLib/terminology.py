"""The codes of the three BraTS parts, read from Resources/Terminology/DareFuseSlicer.term.json (their one home):
the Slicer segments (scene/segmentation.py) and the DICOM SEG segments (dicom/export.py) both take them from here.

NETC is coded as Necrosis (SCT 6574001), SNFH as Edema (SCT 79654002) and ET as Neoplasm (SCT 108369006), all
"Morphologically Altered Structure" (SCT 49755003) in the brain (SCT 12738006). SNOMED CT has no concept for
"enhancing" or "non-enhancing tumour core"; these are the nearest codes in DICOM CID 7159 (the lesion
segmentation types Slicer's DICOM master list uses).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from .constants import LABELS

TERMINOLOGY_PATH = Path(__file__).resolve().parents[1] / "Resources" / "Terminology" / "DareFuseSlicer.term.json"


@dataclass(frozen=True)
class Code:
    scheme: str  # CodingSchemeDesignator, e.g. SCT
    value: str  # CodeValue
    meaning: str  # CodeMeaning


#: The anatomic region every segment lies in.
BRAIN = Code("SCT", "12738006", "Brain")


@dataclass(frozen=True)
class SegmentCodes:
    """One BraTS part as the terminology file codes it."""

    name: str  # NETC, SNFH or ET (the file's 3dSlicerLabel)
    label: int  # its value in label images
    colour: Tuple[float, float, float]  # RGB 0..1
    category: Code
    type: Code


def _code(item: dict) -> Code:
    return Code(item.get("CodingSchemeDesignator", ""), item.get("CodeValue", ""), item.get("CodeMeaning", ""))


def load(path: Optional[Path] = None) -> Tuple[str, Dict[str, SegmentCodes]]:
    """The file's context name and its three BraTS parts, keyed by segment name."""
    path = Path(path or TERMINOLOGY_PATH)
    data = json.loads(path.read_text(encoding="utf-8"))
    segments: Dict[str, SegmentCodes] = {}
    for category in data["SegmentationCodes"]["Category"]:
        for type_ in category["Type"]:
            name = type_["3dSlicerLabel"]
            colour = tuple(channel / 255.0 for channel in type_["recommendedDisplayRGBValue"])
            segments[name] = SegmentCodes(name, int(type_["3dSlicerIntegerLabel"]), colour, _code(category),
                                          _code(type_))
    missing = set(LABELS.values()) - set(segments)
    if missing:
        raise ValueError(f"{path}: no terminology for {sorted(missing)}")
    return data["SegmentationCategoryTypeContextName"], segments
