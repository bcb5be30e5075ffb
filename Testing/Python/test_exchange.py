"""exchange.py: values sent between the scene process and the inference process as files, exact and generic."""
import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib import exchange

import scene_cases


def _oblique(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.1, 0.9371234567891, 1.6000000001))
    image.SetOrigin((12.123456789012345, -30.5, 8.25))
    image.SetDirection(sitk.VersorTransform((0.2, 0.1, 1.0), 0.35).GetMatrix())
    return image


def _same_image(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetPixelID() == b.GetPixelID() and a.GetSize() == b.GetSize() and a.GetOrigin() == b.GetOrigin()
            and a.GetSpacing() == b.GetSpacing() and a.GetDirection() == b.GetDirection()
            and np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)))


@dataclasses.dataclass
class Region:
    rank: int
    centre_ras: tuple
    segments: List[str]


def test_a_pipeline_result_comes_back_exactly(tmp_path):
    """Every field of the drawn result (PipelineResult's fields), images with their exact geometry."""
    result = scene_cases.drawn_pipeline(scene_cases.drawn_images(), None)
    result.display_image = scene_cases.drawn_images()["flair"]
    result.settings = {"spacing_mm": 2.0, "window_roi": [80, 96, 80], "postprocess": {"min_wt_voxels": 250}}
    exchange.save(result, tmp_path)
    back = exchange.load(tmp_path)
    assert type(back) is type(result)  # its module is imported here, so it is rebuilt as its own class
    for field in dataclasses.fields(result):
        mine, theirs = getattr(result, field.name), getattr(back, field.name)
        if isinstance(mine, sitk.Image):
            assert _same_image(mine, theirs), field.name
        elif field.name == "tumour_free":
            assert list(theirs) == list(mine)
            assert all(_same_image(mine[c], theirs[c]) for c in mine)
        elif field.name == "review":  # a dataclass holding an array: compared field by field
            assert type(theirs) is type(mine) and theirs.regions == mine.regions
            assert np.array_equal(theirs.label_map, mine.label_map) and theirs.label_map.dtype == mine.label_map.dtype
            assert (theirs.message, theirs.settings) == (mine.message, mine.settings)
        else:
            assert theirs == mine, field.name


def test_a_new_field_of_any_kind_flows_through_unchanged(tmp_path):
    """A field added to the result later (an image, a dict of images, regions, arrays, a transform) needs no
    change in exchange.py: nothing there is named."""
    base = [(f.name, f.type, f) for f in dataclasses.fields(scene_cases.DrawnResult)]
    Extended = dataclasses.make_dataclass("Extended", [
        *base,
        ("new_mask", Optional[sitk.Image], dataclasses.field(default=None)),
        ("new_images", Dict[str, sitk.Image], dataclasses.field(default_factory=dict)),
        ("transforms", Dict[str, sitk.Transform], dataclasses.field(default_factory=dict)),
        ("regions", List[Region], dataclasses.field(default_factory=list)),
        ("region_map", Optional[np.ndarray], dataclasses.field(default=None)),
        ("by_label", dict, dataclasses.field(default_factory=dict)),
        ("source", Optional[Path], dataclasses.field(default=None)),
    ])
    Extended.__module__ = __name__
    globals()["Extended"] = Extended
    drawn = scene_cases.drawn_pipeline(scene_cases.drawn_images(), None)
    mask = _oblique(np.random.default_rng(1).integers(0, 2, (5, 6, 7)).astype(np.uint8))
    rigid = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (0.5, -1.5, 2.25))
    value = Extended(**{f.name: getattr(drawn, f.name) for f in dataclasses.fields(drawn)},
                     new_mask=mask, new_images={"t2": mask, "flair": mask}, transforms={"t2": rigid},
                     regions=[Region(1, (1.5, -2.0, 3.25), ["SNFH", "ET"])],
                     region_map=np.arange(24, dtype=np.int16).reshape(2, 3, 4),
                     by_label={1: np.float32(0.5), (2, 3): [np.int64(4), "x"]}, source=Path("/a/b.nii.gz"))
    exchange.save(value, tmp_path)
    back = exchange.load(tmp_path)
    assert isinstance(back, Extended)
    assert _same_image(back.new_mask, mask) and _same_image(back.new_images["flair"], mask)
    assert back.transforms["t2"].GetParameters() == pytest.approx(rigid.GetParameters(), abs=1e-12)
    assert back.transforms["t2"].GetFixedParameters() == pytest.approx(rigid.GetFixedParameters(), abs=1e-12)
    assert back.regions == [Region(1, (1.5, -2.0, 3.25), ["SNFH", "ET"])]
    assert back.region_map.dtype == np.int16 and np.array_equal(back.region_map, value.region_map)
    assert back.by_label == {1: 0.5, (2, 3): [4, "x"]}
    assert back.source == Path("/a/b.nii.gz")


def test_a_class_not_imported_here_comes_back_as_a_record(tmp_path):
    """Reading imports nothing (the result's own module imports torch): an unknown class is a Record."""
    exchange.save(Region(2, (0.0, 1.0, 2.0), ["ET"]), tmp_path)
    text = (tmp_path / exchange.VALUE_FILE).read_text()
    (tmp_path / exchange.VALUE_FILE).write_text(text.replace(f"{__name__}:Region", "no_such.module:Region"))
    back = exchange.load(tmp_path)
    assert isinstance(back, exchange.Record)
    assert (back.rank, back.centre_ras, back.segments) == (2, (0.0, 1.0, 2.0), ["ET"])
    assert exchange.record_type(back) == "no_such.module:Region"
    assert exchange.record_fields(back) == {"rank": 2, "centre_ras": (0.0, 1.0, 2.0), "segments": ["ET"]}


def test_what_cannot_be_sent_is_named(tmp_path):
    with pytest.raises(TypeError, match=r"value\.hook: a function cannot be passed between processes"):
        exchange.save({"hook": test_what_cannot_be_sent_is_named}, tmp_path)


def test_inputs_are_written_and_read_with_their_geometry(tmp_path):
    images = scene_cases.drawn_images()
    files = exchange.write_images(images, tmp_path)
    assert sorted(files) == sorted(images) and all(name.endswith(".mha") for name in files.values())
    back = exchange.read_images(files, tmp_path)
    assert all(_same_image(images[c], back[c]) for c in images)
    json.dumps(files)  # what the job line carries
