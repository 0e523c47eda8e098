"""The ``ambient-mri`` command line: train, reconstruct, evaluate (against fastMRI's own evaluate), demo, errors."""

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import ambient_mri as am
from ambient_mri.cli import main
from ambient_mri.masks import kspace_mask
from ambient_mri.metrics import evaluate_dirs
from data_tools.simulate import make_fastmri_volume, write_fastmri
from helpers import blobs

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "demo_mni_r4.yaml"
CLI = [sys.executable, "-m", "ambient_mri"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`ambient-mri train recipes/demo_mni_r4.yaml --set ...` on a tiny demo set, through the CLI entry point."""
    from data_tools.demo import build_demo

    root = tmp_path_factory.mktemp("cli")
    paths = build_demo(root / "data", size=32, coils=4, slices=12)
    argv = ["train", str(RECIPE), "--set", "steps=20", "--set", f"data.path={paths['r4_train']}",
            "--set", f"output={root / 'runs'}", "--set", "network.model_channels=8",
            "--set", "network.channel_mult=[1,2]", "--set", "batch_size=4", "--set", "device=cpu",
            "--set", "checkpoint_every=20", "--no-progress"]
    assert main(argv) == 0
    return {"run": root / "runs" / "demo_mni_r4", "paths": paths, "root": root}


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """Two fully-sampled official-layout multi-coil volumes (64x64 images, 2x readout oversampling)."""
    d = tmp_path_factory.mktemp("targets")
    for i in range(2):
        make_fastmri_volume(d / f"vol{i}.h5", blobs(3, 64, seed=i), num_coils=8, noise_std=1e-3, seed=i)
    return d


def test_train_cli_writes_loadable_model(trained):
    run = trained["run"]
    model = am.load_model(run / "model.pt")
    assert model.info["operator"] == "multicoil" and model.info["ambient"] is True
    assert model.info["image_shape"] == [32, 32] and model.info["recipe"]["training"]["steps"] == 20
    assert model.config["model_channels"] == 8
    assert model.input_cg == 10                        # the demo recipe's CG-SENSE input
    mask = torch.ones(1, 1, 1, 32)
    A = am.MultiCoilMRI(torch.ones(1, 1, 32, 32, dtype=torch.complex64), mask)
    assert model(torch.zeros(1, 32, 32, dtype=torch.complex64), 1.0, mask, A).shape == (1, 32, 32)


def test_reconstruct_and_evaluate_agree_with_fastmri(tmp_path, targets, capsys):
    """reconstruct (retrospective R=4) -> fastmri.evaluate reads the files unchanged and gives the same means as
    metrics.evaluate_dirs and as `ambient-mri evaluate` (metrics.csv/json, one PNG per volume)."""
    from fastmri.evaluate import evaluate

    for method in ("zero_filled", "sense"):
        out = tmp_path / method
        assert main(["reconstruct", "--input", str(targets), "--output", str(out), "--method", method,
                     "--acceleration", "4", "--center-fraction", "0.125"]) == 0
        files = sorted(out.glob("*.h5"))
        assert [f.name for f in files] == ["vol0.h5", "vol1.h5"]
        with h5py.File(files[0], "r") as f:
            assert f["reconstruction"].shape == (3, 64, 64) and f["reconstruction"].dtype == np.float32
            assert f.attrs["method"] == method and f.attrs["ambient_mri_version"] == am.__version__
        ours = evaluate_dirs(targets, out)["mean"]
        theirs = evaluate(argparse.Namespace(target_path=targets, predictions_path=out, acquisition=None,
                                             acceleration=None), "reconstruction_rss").means()
        theirs = {k: np.asarray(v).item() for k, v in theirs.items()}  # fastMRI's SSIM is a (1,) array
        for key in ("PSNR", "SSIM", "NMSE"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
        report = tmp_path / f"report_{method}"
        capsys.readouterr()
        assert main(["evaluate", "--target", str(targets), "--recon", str(out), "--output", str(report)]) == 0
        printed = capsys.readouterr().out
        assert "mean" in printed and "vol1.h5" in printed
        saved = json.loads((report / "metrics.json").read_text())
        for key in ("PSNR", "SSIM", "NMSE"):
            assert saved["mean"][key] == pytest.approx(theirs[key], rel=1e-5)
        rows = list(csv.DictReader(open(report / "metrics.csv")))
        assert [r["file"] for r in rows] == ["vol0.h5", "vol1.h5", "mean"]
        assert float(rows[-1]["PSNR"]) == pytest.approx(theirs["PSNR"], rel=1e-5)
        for name in ("vol0.png", "vol1.png"):
            assert (report / name).stat().st_size > 1000
        if method == "zero_filled":
            zf_psnr = ours["PSNR"]
    assert ours["PSNR"] > zf_psnr + 3  # CG-SENSE beats zero-filled at R=4 with 8 coils
    # resumable: finished volumes are kept unless --overwrite
    assert main(["reconstruct", "--input", str(targets), "--output", str(tmp_path / "sense"), "--method", "sense",
                 "--acceleration", "4", "--center-fraction", "0.125"]) == 0
    assert "0 volume(s) reconstructed" in capsys.readouterr().out


def test_num_samples_gives_std(tmp_path, trained):
    """A diffusion method from the CLI on the demo's held-out volume; --num-samples 2 stores the std map."""
    raw_val = Path(trained["paths"]["raw_val"])
    out = tmp_path / "fast"
    assert main(["reconstruct", "--model", str(trained["run"] / "model.pt"), "--input", str(raw_val),
                 "--output", str(out), "--method", "fast", "--steps", "3", "--num-samples", "2",
                 "--acceleration", "4", "--center-fraction", "0.25", "--device", "cpu", "--threads", "1"]) == 0
    with h5py.File(out / "demo_val_00.h5", "r") as f:
        assert f["reconstruction"].shape == f["std"].shape == f["zero_filled"].shape == (2, 32, 32)
        assert (f["std"][()] > 0).any() and f.attrs["nfe"] == 3 * 2 and f.attrs["method"] == "fast"  # 2 samples
    assert main(["evaluate", "--target", str(raw_val), "--recon", str(out)]) == 0
    assert (out / "demo_val_00.png").stat().st_size > 1000 and (out / "metrics.json").is_file()


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    """One official-layout file per problem."""
    d = {}
    k = np.asarray(make_fastmri_volume(tmp_path / "ok.h5", blobs(1, 32), num_coils=4).kspace)
    mask = kspace_mask("equispaced", (64, 32), 2, 0.25, seed=0)[0]
    d["width"] = write_fastmri(tmp_path / "width" / "a.h5", k, mask=mask)
    with h5py.File(d["width"], "r+") as f:  # a mask one column short of the k-space width
        del f["mask"]
        f["mask"] = np.ones(31, bool)
    no_acs = np.zeros(32, np.float32)
    no_acs[::2] = 1
    no_acs[16] = 0
    d["no_acs"] = write_fastmri(tmp_path / "no_acs" / "a.h5", k, mask=no_acs)
    nan = k.copy()
    nan[0, 0, 3, 3] = np.nan
    d["nan"] = write_fastmri(tmp_path / "nan" / "a.h5", nan, mask=mask)
    make_fastmri_volume(tmp_path / "rows16" / "a.h5", blobs(1, 16), num_coils=4, oversample=1)
    d["rows16"] = tmp_path / "rows16" / "a.h5"
    return d


def test_cli_errors_are_one_line(tmp_path, trained, targets, capsys):
    bad = _bad_files(tmp_path)
    model = str(trained["run"] / "model.pt")
    obj = torch.load(model, weights_only=True)
    obj["info"]["operator"] = "singlecoil"
    torch.save(obj, tmp_path / "singlecoil.pt")
    (tmp_path / "regular_file").write_text("not a folder")
    out = str(tmp_path / "out")
    rec = ["reconstruct", "--output", out]
    cases = [
        (rec + ["--input", str(bad["width"]), "--method", "zero_filled"], "mask width 31"),
        (rec + ["--input", str(bad["no_acs"]), "--method", "sense"], "ACS"),
        (rec + ["--input", str(bad["nan"]), "--method", "zero_filled"], "NaN"),
        (rec + ["--input", str(bad["rows16"]), "--method", "fast", "--model", model, "--acceleration", "4",
                "--center-fraction", "0.4"], "trained on images of 32 rows"),
        (rec + ["--input", str(targets), "--method", "fast", "--model", str(tmp_path / "singlecoil.pt"),
                "--acceleration", "4"], "singlecoil"),
        (rec + ["--input", str(targets), "--method", "fast"], "needs --model"),
        (rec + ["--input", str(targets), "--method", "fast", "--model", str(tmp_path / "none.pt")], "none.pt"),
        (["reconstruct", "--input", str(targets), "--output", str(tmp_path / "regular_file" / "x"), "--method",
          "zero_filled", "--acceleration", "4"], "cannot be written"),
        (rec + ["--input", str(tmp_path / "missing"), "--method", "zero_filled"], "no such file"),
        (rec + ["--input", str(targets), "--method", "zero_filled"], "acceleration"),
        (rec + ["--input", str(targets), "--method", "sense", "--acceleration", "4", "--num-samples", "0"],
         "num-samples"),
        (["evaluate", "--target", str(targets), "--recon", str(tmp_path)], "no reconstruction"),
        (["demo", "--output", str(tmp_path / "demo"), "--size", "33"], "size"),
    ]
    for argv, pattern in cases:
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        last = err.splitlines()[-1]  # (a progress bar shows only on terminals)
        assert last.startswith(f"ambient-mri {argv[0]}: error:") and pattern in last, (argv, err)
        assert "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # argparse: unknown method
        main(rec + ["--input", str(targets), "--method", "magic"])
    assert exc.value.code == 2 and "invalid choice: 'magic'" in capsys.readouterr().err


def test_cli_error_in_a_real_process(tmp_path, targets):
    """The installed entry point: exit code 2, one `error:` line on stderr, no traceback."""
    (tmp_path / "f").write_text("")
    p = subprocess.run(CLI + ["reconstruct", "--input", str(targets), "--output", str(tmp_path / "f" / "out"),
                              "--method", "zero_filled", "--acceleration", "4"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("ambient-mri reconstruct: error:") and p.stderr.strip().count("\n") == 0


def test_demo_reduced_runs_end_to_end(tmp_path):
    """`ambient-mri demo` end to end in a reduced setting: table printed, results.json and results.png written."""
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    p = subprocess.run(CLI + ["demo", "--output", str(out), "--minutes", "0.2", "--size", "32", "--adps-steps", "5"],
                       capture_output=True, text=True, timeout=300, env=env)
    seconds = time.time() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    assert seconds < 300, (seconds, p.stdout)  # ~40 s on an idle 2-core CPU; a loose bound against hangs
    methods = ("zero_filled", "sense", "l1_wavelet", "one_step", "fast", "adps")
    table = [line.split() for line in p.stdout.splitlines() if line.split()[:1] in (["4"], ["8"])]
    assert sorted((r[0], r[2]) for r in table) == sorted((R, m) for R in "48" for m in methods)
    res = json.loads((out / "results.json").read_text())
    assert set(res["results"]) == {f"R{R}/{m}" for R in (4, 8) for m in methods}
    for key, r in res["results"].items():
        assert np.isfinite([r["PSNR"], r["SSIM"], r["NMSE"]]).all(), key
        assert r["nfe"] == {"fast": 50, "adps": 5, "one_step": 1}.get(key.split("/")[1], 0)
    assert res["results"]["R4/sense"]["PSNR"] > res["results"]["R4/zero_filled"]["PSNR"]
    # the R each mask reached, in the table: at 32 columns R = 8's 6 ACS lines already give 32 / 6
    assert res["results"]["R4/sense"]["achieved_R"] == 4.0 and res["results"]["R8/sense"]["achieved_R"] == 5.33
    assert "ambient-mri: warning: random: the 6 ACS lines" in p.stderr and "below the 8 asked for" in p.stderr
    assert "UserWarning" not in p.stderr   # the package's warnings are one line, without a source line
    assert (out / "results.png").stat().st_size > 10_000
    # 0.2 minutes train far fewer steps than the README's table: the demo says so (a docs audit)
    steps = res["settings"]["training_steps"]
    assert isinstance(steps, int) and 0 < steps < 1060
    assert f"the model trained {steps} steps; the README's table is from 1060" in p.stdout


def test_demo_claims_only_its_own_folders(tmp_path, capsys):
    """The demo writes results.json and trains on every .h5 under data/raw: it refuses a non-empty folder that
    holds no demo, a demo folder started with other --size/--coils (even one killed before its data record), and
    a single coil, --minutes nan, before writing anything."""
    from ambient_mri.cli import main

    theirs = tmp_path / "theirs"
    (theirs / "data" / "raw" / "train").mkdir(parents=True)
    (theirs / "results.json").write_text('{"my": "precious results"}')
    (theirs / "data" / "raw" / "train" / "my_scan.h5").write_bytes(b"not ours")

    def demo(*args):
        capsys.readouterr()
        code = main(["demo", "--minutes", "0.01", *args])
        return code, capsys.readouterr().err

    code, err = demo("--output", str(theirs), "--size", "16", "--coils", "2")
    assert code == 2 and "is not empty and holds no demo" in err
    # two demos into one folder mixed one's model and reconstructions with the other's table (an audit)
    from ambient_mri.files import run_lock

    with run_lock(tmp_path / "busy", "demo (the first)"):
        code, err = demo("--output", str(tmp_path / "busy"), "--size", "16", "--coils", "2")
    assert code == 2 and "another run is writing here (`demo (the first)`" in err
    assert not list((tmp_path / "busy").iterdir())
    assert (theirs / "results.json").read_text() == '{"my": "precious results"}'
    assert sorted(p.name for p in theirs.rglob("*")) == ["data", "my_scan.h5", "raw", "results.json", "train"]
    # an older demo's folder (its data record, no marker) whose results.json is someone else's table
    legacy = tmp_path / "legacy"
    (legacy / "data").mkdir(parents=True)
    (legacy / "data" / "demo.json").write_text('{"image_size": [16, 16], "coils": 2}')
    (legacy / "results.json").write_text('{"my": "results"}')
    code, err = demo("--output", str(legacy), "--size", "16", "--coils", "2")
    assert code == 2 and "results.json is not a demo's table" in err
    assert (legacy / "results.json").read_text() == '{"my": "results"}'
    # a demo's own folder (marker) where the user put a results.json or a results.png of theirs (an audit: both
    # were written over); a figure the table records is the demo's and may be redrawn
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".ambient_mri_demo").write_text('{"size": 16, "coils": 2}')
    (mine / "results.json").write_text('{"mine": 1}')
    code, err = demo("--output", str(mine), "--size", "16", "--coils", "2")
    assert code == 2 and "results.json is not a demo's table" in err and (mine / "results.json").read_text() == \
        '{"mine": 1}'
    (mine / "results.json").write_text(json.dumps({"run": "r", "results": {}, "figure_sha256": "0" * 64}))
    (mine / "results.png").write_text("my picture")
    code, err = demo("--output", str(mine), "--size", "16", "--coils", "2")
    assert code == 2 and "results.png is not the figure a demo drew" in err
    assert (mine / "results.png").read_text() == "my picture"
    from ambient_mri.demo import _demo_figure

    (mine / "results.json").write_text(json.dumps({"run": "r", "results": {}, "figure_sha256": hashlib.sha256(
        b"my picture").hexdigest()}))
    assert _demo_figure(mine)  # the figure its table records: the demo's own, redrawn on a rerun
    # a table of ours cut short (begins as the demo writes it) is written again, with its figure: not refused
    from ambient_mri.demo import _demo_results
    from ambient_mri.files import write_json

    write_json(mine / "results.json", {"run": "r", "results": {}, "figure_sha256": "0" * 64})
    text = (mine / "results.json").read_text()
    (mine / "results.json").write_text(text[: len(text) // 2])
    assert _demo_results(mine / "results.json") and _demo_figure(mine)
    (mine / "results.json").write_text('{"mine": ')  # a user's, cut short: still theirs
    assert not _demo_results(mine / "results.json") and not _demo_figure(mine)
    started = tmp_path / "started"  # a demo killed while building its data: only the marker tells its settings
    started.mkdir()
    (started / ".ambient_mri_demo").write_text('{"size": 32, "coils": 8}')
    (started / "data").mkdir()
    code, err = demo("--output", str(started), "--size", "32", "--coils", "2")
    assert code == 2 and "started with --size 32 --coils 8" in err
    for args, pattern in ((["--coils", "1"], "--coils must be >= 2"), (["--minutes", "nan"], "--minutes must be"),
                          (["--device", "tpu"], "--device")):
        capsys.readouterr()
        code = main(["demo", "--output", str(tmp_path / "new"), "--size", "16", *args])
        assert code == 2 and pattern in capsys.readouterr().err and not (tmp_path / "new").exists()
