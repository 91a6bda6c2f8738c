"""Tests of the synthetic-shape toolkit: shapes, noise, the abdominal CT phantom and the writers."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from custom_components.data.synthetic import (
    BTCV_CLASSES,
    AbdomenCTPhantom,
    Ellipsoid,
    FourierField,
    Grid,
    HalfSpace,
    Superellipsoid,
    Tube,
    add_gaussian_noise,
    add_rician_noise,
    apply_bias_field,
    build_dataset_atomically,
    crescent,
    deform,
    nifti_affine,
    partial_volume_blur,
    ring,
    rotation_matrix,
    smooth_curve,
    smooth_random_field,
    write_datalist,
    write_nifti,
    write_png,
)

SEEDS = (0, 1, 2, 3)
L = {name: i for i, name in enumerate(BTCV_CLASSES)}


def area(grid: Grid, shape) -> float:
    return float(grid.mask(shape).sum()) * grid.voxel_volume


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("angle", [0.0, 0.4, 1.3])
def test_ellipse_area_close_to_pi_ab(angle):
    grid = Grid((240, 240), (0.5, 0.5))
    assert area(grid, Ellipsoid((3.0, -4.0), (30.0, 12.0), angle)) == pytest.approx(math.pi * 30 * 12, rel=0.01)


def test_rotated_ellipsoid_volume_and_orientation():
    grid = Grid((100, 100, 100), (1.0, 1.0, 1.0))
    shape = Ellipsoid((2.0, 0.0, -3.0), (35.0, 12.0, 20.0), (0.3, -0.5, 0.8))
    assert area(grid, shape) == pytest.approx(4 / 3 * math.pi * 35 * 12 * 20, rel=0.01)
    # a quarter turn in 2D swaps the long axis from axis 0 to axis 1
    grid2 = Grid((101, 101))
    mask = grid2.mask(Ellipsoid((0.0, 0.0), (40.0, 10.0), math.pi / 2))
    extent = [np.ptp(np.nonzero(mask)[a]) for a in (0, 1)]
    assert extent[1] > 3 * extent[0]


def test_rotation_matrix():
    r2 = rotation_matrix(0.3, 2)
    assert np.allclose(r2 @ [1, 0], [math.cos(0.3), math.sin(0.3)])
    r3 = rotation_matrix((0.2, -0.7, 1.1), 3)
    assert np.allclose(r3 @ r3.T, np.eye(3)) and np.linalg.det(r3) == pytest.approx(1.0)
    assert np.allclose(rotation_matrix(None, 3), np.eye(3))
    with pytest.raises(ValueError):
        rotation_matrix((0.1, 0.2), 3)


def test_superellipse_area_between_ellipse_and_box():
    grid = Grid((200, 200), (0.5, 0.5))
    p, a, b = 6.0, 30.0, 15.0
    expected = 4 * a * b * math.gamma(1 + 1 / p) ** 2 / math.gamma(1 + 2 / p)
    got = area(grid, Superellipsoid((0.0, 0.0), (a, b), exponent=p, rotation=0.2))
    assert got == pytest.approx(expected, rel=0.015)
    assert math.pi * a * b < got < 4 * a * b


def test_bounded_evaluation_matches_dense_evaluation():
    """Grid.mask only evaluates inside shape.bounds(); the box must contain the whole shape."""
    grid = Grid((64, 60, 40), (2.0, 2.0, 3.0))
    rng = np.random.default_rng(0)
    shapes = [
        Superellipsoid((5.0, -3.0, 4.0), (30.0, 12.0, 25.0), 4.0, (0.5, 0.3, -0.8)),
        deform(Ellipsoid((0.0, 10.0, -5.0), (25.0, 20.0, 30.0), (0.2, 0.1, 0.3)), rng, 0.15, 30.0),
        deform(Tube.from_curve([(-40, 0, -50), (0, 20, 0), (30, -10, 50)], [8, 12, 6]), rng, 0.1, 40.0),
    ]
    for shape in shapes:
        dense = shape(grid.coords()) <= 1.0
        assert dense.any()
        np.testing.assert_array_equal(grid.mask(shape), dense)


def test_ring_has_a_hole_2d_and_3d():
    grid = Grid((201, 201), (0.5, 0.5))
    shape = ring((0.0, 0.0), (40.0, 30.0), (25.0, 18.0), rotation=0.3)
    mask = grid.mask(shape)
    assert not mask[100, 100]  # the centre is the hole
    assert area(grid, shape) == pytest.approx(math.pi * (40 * 30 - 25 * 18), rel=0.015)
    grid3 = Grid((81, 81, 81))
    shell = grid3.mask(ring((0.0, 0.0, 0.0), (35.0, 30.0, 25.0), (28.0, 23.0, 18.0)))
    assert not shell[40, 40, 40] and shell[40 + 31, 40, 40]
    assert shell.sum() == pytest.approx(4 / 3 * math.pi * (35 * 30 * 25 - 28 * 23 * 18), rel=0.03)
    with pytest.raises(ValueError):
        ring((0.0, 0.0), (20.0, 20.0), (25.0, 10.0))


def test_crescent_inside_outer_circle_and_outside_cut():
    grid = Grid((201, 201), (0.5, 0.5))
    radius, offset = 30.0, 14.0
    mask = grid.mask(crescent((0.0, 0.0), radius, cut_offset=(offset, 0.0)))
    outer = grid.mask(Ellipsoid((0.0, 0.0), (radius, radius)))
    cut = grid.mask(Ellipsoid((offset, 0.0), (radius, radius)))
    assert mask.any() and not (mask & ~outer).any() and not (mask & cut).any()
    lens = 2 * radius**2 * math.acos(offset / (2 * radius)) - offset / 2 * math.sqrt(4 * radius**2 - offset**2)
    assert mask.sum() * grid.voxel_volume == pytest.approx(math.pi * radius**2 - lens, rel=0.03)
    x = grid.coords()[0] + 0 * grid.coords()[1]
    assert x[mask].mean() < 0  # on the side opposite to the cut offset
    # the offset is given in the shape's frame: rotating by 90 degrees moves the crescent to -axis 1
    rotated = grid.mask(crescent((0.0, 0.0), radius, (offset, 0.0), rotation=math.pi / 2))
    y = grid.coords()[1] + 0 * grid.coords()[0]
    assert y[rotated].mean() < -5 and abs(x[rotated].mean()) < 1


def test_tube_volume_and_curve_through_control_points():
    grid = Grid((60, 60, 120), (1.0, 1.0, 1.0))
    r, length = 6.0, 60.0
    straight = Tube([(0.0, 0.0, -30.0), (0.0, 0.0, 30.0)], r)
    assert area(grid, straight) == pytest.approx(math.pi * r * r * length + 4 / 3 * math.pi * r**3, rel=0.03)
    control = np.array([(-20.0, 0.0, -50.0), (10.0, 15.0, 0.0), (0.0, -10.0, 50.0)])
    curve = smooth_curve(control, samples_per_segment=5)
    assert len(curve) == 11 and np.allclose(curve[::5], control)
    tube = Tube.from_curve(control, [4.0, 8.0, 4.0])
    assert np.all(tube(tuple(control[:, i : i + 1].astype(np.float32) for i in range(3))) <= 1e-4)
    assert tube.radii.max() == pytest.approx(8.0)


def test_tube_open_grid_shortcut_matches_full_evaluation():
    grid = Grid((50, 40, 30), (2.0, 2.0, 3.0))
    tube = Tube.from_curve([(-40, -20, -40), (0, 10, 0), (40, -5, 40)], [5, 9, 4])
    dense = tuple(np.broadcast_arrays(*grid.coords()))
    np.testing.assert_array_equal(tube(grid.coords()) <= 1.0, tube(dense) <= 1.0)


def test_boolean_operations():
    grid = Grid((161, 161), (0.5, 0.5))
    a, b = Ellipsoid((-8.0, 0.0), (20.0, 20.0)), Ellipsoid((8.0, 0.0), (20.0, 20.0))
    ma, mb = grid.mask(a), grid.mask(b)
    np.testing.assert_array_equal(grid.mask(a | b), ma | mb)
    np.testing.assert_array_equal(grid.mask(a & b), ma & mb)
    np.testing.assert_array_equal(grid.mask(a - b), ma & ~mb)
    half = grid.mask(a & HalfSpace((-8.0, 0.0), (1.0, 0.0)))
    assert half.sum() == pytest.approx(ma.sum() / 2, rel=0.03)


def test_deformation_is_deterministic_smooth_and_star_shaped():
    grid = Grid((64, 64, 64), (1.5, 1.5, 1.5))
    base = Ellipsoid((0.0, 0.0, 0.0), (30.0, 20.0, 25.0))
    m1 = grid.mask(deform(base, np.random.default_rng(5), 0.15, 40.0))
    m2 = grid.mask(deform(base, np.random.default_rng(5), 0.15, 40.0))
    m3 = grid.mask(deform(base, np.random.default_rng(6), 0.15, 40.0))
    np.testing.assert_array_equal(m1, m2)
    assert (m1 != m3).sum() > 100  # another seed, another outline
    assert (m1 != grid.mask(base)).sum() > 100
    assert 0.65 < m1.sum() / grid.mask(base).sum() < 1.5
    assert m1[32, 32, 32]
    assert ndimage.label(m1)[1] == 1 and ndimage.label(~m1)[1] == 1  # one piece, no holes


# --------------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------------
def test_fourier_field_is_resolution_independent_and_bounded():
    field = FourierField.random(np.random.default_rng(1), 3, wavelength=40.0)
    fine, coarse = Grid((81, 81, 41), (1.0, 1.0, 2.0)), Grid((41, 41, 21), (2.0, 2.0, 4.0))
    f_fine, f_coarse = field(fine.coords()), field(coarse.coords())
    np.testing.assert_allclose(f_fine[::2, ::2, ::2], f_coarse, atol=1e-4)
    assert np.abs(f_fine).max() <= field.bound + 1e-5
    coords = Grid((64, 64)).coords()
    values = np.concatenate([FourierField.random(np.random.default_rng(s), 2, 30.0)(coords).ravel() for s in range(20)])
    assert values.std() == pytest.approx(1.0, abs=0.2)


@pytest.mark.parametrize("shape,spacing,sigma", [((96, 80, 30), (3.0, 3.0, 5.0), 30.0), ((77, 50), None, 1.5)])
def test_smooth_random_field(shape, spacing, sigma):
    f = smooth_random_field(shape, np.random.default_rng(0), sigma, spacing)
    assert f.shape == shape and f.dtype == np.float32
    assert abs(f.mean()) < 1e-4 and f.std() == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_array_equal(f, smooth_random_field(shape, np.random.default_rng(0), sigma, spacing))
    corr = np.corrcoef(f[:-1].ravel(), f[1:].ravel())[0, 1]
    white = np.corrcoef(*np.random.default_rng(0).standard_normal((2, f[1:].size)))[0, 1]
    assert corr > 0.5 > abs(white)


def test_gaussian_and_rician_noise():
    rng = np.random.default_rng(0)
    zeros = np.zeros((200, 200), np.float32)
    assert add_gaussian_noise(zeros, rng, 12.0).std() == pytest.approx(12.0, rel=0.03)
    np.testing.assert_array_equal(add_gaussian_noise(zeros + 5, rng, 0.0), zeros + 5)
    rician = add_rician_noise(zeros, rng, 10.0)
    assert rician.min() >= 0 and rician.mean() == pytest.approx(10.0 * math.sqrt(math.pi / 2), rel=0.03)
    assert add_rician_noise(zeros + 200, rng, 10.0).mean() == pytest.approx(200.0, rel=0.01)


def test_bias_field_multiplicative_and_additive():
    image = np.full((64, 64, 32), 100.0, np.float32)
    kwargs = {"sigma": 40.0, "spacing": (2.0, 2.0, 4.0)}
    field = smooth_random_field(image.shape, np.random.default_rng(0), **kwargs)
    mult = apply_bias_field(image, np.random.default_rng(0), 0.1, **kwargs)
    np.testing.assert_allclose(mult, 100.0 * np.exp(0.1 * field), rtol=1e-5)  # image * exp(strength * f)
    assert mult.min() > 0 and np.log(mult / 100.0).std() == pytest.approx(0.1, rel=1e-3)
    add = apply_bias_field(image, np.random.default_rng(0), 20.0, multiplicative=False, **kwargs)
    np.testing.assert_allclose(add, 100.0 + 20.0 * field, rtol=1e-5)
    assert (add - 100.0).std() == pytest.approx(20.0, rel=1e-3) and abs((add - 100.0).mean()) < 1e-2


def test_partial_volume_blur():
    step = np.zeros((10, 10, 20), np.float32)
    step[:, :, 10:] = 100.0
    blurred = partial_volume_blur(step, spacing=(1.0, 1.0, 5.0))
    assert blurred.mean() == pytest.approx(step.mean(), rel=1e-4)
    assert 0 < blurred[5, 5, 9] < 50 < blurred[5, 5, 10] < 100
    wider = partial_volume_blur(step, spacing=(1.0, 1.0, 5.0), fwhm=(1.0, 1.0, 15.0))
    assert wider[5, 5, 8] > blurred[5, 5, 8]


# --------------------------------------------------------------------------------------------------
# abdominal CT phantom
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom():
    return AbdomenCTPhantom()


@pytest.fixture(scope="module")
def cases(phantom):
    return {seed: phantom.generate(seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def clean_cases():
    clean = AbdomenCTPhantom(noise_std=0.0, bias_hu=0.0)
    return {seed: clean.generate(seed) for seed in SEEDS[:2]}


def centroid_mm(phantom: AbdomenCTPhantom, label: np.ndarray, index: int) -> np.ndarray:
    """Centroid in the phantom frame (mm; x to the patient's left, y posterior, z superior)."""
    idx = np.argwhere(label == index)
    return np.asarray(phantom.grid.origin) + idx.mean(axis=0) * np.asarray(phantom.spacing)


def test_phantom_output(cases, phantom):
    image, label = cases[0]
    assert image.shape == label.shape == (128, 128, 48)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == set(range(14))
    assert AbdomenCTPhantom.CLASS_NAMES == BTCV_CLASSES and len(BTCV_CLASSES) == 14
    assert [BTCV_CLASSES[i] for i in (1, 2, 3, 6, 8, 9, 13)] == [
        "spleen", "right_kidney", "left_kidney", "liver", "aorta", "inferior_vena_cava", "left_adrenal_gland"
    ]
    assert -1024 <= image.min() and image.max() <= 3071


def test_phantom_is_deterministic_by_seed(cases, phantom):
    image, label = phantom.generate(0)
    np.testing.assert_array_equal(image, cases[0][0])
    np.testing.assert_array_equal(label, cases[0][1])
    assert (cases[1][1] != cases[0][1]).mean() > 0.005
    assert np.abs(cases[1][0] - cases[0][0]).mean() > 10


def test_variability_zero_keeps_the_mean_anatomy():
    mean = AbdomenCTPhantom(shape=(64, 64, 24), spacing=(6.0, 6.0, 10.0), variability=0.0)
    (im0, lb0), (im1, lb1) = mean.generate(0), mean.generate(1)
    np.testing.assert_array_equal(lb0, lb1)
    assert not np.array_equal(im0, im1)


# plausible organ volumes (ml) for the default field of view (which may cut organs)
VOLUME_ML = {
    "spleen": (50, 500), "right_kidney": (80, 320), "left_kidney": (80, 320), "gallbladder": (8, 120),
    "esophagus": (1.5, 40), "liver": (900, 2600), "stomach": (150, 900), "aorta": (40, 160),
    "inferior_vena_cava": (40, 200), "portal_and_splenic_veins": (8, 60), "pancreas": (30, 150),
    "right_adrenal_gland": (2, 20), "left_adrenal_gland": (2, 20),
}


def test_every_organ_present_with_plausible_volume(cases, phantom):
    voxel_ml = float(np.prod(phantom.spacing)) / 1000.0
    for seed, (_, label) in cases.items():
        counts = np.bincount(label.ravel(), minlength=14) * voxel_ml
        for name, (low, high) in VOLUME_ML.items():
            assert low <= counts[L[name]] <= high, (seed, name, counts[L[name]])
        assert counts[L["liver"]] == max(counts[1:])


def test_anatomical_layout(cases, phantom):
    """Sides follow the documented frame: x to the patient's left, y posterior, z superior."""
    for seed, (image, label) in cases.items():
        c = {name: centroid_mm(phantom, label, i) for name, i in L.items() if i}
        x, y, z = 0, 1, 2
        assert c["liver"][x] < 0 < c["spleen"][x], seed
        assert c["right_kidney"][x] < 0 < c["left_kidney"][x], seed
        assert c["right_adrenal_gland"][x] < 0 < c["left_adrenal_gland"][x], seed
        assert c["inferior_vena_cava"][x] < c["aorta"][x], seed
        assert c["stomach"][x] > 20 and c["gallbladder"][x] < -10, seed
        for kidney in ("right_kidney", "left_kidney"):
            assert c[kidney][y] > c["pancreas"][y] + 15, seed  # posterior to the pancreas
            assert c[kidney][z] < c["liver"][z] and c[kidney][z] < c["pancreas"][z], seed
        assert c["right_adrenal_gland"][z] > c["right_kidney"][z] and c["left_adrenal_gland"][z] > c["left_kidney"][z]
        assert c["esophagus"][z] > c["stomach"][z] > c["pancreas"][z] and c["esophagus"][z] > 40, seed
        assert c["gallbladder"][z] < c["liver"][z] and c["gallbladder"][y] < c["liver"][y], seed
        assert c["stomach"][y] < c["spleen"][y], seed  # stomach anterior, spleen posterior
        # spine: bone in the midline column; the aorta lies just anterior to it
        bone = image > 250
        bone[np.abs(phantom.grid.axis_coords(0)) > 30] = False
        spine = np.asarray(phantom.grid.origin) + np.argwhere(bone).mean(axis=0) * np.asarray(phantom.spacing)
        assert spine[y] > c["aorta"][y] + 15 and np.hypot(*(spine - c["aorta"])[:2]) < 80, seed
        assert c["pancreas"][y] < c["aorta"][y], seed  # pancreas anterior to the aorta


def test_lung_bases_only_in_top_slices(cases):
    for seed, (image, _) in cases.items():
        air_inside = []
        for k in range(image.shape[2]):
            body = ndimage.binary_fill_holes(image[:, :, k] > -500)
            air_inside.append((body & (image[:, :, k] < -600)).sum() / max(body.sum(), 1))
        air_inside = np.asarray(air_inside)
        assert air_inside[-1] > 0.1 and air_inside[-3:].mean() > 0.06, seed
        assert air_inside[-3:].mean() > 4 * air_inside[: image.shape[2] // 2].mean(), seed


HU_RANGES = {
    "liver": (52, 68), "spleen": (42, 53), "right_kidney": (110, 170), "left_kidney": (110, 170),
    "aorta": (175, 255), "inferior_vena_cava": (105, 135), "gallbladder": (0, 20), "pancreas": (30, 50),
    "portal_and_splenic_veins": (120, 175),
}


def test_organ_intensities_in_hu(clean_cases, cases, phantom):
    for seed, (image, label) in clean_cases.items():
        for name, (low, high) in HU_RANGES.items():
            interior = ndimage.binary_erosion(label == L[name])
            interior = interior if interior.sum() > 5 else label == L[name]
            assert low <= np.median(image[interior]) <= high, (seed, name, np.median(image[interior]))
        assert np.percentile(image, 99.9) > 300  # bone
        assert np.median(image[:8, :8, :]) == pytest.approx(-1000, abs=5)  # air outside the body
        assert ((image > -130) & (image < -70)).mean() > 0.05  # fat
        assert ((image > -900) & (image < -800)).sum() > 2000  # lung
    # noise of the default phantom: about noise_std around the clean image
    residual = cases[0][0] - phantom.generate(0)[0]
    assert residual.std() == 0
    clean, noisy = clean_cases[0][0], cases[0][0]
    liver = ndimage.binary_erosion(cases[0][1] == L["liver"], iterations=2)
    assert 10 <= (noisy - clean)[liver].std() <= 22


def test_affine_matches_documented_axes(phantom, cases):
    assert nib.aff2axcodes(phantom.affine) == ("L", "P", "S")
    _, label = cases[0]
    ijk = np.argwhere(label == L["liver"]).mean(axis=0)
    ras = phantom.affine @ np.append(ijk, 1.0)
    assert ras[0] > 0  # the liver is on the patient's right (+x in RAS)
    ijk_spleen = np.argwhere(label == L["spleen"]).mean(axis=0)
    assert (phantom.affine @ np.append(ijk_spleen, 1.0))[0] < 0


def test_generation_is_fast(phantom):
    timings = []
    for seed in (10, 11):
        start = time.perf_counter()
        phantom.generate(seed)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 1.0, timings


# --------------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axcodes", ["LPS", "PLS", "RAS"])
def test_write_nifti_roundtrip(tmp_path, axcodes):
    data = np.random.default_rng(0).normal(0, 300, (7, 6, 5)).astype(np.float32)
    path = write_nifti(data, tmp_path / "sub" / "img.nii.gz", (0.8, 1.5, 3.0), dtype=np.int16, axcodes=axcodes)
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == tuple(axcodes)
    assert np.allclose(img.header.get_zooms(), (0.8, 1.5, 3.0))
    assert img.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.rint(data).astype(np.int16))
    centre = img.affine @ np.array([3.0, 2.5, 2.0, 1.0])
    assert np.allclose(centre[:3], 0.0, atol=1e-4)
    np.testing.assert_allclose(img.affine, nifti_affine((0.8, 1.5, 3.0), data.shape, axcodes), atol=1e-5)


def test_write_nifti_2d_and_errors(tmp_path):
    img = nib.load(write_nifti(np.eye(4, dtype=np.uint8), tmp_path / "a.nii", (1.0, 2.0)))
    assert img.shape == (4, 4) and np.allclose(img.header.get_zooms()[:2], (1.0, 2.0))
    with pytest.raises(ValueError):
        write_nifti(np.zeros((2, 2, 2)), tmp_path / "b.nii", (1.0, 1.0))
    with pytest.raises(ValueError):
        nifti_affine((1.0, 1.0, 1.0), axcodes="LRS")


def test_write_png_bit_depths(tmp_path):
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(np.asarray(Image.open(write_png(u8, tmp_path / "a.png"))), u8)
    u16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    back = Image.open(write_png(u16, tmp_path / "b.png"))
    assert np.array_equal(np.asarray(back).astype(np.uint16), u16)
    mask = np.zeros((5, 7), bool)
    mask[1, 2] = True
    back = np.asarray(Image.open(write_png(mask, tmp_path / "c.png")))
    assert back.shape == (5, 7) and back[1, 2] == 255 and back.sum() == 255
    ramp = np.linspace(-0.5, 1.5, 9).reshape(3, 3)
    assert np.asarray(Image.open(write_png(ramp, tmp_path / "d.png", bits=16))).max() == 65535
    with pytest.raises(ValueError):
        write_png(np.array([[300]]), tmp_path / "e.png")


def test_write_datalist_is_atomic(tmp_path):
    path = tmp_path / "d" / "dataset.json"
    first = {"training": [{"image": "a.nii.gz"}], "validation": []}
    write_datalist(path, first)
    assert json.loads(path.read_text()) == first
    with pytest.raises(TypeError):
        write_datalist(path, {"training": [object()]})
    assert json.loads(path.read_text()) == first  # a failed write leaves the old file
    write_datalist(path, {"training": []})
    assert json.loads(path.read_text()) == {"training": []}
    assert sorted(p.name for p in path.parent.iterdir()) == ["dataset.json"]


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


def test_build_dataset_atomically_success(tmp_path):
    final = tmp_path / "ds"
    with build_dataset_atomically(final) as tmp:
        assert tmp.is_dir() and tmp.parent == final.parent.absolute() and not final.exists()
        (tmp / "x.txt").write_text("ok")
    assert (final / "x.txt").read_text() == "ok"
    assert siblings(final) == ["ds"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with build_dataset_atomically(empty) as tmp:
        (tmp / "y.txt").write_text("ok")
    assert (empty / "y.txt").is_file()


def test_build_dataset_atomically_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with build_dataset_atomically(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert not final.exists() and os.listdir(tmp_path) == []


def test_build_dataset_atomically_keeps_a_dataset_finished_meanwhile(tmp_path):
    final = tmp_path / "ds"
    with build_dataset_atomically(final) as tmp:
        (tmp / "ours.txt").write_text("ours")
        final.mkdir()
        (final / "theirs.txt").write_text("theirs")  # another rank finished first
    assert sorted(os.listdir(final)) == ["theirs.txt"]
    assert siblings(final) == ["ds"]
