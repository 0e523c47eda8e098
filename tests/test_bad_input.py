"""Bad input at the entry points ends in an AmbientMRIError that names the setting or file, never in a raw
torch / h5py / PIL traceback: device names, model and checkpoint files, evaluation targets, thread counts,
mask kinds, sample images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import ambient_mri as am
from ambient_mri.cli import main
from ambient_mri.devices import resolve_device
from ambient_mri.metrics import evaluate_dirs
from ambient_mri.training.trainer import train
from data_tools.simulate import make_fastmri_volume
from helpers import blobs, multicoil_measurements, tiny_recipe


def test_device_names_are_checked_before_any_work():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(am.AmbientMRIError, match="training.device 'gpu' is not a device"):
        resolve_device("gpu", "training.device")
    with pytest.raises(am.AmbientMRIError, match="only cpu and cuda"):
        resolve_device("meta")
    if torch.cuda.is_available():
        with pytest.raises(am.AmbientMRIError, match="CUDA device"):
            resolve_device("cuda:99")
    else:
        with pytest.raises(am.AmbientMRIError, match="no CUDA device"):
            resolve_device("cuda")


def test_load_model_rejects_files_that_are_not_model_files(tmp_path):
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    no_config = tmp_path / "no_config.pt"
    torch.save({"info": {}, "state_dict": {}}, no_config)
    for f in (tensor, no_config):
        with pytest.raises(am.DataFileError, match=f"{f.name}: not an ambient_mri model file"):
            am.load_model(f)


def test_resume_with_another_network_names_the_checkpoint(tmp_path):
    data, _ = multicoil_measurements()
    from ambient_mri.data.factory import with_further
    from ambient_mri.training.recipe import load_recipe

    recipe = tiny_recipe(tmp_path, steps=2)
    train(recipe, dataset=(with_further(data, load_recipe(recipe)), {}), progress=False)
    wider = {**recipe, "training": {**recipe["training"], "steps": 4},
             "network": {**recipe["network"], "model_channels": 16}}
    with pytest.raises(am.DataFileError, match=r"checkpoint.pt: resuming would continue a different training: "
                                               r"network.model_channels \(8 -> 16\)"):
        train(wider, dataset=(with_further(data, load_recipe(wider)), {}), progress=False)


def test_evaluate_names_an_unreadable_target(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "r").mkdir()
    (tmp_path / "t" / "scan.h5").write_bytes(b"not hdf5 at all")
    (tmp_path / "r" / "scan.h5").write_bytes(b"x")
    with pytest.raises(am.DataFileError, match="scan.h5: cannot be read as HDF5"):
        evaluate_dirs(tmp_path / "t", tmp_path / "r")


def test_negative_threads_and_bad_device_on_the_command_line(tmp_path, capsys):
    assert main(["train", "recipes/demo_mni_r4.yaml", "--threads", "-1"]) == 2
    assert "--threads must be in 0.." in capsys.readouterr().err
    # 100000 threads segfaulted train and made reconstruct fail to map a shared library
    for argv in (["train", "recipes/demo_mni_r4.yaml"], ["demo", "--output", str(tmp_path / "d")],
                 ["reconstruct", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o2"), "--method",
                  "zero_filled", "--acceleration", "4"]):
        assert main([*argv, "--threads", "100000"]) == 2
        assert "--threads must be in 0.." in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and not (tmp_path / "o2").exists()
    model = tmp_path / "m.pt"
    torch.save(torch.zeros(1), model)
    assert main(["sample", "--model", str(model), "--num", "1", "--output", str(tmp_path / "o"),
                 "--device", "gpu"]) == 2
    assert "'gpu' is not a device" in capsys.readouterr().err


def test_reconstruct_file_refuses_a_2d_mask_kind_for_column_data(tmp_path):
    f = tmp_path / "scan.h5"
    make_fastmri_volume(f, blobs(1, 32), num_coils=4, noise_std=1e-3, seed=0)
    with pytest.raises(am.AmbientMRIError, match="'poisson2d' is not a column mask kind"):
        am.reconstruct_file(f, tmp_path / "out" / "scan.h5", mask="poisson2d", acceleration=4, method="zero_filled")


def test_memorization_names_an_unreadable_sample_png(tmp_path):
    from ambient_mri.memorization import load_samples

    (tmp_path / "sample_0000.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(am.DataFileError, match="sample_0000.png: cannot be read as an image"):
        load_samples(tmp_path)


def test_data_file_error_survives_a_worker_process():
    """Worker pools pickle errors back to the parent; a DataFileError must arrive whole (not as a
    BrokenProcessPool), with its file and problem."""
    import pickle

    from ambient_mri.errors import DataFileError

    err = pickle.loads(pickle.dumps(DataFileError("/data/x.h5", "no kspace dataset")))
    assert isinstance(err, DataFileError) and err.path == "/data/x.h5" and err.problem == "no kspace dataset"
    assert str(err) == "/data/x.h5: no kspace dataset"


# ----------------------------------------------------------------------------------------------------------------
# Python API arguments: each refused by name (they gave NaN, rescaled or empty images, or raw errors)
# ----------------------------------------------------------------------------------------------------------------


def _scan():
    import numpy as np

    from ambient_mri.masks import kspace_mask

    sim = multicoil_measurements(n=2, size=32, coils=4)[0]
    k = np.stack([sim[i]["y"].numpy() for i in range(2)])
    m = kspace_mask("random", k.shape[-2:], 2, 0.25, seed=0)[0]
    return k * m, m


def test_a_random_mask_never_silently_misses_its_acceleration():
    """fastMRI's RandomMaskFunc keeps the ACS block alone when it already exceeds W / R: asked for R = 16 at
    fastMRI's width and centre fraction it gave R = 12.3 (R = 100 gave 4) with no word. The mask stays fastMRI's;
    a warning says so. Equispaced, where fastMRI divides by zero, is refused."""
    from ambient_mri.masks import achieved_acceleration, kspace_mask

    with pytest.warns(UserWarning, match="26 ACS lines .* already give acceleration 12.3, below the 16 asked for"):
        m = kspace_mask("random", (640, 320), 16, 0.08, seed=0)
    assert achieved_acceleration(m) == pytest.approx(320 / 26)
    with pytest.raises(am.AmbientMRIError, match="equispaced: the 26 ACS lines"):
        kspace_mask("equispaced", (640, 320), 16, 0.08, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = kspace_mask("random", (32, 64), 4, 0.25, seed=0)  # 16 ACS lines = W / R exactly: no warning
    assert achieved_acceleration(m) == 4


def test_one_step_is_deterministic():
    """one_step evaluates D(A^H y) once: --num-samples 3 gave 3 identical images and an all-zero "std" map, and
    --steps was ignored but recorded."""
    from ambient_mri.sampling import policy

    for steps, n in ((None, 3), (7, 1)):
        with pytest.raises(am.AmbientMRIError, match="'one_step' is deterministic"):
            policy.check_run(policy.METHODS["one_step"], steps, n)
    policy.check_run(policy.METHODS["one_step"], None, 1)
    policy.check_run(policy.METHODS["fast"], 7, 3)


@pytest.mark.parametrize("kwargs,pattern", [
    ({"mask_scale": 0.5}, "mask must contain only 0"),
    ({"method": "sense", "lam": float("nan")}, "lam must be a finite number"),
    ({"method": "sense", "lam": -1.0}, "lam must be >= 0"),
    ({"method": "sense", "lam": "0.1"}, "lam must be a finite number"),
    ({"method": "sense", "iters": 0}, "iters must be an integer >= 1"),
    ({"method": "l1_wavelet", "iters": 2.5}, "iters must be an integer >= 1"),
    ({"method": "sense", "num_samples": 3}, "'sense' is deterministic"),
    ({"method": "sense", "steps": 10}, "'sense' is deterministic"),
    ({"method": "zero_filled", "coils": 2.0}, "coils must be an integer"),
    ({"method": "zero_filled", "target_size": 16}, "target_size must be two integers"),
    ({"method": "zero_filled", "target_size": (0, 0)}, "target_size must be two integers"),
    ({"method": "zero_filled", "target_size": (16.7, 16)}, "target_size must be two integers"),
    ({"method": "sense", "lam": 1e-3, "maps": "zeros"}, "maps are all zero"),
    ({"method": "sense", "lam": 1e-3, "maps": "nan"}, "maps contain NaN"),
])
def test_reconstruct_arguments_are_checked(kwargs, pattern):
    import numpy as np

    k, m = _scan()
    kwargs = dict(kwargs)
    m = m * kwargs.pop("mask_scale", 1.0)
    maps = kwargs.pop("maps", None)
    if maps is not None:
        maps = np.zeros((4, 32, 32), np.complex64) if maps == "zeros" else np.full((4, 32, 32), np.nan, np.complex64)
        kwargs["maps"] = maps
    kwargs.setdefault("method", "zero_filled")
    with pytest.raises(am.AmbientMRIError, match=pattern):
        am.reconstruct(k, m, progress=False, **kwargs)


def test_numpy_scalars_and_complex32_are_taken():
    import numpy as np

    k, m = _scan()
    ref = am.reconstruct(k, m, method="zero_filled", progress=False).magnitude
    half = am.reconstruct(torch.from_numpy(k).to(torch.complex32), m, method="zero_filled", progress=False)
    np.testing.assert_allclose(half.magnitude, ref, rtol=2e-2, atol=2e-3 * ref.max())
    from ambient_mri.sampling.policy import check_options

    check_options({"noise_std": np.float32(0.01), "iters": np.int64(3), "eta": np.float64(0.5)})


@pytest.mark.parametrize("options,pattern", [
    ({"sigma_min": 0.0}, "sigma_min must be > 0"),
    ({"sigma_min": -1.0}, "sigma_min must be > 0"),
    ({"sigma_max": float("nan")}, "sigma_max must be a finite number"),
    ({"sigma_min": 2.0, "sigma_max": 1.0}, "sigma_min .* must not be above sigma_max"),
    ({"zeta": float("nan")}, "zeta must be a finite number"),
    ({"eta": 1.5}, r"eta must be in \[0, 1\]"),
    ({"cg_iters": 2.5}, "cg_iters must be an integer >= 1"),
    ({"cg_iters": 0}, "cg_iters must be an integer >= 1"),
    ({"eps": float("nan")}, "eps must be a finite number"),
])
def test_sampler_options_are_checked_by_value(options, pattern):
    from ambient_mri.sampling.policy import check_options

    with pytest.raises(am.AmbientMRIError, match=pattern):
        check_options(options)


def test_masks_refuse_nan_and_an_acs_block_that_leaves_no_room():
    from ambient_mri.masks import kspace_mask

    with pytest.raises(am.AmbientMRIError, match="acceleration must be a finite number >= 1, got nan"):
        kspace_mask("random", (64, 32), float("nan"), 0.1)
    with pytest.raises(am.AmbientMRIError, match="equispaced: the 8 ACS lines .* lower center_fraction"):
        kspace_mask("equispaced", (64, 32), 4, 0.25)
    for kind, shape, R, cf in (("random", (128, 1), 4, 0.125), ("gaussian1d", (128, 8), 16, 0.05),
                               ("uniform1d", (128, 8), 16, 0.05)):  # all-zero masks were returned
        with pytest.raises(am.AmbientMRIError, match=f"{kind} mask at acceleration {R} .* acquires nothing"):
            kspace_mask(kind, shape, R, cf, seed=0)


def _set_recon_size(path, x: int, y: int) -> None:
    """Write (x columns, y rows) as the header's recon size."""
    import xml.etree.ElementTree as ET

    import h5py

    with h5py.File(path, "a") as f:
        root = ET.fromstring(f["ismrmrd_header"][()].decode())
        ns = {"m": root.tag.split("}")[0][1:]} if root.tag.startswith("{") else {}
        pre = "m:" if ns else ""
        for tag, v in (("x", x), ("y", y)):
            root.find(f".//{pre}reconSpace/{pre}matrixSize/{pre}{tag}", ns).text = str(v)
        del f["ismrmrd_header"]
        f["ismrmrd_header"] = ET.tostring(root)


