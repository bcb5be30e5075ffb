"""Review regions in the scene: a table node and a markups point list built from pipeline.review's regions, the
reviewed state both show, the jump of the slice views to a region, and the uncertainty colour table whose low end
is transparent (values under a threshold leave the image visible instead of tinting the whole brain).

The table node holds the regions and their reviewed state, so a saved scene resumes a review where it stopped.
Nodes are built outside any scene; the logic adds them with the run's other outputs.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
from vtkmodules.vtkCommonCore import vtkDoubleArray, vtkIntArray, vtkStringArray

import slicer

#: Table columns: (name, region key or None, vtk array type). "Reviewed" is the review's state (0 or 1).
COLUMNS = (
    ("Rank", "rank", vtkIntArray),
    ("Segments", "segments", vtkStringArray),
    ("Volume (mL)", "volume_ml", vtkDoubleArray),
    ("Expected error (mL)", "expected_error_ml", vtkDoubleArray),
    ("Mean uncertainty", "mean_uncertainty", vtkDoubleArray),
    ("Peak uncertainty", "peak_uncertainty", vtkDoubleArray),
    ("Kinds", "kinds", vtkStringArray),
    ("R", None, vtkDoubleArray),
    ("A", None, vtkDoubleArray),
    ("S", None, vtkDoubleArray),
    ("Reviewed", None, vtkIntArray),
)
#: Markups colours: points still to review stand out (selected: orange), reviewed ones recede (grey).
TO_REVIEW_COLOUR = (1.0, 0.55, 0.0)
REVIEWED_COLOUR = (0.6, 0.6, 0.6)
#: The uncertainty colour ramp above the threshold (value 0..1 of the ramp -> RGB), a heat map.
HEAT = ((0.0, (0.55, 0.0, 0.0)), (0.35, (1.0, 0.1, 0.0)), (0.7, (1.0, 0.75, 0.0)), (1.0, (1.0, 1.0, 0.8)))
COLOURS = 256


def regions_table_node(regions: Sequence[dict], name: str) -> slicer.vtkMRMLTableNode:
    """A table node (not in any scene) with one row per region, ranked, none reviewed."""
    node = slicer.vtkMRMLTableNode()
    node.SetName(name)
    table = node.GetTable()
    for column, key, array_type in COLUMNS:
        array = array_type()
        array.SetName(column)
        for region in regions:
            if column in ("R", "A", "S"):
                array.InsertNextValue(float(region["centre_ras"]["RAS".index(column)]))
            elif column == "Reviewed":
                array.InsertNextValue(0)
            elif array_type is vtkStringArray:
                array.InsertNextValue(", ".join(region[key]))
            else:
                array.InsertNextValue(region[key])
        table.AddColumn(array)
    node.SetUseColumnTitleAsColumnHeader(True)  # the first row is data, not titles, when saved and read back
    node.SetLocked(True)  # a reviewer changes the state through the review, not by typing in the table
    return node


def regions_markups_node(regions: Sequence[dict], name: str) -> slicer.vtkMRMLMarkupsFiducialNode:
    """A point list (not in any scene) with one locked control point per region at its centre, labelled by rank."""
    node = slicer.vtkMRMLMarkupsFiducialNode()
    node.SetName(name)
    for region in regions:
        index = node.AddControlPoint(*[float(v) for v in region["centre_ras"]], str(region["rank"]))
        node.SetNthControlPointDescription(index, ", ".join(region["segments"]))
        node.SetNthControlPointSelected(index, True)
    node.SetLocked(True)
    node.SetFixedNumberOfControlPoints(True)
    return node


def style_markups(node: slicer.vtkMRMLMarkupsFiducialNode) -> None:
    """Colours for points to review and reviewed points; the node must be in a scene (display nodes need one)."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetSelectedColor(*TO_REVIEW_COLOUR)
    display.SetColor(*REVIEWED_COLOUR)
    display.SetPropertiesLabelVisibility(False)  # the rank is the point's label; the node's name adds nothing
    display.SetPointLabelsVisibility(True)


def _column(table_node: slicer.vtkMRMLTableNode, name: str):
    array = table_node.GetTable().GetColumnByName(name)
    if array is None:
        raise ValueError(f"table '{table_node.GetName()}' has no column '{name}': not a review table")
    return array


def read_regions(table_node: slicer.vtkMRMLTableNode) -> List[dict]:
    """The regions a review table holds (rank, segments, centre_ras, volume_ml, ..., reviewed)."""
    rows = []
    for row in range(table_node.GetNumberOfRows()):
        region: Dict[str, object] = {}
        for column, key, array_type in COLUMNS:
            value = _column(table_node, column).GetValue(row)
            if key is None:
                region[column] = value
            elif array_type is vtkStringArray:
                region[key] = [part for part in str(value).split(", ") if part]
            else:
                region[key] = float(value) if array_type is vtkDoubleArray else int(value)
        region["centre_ras"] = [float(region.pop(axis)) for axis in "RAS"]
        region["reviewed"] = bool(int(region.pop("Reviewed")))
        rows.append(region)
    return rows


