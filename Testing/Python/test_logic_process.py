"""DareFuseLogic.process on a real scene: outputs, ownership, all-or-nothing, re-runs, user edits.

The pipeline is the drawn one (scene_cases.drawn_pipeline): these tests are about what happens in the scene.
"""
import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

import slicer
from DareFuseSlicerLib import logic as logic_module
from DareFuseSlicerLib.errors import Cancelled
from DareFuseSlicerLib.logic import DareFuseLogic
from DareFuseSlicerLib.workerpool import WorkerPool
from DareFuseSlicerLib.scene import display, nodes, segmentation, volumes

import scene_cases


@pytest.fixture()
def logic():
    return DareFuseLogic(pipeline_run=scene_cases.drawn_pipeline, model_loader=scene_cases.drawn_loader)


@pytest.fixture()
def case():
    scene = scene_cases.new_scene()
    return scene, scene_cases.add_case(scene)


def _segment_names(node):
    seg = node.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def test_all_outputs_added_tagged_and_shown(logic, case):
    scene, inputs = case
    out = logic.process(**inputs)
    assert set(out.nodes) == {"segmentation", "uncertainty", "difference_prior", "gradcam",
                              "tumour_free_t1", "tumour_free_t1ce", "tumour_free_t2", "tumour_free_flair",
                              "review_table", "review_points", "uncertainty_colours"}
    for kind, node in out.nodes.items():
        assert node.GetScene() is scene
        assert node.GetAttribute(nodes.OUTPUT_ATTRIBUTE) == kind
        assert node.GetNodeReference(nodes.REFERENCE_ROLE) is inputs["t1"]
        if kind not in ("review_table", "uncertainty_colours"):
            assert node.GetDisplayNode() is not None
    assert _segment_names(out.segmentation) == ["NETC", "SNFH", "ET"]
    truth = scene_cases.truth_label()
    np.testing.assert_array_equal(segmentation.labels_array(out.segmentation, truth), sitk.GetArrayFromImage(truth))
    uncertainty = volumes.volume_array(out.nodes["uncertainty"])
    assert uncertainty.min() >= 0.0 and uncertainty.max() <= 1.0
    assert volumes.same_geometry(truth, out.nodes["uncertainty"])
    red = scene.GetNodeByID("vtkMRMLSliceCompositeNodeRed")
    assert red.GetBackgroundVolumeID() == inputs["flair"].GetID()
    assert red.GetForegroundVolumeID() == out.nodes["uncertainty"].GetID()
    assert out.nodes["gradcam"].GetDisplayNode().GetColorNodeID() == display.COLOUR_IDS["gradcam"]
    # the report is returned and stored with the segmentation, JSON-ready
    assert out.report["predicted_class"] == "glioma"
    assert set(out.report["volumes_ml"]) == {"NETC", "SNFH", "ET", "WT", "TC"}
    assert logic_module.report_of(out.segmentation) == json.loads(json.dumps(out.report))
    assert out.report["outputs"]["segmentation"] == out.segmentation.GetName()


def test_any_subset_of_contrasts_and_outputs(logic, case):
    scene, inputs = case
    out = logic.process(t2=inputs["t2"], flair=inputs["flair"], outputs=("segmentation", "prior"))
    assert set(out.nodes) == {"segmentation", "difference_prior", "tumour_free_t2", "tumour_free_flair",
                              "review_table", "review_points"}  # review regions come with the segmentation
    assert out.report["reference"] == "t2"
    assert out.segmentation.GetNodeReference(out.segmentation.GetReferenceImageGeometryReferenceRole()) \
        is inputs["t2"]
    only_maps = logic.process(t2=inputs["t2"], outputs=("uncertainty",))
    assert set(only_maps.nodes) == {"uncertainty", "uncertainty_colours"}


def test_outputs_join_the_inputs_study(logic, case):
    scene, inputs = case
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "P"), "S")
    for node in inputs.values():
        hierarchy.CreateItem(study, node)
    out = logic.process(**inputs)
    for node in out.nodes.values():
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study


@pytest.mark.parametrize("cancel_after", [0, 1, 2, 3, 4, 5, 6])
def test_cancel_at_any_point_leaves_the_scene_as_it_was(logic, case, cancel_after):
    scene, inputs = case
    before = scene_cases.scene_state(scene)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > cancel_after

    with pytest.raises(Cancelled):
        logic.process(**inputs, cancel=cancel)
    assert scene_cases.scene_state(scene) == before