def test_a_recon_size_wider_than_the_kspace_follows_fastmri_flair_203_rule(tmp_path):
    import h5py

    make_fastmri_volume(tmp_path / "v.h5", blobs(2, 32), num_coils=4, noise_std=1e-3)
    _set_recon_size(tmp_path / "v.h5", 40, 40)
    out = am.reconstruct_file(tmp_path / "v.h5", tmp_path / "o.h5", acceleration=2, center_fraction=0.25,
                              method="zero_filled", progress=False)
    with h5py.File(out, "r") as f:
        assert f["reconstruction"].shape == (2, 32, 32)


def test_reconstruct_file_checks_center_fraction_recon_size_and_takes_target_size(tmp_path):
    import h5py

    make_fastmri_volume(tmp_path / "v.h5", blobs(2, 32), num_coils=4, noise_std=1e-3)
    with pytest.raises(am.AmbientMRIError, match=r"center_fraction must be in \(0, 1\), got 0"):
        am.reconstruct_file(tmp_path / "v.h5", tmp_path / "o.h5", acceleration=2, center_fraction=0,
                            method="zero_filled")
    out = am.reconstruct_file(tmp_path / "v.h5", tmp_path / "o.h5", acceleration=2, center_fraction=0.25,
                              method="zero_filled", target_size=(16, 16), progress=False)
    with h5py.File(out, "r") as f:
        assert f["reconstruction"].shape == f["zero_filled"].shape == (2, 16, 16)
    _set_recon_size(tmp_path / "v.h5", 0, 0)
    with pytest.raises(am.DataFileError, match="v.h5: header recon size 0x0 does not fit"):
        am.reconstruct_file(tmp_path / "v.h5", tmp_path / "o2.h5", acceleration=2, center_fraction=0.25,
                            method="zero_filled")
    assert not (tmp_path / "o2.h5").exists()


