"""Bad input at the entry points ends in an AmbientMRIError that names the setting or file, never in a raw
torch / h5py / PIL traceback: device names, model and checkpoint files, evaluation targets, thread counts,
mask kinds, sample images."""

from __future__ import annotations

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
    with pytest.raises(am.DataFileError, match="checkpoint.pt: this checkpoint does not match"):
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
    assert "--threads must be >= 0" in capsys.readouterr().err
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
