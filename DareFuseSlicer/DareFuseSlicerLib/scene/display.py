"""How the outputs look: colour maps and windows for the maps, and slice views set up for review.

Colour maps are Slicer's built-in colour nodes (present in the application and in any scene whose colour logic
added the defaults, see files.new_scene), so a saved scene looks the same wherever it is opened. Low values of an
overlay are thresholded away so that they are transparent over the image instead of tinting it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from vtkmodules.vtkCommonMath import vtkMatrix4x4

import slicer

from . import volumes

#: Slicer's built-in colour node IDs (tests check them against vtkMRMLColorLogic's static getters).
COLOUR_IDS = {
    "uncertainty": "vtkMRMLPETProceduralColorNodePET-Heat",
    "gradcam": "vtkMRMLColorTableNodeRainbow",
    "difference_prior": "vtkMRMLColorTableNodeIron",
    "tumour_free": "vtkMRMLColorTableNodeGrey",
}
#: Output kind -> (colour node ID, fixed window [low, high] or None for a robust data range, threshold fraction).
#: The threshold fraction hides overlay values below that fraction of the window (they show as transparent).
DISPLAY = {
    # Dirichlet uncertainty K / sum(alpha) is in [0, 1]; below 0.1 (total evidence above 36 for 4 labels) it is
    # drawn transparent so that confident voxels leave the image visible. A run's map then gets its own colour
    # table, transparent below the model card's higher overlay threshold (scene/review.py, logic.commit).
    "uncertainty": (COLOUR_IDS["uncertainty"], (0.0, 1.0), 0.1),
    # Grad-CAM++ maps are normalised to [0, 1]; the weakest fifth is noise around the evidence.
    "gradcam": (COLOUR_IDS["gradcam"], (0.0, 1.0), 0.2),
    # The difference prior is in z-score units with no fixed top: window to its robust range.
    "difference_prior": (COLOUR_IDS["difference_prior"], None, 0.1),
    "tumour_free": (COLOUR_IDS["tumour_free"], None, 0.0),
    # The front end's brain mask (0/1, whole-head input): grey, its inside only.
    "brain_mask": (COLOUR_IDS["tumour_free"], (0.0, 1.0), 0.5),
}
#: Which map goes over the image in the slice views, first present wins.
FOREGROUND_PREFERENCE = ("uncertainty", "gradcam", "difference_prior")
FOREGROUND_OPACITY = 0.5


def robust_range(array: np.ndarray) -> tuple:
    """The 0.5th..99.5th percentile of the voxels that are not background (0), as a window."""
    values = array[np.isfinite(array) & (array != 0)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def set_window(display: slicer.vtkMRMLScalarVolumeDisplayNode, low: float, high: float) -> None:
    display.SetAutoWindowLevel(0)
    display.SetWindowLevelMinMax(low, high)


def style_volume(node: slicer.vtkMRMLScalarVolumeNode, kind: str,
                 like: Optional[slicer.vtkMRMLScalarVolumeNode] = None) -> None:
    """Colour map, window and threshold for an output volume of `kind` (a key of DISPLAY), in its scene.

    `like`: for a tumour-free reconstruction, the input volume whose window it should share.
    """
    colour_id, window, threshold_fraction = DISPLAY[kind]
    scene = node.GetScene()
    if node.GetDisplayNode() is None:
        add_display_node(node)
    display = node.GetDisplayNode()
    if scene is not None and scene.GetNodeByID(colour_id) is not None:
        display.SetAndObserveColorNodeID(colour_id)
    like_display = like.GetDisplayNode() if like is not None else None
    if window is None and like_display is not None and like_display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        window = (like_display.GetWindowLevelMin(), like_display.GetWindowLevelMax())
    if window is None:
        array = volumes.volume_array(node)
        window = robust_range(array) if array is not None else (0.0, 1.0)
    set_window(display, *window)
    if threshold_fraction > 0:
        display.SetApplyThreshold(1)
        display.SetAutoThreshold(0)
        display.SetLowerThreshold(window[0] + threshold_fraction * (window[1] - window[0]))
        display.SetUpperThreshold(np.finfo(np.float32).max)


def add_display_node(node: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkMRMLScalarVolumeDisplayNode:
    """A display node without the automatic window/level of CreateDefaultDisplayNodes, which computes a
    histogram of the whole volume (a quarter of a second per BraTS-size map) only to be overridden here."""
    display = slicer.vtkMRMLScalarVolumeDisplayNode()
    display.SetAutoWindowLevel(0)
    display.SetAutoThreshold(0)
    node.GetScene().AddNode(display)
    display.SetDefaultColorMap()
    node.SetAndObserveDisplayNodeID(display.GetID())
    return display


def style_segmentation(node: slicer.vtkMRMLSegmentationNode) -> None:
    """Segments drawn as outlines in slice views, so the image and the map underneath stay readable."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetVisibility(1)
    display.SetVisibility2DOutline(1)
    display.SetVisibility2DFill(0)
    display.SetOpacity2DOutline(1.0)


