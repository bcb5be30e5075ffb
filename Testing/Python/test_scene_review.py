"""Review regions in a real slicer-core scene: table and markups nodes, reviewed state, slice jumps, saved scenes,
and the uncertainty colour table with a transparent low end."""
import numpy as np
import pytest
import SimpleITK as sitk

import slicer
from DareFuseSlicerLib.scene import files, review, volumes

REGIONS = [
    {"rank": 1, "centre_ras": [-12.5, 30.0, 8.0], "volume_ml": 2.5, "mean_uncertainty": 0.41,
     "peak_uncertainty": 0.6, "segments": ["SNFH", "ET"], "expected_error_ml": 0.9, "kinds": ["doubtful", "gap"],
     "mean_error_probability": 0.36},
    {"rank": 2, "centre_ras": [4.0, -7.25, 21.0], "volume_ml": 0.4, "mean_uncertainty": 0.3,
     "peak_uncertainty": 0.35, "segments": ["NETC"], "expected_error_ml": 0.1, "kinds": ["island"],
     "mean_error_probability": 0.25},
]


@pytest.fixture()
def scene():
    return files.new_scene()


def added(scene):
    table = review.regions_table_node(REGIONS, "regions")
    points = review.regions_markups_node(REGIONS, "points")
    scene.AddNode(table)
    scene.AddNode(points)
    review.style_markups(points)
    return table, points


def test_regions_become_a_table_and_one_labelled_point_each(scene):
    table, points = added(scene)
    assert table.GetNumberOfRows() == 2 and table.GetTable().GetColumnByName("Segments").GetValue(0) == "SNFH, ET"
    assert points.GetNumberOfControlPoints() == 2
    assert [points.GetNthControlPointLabel(i) for i in range(2)] == ["1", "2"]
    position = [0.0, 0.0, 0.0]
    points.GetNthControlPointPosition(1, position)
    assert position == pytest.approx(REGIONS[1]["centre_ras"])
    assert points.GetLocked() and all(points.GetNthControlPointSelected(i) for i in range(2))
    read = review.read_regions(table)
    for got, expected in zip(read, REGIONS):
        assert got["rank"] == expected["rank"] and got["segments"] == expected["segments"]
        assert got["centre_ras"] == pytest.approx(expected["centre_ras"]) and got["reviewed"] is False
        assert got["volume_ml"] == pytest.approx(expected["volume_ml"]) and got["kinds"] == expected["kinds"]


def test_reviewed_state_shows_in_the_table_and_on_the_points(scene):
    table, points = added(scene)
    display = points.GetDisplayNode()
    assert display.GetSelectedColor() == pytest.approx(review.TO_REVIEW_COLOUR)
    assert display.GetColor() == pytest.approx(review.REVIEWED_COLOUR)
    review.set_reviewed(table, points, 1, True)
    assert [r["reviewed"] for r in review.read_regions(table)] == [False, True]
    assert points.GetNthControlPointSelected(0) and not points.GetNthControlPointSelected(1)
    review.set_reviewed(table, points, 1, False)
    assert points.GetNthControlPointSelected(1) and not review.read_regions(table)[1]["reviewed"]
    with pytest.raises(IndexError, match="no review region 3"):
        review.set_reviewed(table, points, 2, True)


def test_a_saved_scene_keeps_the_regions_and_what_was_reviewed(scene, tmp_path):
    table, points = added(scene)
    review.set_reviewed(table, points, 0, True)
    path = files.save_scene_bundle(scene, tmp_path / "review.mrb")
    loaded = files.load_scene_bundle(path)
    table_again = loaded.GetFirstNodeByClass("vtkMRMLTableNode")
    points_again = loaded.GetFirstNodeByClass("vtkMRMLMarkupsFiducialNode")
    read = review.read_regions(table_again)
    assert [r["reviewed"] for r in read] == [True, False]
    assert [r["rank"] for r in read] == [1, 2] and read[1]["centre_ras"] == pytest.approx(REGIONS[1]["centre_ras"])
    assert not points_again.GetNthControlPointSelected(0) and points_again.GetNthControlPointSelected(1)


def test_jumping_centres_every_slice_view_on_the_point(scene):
    centre = REGIONS[0]["centre_ras"]
    assert review.jump_slices(scene, centre) == 3
    for index in range(3):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSliceNode")
        matrix = node.GetSliceToRAS()
        assert [matrix.GetElement(row, 3) for row in range(3)] == pytest.approx(centre)


def test_uncertainty_colours_are_transparent_below_the_threshold():
    colours = review.uncertainty_colours(0.3)
    values = np.linspace(0, 1, review.COLOURS)
    assert (colours[values < 0.3, 3] == 0).all()
    assert (colours[values >= 0.3, 3] >= 0.35).all() and colours[-1, 3] == pytest.approx(1.0)
    assert np.all(np.diff(colours[values >= 0.3, 3]) >= 0)


def test_the_threshold_moves_the_transparent_end_and_the_display_threshold(scene):
    image = sitk.GetImageFromArray(np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10))
    node = volumes.add_volume(scene, image, "uncertainty")
    colours = review.uncertainty_colour_node(0.3)
    scene.AddNode(colours)
    node.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
    review.set_overlay_threshold(node, 0.45)
    assert review.overlay_threshold(node) == pytest.approx(0.45)
    rgba = [0.0] * 4
    colours.GetColor(int(0.44 * 255), rgba)
    assert rgba[3] == 0.0
    colours.GetColor(int(0.46 * 255) + 1, rgba)
    assert rgba[3] > 0.3
    with pytest.raises(ValueError, match="outside 0..1"):
        review.set_overlay_threshold(node, 1.5)
