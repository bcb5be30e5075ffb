"""Colour maps, windows and slice views."""
import numpy as np
import pytest
import SimpleITK as sitk

import slicer
from DareFuseSlicerLib.scene import display, files, segmentation, volumes

import scene_cases


def test_colour_ids_are_slicers_built_in_ones():
    logic = slicer.vtkMRMLColorLogic
    assert display.COLOUR_IDS["uncertainty"] == logic.GetPETColorNodeID(slicer.vtkMRMLPETProceduralColorNode.PETheat)
    assert display.COLOUR_IDS["gradcam"] == logic.GetColorTableNodeID(slicer.vtkMRMLColorTableNode.Rainbow)
    assert display.COLOUR_IDS["difference_prior"] == logic.GetColorTableNodeID(slicer.vtkMRMLColorTableNode.Iron)
    assert display.COLOUR_IDS["tumour_free"] == logic.GetColorTableNodeID(slicer.vtkMRMLColorTableNode.Grey)


def _map(scene, values: np.ndarray, name: str):
    image = sitk.GetImageFromArray(values.astype(np.float32))
    return volumes.add_volume(scene, scene_cases.geometry(image), name)


@pytest.mark.parametrize("kind", ["uncertainty", "gradcam"])
def test_unit_maps_get_a_fixed_window_and_hide_low_values(kind):
    scene = files.new_scene()
    node = _map(scene, np.random.default_rng(0).random(scene_cases.SHAPE) * 0.3, kind)
    display.style_volume(node, kind)
    shown = node.GetDisplayNode()
    assert shown.GetColorNodeID() == display.COLOUR_IDS[kind]
    assert (shown.GetWindowLevelMin(), shown.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))
    assert not shown.GetAutoWindowLevel()
    assert shown.GetApplyThreshold()
    assert shown.GetLowerThreshold() == pytest.approx(display.DISPLAY[kind][2])


def test_prior_window_follows_its_data():
    scene = files.new_scene()
    values = np.zeros(scene_cases.SHAPE)
    values[5:15, 5:15, 5:15] = np.linspace(1.0, 9.0, 1000).reshape(10, 10, 10)
    node = _map(scene, values, "prior")
    display.style_volume(node, "difference_prior")
    shown = node.GetDisplayNode()
    low, high = shown.GetWindowLevelMin(), shown.GetWindowLevelMax()
    assert 1.0 <= low < 1.2 and 8.8 < high <= 9.0  # 0.5th..99.5th percentile of the non-zero voxels


def test_tumour_free_shares_the_input_window():
    scene = files.new_scene()
    images = scene_cases.drawn_images(np.float32)
    source = volumes.add_volume(scene, images["t2"], "t2")
    display.set_window(source.GetDisplayNode(), 100.0, 650.0)
    reconstruction = volumes.add_volume(scene, images["t2"], "t2 tumour-free")
    display.style_volume(reconstruction, "tumour_free", like=source)
    shown = reconstruction.GetDisplayNode()
    assert (shown.GetWindowLevelMin(), shown.GetWindowLevelMax()) == pytest.approx((100.0, 650.0))
    assert shown.GetColorNodeID() == display.COLOUR_IDS["tumour_free"]


def test_slice_views_layers_outlines_and_centre():
    scene = files.new_scene()
    images = scene_cases.drawn_images()
    background = volumes.add_volume(scene, images["flair"], "flair")
    overlay = _map(scene, np.ones(scene_cases.SHAPE) * 0.5, "uncertainty")
    seg = segmentation.label_to_segmentation_node(scene_cases.truth_label(), "seg", background)
    scene.AddNode(seg)
    centre = display.label_centre_ras(sitk.GetArrayFromImage(scene_cases.truth_label()), background)
    assert display.setup_slice_views(scene, background, overlay, seg, centre_ras=centre) == 3
    for layout in ("Red", "Yellow", "Green"):
        composite = scene.GetNodeByID(f"vtkMRMLSliceCompositeNode{layout}")
        assert composite.GetBackgroundVolumeID() == background.GetID()
        assert composite.GetForegroundVolumeID() == overlay.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(display.FOREGROUND_OPACITY)
    shown = seg.GetDisplayNode()
    assert shown.GetVisibility2DOutline() and not shown.GetVisibility2DFill()
    # every slice plane passes through the tumour's centre
    for layout in ("Red", "Yellow", "Green"):
        slice_to_ras = scene.GetNodeByID(f"vtkMRMLSliceNode{layout}").GetSliceToRAS()
        normal = np.array([slice_to_ras.GetElement(i, 2) for i in range(3)])
        origin = np.array([slice_to_ras.GetElement(i, 3) for i in range(3)])
        assert abs(normal @ (centre - origin)) < 1e-6


def test_scene_without_views_gets_none_created():
    scene = slicer.vtkMRMLScene()
    background = volumes.add_volume(scene, scene_cases.drawn_images()["t1"], "t1")
    before = scene.GetNumberOfNodes()
    assert display.setup_slice_views(scene, background) == 0
    assert scene.GetNumberOfNodes() == before


def test_choose_foreground_prefers_uncertainty():
    assert display.choose_foreground({"gradcam": "g", "uncertainty": "u"}) == "u"
    assert display.choose_foreground({"gradcam": "g", "difference_prior": "p"}) == "g"
    assert display.choose_foreground({"segmentation": "s"}) is None
