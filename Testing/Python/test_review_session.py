"""The review workflow on a real slicer-core scene: jump to a region, walk the list, mark reviewed, count the
user's edits per segment, export the review and save the edited segmentation."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.logic import DareFuseLogic
from DareFuseSlicerLib.pipeline.review import ReviewConfig, find_regions
from DareFuseSlicerLib.review_session import ReviewSession, counts_text, existing_files, table_rows
from DareFuseSlicerLib.scene import files, review, segmentation, volumes

import scene_cases

CONFIG = ReviewConfig(threshold=0.2, near_mm=3.0, min_ml=0.0, max_extent_mm=8.0, island_max_ml=0.0,
                      calibration_margin=(0.0, 1.0), calibration_error=((0.5, 0.0),) * 4)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture()
def reviewed_case():
    """A run on the drawn case, with review regions around the drawn tumour's edge in the scene."""
    scene = scene_cases.new_scene()
    inputs = scene_cases.add_case(scene)
    out = DareFuseLogic(pipeline_run=scene_cases.drawn_pipeline, model_loader=scene_cases.drawn_loader).process(**inputs)
    truth = scene_cases.truth_label()
    uncertainty = volumes.volume_array(out.nodes["uncertainty"])
    result = find_regions(sitk.GetArrayFromImage(truth), uncertainty, 1.0 - uncertainty, truth, CONFIG)
    assert len(result.regions) >= 3, result.message
    table = review.regions_table_node(result.table(), "regions")
    points = review.regions_markups_node(result.table(), "points")
    scene.AddNode(table)
    scene.AddNode(points)
    review.style_markups(points)
    clock = Clock()
    return scene, out.segmentation, ReviewSession(out.segmentation, table, points, clock=clock), clock, result


def paint(node, value, where):
    """What a Segment Editor stroke does to the shared labelmap: the voxel at flat index `where` becomes `value`."""
    labelmap = node.GetSegmentation().GetSegment("NETC").GetRepresentation(segmentation.BINARY_LABELMAP)
    scalars = labelmap.GetPointData().GetScalars()
    scalars.SetTuple1(int(where), value)
    scalars.Modified()
    labelmap.Modified()
    return volumes.array_from_image_data(labelmap)


def test_jumping_to_a_region_centres_the_views_and_names_its_segment(reviewed_case):
    scene, seg, session, _, result = reviewed_case
    region = session.go_to(1)
    assert region["rank"] == 2 and session.current == 1
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        matrix = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").GetSliceToRAS()
        assert [matrix.GetElement(row, 3) for row in range(3)] == pytest.approx(result.regions[1].centre_ras, abs=0.01)
    expected = seg.GetSegmentation().GetSegmentIdBySegmentName(result.regions[1].segments[0])
    assert region["segment_id"] == expected and expected
    with pytest.raises(IndexError):
        session.go_to(len(result.regions))


def test_next_and_previous_walk_the_list_and_stop_at_its_ends(reviewed_case):
    _, _, session, _, result = reviewed_case
    assert session.previous() is None
    assert session.next()["rank"] == 1 and session.next()["rank"] == 2
    assert session.previous()["rank"] == 1 and session.previous() is None
    session.go_to(len(result.regions) - 1)
    assert session.next() is None and session.current == len(result.regions) - 1


def test_marking_reviewed_counts_and_shows_on_the_points(reviewed_case):
    _, _, session, _, result = reviewed_case
    total = len(result.regions)
    assert session.counts() == (0, total)
    session.go_to(0)
    session.set_reviewed()
    session.set_reviewed(True, index=2)
    assert session.counts() == (2, total - 2)
    assert not session.markups.GetNthControlPointSelected(0) and session.markups.GetNthControlPointSelected(1)
    session.set_reviewed(False, index=2)
    assert session.counts() == (1, total - 1)


