"""The module's inputs on a scene: checking an input node, assigning T1/T1ce/T2/FLAIR by volume names, and
loading the bundled sample case. Reads nodes, never torch (this runs in the process that holds the scene)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

import slicer

from .constants import BRATS_SUFFIX, CONTRASTS, contrast_of_name
from .errors import InputError
from .pipeline import validate
from .scene import nodes, volumes


def check_input_node(node: Any, label: str) -> None:
    """Raise InputError naming `label` unless `node` is a usable 3-D single-component scalar volume in a scene."""
    if not hasattr(node, "IsA") or not node.IsA("vtkMRMLScalarVolumeNode"):
        kind = node.GetClassName() if hasattr(node, "GetClassName") else type(node).__name__
        raise InputError(f"{label}: '{_name(node)}' is a {kind}, not a scalar volume.")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{label}: volume '{node.GetName()}' is a label map, not an MR image; select the image "
                         "(or convert it to a scalar volume in the Volumes module if it really is one).")
    if node.GetScene() is None:
        raise InputError(f"{label}: volume '{node.GetName()}' is not in a scene.")
    if nodes.is_output(node):
        raise InputError(f"{label}: volume '{node.GetName()}' is a DareFuse output, not an input image.")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None \
            or image_data.GetNumberOfPoints() == 0:
        raise InputError(f"{label}: volume '{node.GetName()}' is empty (it has no image data).")
    # The pipeline's own shape rules (2-D, thin slab, colour voxels), with the same messages as the command line.
    validate.check_geometry(f"{label} ('{node.GetName()}')", node_geometry(node))


def node_geometry(node: slicer.vtkMRMLScalarVolumeNode) -> "validate.Geometry":
    """What pipeline.validate needs to know about a volume, read from the node without copying voxels."""
    image_data = node.GetImageData()
    ijk_to_ras = volumes.node_ijk_to_ras(node)
    spacing = tuple(float(np.linalg.norm(ijk_to_ras[:3, axis])) for axis in range(3))
    return validate.Geometry(tuple(image_data.GetDimensions()), spacing, image_data.GetNumberOfScalarComponents(),
                             image_data.GetScalarTypeAsString())


def _name(node: Any) -> str:
    return node.GetName() if hasattr(node, "GetName") else repr(node)



# -- assigning inputs by name, loading the sample case -------------------------------------------------------
def auto_assign_inputs(scene: slicer.vtkMRMLScene) -> Dict[str, slicer.vtkMRMLScalarVolumeNode]:
    """Guess T1, T1ce, T2 and FLAIR from the names of the scene's scalar volumes.

    Names are read with constants.contrast_of_name (BraTS file names such as CASE-t1c.nii.gz, and scanner series
    descriptions such as 'T1 MPRAGE post Gd' or 't2_tirm_tra_dark-fluid'). Label maps and this module's outputs are skipped. When several cases are loaded, the case (volumes
    sharing a name stem) with the most contrasts wins, the most recently added on a tie.
    Returns contrast -> node for the contrasts found.
    """
    cases: Dict[str, Dict[str, Tuple[int, slicer.vtkMRMLScalarVolumeNode]]] = {}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.IsA("vtkMRMLLabelMapVolumeNode") or nodes.is_output(node) or node.GetHideFromEditors():
            continue
        contrast, stem = contrast_of_name(node.GetName() or "")
        if contrast is None:
            continue
        cases.setdefault(stem, {}).setdefault(contrast, (index, node))
    if not cases:
        return {}
    best = max(cases.values(), key=lambda case: (len(case), max(order for order, _ in case.values())))
    return {contrast: best[contrast][1] for contrast in CONTRASTS if contrast in best}


def load_sample_case(scene: slicer.vtkMRMLScene, paths: Optional[Mapping[str, Any]] = None,
                     with_labels: bool = False) -> Dict[str, slicer.vtkMRMLScalarVolumeNode]:
    """Load the bundled sample case (SHA256-checked) into `scene` through storage nodes.

    paths: manifest key (t1n, t1c, t2w, t2f, seg) -> file; sampledata.sample_case_paths() when None.
    Returns contrast -> volume node, plus "labels" -> label map node when with_labels.
    """
    if paths is None:
        from .sampledata import sample_case_paths

        paths = sample_case_paths()
    from .scene import files

    loaded: Dict[str, slicer.vtkMRMLScalarVolumeNode] = {}
    for contrast in CONTRASTS:
        path = paths.get(BRATS_SUFFIX[contrast]) or paths.get(contrast)
        if path is not None:
            loaded[contrast] = files.load_volume(scene, path)
    if not loaded:
        raise InputError("The sample case has no image files.")
    if with_labels and paths.get("seg") is not None:
        loaded["labels"] = files.load_volume(scene, paths["seg"], label_map=True)
    return loaded
