"""DareFuseLogic's input checks, input assignment from names, sample loading and the widget's helpers."""
import numpy as np
import pytest
import SimpleITK as sitk
import vtk

import slicer
from DareFuseSlicerLib import dependencies
from DareFuseSlicerLib import logic as logic_module
from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.inputs import auto_assign_inputs, contrast_of_name, load_sample_case
from DareFuseSlicerLib.logic import DareFuseLogic
from DareFuseSlicerLib.scene import files, segmentation, volumes

import scene_cases


@pytest.fixture()
def case():
    scene = scene_cases.new_scene()
    return scene, scene_cases.add_case(scene)


def _prepare_fails(match, **inputs):
    with pytest.raises(InputError, match=match):
        DareFuseLogic().prepare(**inputs)


def test_no_input(case):
    _prepare_fails("select at least one of T1, T1ce, T2 or FLAIR")


def test_label_map_named_by_its_selector(case):
    scene, inputs = case
    labels = volumes.add_volume(scene, scene_cases.truth_label(), "CASE-seg", label_map=True)
    _prepare_fails(r"^T1ce: volume 'CASE-seg' is a label map", t1=inputs["t1"], t1ce=labels)


def test_not_a_volume(case):
    scene, inputs = case
    seg = slicer.vtkMRMLSegmentationNode()
    seg.SetName("tumour")
    scene.AddNode(seg)
    _prepare_fails(r"^FLAIR: 'tumour' is a vtkMRMLSegmentationNode, not a scalar volume", flair=seg)


def test_not_in_a_scene_or_in_two_scenes(case):
    scene, inputs = case
    loose = volumes.image_to_volume_node(scene_cases.drawn_images()["t2"], "loose")
    _prepare_fails(r"^T2: volume 'loose' is not in a scene", t2=loose)
    other_scene = scene_cases.new_scene()
    elsewhere = volumes.add_volume(other_scene, scene_cases.drawn_images()["t2"], "elsewhere")
    _prepare_fails(r"^T2: volume 'elsewhere' is in a different scene from the T1 volume",
                   t1=inputs["t1"], t2=elsewhere)


def test_same_volume_twice(case):
    _, inputs = case
    _prepare_fails(r"^FLAIR: volume 'CASE-t2w' is already the T2 input", t2=inputs["t2"], flair=inputs["t2"])


def test_empty_and_two_dimensional_volumes(case):
    scene, _ = case
    empty = slicer.vtkMRMLScalarVolumeNode()
    empty.SetName("empty")
    scene.AddNode(empty)
    _prepare_fails(r"^T1: volume 'empty' is empty", t1=empty)
    flat = volumes.add_volume(scene, sitk.Image([64, 64, 1], sitk.sitkInt16), "flat")
    _prepare_fails(r"^T1 \('flat'\) is 64x64x1 voxels: a single slice", t1=flat)


def test_colour_volume(case):
    scene, _ = case
    node = slicer.vtkMRMLVectorVolumeNode()
    node.SetName("photo")
    scene.AddNode(node)
    rgb = vtk.vtkImageData()
    rgb.SetDimensions(8, 8, 8)
    rgb.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(rgb)
    _prepare_fails(r"^T1 \('photo'\) has 3 values per voxel", t1=node)


def test_own_output_is_not_an_input(case):
    _, inputs = case
    logic = DareFuseLogic(pipeline_run=scene_cases.drawn_pipeline, model_loader=scene_cases.drawn_loader)
    out = logic.process(**inputs, outputs=("uncertainty",))
    _prepare_fails(r"^T2: volume 'CASE-t1n uncertainty' is a DareFuse output", t2=out.nodes["uncertainty"])


def test_unknown_output(case):
    _, inputs = case
    logic = DareFuseLogic(pipeline_run=scene_cases.drawn_pipeline, model_loader=scene_cases.drawn_loader)
    with pytest.raises(InputError, match="Unknown output"):
        logic.process(**inputs, outputs=("segmentation", "heatmap"))