def test_edits_are_counted_per_segment_and_volumes_follow(reviewed_case):
    _, seg, session, _, _ = reviewed_case
    before = session.volumes_ml()
    labels = session.labels_now()
    snfh = np.flatnonzero(labels.ravel() == 2)
    background = np.flatnonzero(labels.ravel() == 0)
    # The labelmap's voxel order is the reference grid's (z, y, x), as the run made it.
    for where in snfh[:5]:
        paint(seg, 1, where)  # five SNFH voxels relabelled NETC
    for where in background[:3]:
        paint(seg, 3, where)  # three voxels added to ET
    changes = session.changes()
    assert changes["NETC"] == {"added": 5, "removed": 0}
    assert changes["SNFH"] == {"added": 0, "removed": 5}
    assert changes["ET"] == {"added": 3, "removed": 0}
    assert changes["total_voxels_changed"] == 8
    after = session.volumes_ml()
    voxel_ml = session.voxel_ml
    assert after["NETC"] - before["NETC"] == pytest.approx(5 * voxel_ml, abs=1e-4)
    assert after["WT"] - before["WT"] == pytest.approx(3 * voxel_ml, abs=1e-4)


def test_the_export_holds_what_was_done(reviewed_case, tmp_path):
    _, seg, session, clock, result = reviewed_case
    session.go_to(0)
    clock.now += 30.0
    session.set_reviewed()
    session.go_to(1)
    clock.now += 12.5
    paint(seg, 1, np.flatnonzero(session.labels_now().ravel() == 0)[0])
    json_path, csv_path = session.export(tmp_path)
    exported = json.loads(json_path.read_text())
    assert exported["regions_reviewed"] == 1 and exported["regions_remaining"] == len(result.regions) - 1
    assert exported["time_in_review_s"] == pytest.approx(42.5)
    assert [r["seconds"] for r in exported["regions"][:2]] == [30.0, 12.5]
    assert exported["voxels_changed"]["NETC"] == {"added": 1, "removed": 0}
    assert exported["volumes_ml"]["after"]["WT"] > exported["volumes_ml"]["before"]["WT"]
    rows = list(csv.DictReader(csv_path.open()))
    volume_rows = {r["name"]: r for r in rows if r["kind"] == "volume"}
    assert volume_rows["NETC"]["voxels_added"] == "1"
    assert float(volume_rows["WT"]["volume_after_ml"]) == pytest.approx(exported["volumes_ml"]["after"]["WT"])
    assert [r["reviewed"] for r in rows if r["kind"] == "region"][:2] == ["1", "0"]
    assert rows[-1]["kind"] == "total" and float(rows[-1]["seconds"]) == pytest.approx(42.5)
    with pytest.raises(InputError, match="already exists"):
        session.export(tmp_path)
    assert json.loads(json_path.read_text()) == exported  # untouched


def test_the_edited_segmentation_is_saved_as_seg_nrrd_and_nifti_in_one_call(reviewed_case, tmp_path):
    _, seg, session, _, _ = reviewed_case
    paint(seg, 3, np.flatnonzero(session.labels_now().ravel() == 0)[0])
    seg_path, nifti_path = session.save_segmentation(tmp_path, "edited")
    assert seg_path.name == "edited.seg.nrrd" and nifti_path.name == "edited.nii.gz"
    written = sitk.ReadImage(str(nifti_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), session.labels_now())
    assert written.GetSpacing() == pytest.approx(scene_cases.SPACING)
    again = files.load_segmentation(scene_cases.new_scene(), seg_path)
    np.testing.assert_array_equal(segmentation.labels_array(again, written), session.labels_now())
    with pytest.raises(InputError, match="already exists"):
        session.save_segmentation(tmp_path, "edited")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.nii.gz", "edited.seg.nrrd"]