def test_evaluate_volume_refuses_images_smaller_than_the_ssim_window():
    import numpy as np

    with pytest.raises(am.AmbientMRIError, match="SSIM's 7x7 window needs at least 7x7"):
        am.metrics.evaluate_volume(np.ones((1, 5, 5)), np.ones((1, 5, 5)))


@pytest.mark.parametrize("call,pattern", [
    (lambda net, x, m: am_image().inpaint(net, x, m, steps=0), "steps must be an integer in \\[1, 100000\\]"),
    (lambda net, x, m: am_image().inpaint(net, x, m, steps=2.5), "steps must be an integer in \\[1, 100000\\]"),
    (lambda net, x, m: am_image().inpaint(net, x, m, num_samples=2.5), "num_samples must be an integer"),
    (lambda net, x, m: am_image().inpaint(net, x, m, seed=-1), "seed must be an integer in"),
    (lambda net, x, m: am_image().inpaint(net, x, m, zeta=float("nan")), "zeta must be a finite number"),
    (lambda net, x, m: am_image().inpaint(net, x * 255, m), r"values reach .*images must be in \[-1, 1\]"),
    (lambda net, x, m: am_image().denoise(net, x, float("nan")), "sigma_n must be a finite number"),
    (lambda net, x, m: am_image().denoise(net, x, "0.2"), "sigma_n must be a finite number"),
    (lambda net, x, m: am_image().sample_images(net, 1, steps=2.5), "steps must be an integer in \\[1, 100000\\]"),
    (lambda net, x, m: am_image().sample_images(net, 1, sigma_min=float("nan")), "sigma_min must be a finite"),
])
def test_image_api_arguments_are_checked(call, pattern):
    from ambient_mri.model import Denoiser
    from ambient_mri.training.recipe import load_recipe
    from ambient_mri.training.trainer import network_config
    from helpers import TINY_NET

    r = load_recipe({"network": TINY_NET, "corruption": {"operator": "pixel", "p": 0.5, "cond": ["mask"]}})
    net = Denoiser(network_config(r, 1, 1), {"operator": "pixel", "ambient": True, "cond": ["mask"],
                                            "image_shape": [1, 8, 8], "acquisition": {"p": 0.5}})
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    with pytest.raises(am.AmbientMRIError, match=pattern):
        call(net, x, torch.ones(1, 1, 8, 8))


