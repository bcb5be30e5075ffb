"""SimpleITK images <-> scalar volume nodes, with the geometry converted between LPS (ITK) and RAS (Slicer).

ITK maps a voxel index to LPS physical space: p = origin + direction @ (spacing * index). Slicer keeps the same
mapping in RAS as the volume's IJK-to-RAS matrix; RAS = diag(-1, -1, 1) @ LPS. slicer.util.itkImageFromVolume
returns a wrong origin under slicer-core, so the conversion is written out here (it is four lines of algebra).

Nodes are built outside any scene: the logic adds them only when a whole run has succeeded.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import SimpleITK as sitk
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkCommonMath import vtkMatrix4x4

import slicer

from ..errors import InputError

#: RAS <-> LPS: flip the first two axes.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a 3-D SimpleITK image."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return matrix


def vtk_matrix(matrix: np.ndarray) -> vtkMatrix4x4:
    result = vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            result.SetElement(row, column, float(matrix[row, column]))
    return result


def numpy_matrix(matrix: vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def node_ijk_to_ras(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """A volume node's own IJK-to-RAS as a 4x4 array (parent transforms not applied)."""
    matrix = vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return numpy_matrix(matrix)


def set_geometry_from_ras(image: sitk.Image, matrix: np.ndarray) -> None:
    """Give a SimpleITK image the geometry of an IJK-to-RAS matrix (spacing, direction and origin)."""
    lps = LPS_TO_RAS @ matrix[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    if np.any(spacing <= 0):
        raise InputError("The volume's geometry is degenerate: a voxel spacing is zero.")
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps / spacing).ravel().tolist())
    image.SetOrigin((LPS_TO_RAS @ matrix[:3, 3]).tolist())


def image_data_from_array(array: np.ndarray) -> vtkImageData:
    """A deep copy of a (z, y, x) array as vtkImageData (x varies fastest in both)."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) array, got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    array = np.ascontiguousarray(array)
    image_data = vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image_data.GetPointData().SetScalars(scalars)
    return image_data


def array_from_image_data(image_data: vtkImageData) -> np.ndarray:
    """A copy of vtkImageData's scalars as a (z, y, x) array."""
    scalars = image_data.GetPointData().GetScalars()
    dims = image_data.GetDimensions()
    return numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0]).copy()


def image_to_volume_node(image: sitk.Image, name: str, label_map: bool = False) -> slicer.vtkMRMLScalarVolumeNode:
    """A new volume node (not in any scene) holding a copy of a 3-D single-component image."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{name}: expected a 3-D single-component image")
    node = slicer.vtkMRMLLabelMapVolumeNode() if label_map else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    node.SetAndObserveImageData(image_data_from_array(sitk.GetArrayViewFromImage(image)))  # one copy, not two
    node.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras(image)))
    return node


def _world_ijk_to_ras(node: slicer.vtkMRMLVolumeNode, label: str) -> np.ndarray:
    """The node's IJK-to-RAS in world coordinates: a linear parent transform is applied, as Slicer displays it."""
    result = node_ijk_to_ras(node)
    transform = node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise InputError(
                f"{label}: volume '{node.GetName()}' is under a non-linear transform; harden the transform first "
                "(Transforms module) so the image can be resampled."
            )
        to_world = vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        result = numpy_matrix(to_world) @ result
    return result


def volume_node_to_image(node: slicer.vtkMRMLScalarVolumeNode, label: str = "volume") -> sitk.Image:
    """A SimpleITK copy of a scalar volume, in LPS physical space and its own pixel type.

    `label` names the input in error messages (e.g. "T1ce").
    """
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(f"{label}: volume '{node.GetName()}' has no image data.")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"{label}: volume '{node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components per voxel "
            "(a colour, vector or multi-volume image); give a single-component MRI volume."
        )
    array = array_from_image_data(image_data)
    image = sitk.GetImageFromArray(array)
    matrix = _world_ijk_to_ras(node, label)
    # A non-zero extent start shifts the first voxel (vtkImageData allows it; Slicer volumes rarely use it).
    extent_start = np.array(image_data.GetExtent()[::2], dtype=float)
    matrix[:3, 3] = matrix[:3, 3] + matrix[:3, :3] @ extent_start
    set_geometry_from_ras(image, matrix)
    return image


def same_geometry(image: sitk.Image, node: slicer.vtkMRMLVolumeNode, tolerance: float = 1e-4) -> bool:
    """Whether a node's voxels lie where an image's do (same size and IJK-to-RAS within `tolerance`)."""
    image_data = node.GetImageData()
    if image_data is None or tuple(image_data.GetDimensions()) != tuple(image.GetSize()):
        return False
    return bool(np.allclose(node_ijk_to_ras(node), ijk_to_ras(image), atol=tolerance))


def add_volume(scene: slicer.vtkMRMLScene, image: sitk.Image, name: str,
               label_map: bool = False) -> slicer.vtkMRMLScalarVolumeNode:
    """Add an image to `scene` (the node's own scene, never a global one) with default display nodes."""
    node = image_to_volume_node(image, name, label_map=label_map)
    node.SetName(scene.GenerateUniqueName(name))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def volume_array(node: slicer.vtkMRMLVolumeNode) -> Optional[np.ndarray]:
    """A copy of a volume's voxels as a (z, y, x) array, or None when it has no image data."""
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        return None
    return array_from_image_data(image_data)