@pytest.mark.parametrize("step", ["validate", "segmentation", "maps", "gradcam"])
def test_pipeline_failure_leaves_the_scene_as_it_was(case, step):
    scene, inputs = case
    before = scene_cases.scene_state(scene)

    def failing(*args, **kwargs):
        return scene_cases.drawn_pipeline(*args, fail_at=step, **kwargs)

    with pytest.raises(RuntimeError, match="injected"):
        DareFuseLogic(pipeline_run=failing, model_loader=scene_cases.drawn_loader).process(**inputs)
    assert scene_cases.scene_state(scene) == before


def test_failure_while_adding_nodes_is_rolled_back(logic, case, monkeypatch):
    scene, inputs = case
    first = logic.process(**inputs)
    before = scene_cases.scene_state(scene)
    styled = []

    def style_then_fail(node, kind, like=None):
        styled.append(kind)
        if len(styled) == 3:  # after a few nodes are in the scene
            raise RuntimeError("display failed")

    monkeypatch.setattr(display, "style_volume", style_then_fail)
    with pytest.raises(RuntimeError, match="display failed"):
        logic.process(**inputs)
    assert scene_cases.scene_state(scene) == before  # the first run's outputs are still there, nothing new
    assert all(node.GetScene() is scene for node in first.nodes.values())


def test_failure_while_setting_up_views_restores_them(logic, case, monkeypatch):
    scene, inputs = case
    logic.process(**inputs)
    views = [(c, (c.GetBackgroundVolumeID(), c.GetForegroundVolumeID(), c.GetForegroundOpacity()))
             for c in (scene.GetNodeByID(f"vtkMRMLSliceCompositeNode{n}") for n in ("Red", "Green", "Yellow"))]
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, -50.0, 40.0, 90.0)  # the user looks elsewhere
    red_slice = volumes.numpy_matrix(scene.GetNodeByID("vtkMRMLSliceNodeRed").GetSliceToRAS())
    original = display.setup_slice_views

    def set_up_then_fail(*args, **kwargs):
        original(*args, **kwargs)  # the views are changed (layers, slice positions) ...
        raise RuntimeError("view set-up failed")  # ... and then something goes wrong

    monkeypatch.setattr(display, "setup_slice_views", set_up_then_fail)
    other_case = scene_cases.add_case(scene, prefix="OTHER")  # a run that would move the slices elsewhere
    before = scene_cases.scene_state(scene)
    with pytest.raises(RuntimeError, match="view set-up failed"):
        logic.process(**other_case, outputs=("segmentation", "gradcam"))
    assert scene_cases.scene_state(scene) == before
    for composite, saved in views:
        assert (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID(),
                composite.GetForegroundOpacity()) == saved
    np.testing.assert_allclose(volumes.numpy_matrix(scene.GetNodeByID("vtkMRMLSliceNodeRed").GetSliceToRAS()),
                               red_slice)


def test_rerun_replaces_only_its_own_outputs(logic, case):
    scene, inputs = case
    mine = volumes.add_volume(scene, scene_cases.drawn_images()["t1"], "my notes volume")
    user_seg = segmentation.label_to_segmentation_node(scene_cases.truth_label(), "user segmentation", inputs["t1"])
    scene.AddNode(user_seg)
    first = logic.process(**inputs)
    count = scene.GetNumberOfNodes()
    second = logic.process(**inputs)
    assert scene.GetNumberOfNodes() == count
    assert all(node.GetScene() is None for node in first.nodes.values())  # replaced
    assert sorted(second.replaced) == sorted(node.GetName() for node in second.nodes.values())
    assert second.segmentation.GetName() == "CASE-t1n DareFuse segmentation"
    assert mine.GetScene() is scene and user_seg.GetScene() is scene
    assert all(node.GetScene() is scene for node in inputs.values())


def test_edited_segmentation_is_kept_and_a_new_one_made(logic, case):
    scene, inputs = case
    first = logic.process(**inputs)
    edited = first.segmentation
    labelmap = edited.GetSegmentation().GetSegment("NETC").GetRepresentation(segmentation.BINARY_LABELMAP)
    array = volumes.array_from_image_data(labelmap)
    before_edit = array.copy()
    scalars = labelmap.GetPointData().GetScalars()
    scalars.SetTuple1(int(np.flatnonzero(array.ravel() == 0)[0]), 1)  # the user paints one voxel of NETC
    scalars.Modified()
    painted = volumes.array_from_image_data(labelmap)
    second = logic.process(**inputs)
    assert edited.GetScene() is scene
    np.testing.assert_array_equal(volumes.array_from_image_data(labelmap), painted)  # untouched
    assert not np.array_equal(painted, before_edit)
    assert edited.GetName() in second.kept
    assert second.segmentation is not edited and second.segmentation.GetName() != edited.GetName()
    assert first.nodes["uncertainty"].GetScene() is None  # the unedited layers were replaced


