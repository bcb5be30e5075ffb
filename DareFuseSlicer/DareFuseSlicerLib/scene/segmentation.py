"""BraTS label images <-> segmentation nodes with named, coloured segments and standard terminology.

A run's label image (0 background, 1 NETC, 2 SNFH, 3 ET) becomes a vtkMRMLSegmentationNode with the segments
NETC, SNFH and ET (always all three, empty ones included, so the user can paint a missed part), the BraTS colours,
SNOMED CT terminology from Resources/Terminology/DareFuseSlicer.term.json, and the input volume as reference
geometry (the Segment Editor and DICOM SEG export need it).

Terminology: NETC is coded as Necrosis (SCT 6574001), SNFH as Edema (SCT 79654002) and ET as Neoplasm
(SCT 108369006), all "Morphologically Altered Structure" (SCT 49755003) in the brain (SCT 12738006). SNOMED CT has
no concept for "enhancing" or "non-enhancing tumour core"; these are the nearest codes in DICOM CID 7159
(the lesion segmentation types Slicer's DICOM master list uses).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from vtkmodules.vtkCommonCore import vtkIntArray, vtkStringArray
from vtkmodules.vtkCommonMath import vtkMatrix4x4

import slicer

from ..constants import LABEL_COLOURS, LABELS
from . import volumes

TERMINOLOGY_PATH = Path(__file__).resolve().parents[2] / "Resources" / "Terminology" / "DareFuseSlicer.term.json"
#: Slicer's anatomic context (loaded by the Terminologies module in the application) and the region coded.
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
BRAIN = ("SCT", "12738006", "Brain")
BINARY_LABELMAP = "Binary labelmap"  # vtkSegmentationConverter::GetBinaryLabelmapRepresentationName()


@dataclass(frozen=True)
class SegmentTerm:
    """One BraTS part as the terminology file codes it."""

    name: str  # NETC, SNFH or ET (the file's 3dSlicerLabel)
    label: int
    colour: Tuple[float, float, float]  # RGB 0..1
    entry: str  # Slicer's serialized terminology entry (the segment's TerminologyEntry tag)


def _code(item: dict) -> str:
    return "^".join((item.get("CodingSchemeDesignator", ""), item.get("CodeValue", ""), item.get("CodeMeaning", "")))


def load_terminology(path: Optional[Path] = None) -> Dict[str, SegmentTerm]:
    """The three BraTS parts from the .term.json, keyed by segment name.

    The serialized entry follows vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry (context~category~
    type~modifier~anatomic context~region~region modifier), so it is read back by the Segment Editor in Slicer.
    """
    data = json.loads(Path(path or TERMINOLOGY_PATH).read_text(encoding="utf-8"))
    context = data["SegmentationCategoryTypeContextName"]
    terms: Dict[str, SegmentTerm] = {}
    for category in data["SegmentationCodes"]["Category"]:
        for type_ in category["Type"]:
            name = type_["3dSlicerLabel"]
            entry = "~".join((context, _code(category), _code(type_), "^^", ANATOMIC_CONTEXT, "^".join(BRAIN), "^^"))
            colour = tuple(channel / 255.0 for channel in type_["recommendedDisplayRGBValue"])
            terms[name] = SegmentTerm(name, int(type_["3dSlicerIntegerLabel"]), colour, entry)
    missing = set(LABELS.values()) - set(terms)
    if missing:
        raise ValueError(f"{path or TERMINOLOGY_PATH}: no terminology for {sorted(missing)}")
    return terms


def oriented_image(array: np.ndarray, reference: sitk.Image) -> "slicer.vtkOrientedImageData":
    """A (z, y, x) array as vtkOrientedImageData on the reference image's grid."""
    image = slicer.vtkOrientedImageData()
    image.ShallowCopy(volumes.image_data_from_array(array))
    image.SetImageToWorldMatrix(volumes.vtk_matrix(volumes.ijk_to_ras(reference)))
    return image


