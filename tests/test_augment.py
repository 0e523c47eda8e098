"""Training-data augmentation (ambient_mri.data.augment): made once from clean images at build time, every copy a
new example corrupted exactly once; the recipe's data.augment and the demo builder's --augment-copies."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ambient_mri.data.augment import AugmentConfig, _warp, augment_images, sample_coordinates
from ambient_mri.data.factory import build_training_data
from ambient_mri.data.image_measurements import build_image_measurements
from ambient_mri.errors import AmbientMRIError, RecipeError
from ambient_mri.training.recipe import load_recipe
from helpers import blobs

RANDOM = AugmentConfig(copies=2, flip=True, rotate=10.0, scale=0.05, shift=0.05, elastic=1.5, gamma=[0.8, 1.25])


def images(n: int = 3, size: int = 24) -> np.ndarray:
    """(n, size, size) float32 smooth phantoms in [0, 1], not left-right symmetric."""
    x = blobs(n, size, seed=1)
    x[:, :, : size // 4] *= 0.5
    return x


# --------------------------------------------------------------------------------------------------
# augment_images
# --------------------------------------------------------------------------------------------------


def test_deterministic_for_a_seed_and_different_across_seeds():
    x = images()
    a, b = augment_images(x, RANDOM, seed=3), augment_images(x, RANDOM, seed=3)
    np.testing.assert_array_equal(a, b)
    c = augment_images(x, RANDOM, seed=4)
    assert np.abs(a[3:] - c[3:]).max() > 1e-2
    # Copy k of image i depends on (seed, i, k) only: augmenting a subset gives the same copies.
    sub = augment_images(x[:2], RANDOM, seed=3)
    np.testing.assert_array_equal(sub[2:4], a[3:5])


@pytest.mark.parametrize("shape", [(3, 16, 20), (3, 2, 16, 20)])
def test_copies_count_and_originals_first_and_unchanged(shape):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    before = x.copy()
    out = augment_images(x, RANDOM, seed=0)
    assert out.shape == (3 * (1 + RANDOM.copies), *shape[1:]) and out.dtype == x.dtype
    np.testing.assert_array_equal(out[:3], before)
    np.testing.assert_array_equal(x, before)  # the input is not modified
    for k in (1, 2):
        assert all(np.abs(out[k * 3 + i] - before[i]).max() > 1e-3 for i in range(3))
    off = augment_images(x, AugmentConfig(), seed=0)
    np.testing.assert_array_equal(off, before)


def test_flip_really_flips():
    x = images()
    out = augment_images(x, AugmentConfig(copies=1, flip=True), seed=0)
    np.testing.assert_array_equal(out[3:], x[:, :, ::-1])
    assert np.abs(out[3:] - x).max() > 0.1
    # Multi-channel images: every channel mirrored along the last (left-right) axis.
    xc = np.stack([x, 1 - x], 1)
    np.testing.assert_array_equal(augment_images(xc, AugmentConfig(copies=1, flip=True), 0)[3:], xc[..., ::-1])


def test_copies_that_would_repeat_an_image_are_refused():
    with pytest.raises(AmbientMRIError, match="augment.copies"):
        augment_images(images(), AugmentConfig(copies=1), seed=0)  # no transform: a plain duplicate
    with pytest.raises(AmbientMRIError, match="augment.copies"):
        augment_images(images(), AugmentConfig(copies=2, flip=True), seed=0)  # copy 2 = the original
    with pytest.raises(AmbientMRIError, match="augment.gamma"):
        augment_images(images(), AugmentConfig(copies=1, gamma=[2.0, 1.0]), seed=0)
    with pytest.raises(AmbientMRIError, match="unknown augmentation setting 'mirror'"):
        augment_images(images(), {"copies": 1, "mirror": True}, seed=0)


def test_zero_deformation_is_the_identity():
    x = images(1)[0][None]  # (C=1, H, W)
    rng = np.random.default_rng(0)
    coords = sample_coordinates(x.shape[-2:], AugmentConfig(elastic=0.0), rng)
    grid = np.stack(np.meshgrid(np.arange(24), np.arange(24), indexing="ij"))
    np.testing.assert_allclose(coords, grid, atol=1e-12)
    np.testing.assert_allclose(_warp(x, coords), x, atol=1e-6)
    # Through augment_images: vanishing rotation, scale, shift and displacement give back the image.
    tiny = AugmentConfig(copies=1, rotate=1e-7, scale=1e-9, shift=1e-9, elastic=1e-7)
    out = augment_images(images(), tiny, seed=0)
    np.testing.assert_allclose(out[3:], images(), atol=1e-5)


def test_rotation_and_scale_turn_about_the_centre():
    coords = sample_coordinates((25, 25), AugmentConfig(rotate=30.0, scale=0.2), np.random.default_rng(1))
    np.testing.assert_allclose(coords[:, 12, 12], [12.0, 12.0], atol=1e-9)
    assert np.abs(coords[:, 0, 0] - [0.0, 0.0]).max() > 0.5


@pytest.mark.parametrize("settings", [AugmentConfig(copies=2, rotate=10.0, scale=0.05, shift=0.05),
                                      AugmentConfig(copies=2, elastic=2.0, elastic_smoothness=3.0)])
def test_deformations_change_the_image_but_keep_its_mean_and_range(settings):
    x = images(3, 32)
    out = augment_images(x, settings, seed=0)
    for k in (1, 2):
        for i in range(3):
            copy = out[k * 3 + i]
            assert np.abs(copy - x[i]).max() > 0.05
            assert abs(copy.mean() - x[i].mean()) < 0.01  # images in [0, 1]: the mean moves by < 1% of the range
            assert x[i].min() - 1e-6 <= copy.min() and copy.max() <= x[i].max() + 1e-6  # bilinear: no overshoot


def test_elastic_displacement_has_the_requested_largest_length():
    coords = sample_coordinates((32, 32), AugmentConfig(elastic=2.5), np.random.default_rng(0))
    grid = np.stack(np.meshgrid(np.arange(32), np.arange(32), indexing="ij"))
    length = np.sqrt(((coords - grid) ** 2).sum(0))
    assert length.max() == pytest.approx(2.5) and length.mean() > 0.5


def test_intensity_curve_is_monotone_and_keeps_the_range():
    x = images(3) * 2 - 1  # [-1, 1], as image data
    out = augment_images(x, AugmentConfig(copies=3, gamma=[0.5, 2.0]), seed=0)
    for k in (1, 2, 3):
        for i in range(3):
            orig, copy = x[i].ravel(), out[k * 3 + i].ravel()
            order = np.argsort(orig, kind="stable")
            assert np.all(np.diff(copy[order]) >= -1e-6)  # same order of values
            assert copy.min() == pytest.approx(orig.min(), abs=1e-6)
            assert copy.max() == pytest.approx(orig.max(), abs=1e-6)
            assert np.abs(copy - orig).max() > 1e-3
    # Complex images: the curve acts on the magnitude (monotone), the phase is kept.
    rng = np.random.default_rng(0)
    z = (images(2) * np.exp(1j * rng.uniform(-3, 3, (2, 24, 24)))).astype(np.complex64)
    zc = augment_images(z, AugmentConfig(copies=1, gamma=[0.5, 0.6]), seed=0)[2:]
    for i in range(2):
        order = np.argsort(np.abs(z[i]).ravel())
        assert np.all(np.diff(np.abs(zc[i]).ravel()[order]) >= -1e-5)
        on = np.abs(z[i]) > 1e-3
        np.testing.assert_allclose(np.angle(zc[i][on]), np.angle(z[i][on]), atol=1e-4)


def test_phase_only_for_complex_images():
    with pytest.raises(AmbientMRIError, match="augment.phase.*real-valued"):
        augment_images(images(), AugmentConfig(copies=1, phase=True), seed=0)
    z = (0.5 + images(2)).astype(np.complex64)
    out = augment_images(z, AugmentConfig(copies=1, phase=True), seed=0)
    assert out.dtype == np.complex64
    np.testing.assert_allclose(np.abs(out[2:]), np.abs(z), atol=1e-6)  # magnitude kept
    for c in out[2:]:
        step = np.angle(c[:, 1:] * np.conj(c[:, :-1]))  # phase change between neighbouring pixels
        spread = np.angle(c * np.conj(c[12, 12]))
        assert np.abs(spread).max() > 0.1 and np.abs(step).max() < 0.5  # the phase varies, smoothly


# --------------------------------------------------------------------------------------------------
# The recipe's data.augment and the image data set
# --------------------------------------------------------------------------------------------------


def image_recipe(path: Path, augment: dict | None = None, holdout: int = 0) -> dict:
    data = {"kind": "images", "path": str(path), "holdout": holdout}
    if augment is not None:
        data["augment"] = augment
    return {"data": data, "corruption": {"operator": "pixel", "p": 0.5, "cond": ["mask"]}}


@pytest.fixture
def npy(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, images(6, 16))
    return path


def test_recipe_checks_augment_keys_and_ranges(npy):
    r = load_recipe(image_recipe(npy, {"copies": 1, "flip": True, "gamma": [0.9, 1.1]}))
    assert r.data.augment == AugmentConfig(copies=1, flip=True, gamma=[0.9, 1.1])
    assert load_recipe(image_recipe(npy)).data.augment == AugmentConfig()  # off by default
    with pytest.raises(RecipeError, match="data.augment.mirror"):
        load_recipe(image_recipe(npy, {"copies": 1, "mirror": True}))
    with pytest.raises(RecipeError, match="data.augment.rotate"):
        load_recipe(image_recipe(npy, {"copies": 1, "rotate": 400}))
    with pytest.raises(RecipeError, match="data.augment.gamma"):
        load_recipe(image_recipe(npy, {"copies": 1, "gamma": [1.5, 1.0]}))
    with pytest.raises(RecipeError, match="data.augment.copies"):
        load_recipe(image_recipe(npy, {"copies": 1}))  # nothing switched on: duplicates
    with pytest.raises(RecipeError, match="data.augment.phase"):
        load_recipe(image_recipe(npy, {"copies": 1, "phase": True}))  # image data are real
    with pytest.raises(RecipeError, match="data.augment"):
        load_recipe(image_recipe(npy, {"copies": 1, "flip": True}), overrides=["data.augment=3"])
    # Dotted overrides reach the nested mapping and leave the caller's dict alone.
    base = image_recipe(npy, {"copies": 1, "flip": True})
    r = load_recipe(base, overrides=["data.augment.copies=0", "data.augment.rotate=5"])
    assert r.data.augment.copies == 0 and r.data.augment.rotate == 5.0 and base["data"]["augment"]["copies"] == 1
    assert load_recipe(r).data.augment == r.data.augment  # a Recipe round-trips


def test_recipe_refuses_augment_for_prepared_data(tmp_path):
    with pytest.raises(RecipeError, match="data.augment.copies.*prepared"):
        load_recipe({"data": {"kind": "prepared", "path": str(tmp_path), "augment": {"copies": 1, "flip": True}}})
    load_recipe({"data": {"kind": "prepared", "path": str(tmp_path), "augment": {"copies": 0, "flip": True}}})


def test_image_recipe_with_one_copy_doubles_the_examples_each_corrupted_once(npy):
    x = images(6, 16) * 2 - 1  # load_images maps [0, 1] floats to [-1, 1]
    plain = build_image_measurements(load_recipe(image_recipe(npy)))
    aug = build_image_measurements(load_recipe(image_recipe(npy, {"copies": 1, "flip": True})))
    assert len(plain) == 6 and len(aug) == 12
    data, info = build_training_data(load_recipe(image_recipe(npy, {"copies": 1, "flip": True})))
    assert len(data) == 12 and info["num_images"] == 12 and info["augment"]["num_originals"] == 6
    # The originals keep exactly the measurement they have without augmentation.
    np.testing.assert_array_equal(aug.y[:6].numpy(), plain.y.numpy())
    np.testing.assert_array_equal(aug.mask[:6].numpy(), plain.mask.numpy())
    for i in range(6):
        m_orig, m_copy = aug.mask[i, 0].numpy(), aug.mask[6 + i, 0].numpy()
        assert (m_orig != m_copy).mean() > 0.2  # the copy has its own corruption mask
        # The copy is the mirrored clean image, measured through its own mask only.
        np.testing.assert_allclose(aug.y[6 + i, 0].numpy(), m_copy * x[i, :, ::-1], atol=1e-6)
    assert aug.names[6].endswith("~aug1") and aug.labels == aug.labels[:6] * 2


def test_holdout_images_are_not_augmented_and_stay_last(npy):
    """The preview's held-out examples (the last data.holdout) are originals with no augmented copy in training."""
    x = images(6, 16) * 2 - 1
    r = load_recipe(image_recipe(npy, {"copies": 1, "flip": True}, holdout=2))
    r.corruption.p = 0.0  # measurements = the images themselves, to see which image is where
    aug = build_image_measurements(r)
    assert len(aug) == 4 * 2 + 2
    y = aug.y[:, 0].numpy()
    np.testing.assert_array_equal(y[:4], x[:4])                # trained originals
    np.testing.assert_array_equal(y[4:8], x[:4, :, ::-1])      # their copies
    np.testing.assert_array_equal(y[8:], x[4:])                # held out, never augmented
    assert aug.names[4:8] == [f"{i}~aug1" for i in range(4)] and aug.names[8:] == ["4", "5"]