def test_memory_guard_names_the_input(case, monkeypatch):
    _, inputs = case
    monkeypatch.setattr(logic_module.validate, "available_memory_bytes", lambda: 1e6)
    _prepare_fails(r"^T1 \('CASE-t1n'\) is too large for this computer's memory", t1=inputs["t1"])


def test_prepare_copies_images_with_geometry(case):
    _, inputs = case
    prepared = DareFuseLogic().prepare(t1ce=inputs["t1ce"], flair=inputs["flair"])
    assert prepared.reference == "t1ce" and set(prepared.images) == {"t1ce", "flair"}
    expected = scene_cases.drawn_images()["flair"]
    np.testing.assert_allclose(prepared.images["flair"].GetDirection(), expected.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(prepared.images["flair"]), sitk.GetArrayFromImage(expected))


@pytest.mark.parametrize("name, contrast", [
    ("BraTS-GLI-00001-000-t1c.nii.gz", "t1ce"), ("CASE-t1n", "t1"), ("CASE-t2w", "t2"), ("CASE-t2f", "flair"),
    ("T1", "t1"), ("t1ce", "t1ce"), ("FLAIR", "flair"), ("T2", "t2"), ("sub-01_T2w", "t2"),
    ("T2 FLAIR axial", "flair"), ("t2_flair", "flair"), ("T1 post", "t1ce"), ("MR Head", None), ("t10", None),
])
def test_contrast_of_name(name, contrast):
    assert contrast_of_name(name)[0] == contrast


def test_auto_assign_picks_the_most_complete_case():
    scene = scene_cases.new_scene()
    partial = scene_cases.add_case(scene, contrasts=("t1", "flair"), prefix="OLD")
    full = scene_cases.add_case(scene, prefix="NEW")
    volumes.add_volume(scene, scene_cases.truth_label(), "NEW-seg", label_map=True)
    assigned = auto_assign_inputs(scene)
    assert assigned == full
    assert partial["t1"] is not assigned["t1"]


def test_auto_assign_skips_outputs_and_label_maps():
    scene = scene_cases.new_scene()
    inputs = scene_cases.add_case(scene, contrasts=("t1", "t2"))
    logic = DareFuseLogic(pipeline_run=scene_cases.drawn_pipeline, model_loader=scene_cases.drawn_loader)
    logic.process(**inputs, outputs=("prior",))  # adds "CASE-t1n tumour-free T1", which names a contrast
    volumes.add_volume(scene, scene_cases.truth_label(), "labels flair", label_map=True)
    assert auto_assign_inputs(scene) == inputs


def test_load_sample_case_through_storage_nodes(tmp_path):
    images = scene_cases.drawn_images()
    paths = {}
    for contrast, suffix in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f")):
        paths[suffix] = tmp_path / f"S-{suffix}.nii.gz"
        sitk.WriteImage(images[contrast], str(paths[suffix]))
    paths["seg"] = tmp_path / "S-seg.nii.gz"
    sitk.WriteImage(scene_cases.truth_label(), str(paths["seg"]))
    scene = files.new_scene()
    loaded = load_sample_case(scene, paths, with_labels=True)
    assert set(loaded) == {"t1", "t1ce", "t2", "flair", "labels"}
    assert loaded["t2"].GetName() == "S-t2w" and loaded["t2"].GetStorageNode() is not None
    assert loaded["labels"].IsA("vtkMRMLLabelMapVolumeNode")
    assert volumes.same_geometry(images["t2"], loaded["t2"], tolerance=1e-4)
    assert auto_assign_inputs(scene) == {c: loaded[c] for c in ("t1", "t1ce", "t2", "flair")}


def test_bundled_sample_case_loads_if_present():
    from DareFuseSlicerLib.phantoms import sample_case_paths

    try:
        paths = sample_case_paths()
    except InputError as error:
        pytest.skip(f"bundled sample not built yet: {error}")
    scene = files.new_scene()
    loaded = load_sample_case(scene)
    assert set(loaded) == {"t1", "t1ce", "t2", "flair"}
    truth = sitk.ReadImage(str(paths["seg"]))
    assert volumes.same_geometry(truth, loaded["t1"], tolerance=1e-3)