def am_image():
    import ambient_mri.image_recon as image_recon

    return image_recon


def test_a_sigma_max_below_the_models_default_sigma_min_is_refused():
    from ambient_mri.sampling.prior import edm_sigmas

    with pytest.raises(am.AmbientMRIError, match=r"sigma_min \(0.1\) is above sigma_max \(0.05\).*give both"):
        edm_sigmas(10, 0.1, 0.05)


def test_seeds_are_non_negative_and_noisy_known_pixels_are_taken():
    from ambient_mri.image_recon import _check_scale
    from ambient_mri.masks import kspace_mask, seed_from

    assert seed_from(5) == 5 and seed_from((1, 2)) == (1, 2) and seed_from("a.h5") == (97, 46, 104, 53)
    # seed 1's first batch and seed 1915712692's eighth derive 100_003 and 1915712692 * 100_003 + 7, equal modulo
    # 2**32: taken modulo, the two users' seeds drew the same Ã
    a, b = 100_003, 1915712692 * 100_003 + 7
    assert a % 2**32 == b % 2**32 and seed_from(b) == (b % 2**32, b >> 32) and seed_from((b, 1)) != seed_from((a, 1))
    draw = [np.random.RandomState(seed_from(v)).uniform(size=8) for v in (a, b)]
    assert not np.allclose(*draw)
    with pytest.raises(am.AmbientMRIError, match="seed must be >= 0"):
        kspace_mask("random", (8, 32), 2, 0.25, seed=-1)
    _check_scale(torch.full((1, 1, 4, 4), 1.3), 0.0, "image")  # a noisy pixel past 1 is fine
    with pytest.raises(am.AmbientMRIError, match="values reach 255"):
        _check_scale(torch.full((1, 1, 4, 4), 255.0), 0.0, "image")
    # sigma_n above 2 only for a model trained at that noise level
    from ambient_mri.record import TrainingRecord

    noisy_model = TrainingRecord(operator="identity", ambient=False, image_shape=(1, 4, 4), sigma_n=3.0)
    _check_scale(torch.zeros(1, 1, 4, 4), 2.5, "noisy", noisy_model)
    with pytest.raises(am.AmbientMRIError, match="sigma_n must be at most 2 "):
        _check_scale(torch.zeros(1, 1, 4, 4), 2.5, "noisy")