# --------------------------------------------------------------------------------------------------
# The demo builder
# --------------------------------------------------------------------------------------------------


def h5_contents(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_build_demo_augment_adds_only_training_volumes(tmp_path, capsys):
    pytest.importorskip("nilearn")
    from ambient_mri.cli import main as cli
    from ambient_mri.data.prepared import PreparedSlices
    from data_tools.demo import build_demo

    plain = build_demo(tmp_path / "plain", size=16, coils=2, slices=10)
    rc = cli(["prepare", "demo", "--output", str(tmp_path / "aug"), "--size", "16", "--coils", "2", "--slices", "10",
              "--augment-copies", "1"])
    assert rc == 0, capsys.readouterr()
    aug_root = tmp_path / "aug"
    plain_files = sorted(p.relative_to(plain["root"]) for p in plain["root"].rglob("*.h5"))
    aug_files = sorted(p.relative_to(aug_root) for p in aug_root.rglob("*.h5"))
    extra = sorted(set(aug_files) - set(plain_files))
    assert set(plain_files) <= set(aug_files)
    assert [str(p) for p in extra] == [f"{d}/demo_train_aug1_00.h5" for d in
                                       ("prepared_full/train", "prepared_r4/train", "raw/train")]
    for rel in plain_files:  # validation, references and the original training volumes: identical
        a, b = h5_contents(plain["root"] / rel), h5_contents(aug_root / rel)
        assert a.keys() == b.keys(), rel
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{rel}:{key}")
    train = PreparedSlices(aug_root / "prepared_r4" / "train")
    assert len(train) == 2 * len(PreparedSlices(plain["r4_train"]))
    record = json.loads((aug_root / "demo.json").read_text())["augment"]
    assert record["copies"] == 1 and record["flip"] is True
    assert json.loads((plain["root"] / "demo.json").read_text())["augment"] is None
    # The augmented volume is a new subject: its own k-space, not a copy of the original's.
    k_orig = h5_contents(aug_root / "raw/train/demo_train_00.h5")["kspace"]
    k_aug = h5_contents(aug_root / "raw/train/demo_train_aug1_00.h5")["kspace"]
    assert k_orig.shape == k_aug.shape and np.abs(k_orig - k_aug).max() > 1e-3
    # A rebuild without augmentation (or with other settings) refuses the folder instead of training on it.
    with pytest.raises(AmbientMRIError, match="demo_train_aug1_00.h5.*another --output"):
        build_demo(aug_root, size=16, coils=2, slices=10)
    with pytest.raises(AmbientMRIError, match="augment.phase"):
        build_demo(tmp_path / "x", size=16, coils=2, slices=10, augment={"copies": 1, "phase": True})


def test_build_demo_refuses_a_foreign_volume_in_its_raw_folders(tmp_path):
    pytest.importorskip("nilearn")
    from data_tools.demo import build_demo

    (tmp_path / "raw" / "val").mkdir(parents=True)
    (tmp_path / "raw" / "val" / "my_scan.h5").write_bytes(b"someone's scan")
    with pytest.raises(AmbientMRIError, match="my_scan.h5: not a demo volume"):
        build_demo(tmp_path, size=16, coils=2, slices=10)
    assert (tmp_path / "raw" / "val" / "my_scan.h5").read_bytes() == b"someone's scan"
    assert not (tmp_path / "raw" / "train").exists()


def test_build_demo_resumes_by_rewriting_damaged_volumes(tmp_path):
    """A rerun into the same folder redoes every volume it cannot read back whole (plain and augmented, raw and
    prepared; a prepared file whose raw input was rewritten too) and gives the same bytes as the first build (but
    the inputs' mtimes); whole volumes are left alone."""
    pytest.importorskip("nilearn")
    import hashlib

    from data_tools.demo import build_demo, demo_augment

    def digest(p):  # a prepared file records its input's mtime (source_fingerprint): compare all but that
        import h5py

        with h5py.File(p, "r") as f:
            if "source_fingerprint" not in f.attrs:
                return hashlib.sha256(p.read_bytes()).hexdigest()
            h = hashlib.sha256()
            for k in sorted(f):
                h.update(f[k][()].tobytes())
            for k in sorted(a for a in f.attrs if a != "source_fingerprint"):
                h.update(f"{k}={f.attrs[k]!r}".encode())
            return h.hexdigest()

    paths = build_demo(tmp_path, size=16, coils=2, slices=10, augment=demo_augment(1))
    before = {p: digest(p) for p in tmp_path.rglob("*.h5")}
    damaged = [tmp_path / "raw/train/demo_train_00.h5", tmp_path / "raw/train/demo_train_aug1_00.h5",
               tmp_path / "prepared_r4/train/demo_train_aug1_00.h5"]
    for p in damaged:
        p.write_bytes(p.read_bytes()[:2000])
    kept = tmp_path / "raw/val/demo_val_00.h5"
    mtime = kept.stat().st_mtime_ns
    assert build_demo(tmp_path, size=16, coils=2, slices=10, augment=demo_augment(1)) == paths
    assert {p: digest(p) for p in tmp_path.rglob("*.h5")} == before
    assert kept.stat().st_mtime_ns == mtime
