"""Pre-processing: reference choice, geometry of the low-resolution grid, normalisation, the way back."""
import numpy as np
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.pipeline import preprocess
from DareFuseSlicerLib.pipeline.preprocess import prepare, resample_label_to_grid, to_input_units, to_reference


def ball_image(size=(60, 50, 40), spacing=(1.0, 1.2, 3.0), centre_mm=(30.0, 28.0, 60.0), radius_mm=18.0,
               scale=100.0, offset=0.0, direction=None):
    """A 'brain': a ball with a linear intensity ramp inside, background zero (skull-stripped)."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin((0.0, 0.0, 0.0))
    if direction is not None:
        image.SetDirection(direction)
    z, y, x = np.indices(size[::-1]).astype(np.float64)
    points = np.stack([x, y, z], -1).reshape(-1, 3)
    d = np.array(image.GetDirection()).reshape(3, 3)
    physical = (points * np.array(spacing)) @ d.T + np.array(image.GetOrigin())
    dist = np.linalg.norm(physical - np.array(centre_mm), axis=1).reshape(size[::-1])
    inside = dist < radius_mm
    ramp = (physical[:, 0].reshape(size[::-1]) / 60.0)
    array = np.where(inside, scale * (1.0 + ramp) + offset, 0.0).astype(np.float32)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out, inside


def test_reference_is_t1_when_given_else_first_given():
    t1, _ = ball_image()
    flair, _ = ball_image(size=(30, 25, 20), spacing=(2.0, 2.4, 6.0))
    assert prepare({"t1": t1, "flair": flair}).reference_name == "t1"
    assert prepare({"t2": t1, "flair": flair}).reference_name == "t2"
    assert prepare({"flair": flair}).reference.GetSize() == flair.GetSize()


def test_no_contrast_or_unknown_name_is_an_input_error():
    with pytest.raises(InputError, match="at least one"):
        prepare({"t1": None, "flair": None})
    t1, _ = ball_image()
    with pytest.raises(InputError, match="Unknown contrast"):
        prepare({"pd": t1})


def test_grid_is_isotropic_covers_the_brain_and_normalises_inside():
    t1, inside = ball_image(scale=1000.0, offset=250.0)
    prep = prepare({"t1": t1, "t2": None}, spacing_mm=2.0)
    assert prep.grid.GetSpacing() == (2.0, 2.0, 2.0)
    assert prep.array.shape[0] == 4 and prep.array.dtype == np.float32
    np.testing.assert_array_equal(prep.present, [1, 0, 0, 0])
    assert not prep.array[1:].any()
    fg = prep.foreground.astype(bool)
    # Ball of radius 18 mm -> about 4/3 pi 18^3 / 8 voxels at 2 mm.
    expected = 4.0 / 3.0 * np.pi * 18.0**3 / 8.0
    assert abs(fg.sum() - expected) / expected < 0.15
    assert abs(prep.array[0][fg].mean()) < 1e-3
    assert abs(prep.array[0][fg].std() - 1.0) < 0.05
    assert not prep.array[0][~fg].any()
    # The box holds the ball plus the margin, not the whole field of view.
    extent = np.array(prep.grid.GetSize()) * 2.0
    assert np.all(extent >= 36.0) and np.all(extent <= 36.0 + 2 * 6.0 + 2 * 3.0 + 2.0)


def test_scanner_offset_and_scale_do_not_change_the_normalised_input():
    a, _ = ball_image(scale=100.0)
    # Another scanner: every voxel, the background too, scaled and offset (b = 0.37 a + 250).
    b = sitk.ShiftScale(a, shift=250.0 / 0.37, scale=0.37)
    assert float(sitk.GetArrayViewFromImage(b).min()) == pytest.approx(250.0)  # the offset is really there
    pa, pb = prepare({"flair": a}), prepare({"flair": b})
    np.testing.assert_array_equal(pa.foreground, pb.foreground)
    np.testing.assert_allclose(pa.array, pb.array, atol=1e-4)


def test_round_trip_to_reference_keeps_geometry_under_rotation():
    angle = np.deg2rad(20.0)
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    t1, inside = ball_image(size=(64, 64, 48), spacing=(1.0, 1.0, 1.5), centre_mm=(20.0, 40.0, 36.0),
                            direction=direction)
    prep = prepare({"t1": t1})
    back = to_reference(prep.foreground.astype(np.float32), prep) > 0.5
    back = sitk.GetArrayFromImage(sitk.Cast(back, sitk.sitkUInt8)).astype(bool)
    dice = 2 * (back & inside).sum() / (back.sum() + inside.sum())
    assert dice > 0.9
    # Multi-channel outputs come back as arrays on the reference grid.
    stacked = to_reference(np.stack([prep.foreground, prep.foreground]).astype(np.float32), prep)
    assert stacked.shape == (2,) + inside.shape


def test_reconstruction_returns_in_input_units_and_keeps_the_outside():
    t1, inside = ball_image(scale=500.0, offset=40.0)
    prep = prepare({"t1": t1})
    restored = sitk.GetArrayFromImage(to_input_units(prep.array[0], prep, "t1"))
    original = sitk.GetArrayFromImage(t1)
    np.testing.assert_array_equal(restored[~inside], original[~inside])
    core = inside & (sitk.GetArrayFromImage(sitk.BinaryErode(sitk.Cast(
        sitk.GetImageFromArray(inside.astype(np.uint8)), sitk.sitkUInt8), [4, 4, 2])) > 0)
    rel = np.abs(restored[core] - original[core]) / original[core]
    assert np.median(rel) < 0.05


def test_label_resampling_keeps_volumes():
    t1, inside = ball_image(size=(80, 80, 80), spacing=(1.0, 1.0, 1.0), centre_mm=(40.0, 40.0, 40.0), radius_mm=30.0)
    z, y, x = np.indices(inside.shape)
    label = np.zeros(inside.shape, np.uint8)
    label[inside] = 2
    label[((x - 40) ** 2 + (y - 40) ** 2 + (z - 40) ** 2) < 12**2] = 3
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(t1)
    prep = prepare({"t1": t1})
    low = resample_label_to_grid(label_image, prep)
    for value in (2, 3):
        ml_full = (label == value).sum() * 1e-3
        ml_low = (low == value).sum() * 8e-3
        assert abs(ml_low - ml_full) / ml_full < 0.1


ROTATED = (np.cos(0.3), -np.sin(0.3), 0.0, np.sin(0.3), np.cos(0.3), 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("size, spacing, centre_mm, direction", [
    ((120, 100, 60), (0.5, 0.6, 1.0), (30.0, 28.0, 30.0), None),  # the brain in the middle
    ((120, 100, 60), (0.5, 0.6, 1.0), (30.0, 28.0, 30.0), ROTATED),  # the grid oblique to the image
    ((120, 100, 60), (0.5, 0.6, 1.0), (8.0, 50.0, 30.0), None),  # the box reaches past the image's faces
    ((200, 200, 120), (0.25, 0.25, 0.5), (25.0, 25.0, 30.0), None),  # fine voxels: the widest kernel
])
def test_down_sampling_smooths_only_around_the_grid_with_the_same_values(size, spacing, centre_mm, direction):
    brain, inside = ball_image(size=size, spacing=spacing, centre_mm=centre_mm, radius_mm=8.0, direction=direction)
    grid = prepare({"t1": brain}).grid
    # Texture everywhere, so that smoothing near a cut would differ from smoothing the whole image.
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(100.0, 30.0, inside.shape).astype(np.float32))
    noise.CopyInformation(brain)
    margin = preprocess.KERNEL_WIDTH // 2 + 2
    assert preprocess._around(noise, grid, margin).GetNumberOfPixels() < noise.GetNumberOfPixels() / 2
    whole = sitk.GetArrayFromImage(preprocess.resample(preprocess._anti_alias(noise, 2.0), grid))
    fast = sitk.GetArrayFromImage(preprocess.down_sample(noise, grid, 2.0))
    np.testing.assert_allclose(fast, whole, rtol=0.0, atol=1e-5 * np.abs(whole).max())


def test_contrasts_on_the_reference_grid_are_taken_as_they_are():
    t1, _ = ball_image(scale=300.0)
    t2, _ = ball_image(scale=80.0, offset=5.0)
    prep = prepare({"t1": t1, "t2": t2})
    np.testing.assert_array_equal(sitk.GetArrayFromImage(prep.resampled["t2"]), sitk.GetArrayFromImage(t2))
    interpolated = sitk.GetArrayFromImage(preprocess.resample(t2, prep.reference))
    np.testing.assert_allclose(sitk.GetArrayFromImage(prep.resampled["t2"]), interpolated, atol=1e-4)