def set_reviewed(table_node: slicer.vtkMRMLTableNode, markups_node: Optional[slicer.vtkMRMLMarkupsFiducialNode],
                 index: int, reviewed: bool) -> None:
    """Record a region (0-based row) as reviewed or not in the table, and show it on its control point: a point
    still to review is selected (drawn in the to-review colour), a reviewed one is not."""
    if not 0 <= index < table_node.GetNumberOfRows():
        raise IndexError(f"no review region {index + 1}; the table has {table_node.GetNumberOfRows()}")
    column = _column(table_node, "Reviewed")
    column.SetValue(index, int(bool(reviewed)))
    column.Modified()
    table_node.Modified()
    if markups_node is not None and index < markups_node.GetNumberOfControlPoints():
        markups_node.SetNthControlPointSelected(index, not reviewed)


def jump_slices(scene: slicer.vtkMRMLScene, centre_ras: Sequence[float]) -> int:
    """Centre every slice view of the scene on a point (RAS); returns how many views moved."""
    count = scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")
    for index in range(count):
        scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").JumpSliceByCentering(*[float(v) for v in centre_ras])
    return count


# -- uncertainty display ---------------------------------------------------------------------------------------
def uncertainty_colours(threshold: float) -> np.ndarray:
    """(COLOURS, 4) RGBA for uncertainty 0..1: transparent below `threshold`, a heat ramp from it to 1 whose
    opacity rises from 0.35 to 1, so the least doubtful coloured voxels stay faint."""
    values = np.linspace(0.0, 1.0, COLOURS)
    ramp = np.clip((values - threshold) / max(1.0 - threshold, 1e-6), 0.0, 1.0)
    anchors = np.array([a for a, _ in HEAT])
    rgb = np.stack([np.interp(ramp, anchors, [c[channel] for _, c in HEAT]) for channel in range(3)], -1)
    alpha = np.where(values >= threshold, 0.35 + 0.65 * ramp, 0.0)
    return np.concatenate([rgb, alpha[:, None]], -1)


def uncertainty_colour_node(threshold: float, name: str = "DareFuse uncertainty") -> slicer.vtkMRMLColorTableNode:
    """A colour table node (not in any scene) for uncertainty maps windowed to [0, 1]."""
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetNumberOfColors(COLOURS)
    set_colours(node, threshold)
    return node


def set_colours(node: slicer.vtkMRMLColorTableNode, threshold: float) -> None:
    for index, (r, g, b, a) in enumerate(uncertainty_colours(threshold)):
        node.SetColor(index, f"{index / (COLOURS - 1):.3f}", float(r), float(g), float(b), float(a))
    node.SetAttribute("DareFuseSlicer.Threshold", f"{threshold:g}")
    node.Modified()


def set_overlay_threshold(volume_node: slicer.vtkMRMLScalarVolumeNode, threshold: float) -> None:
    """Hide uncertainty below `threshold` (0..1) in the slice views: the display node's lower threshold, and its
    colour table's transparent end when it uses one of ours."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"uncertainty threshold {threshold} is outside 0..1")
    display = volume_node.GetDisplayNode()
    if display is None:
        raise ValueError(f"volume '{volume_node.GetName()}' has no display node")
    display.SetApplyThreshold(1)
    display.SetAutoThreshold(0)
    display.SetLowerThreshold(float(threshold))
    display.SetUpperThreshold(float(np.finfo(np.float32).max))
    colours = display.GetColorNode()
    if colours is not None and colours.GetAttribute("DareFuseSlicer.Threshold") is not None:
        set_colours(colours, threshold)


def use_colours(volume_node: slicer.vtkMRMLScalarVolumeNode, colours: slicer.vtkMRMLColorTableNode,
                threshold: float) -> None:
    """Show an uncertainty map (in a scene) through one of our colour tables, windowed to 0..1, transparent below
    `threshold`."""
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colours.GetID())
    display.SetAutoWindowLevel(0)
    display.SetWindowLevelMinMax(0.0, 1.0)
    set_overlay_threshold(volume_node, threshold)


def overlay_threshold(volume_node: slicer.vtkMRMLScalarVolumeNode) -> Optional[float]:
    display = volume_node.GetDisplayNode()
    if display is None or not display.GetApplyThreshold():
        return None
    return float(display.GetLowerThreshold())
