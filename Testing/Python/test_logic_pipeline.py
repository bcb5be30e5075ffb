"""The logic wired to the real pipeline and model store (an untrained DareFuseNet saved with its card), on a
drawn case: the layers, their geometry and the report come through, and the command line's files are written.
"""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib.logic import DareFuseLogic
from DareFuseSlicerLib.scene import files, segmentation, volumes

import scene_cases


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import torch

    from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig
    from DareFuseSlicerLib.network.store import save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "untrained.safetensors"
    save_model(DareFuseNet(NetConfig()), path, {"name": "untrained", "version": "0", "training_command": "none",
                                               "seed": 0, "data_recipe": "none", "metrics": {}})
    return path


@pytest.mark.slow  # imports torch and MONAI, runs the network and Grad-CAM++ once (about 15 s here)
def test_real_pipeline_through_the_logic(model_path, tmp_path):
    scene = files.new_scene()
    inputs = scene_cases.add_case(scene, contrasts=("t1ce", "t2", "flair"))  # T1 missing
    out = DareFuseLogic().process(**inputs, model_path=model_path)

    reference = scene_cases.drawn_images()["t1ce"]
    assert out.report["reference"] == "t1ce"
    assert set(out.nodes) == {"segmentation", "uncertainty", "difference_prior", "gradcam",
                              "tumour_free_t1ce", "tumour_free_t2", "tumour_free_flair",
                              "review_table", "review_points", "uncertainty_colours"}
    for kind, node in out.nodes.items():
        if node.IsA("vtkMRMLVolumeNode"):
            assert volumes.same_geometry(reference, node), kind
    # The real pipeline's review regions reach the scene: one table row and one point per region.
    regions = out.result.review.table()
    assert out.nodes["review_table"].GetNumberOfRows() == len(regions) == \
        out.nodes["review_points"].GetNumberOfControlPoints() == len(out.report["review_regions"])
    for kind in ("uncertainty", "gradcam"):
        values = volumes.volume_array(out.nodes[kind])
        assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0, kind
    assert out.nodes["gradcam"].GetName().endswith(out.report["predicted_class"])
    card = json.loads(model_path.with_name("untrained.card.json").read_text())
    assert out.report["model"]["sha256"] == card["sha256"]
    assert sum(out.report["class_probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert out.result.label is not None
    np.testing.assert_array_equal(segmentation.labels_array(out.segmentation, reference),
                                  sitk.GetArrayFromImage(out.result.label))

    # what `darefuse segment` writes through the scene side
    seg_file = files.save_segmentation(out.segmentation, tmp_path / "segmentation.seg.nrrd")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(seg_file))),
                                  sitk.GetArrayFromImage(out.result.label))
    bundle = files.load_scene_bundle(files.save_scene_bundle(scene, tmp_path / "scene.mrb"))
    assert bundle.GetFirstNodeByName(out.segmentation.GetName()) is not None
    assert bundle.GetFirstNodeByName(out.nodes["gradcam"].GetName()) is not None
    assert bundle.GetFirstNodeByName(out.nodes["review_table"].GetName()) is not None