def label_to_segmentation_node(label: sitk.Image, name: str,
                               reference_volume: Optional[slicer.vtkMRMLScalarVolumeNode] = None,
                               terms: Optional[Dict[str, SegmentTerm]] = None) -> slicer.vtkMRMLSegmentationNode:
    """A new segmentation node (not in any scene) with segments NETC, SNFH and ET from a BraTS label image.

    All segments share one labelmap layer (as the Segment Editor stores them), on the label image's grid.
    """
    terms = terms or load_terminology()
    array = sitk.GetArrayFromImage(label)
    unknown = sorted(set(np.unique(array).tolist()) - {0, *LABELS})
    if unknown:
        raise ValueError(f"label image has values {unknown}; BraTS labels are 0, 1, 2, 3")
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    segmentation = node.GetSegmentation()
    shared = oriented_image(array.astype(np.uint8), label)
    for value, segment_name in sorted(LABELS.items()):
        term = terms[segment_name]
        segment = slicer.vtkSegment()
        segment.SetName(segment_name)
        segment.SetColor(*LABEL_COLOURS[segment_name])
        segment.SetLabelValue(value)
        # The names and colours are deliberate (BraTS): Slicer must not regenerate them from the terminology.
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        segment.SetTag(segment.GetTerminologyEntryTagName(), term.entry)
        segment.AddRepresentation(BINARY_LABELMAP, shared)
        segmentation.AddSegment(segment, segment_name)
    if reference_volume is not None:
        set_reference_geometry(node, reference_volume)
    return node


def set_reference_geometry(node: slicer.vtkMRMLSegmentationNode, volume: slicer.vtkMRMLScalarVolumeNode) -> None:
    """Make `volume` the segmentation's source geometry (Segment Editor grid, DICOM SEG referenced series)."""
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    if volume.GetID():
        node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), volume.GetID())


def labels_array(node: slicer.vtkMRMLSegmentationNode, reference: sitk.Image,
                 names: Tuple[str, ...] = tuple(LABELS.values())) -> np.ndarray:
    """The segments `names` merged into a (z, y, x) uint8 BraTS label array on the reference grid.

    A segment missing from the node contributes nothing; later names win where segments overlap.
    """
    segmentation = node.GetSegmentation()
    ids = vtkStringArray()
    values = vtkIntArray()
    name_to_label = {segment_name: value for value, segment_name in LABELS.items()}
    for name in names:
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        if segment_id:
            ids.InsertNextValue(segment_id)
            values.InsertNextValue(name_to_label[name])
    if ids.GetNumberOfValues() == 0:
        return np.zeros(reference.GetSize()[::-1], np.uint8)
    geometry = oriented_image(np.zeros(reference.GetSize()[::-1], np.uint8), reference)
    merged = slicer.vtkOrientedImageData()
    node.GenerateMergedLabelmapForAllSegments(merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
                                              geometry, ids, values)
    return volumes.array_from_image_data(merged).astype(np.uint8)


def bounding_box(mask: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(first, one past last) (z, y, x) index of the True voxels, or None; by axis projections (no argwhere)."""
    low, high = [], []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        low.append(present[0])
        high.append(present[-1] + 1)
    return np.array(low), np.array(high)


def segmentation_digest(node: slicer.vtkMRMLSegmentationNode) -> str:
    """A fingerprint of the segments' names and voxels, to tell whether a user has edited a segmentation.

    Each segment's mask is cropped to its bounding box and positioned in RAS, so the digest does not change when
    a scene is saved and reloaded (Slicer may store a different, padded extent).
    """
    digest = hashlib.sha256()
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        digest.update(f"{segment_id}|{segment.GetName()}|".encode())
        representation = segment.GetRepresentation(BINARY_LABELMAP)
        if representation is None or representation.GetPointData().GetScalars() is None:
            digest.update(b"none;")
            continue
        mask = volumes.array_from_image_data(representation) == segment.GetLabelValue()
        box = bounding_box(mask)
        if box is None:
            digest.update(b"empty;")
            continue
        low, high = box
        crop = mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
        matrix = vtkMatrix4x4()
        representation.GetImageToWorldMatrix(matrix)
        first_ijk = np.array(representation.GetExtent()[::2], float) + low[::-1]
        first_ras = volumes.numpy_matrix(matrix) @ np.append(first_ijk, 1.0)
        digest.update(np.round(first_ras[:3], 3).tobytes())
        digest.update(np.array(crop.shape).tobytes())
        digest.update(np.packbits(crop).tobytes())
    return digest.hexdigest()