def test_train_api_arguments_of_the_wrong_type_are_named(tmp_path):
    """am.train({1: 2}), am.train(None) and resume=123 raised TypeErrors from inside the recipe code and pathlib."""
    from ambient_mri.errors import RecipeError

    with pytest.raises(RecipeError, match="recipe key 1 in the recipe is not a name"):
        am.train({1: 2})
    with pytest.raises(RecipeError, match="recipe: a YAML file path, a dict or a Recipe, got NoneType"):
        am.train(None)
    with pytest.raises(am.AmbientMRIError, match="resume: a run folder path, got int"):
        am.train({"name": "x", "output": str(tmp_path)}, resume=123)
    assert not any(tmp_path.iterdir())


def test_image_loading_and_study_options_are_checked_by_value(tmp_path):
    """limit=0 / -1, image_size=4.0 / True, thresholds="0.9" and num_pairs=0 gave numpy, matplotlib or float()
    errors (num_pairs after the study's JSON was written), or silently dropped an image (an audit)."""
    from ambient_mri.data.images import load_images
    from ambient_mri.memorization import check_thresholds, study, write_study

    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(0, 1, (4, 8, 8)).astype(np.float32))
    for limit in (0, -1, 1.5):
        with pytest.raises(am.AmbientMRIError, match="limit must be an integer >= 1"):
            load_images(str(tmp_path / "x.npy"), limit=limit)
    for size in (4.0, True, "8"):
        with pytest.raises(am.AmbientMRIError, match="image_size must be one or two positive integers"):
            load_images(str(tmp_path / "x.npy"), image_size=size)
    with pytest.raises(am.AmbientMRIError, match="thresholds must be different numbers"):
        check_thresholds("0.9")
    train = np.random.default_rng(1).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    result = study({"a": train[:2]}, train)
    with pytest.raises(am.AmbientMRIError, match="num_pairs must be an integer >= 1"):
        write_study(result, tmp_path / "study", num_pairs=0)
    assert not (tmp_path / "study").exists()


