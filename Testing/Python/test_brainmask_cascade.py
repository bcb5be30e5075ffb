"""The brain-mask cascade's geometry (pipeline/brainmask.py) and its training views
(training/brainmask_augment.py, training/brainmask.py), on the bundled sample brain at 2 mm: torch-free
geometry plus a few CPU steps, seconds in all."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from clinical_helpers import brain_mask_of, pad_for_head, whole_head

from DareFuseSlicerLib.constants import BRATS_SUFFIX
from DareFuseSlicerLib.metrics import mask_dice
from DareFuseSlicerLib.phantoms import sample_case_paths
from DareFuseSlicerLib.pipeline import brainmask as bm


@pytest.fixture(scope="module")
def head():
    """(whole-head T1, its brain mask) around the sample brain, 2 mm voxels."""
    image = sitk.ReadImage(str(sample_case_paths()[BRATS_SUFFIX["t1"]]), sitk.sitkFloat32)
    brain = pad_for_head(sitk.BinShrink(image, [2, 2, 2]))
    mask = brain_mask_of(brain)
    return whole_head(brain, mask, "t1"), mask


def _share_in_cube(mask: sitk.Image, cube: sitk.Image) -> np.ndarray:
    smooth = bm.anti_aliased(sitk.Cast(mask, sitk.sitkFloat32), bm.FINE_MM)
    moved = sitk.Resample(smooth, cube, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.clip(sitk.GetArrayFromImage(moved), 0.0, 1.0)


def test_coarse_input_is_the_mean_of_2x2x2_blocks():
    fine = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    coarse = bm.coarse_input(fine)
    assert coarse.shape == (2, 3, 4) and coarse.dtype == np.float32
    assert coarse[1, 2, 3] == pytest.approx(fine[2:4, 4:6, 6:8].mean())


def test_brain_box_holds_the_brain_with_its_margin(head):
    image, mask = head
    cube = bm.head_cube(image)
    assert cube.GetSize() == (bm.FINE_CUBE,) * 3 and cube.GetSpacing() == (bm.FINE_MM,) * 3
    share = _share_in_cube(mask, cube)
    box = bm.brain_box(bm.coarse_input(share), multiple=16)
    sizes = [b.stop - b.start for b in box]
    assert all(n % 16 == 0 and 0 <= b.start and b.stop <= bm.FINE_CUBE for n, b in zip(sizes, box))
    inside = np.argwhere(share > 0.5)
    margin = int(bm.BOX_MARGIN_MM / bm.FINE_MM) - 2  # the coarse 4 mm grid may lose one fine voxel a side
    for axis, b in enumerate(box):
        assert b.start <= max(inside[:, axis].min() - margin, 0)
        assert b.stop >= min(inside[:, axis].max() + 1 + margin, bm.FINE_CUBE)
    assert sum(sizes) < 3 * bm.FINE_CUBE  # a box, not the whole cube
    assert bm.brain_box(np.zeros((64, 64, 64), np.float32), 16) == (slice(0, bm.FINE_CUBE),) * 3


def test_a_perfect_share_in_the_box_gives_the_mask_back(head):
    """The box grid, refine and the native grid agree: the true 2 mm share in the box, through refine, is the
    mask again (the network's job is only the share)."""
    image, mask = head
    cube = bm.head_cube(image)
    box = bm.brain_box(bm.coarse_input(_share_in_cube(mask, cube)), multiple=16)
    grid = bm.box_grid(cube, box)
    assert grid.GetSize() == tuple(b.stop - b.start for b in box[::-1])
    share = _share_in_cube(mask, grid)
    again = bm.refine(share, grid, image)
    assert again.GetSize() == image.GetSize()
    dice = mask_dice(sitk.GetArrayViewFromImage(again) > 0, sitk.GetArrayViewFromImage(mask) > 0)
    assert dice > 0.99, dice  # one 2 mm voxel off gives 0.973
    # Outside the box nothing is brain; a stray blob in the share is dropped by clean_share.
    stray = share.copy()
    stray[:3, :3, :3] = 1.0
    assert bm.clean_share(stray)[:3, :3, :3].max() == 0.0


def test_training_views_and_a_few_steps_of_each_stage():
    import torch

    from DareFuseSlicerLib.network.brainmask_net import BrainMaskConfig, BrainMaskNet
    from DareFuseSlicerLib.training.brainmask import BrainMaskTrainOptions, Samples, coarse_batch, fine_batch, \
        train_stage
    from DareFuseSlicerLib.training.brainmask_augment import augmented

    generator = torch.Generator().manual_seed(0)
    z, y, x = np.indices((40, 40, 40))
    ball = (((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2) < 12 ** 2).astype(np.float32)
    image = torch.from_numpy(0.2 + 0.6 * ball).half()
    target = torch.from_numpy(ball).half()
    view, truth = augmented(image, target, image.flatten()[::7], 32, generator)
    assert view.shape == truth.shape == (1, 32, 32, 32)
    assert 0.0 <= float(view.min()) and float(view.max()) <= 1.5
    assert 0.0 <= float(truth.min()) <= float(truth.max()) <= 1.0
    assert 0.05 < float(truth.mean()) < 0.95  # the window holds the ball's edge

    coarse = torch.from_numpy(np.pad(ball, 12)).half()  # 64^3
    samples = Samples([coarse], [coarse], [image], [(target.float() * 255).to(torch.uint8)],
                      [(target > 0.5).to(torch.uint8)])
    model = BrainMaskNet(BrainMaskConfig(coarse_channels=(4, 8), fine_channels=(4, 8, 16)))
    assert model.config.fine_multiple == 4
    options = BrainMaskTrainOptions(data=[], val=None, out="", lr=1e-2, batch_size=1)
    pick = lambda: torch.zeros(1, dtype=torch.long)  # noqa: E731
    records = [train_stage(model, "coarse", 3, lambda g: coarse_batch(samples, pick(), g), options, generator),
               train_stage(model, "fine", 3, lambda g: fine_batch(samples, pick(), 32, g), options, generator)]
    assert all(r["steps"] == 3 and len(r["losses"]) == 3 and np.isfinite(r["losses"]).all() for r in records)
    assert model(torch.zeros(1, 1, 64, 64, 64), "coarse").shape == (1, 1, 64, 64, 64)


def test_a_missed_tumour_voxel_costs_tumour_weight_times_more():
    import torch

    from DareFuseSlicerLib.training.brainmask import loss_fn

    brain = torch.ones(1, 1, 4, 4, 4)
    tumour = torch.zeros(1, 1, 4, 4, 4)
    tumour[..., 0, 0, :] = 1.0
    logits = torch.full((1, 1, 4, 4, 4), 6.0)
    logits[..., 0, 0, :] = -6.0  # the network cuts the tumour out of the brain
    target = torch.cat([brain, tumour], dim=1)
    plain, weighted = loss_fn(logits, target, 1.0), loss_fn(logits, target, 5.0)
    assert float(weighted) > float(plain) + 0.1
    # a tumour-free target (one channel) is the plain loss
    assert torch.isclose(loss_fn(logits, brain, 5.0), loss_fn(logits, target, 1.0))


def test_a_brain_mask_card_is_named_for_its_run_folder():
    """A run's card takes its version from its folder, as `darefuse train` does: two runs never share a name."""
    from DareFuseSlicerLib.training.brainmask import BrainMaskTrainOptions, _card

    options = BrainMaskTrainOptions(data=[], val=None, out="/runs/brainmask-v9", seed=3, command="darefuse x")
    card = _card(options, [], 0, 0, {"coarse": {"steps": 1, "losses": [1.0]}}, {})
    assert card["version"] == "brainmask-v9" and card["seed"] == 3
    assert card["training"]["coarse"] == {"steps": 1}  # the losses go to train_log.json, not the card


def test_a_one_stage_model_uses_the_coarse_grid(head):
    """brainmask-v1's layout (a card's "channels") loads as one stage; its share lies on the 4 mm grid whose
    voxels are the centres of the fine cube's 2x2x2 blocks."""
    from DareFuseSlicerLib.network.brainmask_net import BrainMaskConfig, BrainMaskNet

    image, _ = head
    cube = bm.head_cube(image)
    grid = bm.coarse_grid(cube)
    block = np.mean([cube.TransformIndexToPhysicalPoint(i) for i in ((2, 4, 6), (3, 5, 7))], axis=0)
    assert np.allclose(grid.TransformIndexToPhysicalPoint((1, 2, 3)), block)
    model = BrainMaskNet(BrainMaskConfig.from_dict({"channels": [4, 8], "strides": [2], "res_units": 1}))
    assert model.one_stage and not hasattr(model, "fine")
    mask, share_grid, share = bm.extract_brain(model.eval(), image)
    assert share_grid.GetSpacing() == (bm.SPACING_MM,) * 3 and share.shape == (bm.CUBE,) * 3
    assert mask.GetSize() == image.GetSize()


def test_opening_cuts_a_bridge_to_the_face_and_what_lies_beyond():
    z, y, x = np.indices((40, 40, 60))
    brain = ((z - 20) ** 2 + (y - 20) ** 2 + (x - 18) ** 2) < 12 ** 2
    face = ((z - 20) ** 2 + (y - 20) ** 2 + (x - 48) ** 2) < 6 ** 2
    bridge = (abs(z - 20) <= 1) & (abs(y - 20) <= 1) & (x >= 28) & (x <= 44)
    inside = brain | face | bridge
    assert np.array_equal(bm.opened(inside, 0), inside)
    kept = bm.opened(inside, 2)
    assert not kept[face].any() and not kept[20, 20, 36]  # the bridge and the blob beyond it are gone
    assert kept[brain].mean() > 0.99  # the brain's own surface barely moves
    share = np.where(inside, 0.9, 0.0).astype(np.float32)
    assert bm.clean_share(share, 0.5, 2)[face].max() == 0.0 and bm.clean_share(share)[face].max() > 0.0


def test_mask_settings_come_from_the_card_and_tighten_the_mask(head):
    image, mask = head
    cube = bm.head_cube(image)
    blurred = sitk.SmoothingRecursiveGaussian(sitk.Cast(mask, sitk.sitkFloat32), 3.0)  # a share with a slope
    share = sitk.GetArrayFromImage(sitk.Resample(blurred, cube, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                 sitk.sitkFloat32))

    class Card:
        card = {"mask_settings": {"threshold": 0.8, "opening_mm": 4.0, "margin_mm": 6.0, "fuse": True}}

    settings = bm.MaskSettings.of(Card())
    assert settings == bm.MaskSettings(0.8, 4.0, 6.0, True) and bm.MaskSettings.of(object()) == bm.MaskSettings()
    assert not bm.MaskSettings().fuse
    plain = sitk.GetArrayFromImage(bm.refine(share, cube, image)) > 0
    tight = sitk.GetArrayFromImage(bm.refine(share, cube, image, settings)) > 0
    assert tight.sum() < plain.sum() and not (tight & ~plain).any()
    assert mask_dice(tight, sitk.GetArrayFromImage(mask) > 0) > 0.85


def test_fused_share_is_the_mean_of_the_registered_contrasts_inside_each_field_of_view(head):
    """Another contrast's share, on its own grid and pose, is brought onto the reference's share grid through its
    registration and averaged in; where its field of view ends it says nothing."""
    image, mask = head
    cube = bm.head_cube(image)
    share = _share_in_cube(mask, cube)
    shift = sitk.TranslationTransform(3, (3.0, -2.0, 4.0))  # reference point -> the other contrast's point
    other_grid = sitk.Image([bm.FINE_CUBE] * 3, sitk.sitkUInt8)
    other_grid.SetSpacing(cube.GetSpacing())
    other_grid.SetOrigin([o + d for o, d in zip(cube.GetOrigin(), (3.0, -2.0, 4.0))])
    moved = np.clip(share + 0.5, 0.0, 1.0)  # the other contrast says more "brain" everywhere
    # Its image covers only the upper half of the cube (a 2-D stack stopping short of the neck).
    upper = bm.FINE_CUBE // 2
    fov = sitk.Image([bm.FINE_CUBE, bm.FINE_CUBE, bm.FINE_CUBE - upper], sitk.sitkFloat32)
    fov.SetSpacing(cube.GetSpacing())
    fov.SetOrigin(other_grid.TransformIndexToPhysicalPoint([0, 0, upper]))
    fused = bm.fused_share(cube, share, [(other_grid, moved, fov, shift)])
    assert fused.shape == share.shape and fused.dtype == np.float32
    inner = (slice(upper + 4, -4), slice(4, -4), slice(4, -4))
    assert np.allclose(fused[inner], (share[inner] + moved[inner]) / 2.0, atol=1e-4)
    assert np.allclose(fused[:upper - 4], share[:upper - 4])  # below its field of view: the reference alone
    assert np.array_equal(bm.fused_share(cube, share, []), share)


def test_the_chosen_setting_hides_no_more_tumour_from_the_network_than_the_plain_mask():
    from DareFuseSlicerLib.training.brainmask import chosen_setting

    def row(threshold, margin, dice, outside):
        return {"threshold": threshold, "opening_mm": 0.0 if threshold == 0.5 else 8.0, "margin_mm": margin,
                "mean_dice": dice, "worst_dice": dice - 0.05, "tumour_voxels_outside": outside}

    scores = [row(0.5, 0.0, 0.95, 10), row(0.5, 2.0, 0.95, 4), row(0.8, 0.0, 0.97, 400), row(0.8, 2.0, 0.97, 30),
              row(0.7, 2.0, 0.96, 9), row(0.8, 6.0, 0.97, 0)]
    assert chosen_setting(scores) == scores[0]  # without a margin, 0.8 would hide 400 tumour voxels
    assert chosen_setting(scores, 2.0) == scores[4]  # 0.8 grown by 2 mm still hides 30, 0.7 only 9
    assert chosen_setting(scores, 6.0) == scores[5]
    with pytest.raises(ValueError):
        chosen_setting(scores, 4.0)


def test_the_networks_region_is_the_mask_grown_by_the_margin(head):
    _, mask = head
    array = sitk.GetArrayFromImage(mask) > 0
    assert np.array_equal(sitk.GetArrayFromImage(bm.grown(mask, 0.0)) > 0, array)
    region = sitk.GetArrayFromImage(bm.grown(mask, 4.0)) > 0
    distance = bm.distance_mm(mask)
    assert not (array & ~region).any() and region.sum() > array.sum()
    assert distance[region].max() <= 4.0 and distance[~region].min() > 4.0
    # 2 mm voxels: a 4 mm margin is two voxels along each axis, no more.
    z = np.argwhere(array.any(axis=(1, 2)))[-1, 0]
    assert region[z + 2].any() and not region[z + 3].any()


def test_the_mask_given_out_holds_the_segmented_tumour(head):
    _, mask = head
    array = sitk.GetArrayFromImage(mask) > 0
    distance = bm.distance_mm(mask)
    label = np.zeros(array.shape, np.uint8)
    z, y, x = np.argwhere(array).mean(0).astype(int)
    top = np.argwhere(array[:, y, x])[-1, 0]
    label[top - 3:top + 3, y - 2:y + 3, x - 2:x + 3] = 2  # a tumour across the mask's surface
    label[(distance > 12.0) & (distance < 14.0)] = 1  # a detached shell outside: not brain
    out = sitk.GetArrayFromImage(bm.with_tumour(mask, label)) > 0
    assert out[label == 2].all() and not out[label == 1].any()
    assert np.count_nonzero(out & ~array) == np.count_nonzero((label == 2) & ~array)
    # Given the region and its margin, the tumour's edge beyond the segmentation joins too, inside the region.
    region = bm.grown(mask, 6.0)
    tumour = sitk.GetImageFromArray((label == 2).astype(np.uint8))
    tumour.CopyInformation(mask)
    near = (bm.distance_mm(tumour) <= 4.0) & (sitk.GetArrayFromImage(region) > 0)
    wider = sitk.GetArrayFromImage(bm.with_tumour(mask, label, region, 4.0)) > 0
    assert wider[near].all() and wider.sum() > out.sum() and not (wider & ~(sitk.GetArrayFromImage(region) > 0)).any()
    # Several margins at once: the same masks, each holding the narrower's.
    masks = bm.with_tumour_margins(mask, label, region, [0.0, 2.0, 4.0])
    assert np.array_equal(sitk.GetArrayFromImage(masks[4.0]) > 0, wider)
    assert np.array_equal(sitk.GetArrayFromImage(masks[0.0]) > 0, out)
    assert ((sitk.GetArrayFromImage(masks[2.0]) > 0) >= out).all() and (wider >= (sitk.GetArrayFromImage(masks[2.0]) > 0)).all()


def test_tune_brainmask_refuses_a_margin_it_does_not_score(tmp_path, capsys):
    from DareFuseSlicerLib import cli

    status = cli.main(["tune-brainmask", "--model", str(tmp_path / "none.safetensors"), "--data", str(tmp_path),
                       "--margin", "3"])
    assert status == 2
    assert "--margin 3" in capsys.readouterr().err


def test_tune_brainmask_record_keeps_what_was_chosen_with_the_segmentation():
    """--record replaces the threshold, opening and margin it chose; the tumour margin and the mask given out's
    threshold, chosen with the segmentation in the loop by `darefuse evaluate`, stay."""
    from DareFuseSlicerLib.training.brainmask import recorded_mask_settings

    card = {"mask_settings": {"threshold": 0.7, "opening_mm": 8.0, "margin_mm": 6.0, "fuse": True,
                              "tumour_margin_mm": 4.0, "given_threshold": 0.8, "tuned_on_seeds": [1]}}
    best = {"threshold": 0.6, "opening_mm": 4.0, "margin_mm": 2.0, "mean_dice": 0.9}
    assert recorded_mask_settings(card, best, False, [9, 3]) == {
        "threshold": 0.6, "opening_mm": 4.0, "margin_mm": 2.0, "fuse": False, "tumour_margin_mm": 4.0,
        "given_threshold": 0.8, "tuned_on_seeds": [3, 9]}
    assert recorded_mask_settings({}, best, True, [])["fuse"] is True