def test_keep_flag_protects_an_output(logic, case):
    scene, inputs = case
    first = logic.process(**inputs, outputs=("uncertainty",))
    first.nodes["uncertainty"].SetAttribute(nodes.KEEP_ATTRIBUTE, "true")
    second = logic.process(**inputs, outputs=("uncertainty",))
    assert first.nodes["uncertainty"].GetScene() is scene
    assert second.nodes["uncertainty"].GetName() != first.nodes["uncertainty"].GetName()


def test_outputs_of_another_case_are_left_alone(logic, case):
    scene, inputs = case
    other = scene_cases.add_case(scene, prefix="OTHER")
    first = logic.process(**other)
    logic.process(**inputs)
    logic.process(**inputs)
    assert all(node.GetScene() is scene for node in first.nodes.values())


def test_progress_rises_to_one(logic, case):
    _, inputs = case
    seen = []
    logic.process(**inputs, progress=lambda fraction, message: seen.append(fraction))
    assert seen[-1] == pytest.approx(1.0)
    assert all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))


def test_start_then_finish_adds_the_nodes_only_at_finish(logic, case):
    """An in-process logic computes inside start(); the scene changes only when finish() commits."""
    scene, inputs = case
    before = scene_cases.scene_state(scene)
    run = logic.start(**inputs, outputs=("segmentation",))
    assert run.done and run.fraction == pytest.approx(logic_module.PIPELINE_SHARE) and run.time_left == ""
    assert scene_cases.scene_state(scene) == before  # nothing added until finish()
    seen = []
    out = run.finish(progress=lambda fraction, message: seen.append(fraction))
    assert out.segmentation.GetScene() is scene
    assert set(out.nodes) == {"segmentation", "review_table", "review_points"}  # the review comes with it
    assert seen[-1] == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="already been finished"):
        run.finish()


def test_class_gate_switch_reaches_the_pipeline(case):
    """class_gate reaches run(), through start() as through process()."""
    seen = []

    def recording(*args, class_gate=True, **kwargs):
        seen.append(class_gate)
        return scene_cases.drawn_pipeline(*args, **kwargs)

    logic = DareFuseLogic(pipeline_run=recording, model_loader=scene_cases.drawn_loader)
    _, inputs = case
    logic.process(**inputs)
    logic.start(**inputs, class_gate=False).finish()
    assert seen == [True, False]


def test_a_cancelled_run_leaves_the_scene_as_it_was(logic, case):
    scene, inputs = case
    before = scene_cases.scene_state(scene)
    run = logic.start(**inputs)
    run.cancel()
    with pytest.raises(Cancelled):
        run.finish()
    assert scene_cases.scene_state(scene) == before


def test_a_custom_pipeline_runs_in_this_process():
    """Callables of this process cannot go to the inference process: giving one means in_process."""
    assert DareFuseLogic(pipeline_run=scene_cases.drawn_pipeline).in_process
    assert DareFuseLogic(in_process=True).in_process
    assert not DareFuseLogic().in_process


def test_input_removed_during_the_run(logic, case):
    scene, inputs = case
    prepared = logic.prepare(**inputs)
    result, model_info = logic.compute(prepared)
    scene.RemoveNode(inputs["t2"])
    before = scene_cases.scene_state(scene)
    with pytest.raises(logic_module.InputError, match="^T2: volume 'CASE-t2w' was removed from the scene"):
        logic.commit(prepared, result, model_info=model_info)
    assert scene_cases.scene_state(scene) == before


def test_start_reports_input_errors_before_starting_anything(case):
    scene, inputs = case
    labels = scene_cases.volumes.add_volume(scene, scene_cases.truth_label(), "labels", label_map=True)
    pool = WorkerPool()
    with pytest.raises(logic_module.InputError, match="^T2: volume 'labels' is a label map"):
        DareFuseLogic(pool=pool).start(t1=inputs["t1"], t2=labels)
    assert pool.idle_worker is None and not pool._busy  # no inference process was started


@pytest.mark.slow  # imports torch (about 10 s here)
def test_drawn_result_mirrors_the_pipeline_result():
    """The drawn pipeline must keep returning what pipeline.run returns (it stands in for it in these tests)."""
    from DareFuseSlicerLib.pipeline.run import PipelineResult

    assert [f.name for f in dataclasses.fields(scene_cases.DrawnResult)] == \
        [f.name for f in dataclasses.fields(PipelineResult)]