def test_the_logic_starts_a_review_of_a_run_and_finds_it_again_in_a_saved_scene(tmp_path):
    scene = scene_cases.new_scene()
    inputs = scene_cases.add_case(scene)
    logic = DareFuseLogic(pipeline_run=scene_cases.drawn_pipeline, model_loader=scene_cases.drawn_loader)
    out = logic.process(**inputs)
    session = logic.start_review(out.segmentation)
    assert session.table is out.nodes["review_table"] and session.markups is out.nodes["review_points"]
    assert len(session.regions) == len(out.result.review.regions) > 0
    session.go_to(0)
    session.set_reviewed()
    assert logic.latest_reviewable(scene) is out.segmentation
    # The uncertainty overlay starts at the run's threshold; the slider's call moves it.
    uncertainty = out.nodes["uncertainty"]
    assert logic.uncertainty_threshold(uncertainty) == pytest.approx(scene_cases.DRAWN_REVIEW.overlay_threshold)
    assert uncertainty.GetDisplayNode().GetColorNode() is out.nodes["uncertainty_colours"]
    logic.set_uncertainty_threshold(uncertainty, 0.6)
    assert logic.uncertainty_threshold(uncertainty) == pytest.approx(0.6)
    # A saved and reloaded scene resumes the review where it stopped.
    loaded = files.load_scene_bundle(files.save_scene_bundle(scene, tmp_path / "scene.mrb"))
    again = logic.latest_reviewable(loaded)
    assert again is not None and again.GetName() == out.segmentation.GetName()
    assert logic.start_review(again).counts() == session.counts()
    # A segmentation without review regions says so.
    from DareFuseSlicerLib.scene import nodes

    other = segmentation.label_to_segmentation_node(scene_cases.truth_label(), "mine", inputs["t1"])
    scene.AddNode(other)
    with pytest.raises(InputError, match="no review regions"):
        logic.start_review(other)
    assert not nodes.is_output(other)


def test_what_the_panel_shows_comes_from_here(reviewed_case, tmp_path):
    _, _, session, _, result = reviewed_case
    session.go_to(0)
    session.set_reviewed()
    rows = table_rows(session.regions)
    first = result.regions[0]
    assert rows[0] == (str(first.rank), ", ".join(first.segments), f"{first.volume_ml:.2f}",
                       f"{first.expected_error_ml:.2f}", "yes")
    assert rows[1][4] == "" and len(rows) == len(result.regions)
    assert counts_text(*session.counts()) == f"1 reviewed, {len(rows) - 1} remaining of {len(rows)} regions."
    assert counts_text(0, 0).startswith("No review regions")
    assert existing_files(tmp_path, session.export_names()) == []
    session.export(tmp_path)
    assert existing_files(tmp_path, session.export_names()) == ["review.json", "review.csv"]
    assert session.export(tmp_path, overwrite=True)[0].name == "review.json"


def test_a_segmentation_with_nothing_to_review_gives_an_empty_review_not_an_error(tmp_path):
    scene = scene_cases.new_scene()
    inputs = scene_cases.add_case(scene)
    truth = scene_cases.truth_label()
    array = sitk.GetArrayFromImage(truth)
    result = find_regions(array, np.zeros(array.shape, np.float32), np.ones(array.shape, np.float32), truth,
                          CONFIG)  # the network is sure everywhere: nothing in doubt
    assert result.regions == [] and "No review regions" in result.message
    seg = segmentation.label_to_segmentation_node(truth, "sure", inputs["t1"])
    scene.AddNode(seg)
    table = review.regions_table_node(result.table(), "regions")
    points = review.regions_markups_node(result.table(), "points")
    scene.AddNode(table)
    scene.AddNode(points)
    review.style_markups(points)
    session = ReviewSession(seg, table, points)
    assert session.counts() == (0, 0) and session.next() is None and session.previous() is None
    assert counts_text(*session.counts()).startswith("No review regions")
    exported = json.loads(session.export(tmp_path)[0].read_text())
    assert exported["regions"] == [] and exported["voxels_changed"]["total_voxels_changed"] == 0
    with pytest.raises(IndexError, match="no review region is current"):
        session.set_reviewed()
