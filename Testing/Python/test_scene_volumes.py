"""SimpleITK <-> volume node conversion: geometry (LPS/RAS, oblique, anisotropic), pixel types, transforms."""
import numpy as np
import pytest
import SimpleITK as sitk
import vtk

import slicer
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.scene import files, volumes

import scene_cases


def _assert_same_geometry(a: sitk.Image, b: sitk.Image, atol=1e-5):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_round_trip_keeps_voxels_geometry_and_type(dtype):
    scene = files.new_scene()
    image = scene_cases.drawn_images(dtype)["t1ce"]
    node = volumes.add_volume(scene, image, "t1ce")
    back = volumes.volume_node_to_image(node, "T1ce")
    _assert_same_geometry(back, image)
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_ijk_to_ras_is_lps_flipped():
    image = scene_cases.drawn_images()["t1"]
    matrix = volumes.ijk_to_ras(image)
    index = (3, 5, 7)
    lps = np.array(image.TransformIndexToPhysicalPoint(index))
    ras = matrix @ np.array([*index, 1.0])
    np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_slicer_storage_node_and_simpleitk_agree_on_geometry(tmp_path):
    """The node's geometry is Slicer's: a NIfTI written by Slicer's storage node reads back identically in ITK."""
    scene = files.new_scene()
    image = scene_cases.drawn_images(np.float32)["flair"]
    node = volumes.add_volume(scene, image, "flair")
    path = files.save_volume(node, tmp_path / "flair.nii.gz")
    read = sitk.ReadImage(str(path))
    _assert_same_geometry(read, image, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))
    # and a file SimpleITK wrote loads through Slicer's storage node at the same place
    sitk.WriteImage(image, str(tmp_path / "itk.nrrd"))
    loaded = files.load_volume(scene, tmp_path / "itk.nrrd")
    assert volumes.same_geometry(image, loaded, tolerance=1e-4)


def test_linear_parent_transform_is_applied():
    scene = files.new_scene()
    image = scene_cases.drawn_images()["t2"]
    node = volumes.add_volume(scene, image, "t2")
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)  # 10 mm towards R = -10 mm in LPS x
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = volumes.volume_node_to_image(node, "T2")
    np.testing.assert_allclose(np.array(moved.GetOrigin()) - np.array(image.GetOrigin()), [-10.0, 0, 0], atol=1e-9)


def test_non_linear_transform_is_refused_with_the_input_named():
    scene = files.new_scene()
    node = volumes.add_volume(scene, scene_cases.drawn_images()["t2"], "t2")
    grid = slicer.vtkMRMLGridTransformNode()
    scene.AddNode(grid)
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match=r"T2: .*non-linear transform"):
        volumes.volume_node_to_image(node, "T2")


def test_colour_volume_is_refused():
    scene = files.new_scene()
    node = slicer.vtkMRMLVectorVolumeNode()
    scene.AddNode(node)
    rgb = vtk.vtkImageData()
    rgb.SetDimensions(4, 4, 4)
    rgb.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(rgb)
    with pytest.raises(InputError, match="3 components"):
        volumes.volume_node_to_image(node, "FLAIR")


def test_extent_not_starting_at_zero_shifts_the_origin():
    scene = files.new_scene()
    image = scene_cases.drawn_images()["t1"]
    node = volumes.add_volume(scene, image, "t1")
    shifted = vtk.vtkImageData()
    shifted.DeepCopy(node.GetImageData())
    size = image.GetSize()
    shifted.SetExtent(2, 2 + size[0] - 1, 0, size[1] - 1, 0, size[2] - 1)
    node.SetAndObserveImageData(shifted)
    back = volumes.volume_node_to_image(node)
    np.testing.assert_allclose(back.GetOrigin(), image.TransformIndexToPhysicalPoint((2, 0, 0)), atol=1e-9)
