"""Node bookkeeping shared by the scene adapters: ownership tags, content digests, removal, subject hierarchy.

Ownership: every node a run adds carries OUTPUT_ATTRIBUTE (what it is) and a node reference to the reference
input it was computed from. A later run replaces such a node only when its content digest still matches the one
stored when it was made, so a segmentation the user has edited (or a node the user flagged with KEEP_ATTRIBUTE)
is never removed or overwritten.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np
from vtkmodules.util import numpy_support

import slicer

from . import segmentation, volumes

OUTPUT_ATTRIBUTE = "DareFuseSlicer.Output"  # the output's kind: segmentation, uncertainty, ...
DIGEST_ATTRIBUTE = "DareFuseSlicer.Digest"  # content digest when the run made it
RUN_ATTRIBUTE = "DareFuseSlicer.Run"  # when the run finished (ISO 8601), groups the nodes of one run
REPORT_ATTRIBUTE = "DareFuseSlicer.Report"  # the run's report as JSON (on its segmentation, else first output)
KEEP_ATTRIBUTE = "DareFuseSlicer.Keep"  # set to "true" by a user to keep an output from being replaced
REFERENCE_ROLE = "darefuseReference"  # node reference: the input volume an output was computed from


#: Node classes that only present a run (review regions, a colour table): nobody's work is lost when a later run
#: replaces them, so their digest is of their class alone and they go with the run's other outputs.
PRESENTATION_CLASSES = ("vtkMRMLTableNode", "vtkMRMLMarkupsNode", "vtkMRMLColorNode")


def content_digest(node: slicer.vtkMRMLNode) -> str:
    """A digest of a segmentation's segments or a volume's voxels and geometry (see PRESENTATION_CLASSES for
    the other outputs)."""
    if node.IsA("vtkMRMLSegmentationNode"):
        return segmentation.segmentation_digest(node)
    if any(node.IsA(name) for name in PRESENTATION_CLASSES):
        return hashlib.sha256(node.GetClassName().encode()).hexdigest()
    digest = hashlib.sha256()
    image_data = node.GetImageData()
    scalars = image_data.GetPointData().GetScalars() if image_data is not None else None
    if scalars is not None:
        view = numpy_support.vtk_to_numpy(scalars)  # no copy: the node's own voxels, hashed in place
        digest.update(f"{view.dtype}{image_data.GetDimensions()}{image_data.GetExtent()}".encode())
        digest.update(memoryview(np.ascontiguousarray(view)).cast("B"))
    digest.update(np.round(volumes.node_ijk_to_ras(node), 6).tobytes())
    return digest.hexdigest()


def tag_output(node: slicer.vtkMRMLNode, kind: str, reference: slicer.vtkMRMLNode, run: str) -> None:
    node.SetAttribute(OUTPUT_ATTRIBUTE, kind)
    node.SetAttribute(RUN_ATTRIBUTE, run)
    node.SetAttribute(DIGEST_ATTRIBUTE, content_digest(node))
    node.SetNodeReferenceID(REFERENCE_ROLE, reference.GetID())


def is_output(node: slicer.vtkMRMLNode) -> bool:
    return bool(node.GetAttribute(OUTPUT_ATTRIBUTE))


def is_unchanged_output(node: slicer.vtkMRMLNode) -> bool:
    """An output of ours that nobody has edited or flagged to keep since the run that made it."""
    if not is_output(node) or (node.GetAttribute(KEEP_ATTRIBUTE) or "").lower() in ("1", "true", "yes"):
        return False
    return node.GetAttribute(DIGEST_ATTRIBUTE) == content_digest(node)


def outputs_of(scene: slicer.vtkMRMLScene, reference: slicer.vtkMRMLNode) -> list:
    """Our outputs in `scene` computed from the input `reference`."""
    found = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if is_output(node) and node.GetNodeReferenceID(REFERENCE_ROLE) == reference.GetID():
            found.append(node)
    return found


def remove_node(node: slicer.vtkMRMLNode) -> None:
    """Remove a node and the display and storage nodes it owns (vtkMRMLScene.RemoveNode leaves them behind)."""
    scene = node.GetScene()
    if scene is None:
        return
    owned = []
    for getter, counter in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                            ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, counter):
            owned += [getattr(node, getter)(index) for index in range(getattr(node, counter)())]
    scene.RemoveNode(node)
    for other in owned:
        if other is not None and other.GetScene() is scene:
            scene.RemoveNode(other)


def subject_hierarchy(scene: slicer.vtkMRMLScene) -> Optional[slicer.vtkMRMLSubjectHierarchyNode]:
    """The scene's subject hierarchy if it has one (never creates one)."""
    if scene is None or scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is None:
        return None
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def place_in_study(node: slicer.vtkMRMLNode, reference: slicer.vtkMRMLNode) -> bool:
    """Put `node` beside `reference` in the subject hierarchy (in its study), so DICOM export finds the series.

    Both nodes must be in the same scene. Returns False, creating nothing, when the scene has no subject hierarchy
    or the reference has no item in it.
    """
    hierarchy = subject_hierarchy(node.GetScene())
    if hierarchy is None:
        return False
    reference_item = hierarchy.GetItemByDataNode(reference)
    if not reference_item:
        return False
    parent = hierarchy.GetItemParent(reference_item)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)
    return True