def choose_foreground(maps: dict) -> Optional[slicer.vtkMRMLScalarVolumeNode]:
    for kind in FOREGROUND_PREFERENCE:
        if maps.get(kind) is not None:
            return maps[kind]
    return None


def setup_slice_views(scene: slicer.vtkMRMLScene, background: slicer.vtkMRMLScalarVolumeNode,
                      foreground: Optional[slicer.vtkMRMLScalarVolumeNode] = None,
                      segmentation: Optional[slicer.vtkMRMLSegmentationNode] = None,
                      centre_ras: Optional[Sequence[float]] = None,
                      opacity: float = FOREGROUND_OPACITY) -> int:
    """Image below, map above with `opacity`, segment outlines on top, in every slice view the scene has.

    Returns how many slice views were set up (0 for a scene without views: nothing is created). `centre_ras`
    moves all slice views through that point (e.g. the tumour's centre).
    """
    composites = [scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
                  for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    for composite in composites:
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity if foreground is not None else 0.0)
        composite.SetLabelVolumeID(None)
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    if selection is not None:
        selection.SetActiveVolumeID(background.GetID())
        selection.SetSecondaryVolumeID(foreground.GetID() if foreground is not None else None)
    if segmentation is not None:
        style_segmentation(segmentation)
    if centre_ras is not None and composites:
        slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *[float(value) for value in centre_ras],
                                              slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return len(composites)


def views_state(scene: slicer.vtkMRMLScene) -> list:
    """What setup_slice_views changes (layers, opacity, selection, slice positions), to undo it on a failure."""
    state = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        state.append((composite, (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(),
                                  composite.GetForegroundOpacity(), composite.GetLabelVolumeID())))
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        slice_node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        matrix = vtkMatrix4x4()
        matrix.DeepCopy(slice_node.GetSliceToRAS())
        state.append((slice_node, matrix))
    selection = scene.GetFirstNodeByClass("vtkMRMLSelectionNode")
    if selection is not None:
        state.append((selection, (selection.GetActiveVolumeID(), selection.GetSecondaryVolumeID())))
    return state


def restore_views(scene: slicer.vtkMRMLScene, state: list) -> None:
    for node, saved in state:
        if node.IsA("vtkMRMLSliceCompositeNode"):
            background, foreground, opacity, label = saved
            node.SetBackgroundVolumeID(background)
            node.SetForegroundVolumeID(foreground)
            node.SetForegroundOpacity(opacity)
            node.SetLabelVolumeID(label)
        elif node.IsA("vtkMRMLSliceNode"):
            node.GetSliceToRAS().DeepCopy(saved)
            node.UpdateMatrices()
        else:
            node.SetActiveVolumeID(saved[0])
            node.SetSecondaryVolumeID(saved[1])


def label_centre_ras(label_array: np.ndarray, node: slicer.vtkMRMLVolumeNode) -> Optional[np.ndarray]:
    """The RAS centre of mass of the non-zero voxels of a (z, y, x) array on `node`'s grid, or None if empty."""
    mask = label_array > 0
    count = np.count_nonzero(mask)
    if count == 0:
        return None
    # centre of mass from the axis projections: no index array of every tumour voxel
    zyx = [float((np.arange(mask.shape[axis]) * mask.sum(axis=tuple(a for a in range(3) if a != axis))).sum())
           / count for axis in range(3)]
    return (volumes.node_ijk_to_ras(node) @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]