def test_an_integer_reconstruction_and_study_options_out_of_range_are_named(tmp_path):
    """A uint8 reconstruction was scored against a float target (PSNR -44, no word); copy_floor NaN or 2 and a
    negative identity_k were taken (an audit)."""
    import h5py

    from ambient_mri.memorization import study
    from ambient_mri.metrics import evaluate_file

    target = np.random.default_rng(0).uniform(0, 1e-4, (1, 16, 16)).astype(np.float32)
    for name, data in (("t.h5", {"reconstruction_rss": target}), ("r.h5", {"reconstruction": (target * 2e6)
                                                                           .astype(np.uint8)})):
        with h5py.File(tmp_path / name, "w") as f:
            for k, v in data.items():
                f[k] = v
    with pytest.raises(am.DataFileError, match=r"r.h5: reconstruction is of dtype uint8"):
        evaluate_file(tmp_path / "t.h5", tmp_path / "r.h5")
    train = np.random.default_rng(1).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    for kw, msg in (({"copy_floor": float("nan")}, "copy_floor must be"), ({"copy_floor": 2.0}, "copy_floor must"),
                    ({"identity_threshold": float("nan")}, "identity_threshold must"),
                    ({"identity_k": -3}, "identity_k must be an integer >= 1")):
        with pytest.raises(am.AmbientMRIError, match=msg):
            study({"a": train[:2]}, train, **kw)


def test_folders_a_command_made_and_left_empty_are_removed_with_their_new_parents(tmp_path):
    """prepare into data/brain_r4 with every file refused removed brain_r4 but left the data/ it had made (a docs
    audit); a parent that existed before, or that now holds something, stays."""
    from ambient_mri.files import removed_if_left_empty

    out = tmp_path / "data" / "brain_r4"
    with removed_if_left_empty(out, out / "train"):
        (out / "train").mkdir(parents=True)
    assert not (tmp_path / "data").exists() and tmp_path.is_dir()
    with removed_if_left_empty(out, out / "train"):
        (out / "train").mkdir(parents=True)
        (tmp_path / "data" / "notes.txt").write_text("kept")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["notes.txt"]
    (tmp_path / "users_empty").mkdir()  # "typo/.." is missing by name, but resolves to a folder that was there
    with removed_if_left_empty(tmp_path / "typo" / ".." / "users_empty" / "out"):
        (tmp_path / "users_empty" / "out").mkdir()
    assert (tmp_path / "users_empty").is_dir() and not (tmp_path / "users_empty" / "out").exists()
