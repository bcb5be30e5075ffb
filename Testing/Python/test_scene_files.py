"""Scene files: .seg.nrrd and .mrb written through storage nodes and read back by slicer-core and SimpleITK."""
import numpy as np
import pytest
import SimpleITK as sitk

import slicer
from DareFuseSlicerLib.constants import LABELS
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.scene import display, files, segmentation, volumes

import scene_cases


def test_new_scene_has_colours_views_and_hierarchy():
    scene = files.new_scene()
    for colour_id in display.COLOUR_IDS.values():
        assert scene.GetNodeByID(colour_id) is not None, colour_id
    layouts = sorted(scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode").GetLayoutName()
                     for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")))
    assert layouts == ["Green", "Red", "Yellow"]
    assert scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") is not None


def test_segmentation_file_reads_back_in_simpleitk_and_slicer(tmp_path):
    scene = files.new_scene()
    reference = volumes.add_volume(scene, scene_cases.drawn_images()["t1"], "t1")
    label = scene_cases.truth_label()
    node = segmentation.label_to_segmentation_node(label, "seg", reference)
    scene.AddNode(node)
    path = files.save_segmentation(node, tmp_path / "segmentation.seg.nrrd")
    assert [p.name for p in tmp_path.iterdir()] == ["segmentation.seg.nrrd"]  # no staging folder left

    read = sitk.ReadImage(str(path))
    assert read.GetSize() == label.GetSize()
    np.testing.assert_allclose(read.GetOrigin(), label.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), label.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(label))
    names = {read.GetMetaData(f"Segment{i}_Name"): int(read.GetMetaData(f"Segment{i}_LabelValue")) for i in range(3)}
    assert names == {name: value for value, name in LABELS.items()}
    assert "SCT^108369006^Neoplasm" in read.GetMetaData("Segment2_Tags")

    loaded = files.load_segmentation(scene, path)
    np.testing.assert_array_equal(segmentation.labels_array(loaded, label), sitk.GetArrayFromImage(label))
    assert loaded.GetSegmentation().GetSegment("ET").GetTerminology() == \
        node.GetSegmentation().GetSegment("ET").GetTerminology()


def test_scene_bundle_round_trip(tmp_path):
    scene = files.new_scene()
    images = scene_cases.drawn_images()
    reference = volumes.add_volume(scene, images["flair"], "CASE-t2f")
    uncertainty = volumes.add_volume(scene, sitk.Cast(images["t1"], sitk.sitkFloat32) / 1000.0, "uncertainty")
    display.style_volume(uncertainty, "uncertainty")
    node = segmentation.label_to_segmentation_node(scene_cases.truth_label(), "CASE segmentation", reference)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    display.setup_slice_views(scene, reference, uncertainty, node)

    path = files.save_scene_bundle(scene, tmp_path / "scene.mrb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.mrb"]

    loaded = files.load_scene_bundle(path)
    seg = loaded.GetFirstNodeByName("CASE segmentation")
    assert seg is not None and seg.IsA("vtkMRMLSegmentationNode")
    assert [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(3)] == ["NETC", "SNFH", "ET"]
    np.testing.assert_array_equal(segmentation.labels_array(seg, images["flair"]),
                                  sitk.GetArrayFromImage(scene_cases.truth_label()))
    image = loaded.GetFirstNodeByName("CASE-t2f")
    assert volumes.same_geometry(images["flair"], image)
    composite = loaded.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
    assert composite.GetBackgroundVolumeID() == image.GetID()
    assert loaded.GetNodeByID(composite.GetForegroundVolumeID()).GetName() == "uncertainty"
    shown = loaded.GetFirstNodeByName("uncertainty").GetDisplayNode()
    assert shown.GetColorNodeID() == display.COLOUR_IDS["uncertainty"]


def test_failed_write_leaves_no_file(tmp_path):
    node = slicer.vtkMRMLSegmentationNode()  # no segments and no data: nothing sensible to write
    with pytest.raises(RuntimeError):
        files.save_volume(slicer.vtkMRMLScalarVolumeNode(), tmp_path / "empty.nii.gz")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="does not exist"):
        files.save_segmentation(node, tmp_path / "missing" / "x.seg.nrrd")


def test_missing_or_broken_files_raise_input_errors(tmp_path):
    scene = files.new_scene()
    before = scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="does not exist"):
        files.load_volume(scene, tmp_path / "nope.nii.gz")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image")
    with pytest.raises(InputError, match="could not be read"):
        files.load_volume(scene, broken)
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(InputError):
        files.load_scene_bundle(broken)


def test_bundle_read_and_write_keep_the_working_directory(tmp_path):
    """Slicer's bundle reader changes directory and, on failure, leaves the process in a deleted folder."""
    import os

    here = os.getcwd()
    scene = files.new_scene()
    volumes.add_volume(scene, scene_cases.drawn_images()["t1"], "t1")
    loaded = files.load_scene_bundle(files.save_scene_bundle(scene, tmp_path / "a.mrb"))
    assert os.getcwd() == here
    not_zip = tmp_path / "b.mrb"
    not_zip.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError):
        files.load_scene_bundle(not_zip)
    assert os.getcwd() == here
    # a loaded scene can be saved again (no reference to the removed cache folder)
    files.save_scene_bundle(loaded, tmp_path / "c.mrb")
    assert files.load_scene_bundle(tmp_path / "c.mrb").GetFirstNodeByName("t1") is not None


def test_scenes_are_freed(tmp_path):
    """Nothing keeps a finished scene alive (a batch makes one per case: issue 6's memory soak)."""
    import gc

    deleted = []
    for index in range(3):
        scene = files.new_scene()
        volumes.add_volume(scene, scene_cases.drawn_images()["t1"], "t1")
        loaded = files.load_scene_bundle(files.save_scene_bundle(scene, tmp_path / f"{index}.mrb"))
        for each in (scene, loaded):
            each.AddObserver("DeleteEvent", lambda *args: deleted.append(1))
        del scene, loaded, each
        gc.collect()
    assert len(deleted) == 6