def test_time_left():
    assert logic_module.format_time_left(10.0, 0.5) == "about 10 s left"
    assert logic_module.format_time_left(30.0, 0.25) == "about 1 min 30 s left"
    assert logic_module.format_time_left(0.5, 0.5) == ""  # too early to say
    assert logic_module.format_time_left(10.0, 1.0) == ""


def test_report_rows():
    report = {"predicted_class": "meningioma",
              "class_probabilities": {"no_tumour": 0.1, "glioma": 0.3, "meningioma": 0.55, "metastasis": 0.05},
              "volumes_ml": {"NETC": 1.234, "SNFH": 20.0, "ET": 3.0, "WT": 24.234, "TC": 4.234}}
    rows = logic_module.report_rows(report)
    assert rows["classes"][0] == ("meningioma", "55.0 %")
    assert [name for name, _ in rows["classes"]] == ["meningioma", "glioma", "no tumour", "metastasis"]
    assert rows["volumes"] == [("NETC", "1.2 mL"), ("SNFH", "20.0 mL"), ("ET", "3.0 mL"), ("WT", "24.2 mL"),
                               ("TC", "4.2 mL")]
    assert rows["predicted"] == "meningioma (55%)"
    # A rule replaced the class head's answer: the class head's own answer is named, not its P(no tumour).
    ruled = logic_module.report_rows(dict(report, predicted_class="no_tumour", gradcam_class="meningioma"))
    assert ruled["predicted"] == "no tumour (by a rule; class head: meningioma 55%)"
    # No class in the report (nothing predicted): no class text, not an empty class at 0 %.
    assert logic_module.report_rows({"volumes_ml": {}})["predicted"] == ""


def test_requirements_helpers(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\nnumpy>=1.0  # present\nsurely-not-installed-darefuse>=1\nnumpy>=999\n")
    assert dependencies.missing_requirements(requirements) == ["surely-not-installed-darefuse>=1", "numpy>=999"]
    pins = dependencies.protected_constraints()
    assert any(pin.startswith("SimpleITK==") for pin in pins)
    assert any(pin.startswith("numpy==") for pin in pins)


def test_module_requirements_never_name_slicer_packages():
    """Slicer's own SimpleITK, numpy, SciPy and VTK, and torch (from the PyTorch extension), are never pip-installed."""
    path = logic_module.MODULE_DIR / "Resources" / "requirements.txt"
    names = {line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
             for line in dependencies.read_requirements(path)}
    assert names and not names & {p.lower() for p in dependencies.PROTECTED_PACKAGES}


def test_segmentation_of_logic_has_reference_after_reload(case, tmp_path):
    """A saved and reloaded run still knows its reference input (node references survive a scene bundle)."""
    scene, inputs = case
    logic = DareFuseLogic(pipeline_run=scene_cases.drawn_pipeline, model_loader=scene_cases.drawn_loader)
    out = logic.process(**inputs, outputs=("segmentation",))
    loaded = files.load_scene_bundle(files.save_scene_bundle(scene, tmp_path / "scene.mrb"))
    seg = loaded.GetFirstNodeByName(out.segmentation.GetName())
    assert seg.GetNodeReference("darefuseReference").GetName() == "CASE-t1n"
    assert logic_module.report_of(seg)["predicted_class"] == "glioma"
    # and a re-run in the reloaded scene replaces it, since nobody edited it
    reloaded_inputs = {c: loaded.GetFirstNodeByName(n.GetName()) for c, n in inputs.items()}
    again = logic.process(**reloaded_inputs, outputs=("segmentation",))
    assert seg.GetScene() is None
    assert sorted(again.replaced) == sorted(node.GetName() for node in out.nodes.values())  # with its review nodes
    assert segmentation.segmentation_digest(again.segmentation) == segmentation.segmentation_digest(out.segmentation)
