"""Hostile input, as a new user would bring it: every case ends in one message naming the file or key, and no input
file changes (checksums before and after). Folder commands finish every good file and list every bad one; resumes
redo what they cannot prove complete; no temporaries or stub folders are left behind."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

import ambient_mri as am
from ambient_mri import files
from ambient_mri.cli import main
from ambient_mri.masks import kspace_mask
from ambient_mri.training.recipe import load_recipe
from ambient_mri.training.trainer import train
from data_tools.prepare import prepare_fastmri
from data_tools.simulate import make_fastmri_volume
from helpers import TINY_NET, blobs, multicoil_measurements, tiny_recipe

pytestmark = pytest.mark.usefixtures("one_thread")
ZF = ["--method", "zero_filled", "--acceleration", "4", "--center-fraction", "0.25"]
PREP = dict(acceleration=4, center_fraction=0.25, progress=False)


def checksums(*roots: Path) -> dict:
    """sha256 of every file under ``roots`` (symlinks by their target text)."""
    out = {}
    for root in roots:
        for p in sorted([root] if root.is_file() else root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "->" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temps(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return code, cap.out, cap.err


@pytest.fixture()
def raw(tmp_path) -> Path:
    """Two small fully-sampled official-layout volumes (2 slices, 4 coils, 64 x 32 k-space)."""
    d = tmp_path / "raw"
    for i in range(2):
        make_fastmri_volume(d / f"vol{i}.h5", blobs(2, 32, seed=i), num_coils=4, noise_std=1e-3, seed=i)
    return d


@pytest.fixture()
def recon_dirs(raw, tmp_path, capsys) -> tuple[Path, Path]:
    out = tmp_path / "rec"
    assert run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)[0] == 0
    return raw, out


# ----------------------------------------------------------------------------------------------------------------
# reconstruct
# ----------------------------------------------------------------------------------------------------------------


def test_reconstruct_into_its_own_input_folder_is_refused(raw, capsys):
    before = checksums(raw)
    code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(raw), *ZF, "--overwrite"], capsys)
    assert code == 2 and "would be written over the input" in err and "vol0.h5" in err
    assert checksums(raw) == before


def test_reconstruct_a_file_into_its_own_folder_is_refused(raw, capsys):
    before = checksums(raw)
    code, _, err = run(["reconstruct", "--input", str(raw / "vol0.h5"), "--output", str(raw), *ZF], capsys)
    assert code == 2 and "would be written over the input" in err
    assert checksums(raw) == before


def test_reconstruct_into_a_symlink_of_the_input_folder_is_refused(raw, tmp_path, capsys):
    (tmp_path / "alias").symlink_to(raw)
    before = checksums(raw)
    code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(tmp_path / "alias"), *ZF], capsys)
    assert code == 2 and "would be written over the input" in err
    assert checksums(raw) == before


def test_reconstruct_output_that_is_an_input_file_is_refused(raw, capsys):
    before = checksums(raw)
    code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(raw / "vol0.h5"), *ZF], capsys)
    assert code == 2 and "vol0.h5" in err
    assert checksums(raw) == before


def test_reconstruct_folder_finishes_good_files_and_lists_bad_ones(raw, tmp_path, capsys):
    with h5py.File(raw / "vol0.h5", "r") as f, h5py.File(raw / "nan.h5", "w") as g:
        k = f["kspace"][()]
        k[0, 0, 0, 0] = np.nan
        g.create_dataset("kspace", data=k)
        g.create_dataset("ismrmrd_header", data=f["ismrmrd_header"][()])
    (raw / "dangling.h5").symlink_to(tmp_path / "gone.h5")
    before = checksums(raw)
    out = tmp_path / "out"
    code, stdout, err = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)
    assert code == 1 and "2 volume(s) reconstructed" in stdout and "2 volume(s) failed" in err
    assert "nan.h5" in err and "NaN" in err and "dangling.h5" in err and "does not exist" in err
    assert sorted(p.name for p in out.glob("*.h5")) == ["vol0.h5", "vol1.h5"]
    assert checksums(raw) == before and not temps(out)


@pytest.mark.parametrize("spoil", ["truncated", "other_method", "other_R"])
def test_reconstruct_resume_redoes_outputs_it_cannot_trust(recon_dirs, capsys, spoil):
    raw, out = recon_dirs
    target = out / "vol0.h5"
    good = h5py.File(target, "r")["reconstruction"][()]
    if spoil == "truncated":
        target.write_bytes(target.read_bytes()[:5000])
        argv = ZF
    elif spoil == "other_method":
        argv = ["--method", "sense", "--acceleration", "4", "--center-fraction", "0.25"]
    else:
        argv = ["--method", "zero_filled", "--acceleration", "8", "--center-fraction", "0.25"]
    code, stdout, _ = run(["reconstruct", "--input", str(raw), "--output", str(out), *argv], capsys)
    assert code == 0
    assert ("1 volume(s) reconstructed" in stdout) if spoil == "truncated" else ("2 volume(s) reconstructed" in stdout)
    with h5py.File(target, "r") as f:
        assert f["reconstruction"].shape == good.shape
        assert json.loads(f.attrs["settings"])["method"] == argv[1]


def test_reconstruct_resume_keeps_finished_outputs(recon_dirs, capsys):
    raw, out = recon_dirs
    stamp = (out / "vol0.h5").stat().st_mtime_ns
    code, stdout, _ = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)
    assert code == 0 and "0 volume(s) reconstructed" in stdout and "2 already there" in stdout
    assert (out / "vol0.h5").stat().st_mtime_ns == stamp


def test_reconstruct_resume_redoes_an_output_of_another_scan_with_the_same_name_size_and_mtime(raw, tmp_path,
                                                                                                   capsys):
    """The settings held the input's name, size and mtime only: a different scan of one size copied with its mtime
    (tar, cp -p, rsync) into the input folder kept the first scan's reconstruction."""
    out = tmp_path / "rec"
    assert run(["reconstruct", "--input", str(raw / "vol0.h5"), "--output", str(out), *ZF], capsys)[0] == 0
    first = h5py.File(out / "vol0.h5", "r")["reconstruction"][()]
    other = tmp_path / "other"
    make_fastmri_volume(other / "vol0.h5", blobs(2, 32, seed=7), num_coils=4, noise_std=1e-3, seed=7)
    assert (other / "vol0.h5").stat().st_size == (raw / "vol0.h5").stat().st_size
    stat = (raw / "vol0.h5").stat()
    os.utime(other / "vol0.h5", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    code, stdout, _ = run(["reconstruct", "--input", str(other / "vol0.h5"), "--output", str(out), *ZF], capsys)
    assert code == 0 and "1 volume(s) reconstructed" in stdout
    assert not np.allclose(h5py.File(out / "vol0.h5", "r")["reconstruction"][()], first)


def test_reconstruct_never_overwrites_a_foreign_file_in_the_output(raw, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(raw / "vol1.h5", out / "vol1.h5")  # someone's k-space where an output would go
    before = checksums(raw, out)
    code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF, "--overwrite"], capsys)
    assert code == 1 and "vol1.h5" in err and "not a reconstruction file" in err
    assert checksums(out / "vol1.h5") == {k: v for k, v in before.items() if k == str(out / "vol1.h5")}
    assert (out / "vol0.h5").is_file()


def test_reconstruct_full_disk_is_refused_before_writing(raw, tmp_path, monkeypatch):
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    before = checksums(raw)
    with pytest.raises(am.DataFileError, match="not enough disk space"):
        am.reconstruct_file(raw / "vol0.h5", tmp_path / "out" / "vol0.h5", acceleration=4, center_fraction=0.25,
                            method="zero_filled")
    assert checksums(raw) == before and not temps(tmp_path / "out")


def test_reconstruct_write_failure_names_the_file_and_leaves_no_temporary(raw, tmp_path, monkeypatch):
    real = h5py.Group.create_dataset

    def full(self, name, *a, **kw):
        if name == "zero_filled":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    with pytest.raises(am.DataFileError, match=r"vol0\.h5: cannot be written \(no space left on device\)"):
        am.reconstruct_file(raw / "vol0.h5", tmp_path / "out" / "vol0.h5", acceleration=4, center_fraction=0.25,
                            method="zero_filled")
    assert not temps(tmp_path / "out") and not (tmp_path / "out" / "vol0.h5").exists()


@pytest.mark.parametrize("flag,value,pattern", [("--acceleration", "nan", "--acceleration must be a finite"),
                                                ("--acceleration", "0.5", "--acceleration must be >= 1"),
                                                ("--center-fraction", "nan", "--center-fraction must be a finite"),
                                                ("--center-fraction", "0", "--center-fraction must be > 0")])
def test_reconstruct_nonsense_numbers(raw, tmp_path, capsys, flag, value, pattern):
    argv = ["reconstruct", "--input", str(raw), "--output", str(tmp_path / "out"), "--method", "zero_filled",
            "--acceleration", "4", "--center-fraction", "0.25"]
    argv[argv.index(flag) + 1] = value
    code, _, err = run(argv, capsys)
    assert code == 2 and pattern in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,pattern", [
    (["--num-samples", "2"], "'sense' is deterministic"),                  # found again in every volume before
    (["--center-fraction", "1.5"], "--center-fraction must be below 1"),
    (["--mask", "bogus"], "--mask 'bogus' is not a column mask kind"),
    (["--device", "tpu:7"], "--device 'tpu:7' is not a device"),                # ignored by the classical methods
    (["--mask", "equispaced", "--acceleration", "8"], "below the 8 asked for"),  # per volume: the folder is removed
])
def test_reconstruct_bad_arguments_leave_no_folder(raw, tmp_path, capsys, extra, pattern):
    argv = ["reconstruct", "--input", str(raw), "--output", str(tmp_path / "out"), "--method", "sense",
            "--acceleration", "4", "--center-fraction", "0.25", *extra]
    code, _, err = run(argv, capsys)
    assert code == 2 and pattern in err and not (tmp_path / "out").exists()


def test_reconstruct_output_named_as_a_file_is_refused(raw, tmp_path, capsys):
    code, _, err = run(["reconstruct", "--input", str(raw / "vol0.h5"), "--output", str(tmp_path / "r.h5"), *ZF],
                       capsys)
    assert code == 2 and "is a folder for the reconstructions" in err and not (tmp_path / "r.h5").exists()


def test_reconstruct_a_masked_file_refuses_every_mask_setting(tmp_path, capsys):
    """The file's own mask is used: --mask and --center-fraction were ignored, yet recorded in the output."""
    mask = kspace_mask("random", (64, 32), 4, 0.25, seed=1)[0]
    make_fastmri_volume(tmp_path / "test.h5", blobs(2, 32, seed=0), num_coils=4, mask=mask, seed=0)
    for extra in (["--mask", "gaussian1d"], ["--center-fraction", "0.5"]):
        code, _, err = run(["reconstruct", "--input", str(tmp_path / "test.h5"), "--output", str(tmp_path / "o"),
                            "--method", "zero_filled", *extra], capsys)
        assert code == 2 and "reconstruct it without " + extra[0][2:].replace("-", "_") in err
        assert not (tmp_path / "o").exists()


def test_reconstruct_resume_keeps_outputs_when_a_default_is_spelled_out(recon_dirs, capsys):
    raw, out = recon_dirs
    code, stdout, _ = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF, "--mask", "random"], capsys)
    assert code == 0 and "2 already there" in stdout


def test_reconstruct_given_a_prepared_file_says_so(raw, tmp_path, capsys):
    prepare_fastmri(raw, tmp_path / "prep", **PREP)
    code, _, err = run(["reconstruct", "--input", str(tmp_path / "prep" / "train" / "vol0.h5"), "--output",
                        str(tmp_path / "out"), "--method", "zero_filled"], capsys)
    assert code == 2 and "is an ambient_mri file (ambient_mri.prepared/1), not an official fastMRI file" in err


def test_reconstruct_refuses_a_second_run_on_one_output(raw, tmp_path, capsys):
    out = tmp_path / "out"
    with files.run_lock(out, "reconstruct elsewhere"):
        code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)
    assert code == 2 and "another run is writing here" in err and "reconstruct elsewhere" in err
    assert not list(out.glob("*.h5"))


def test_a_dead_runs_lock_and_temporaries_are_cleared(raw, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / files.LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                   "command": "killed"}))
    (out / ".vol0.h5.abc123.tmp").write_bytes(b"half a file")
    code, _, _ = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)
    assert code == 0 and not temps(out) and not (out / files.LOCK_NAME).exists()
    (out / files.LOCK_NAME).write_text("")  # killed between creating the lock and naming itself in it
    code, _, _ = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF, "--overwrite"], capsys)
    assert code == 0 and not (out / files.LOCK_NAME).exists()


def _hold_lock(folder, start, hold, queue):
    import time

    while time.time() < start:
        pass
    try:
        with files.run_lock(folder, "race"):
            t0 = time.time()
            time.sleep(hold)
            queue.put((t0, time.time()))
    except am.AmbientMRIError:
        queue.put(None)


def test_a_run_ending_never_removes_another_runs_lock(tmp_path, monkeypatch):
    """A failed first run removes its folder while holding the lock; a run that made the folder again took a new
    lock file, which the first one then deleted by path, letting a third run in (a review). A lock whose pid
    could not be written is released, not held for the rest of the process. Without file locks (NFS mounted
    nolock) the exclusive create is the lock: an empty file (its run just starting) is not taken over."""
    import fcntl

    folder = tmp_path / "run"
    first = files.run_lock(folder, "first")
    first.__enter__()
    shutil.rmtree(folder)
    second = files.run_lock(folder, "second")
    second.__enter__()
    first.__exit__(None, None, None)
    assert (folder / files.LOCK_NAME).is_file()
    with pytest.raises(am.DataFileError, match="another run is writing here \\(`second`"):
        files.run_lock(folder, "third").__enter__()
    second.__exit__(None, None, None)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "disk full")))
    with pytest.raises(OSError):
        files.run_lock(folder, "full disk").__enter__()
    monkeypatch.setattr(os, "write", real_write)
    with files.run_lock(folder, "after"):
        pass
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError(errno.ENOLCK, "no locks")))
    with files.run_lock(folder, "nolock"):
        with pytest.raises(am.DataFileError, match="another run is writing here \\(`nolock`"):
            files.run_lock(folder, "nolock again").__enter__()
    (folder / files.LOCK_NAME).write_text("")
    with pytest.raises(am.DataFileError, match="another run is writing here \\(just starting\\)"):
        files.run_lock(folder, "nolock, empty file").__enter__()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (folder / files.LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                      "command": "killed"}))
    with files.run_lock(folder, "nolock, dead run"):
        assert json.loads((folder / files.LOCK_NAME).read_text())["command"] == "nolock, dead run"


def test_runs_restarted_at_once_never_hold_one_lock_together(tmp_path):
    """Taking over a dead run's lock (read its pid, delete the file, create it again) was not atomic: with four
    runs restarted at the same instant, two held the lock together in 5 of 40 trials (an audit)."""
    import multiprocessing as mp
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ctx = mp.get_context("fork")
    for _ in range(6):
        (tmp_path / files.LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                            "command": "killed"}))
        q = ctx.Queue()
        procs = [ctx.Process(target=_hold_lock, args=(tmp_path, time.time() + 0.3, 0.3, q)) for _ in range(4)]
        for p in procs:
            p.start()
        held = sorted(r for r in (q.get(timeout=60) for _ in procs) if r is not None)
        for p in procs:
            p.join()
        assert held and all(b[0] >= a[1] for a, b in zip(held, held[1:]))


def test_reconstruct_and_prepare_leave_other_hidden_temporaries_and_non_hdf5_files_alone(raw, tmp_path, capsys):
    """Every hidden .*.tmp in the output folder was deleted, and a text file named like an output was taken for a
    damaged output and overwritten."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".notes.tmp").write_text("draft")
    (out / "vol0.h5").write_text("my notes")
    code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)
    assert code == 1 and "vol0.h5: exists and is not an HDF5 file; it will not be overwritten" in err
    assert (out / ".notes.tmp").read_text() == "draft" and (out / "vol0.h5").read_text() == "my notes"
    assert (out / "vol1.h5").is_file()
    (out / "vol1.h5").write_bytes(b"")       # an empty output holds nothing to lose: redone
    code, _, _ = run(["reconstruct", "--input", str(raw / "vol1.h5"), "--output", str(out), *ZF], capsys)
    assert code == 0 and (out / "vol1.h5").stat().st_size > 0
    # a user's HDF5 file another program holds open for writing is not "damaged": never replaced
    (out / "vol1.h5").unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               f"f = h5py.File({str(out / 'vol1.h5')!r}, 'w'); f.create_dataset('kspace', (4,))\n"
                               "f.flush(); print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        code, _, err = run(["reconstruct", "--input", str(raw / "vol1.h5"), "--output", str(out), *ZF], capsys)
        # (where HDF5 file locking is off, the file reads as someone's HDF5 file: refused too)
        assert code == 2 and ("vol1.h5: exists and is open in another program" in err
                              or "vol1.h5: exists and is not a reconstruction file" in err)
    finally:
        holder.kill()
        holder.wait()
    assert (out / "vol1.h5").stat().st_size > 0
    # temporaries are matched literally: a bracket in a file name is no glob
    (out / ".vol1.h5.someone.tmp").write_text("not ours")
    (out / ".vol[1].h5.k1ll3d.tmp").write_text("ours")
    assert files.remove_temps(out, ["vol[1].h5"]) == [out / ".vol[1].h5.k1ll3d.tmp"]
    assert (out / ".vol1.h5.someone.tmp").is_file()
    prep = tmp_path / "prep"
    (prep / "train").mkdir(parents=True)
    (prep / "train" / ".mine.tmp").write_text("mine")
    (prep / "train" / "vol0.h5").write_text("my notes")
    summary = prepare_fastmri(raw, prep, **PREP)
    assert [Path(r.source).name for r in summary.results if r.status != "prepared"] == ["vol0.h5"]
    assert (prep / "train" / ".mine.tmp").read_text() == "mine"
    assert (prep / "train" / "vol0.h5").read_text() == "my notes"


# ----------------------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------------------


def _nan_copy(src: Path, dst: Path) -> None:
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        k = f["kspace"][()]
        k[1, 0, 0, 0] = np.nan
        g.create_dataset("kspace", data=k)
        g.create_dataset("ismrmrd_header", data=f["ismrmrd_header"][()])


def test_a_folder_whose_files_all_fail_alike_lists_every_file(raw, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in raw.glob("*.h5"):
        _nan_copy(f, bad / f.name)
    code, _, err = run(["reconstruct", "--input", str(bad), "--output", str(tmp_path / "out"), *ZF], capsys)
    assert code == 2 and "all 2 volume(s) failed with the same problem" in err and "non-finite" in err
    assert f"{bad / 'vol0.h5'}:" in err and f"{bad / 'vol1.h5'}:" in err


def test_a_folder_of_one_bad_volume_names_it_and_an_all_zero_slice_gets_no_acs_advice(raw, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    with h5py.File(raw / "vol0.h5", "r") as f, h5py.File(one / "z.h5", "w") as g:
        k = f["kspace"][()]
        k[1] = 0
        g.create_dataset("kspace", data=k)
        g.create_dataset("ismrmrd_header", data=f["ismrmrd_header"][()])
    code, _, err = run(["reconstruct", "--input", str(one), "--output", str(tmp_path / "out"), *ZF], capsys)
    assert code == 2 and err.startswith(f"ambient-mri reconstruct: error: {one / 'z.h5'}: slice 1:")
    assert "all zero" in err and "give a larger one" not in err and "check the arguments" not in err


def test_folder_warnings_name_each_volume_and_are_stored_with_it(raw, tmp_path, capsys):
    """Every ACS line acquired (center fraction 0.5 at R = 2): CG-SENSE's λ cannot be checked on any volume. Each
    volume gets its own warning naming it (Python would fold identical texts into one) and keeps it in its file."""
    out = tmp_path / "out"
    args = ["reconstruct", "--input", str(raw), "--output", str(out), "--method", "sense", "--acceleration", "2",
            "--center-fraction", "0.5"]
    with pytest.warns(am.BelowZeroFilledWarning) as caught:
        assert run(args, capsys)[0] == 0
    named = [str(w.message) for w in caught if "unchecked" in str(w.message)]
    assert sorted(m.rsplit(" [", 1)[1] for m in named) == [f"{raw / 'vol0.h5'}]", f"{raw / 'vol1.h5'}]"]
    for name in ("vol0.h5", "vol1.h5"):
        with h5py.File(out / name, "r") as f:
            stored = json.loads(f.attrs["warnings"])
        assert [w["reason"] for w in stored] == ["unchecked_lambda"] and "default λ" in stored[0]["message"]
    # from the Python API the warning points at the caller's line (module filters work), through either entry
    opts = dict(method="sense", acceleration=2, center_fraction=0.5)
    with pytest.warns(am.BelowZeroFilledWarning) as caught:
        am.reconstruct_file(raw / "vol0.h5", tmp_path / "api.h5", progress=False, **opts)
        k = am.data.read_fastmri(raw / "vol0.h5").kspace.read()
        am.reconstruct(k * np.ones(k.shape[-1]), np.ones(k.shape[-1]), method="sense", progress=False)
    assert {Path(w.filename).name for w in caught} == {Path(__file__).name}, [w.filename for w in caught]


def test_reconstruct_refuses_to_write_a_non_finite_image(raw, tmp_path, monkeypatch):
    from ambient_mri import recon

    def nan_recon(k, m, target_size=None, **kw):
        res = real(k, m, target_size=target_size, **kw)
        res.magnitude[0, 0, 0] = np.nan
        return res

    real = recon.reconstruct
    monkeypatch.setattr(recon, "reconstruct", nan_recon)
    with pytest.raises(am.DataFileError, match=r"vol0.h5: the zero_filled reconstruction is not finite"):
        recon.reconstruct_file(raw / "vol0.h5", tmp_path / "o.h5", acceleration=4, center_fraction=0.25,
                               method="zero_filled")
    assert not (tmp_path / "o.h5").exists() and not temps(tmp_path)


def test_a_recon_size_taller_than_the_kspace_is_wide(tmp_path, capsys):
    """fastMRI's A-DPS geometry (384 x 320 images from 768 x 320 k-space): the readout is cropped to the recon
    size's rows, not to the width."""
    img = np.pad(blobs(2, 40), ((0, 0), (4, 4), (0, 0)))   # 48 x 40
    make_fastmri_volume(tmp_path / "raw" / "tall.h5", img, num_coils=4, noise_std=1e-3)
    out = tmp_path / "out"
    assert run(["reconstruct", "--input", str(tmp_path / "raw" / "tall.h5"), "--output", str(out), *ZF], capsys)[0] == 0
    with h5py.File(out / "tall.h5", "r") as f:
        assert f["reconstruction"].shape == (2, 48, 40)
    with pytest.raises(am.AmbientMRIError, match="target size 100x40 is larger than the 96x40 image"):
        am.reconstruct(np.ones((1, 2, 96, 40), np.complex64), np.ones(40), method="zero_filled",
                       target_size=(100, 40))


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_a_seed_out_of_range_is_refused_before_anything_is_made(raw, tmp_path, capsys, seed):
    out = tmp_path / "out"
    code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF, "--seed", seed], capsys)
    assert code == 2 and f"--seed must be an integer in [0, 2147483647], got {seed}" in err and not out.exists()
    code, _, err = run(["sample", "--model", str(tmp_path / "m.pt"), "--num", "1", "--seed", seed, "--output",
                        str(out)], capsys)
    assert code == 2 and "--seed must be" in err and not out.exists()
    with pytest.raises(am.RecipeError, match=r"training.seed: must be in \[0, 2147483647\]"):
        load_recipe({"training": {"seed": int(seed)}})


@pytest.mark.parametrize("split", ["train", "val"])
def test_prepare_into_its_own_input_is_refused(raw, tmp_path, capsys, split):
    root = tmp_path / "samep"
    inp = root / (split if split == "train" else f"{split}_reference")
    shutil.copytree(raw, inp)
    before = checksums(inp)
    code = main(["prepare", "fastmri", "--input", str(inp), "--output", str(root), "--split", split,
                 "--acceleration", "4", "--center-fraction", "0.25", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "would be written over the input" in err
    assert checksums(inp) == before


def test_prepare_lists_a_dangling_symlink(raw, tmp_path):
    (raw / "dangling.h5").symlink_to(tmp_path / "nowhere.h5")
    s = prepare_fastmri(raw, tmp_path / "out", **PREP)
    assert len(s.prepared) == 2 and [Path(r.source).name for r in s.refused] == ["dangling.h5"]
    assert "does not exist" in s.refused[0].reason and "dangling.h5" in s.report()


@pytest.mark.parametrize("flag,value,pattern", [("--acceleration", "nan", "--acceleration must be >= 1"),
                                                ("--workers", "0", "--workers must be >= 1")])
def test_prepare_nonsense_numbers(raw, tmp_path, capsys, flag, value, pattern):
    argv = ["prepare", "fastmri", "--input", str(raw), "--output", str(tmp_path / "out"), "--acceleration", "4",
            "--center-fraction", "0.25", "--no-progress", flag, value]
    code = main(argv)
    assert code == 2 and pattern in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_prepare_a_problem_every_file_shares_is_the_commands_error(raw, tmp_path, capsys):
    """--coils 5 on 4-coil files was one refusal per file, exit 1 and an empty output folder left behind."""
    argv = ["prepare", "fastmri", "--input", str(raw), "--output", str(tmp_path / "out"), "--acceleration", "4",
            "--center-fraction", "0.25", "--no-progress", "--coils", "5"]
    code, _, err = run(argv, capsys)
    assert code == 2 and "all 2 file(s) were refused with the same problem" in err and "--coils 5" in err
    assert not (tmp_path / "out").exists()


def test_prepare_never_overwrites_a_foreign_file(raw, tmp_path):
    (tmp_path / "out" / "train").mkdir(parents=True)
    shutil.copy(raw / "vol0.h5", tmp_path / "out" / "train" / "vol0.h5")
    before = checksums(tmp_path / "out")
    s = prepare_fastmri(raw, tmp_path / "out", **PREP)
    assert [Path(r.source).name for r in s.refused] == ["vol0.h5"] and "not a prepared file" in s.refused[0].reason
    assert checksums(tmp_path / "out" / "train" / "vol0.h5") == {k: v for k, v in before.items() if "vol0" in k}


def test_prepare_never_overwrites_a_foreign_file_where_a_reference_goes(raw, tmp_path):
    """Only OUTPUT/<split>/NAME was checked: a user's raw file (or a reconstruction) in <split>_reference/ was
    replaced by the reference."""
    ref = tmp_path / "out" / "val_reference"
    ref.mkdir(parents=True)
    shutil.copy(raw / "vol1.h5", ref / "vol1.h5")
    before = checksums(ref)
    s = prepare_fastmri(raw, tmp_path / "out", **{**PREP, "split": "val"})
    assert [Path(r.source).name for r in s.refused] == ["vol1.h5"] and "not a prepared reference" in \
        s.refused[0].reason and len(s.prepared) == 1
    assert checksums(ref / "vol1.h5") == before
    assert not (tmp_path / "out" / "val" / "vol1.h5").exists()


def test_prepare_redoes_a_truncated_output(raw, tmp_path):
    prepare_fastmri(raw, tmp_path / "out", **PREP)
    f = tmp_path / "out" / "train" / "vol0.h5"
    f.write_bytes(f.read_bytes()[:5000])
    s = prepare_fastmri(raw, tmp_path / "out", **PREP)
    assert [Path(r.source).name for r in s.prepared] == ["vol0.h5"] and len(s.skipped) == 1
    assert h5py.File(f, "r")["kspace"].shape[0] == 2


def test_prepare_redoes_a_damaged_reference_and_a_replaced_input(raw, tmp_path):
    val = dict(PREP, split="val")
    prepare_fastmri(raw, tmp_path / "out", **val)
    ref = tmp_path / "out" / "val_reference" / "vol0.h5"
    ref.write_bytes(ref.read_bytes()[: ref.stat().st_size // 3])
    s = prepare_fastmri(raw, tmp_path / "out", **val)
    assert [Path(r.source).name for r in s.prepared] == ["vol0.h5"] and len(s.skipped) == 1
    assert h5py.File(ref, "r")["reconstruction_rss"].shape[0] == 2
    # the same name, another volume: the prepared file and its reference follow the new input
    make_fastmri_volume(raw / "vol1.h5", blobs(3, 32, seed=9), num_coils=4, noise_std=1e-3, seed=9)
    s = prepare_fastmri(raw, tmp_path / "out", **val)
    assert [Path(r.source).name for r in s.prepared] == ["vol1.h5"] and len(s.skipped) == 1
    with h5py.File(raw / "vol1.h5", "r") as f, h5py.File(tmp_path / "out" / "val_reference" / "vol1.h5", "r") as g:
        np.testing.assert_array_equal(g["reconstruction_rss"][()], f["reconstruction_rss"][()])


def test_prepare_full_disk_is_refused_per_file(raw, tmp_path, monkeypatch):
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    s = prepare_fastmri(raw, tmp_path / "out", **PREP)
    assert len(s.refused) == 2 and all("not enough disk space" in r.reason for r in s.refused)
    assert not list((tmp_path / "out").rglob("*.h5")) and not temps(tmp_path / "out")


def test_prepare_on_a_real_full_disk(raw, tmp_path):
    """A 1 MB tmpfs (root only): the per-file space check refuses, nothing crashes (HDF5 segfaulted here)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched full-disk tests cover the logic")
    try:
        p = subprocess.run([sys.executable, "-m", "ambient_mri", "prepare", "fastmri", "--input", str(raw),
                            "--output", str(mnt), "--acceleration", "4", "--center-fraction", "0.25",
                            "--no-progress"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and "not enough disk space" in p.stdout and "Traceback" not in p.stderr
        assert not temps(mnt)
    finally:
        subprocess.run(["umount", str(mnt)])


def test_two_prepare_runs_on_one_output(raw, tmp_path):
    with files.run_lock(tmp_path / "out" / "train", "prepare train -> first run"):
        (tmp_path / "out" / "train" / ".vol0.h5.first.tmp").write_bytes(b"the first run's temporary")
        with pytest.raises(am.DataFileError, match="another run is writing here .*first run"):
            prepare_fastmri(raw, tmp_path / "out", **PREP)
        assert (tmp_path / "out" / "train" / ".vol0.h5.first.tmp").exists()  # not deleted under its owner


def test_prepare_clears_a_killed_runs_temporaries(raw, tmp_path):
    (tmp_path / "out" / "train").mkdir(parents=True)
    (tmp_path / "out" / "train" / ".vol0.h5.x1y2.tmp").write_bytes(b"killed")
    prepare_fastmri(raw, tmp_path / "out", **PREP)
    assert not temps(tmp_path / "out")


# ----------------------------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------------------------


def test_evaluate_warns_when_the_mean_mixes_reconstructions_made_differently(recon_dirs, capsys):
    """Reconstruct runs of other methods or R into one folder were averaged into one mean without a word, and the
    metrics did not record how each volume was made."""
    raw, rec = recon_dirs
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # one kind of reconstruction: no warning
        assert run(["evaluate", "--target", str(raw), "--recon", str(rec)], capsys)[0] == 0
    made = json.loads((rec / "metrics.json").read_text())["volumes"][0]["made_with"]
    assert made["method"] == "zero_filled" and made["acceleration"] == 4
    assert run(["reconstruct", "--input", str(raw / "vol1.h5"), "--output", str(rec), "--method", "zero_filled",
                "--acceleration", "2", "--center-fraction", "0.25"], capsys)[0] == 0
    with pytest.warns(UserWarning, match="made with different settings \\(acceleration 2.0, 4.0\\): the mean mixes"):
        code, _, err = run(["evaluate", "--target", str(raw), "--recon", str(rec)], capsys)
    assert code == 0
    rows = json.loads((rec / "metrics.json").read_text())["volumes"]
    assert sorted(r["made_with"]["acceleration"] for r in rows) == [2, 4]
    # what an earlier version left unnamed (its defaults) or what does not change the result is not a difference
    from ambient_mri.metrics import evaluate_dirs

    assert run(["reconstruct", "--input", str(raw / "vol1.h5"), "--output", str(rec), *ZF, "--batch-size", "1",
                "--seed", "5"], capsys)[0] == 0
    with h5py.File(rec / "vol0.h5", "r+") as f:
        s = json.loads(f.attrs["settings"])
        f.attrs["settings"] = json.dumps({**s, "mask": None, "center_fraction": None})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_dirs(raw, rec)


def test_evaluate_scores_the_good_volumes_and_lists_the_rest(recon_dirs, tmp_path, capsys):
    raw, out = recon_dirs
    shutil.copy(raw / "vol0.h5", raw / "vol2.h5")  # a third target without a reconstruction
    (out / "vol1.h5").write_bytes(b"unreadable")
    code, stdout, err = run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)
    assert code == 1 and "the mean is over 1 of 3 target volumes" in err
    assert "vol1.h5: cannot be read as HDF5" in err and "vol2.h5: no reconstruction" in err
    assert "mean of 1/3" in stdout
    res = json.loads((out / "metrics.json").read_text())
    assert [r["file"] for r in res["volumes"]] == ["vol0.h5"] and res["missing"] == ["vol2.h5"]


def test_evaluate_lists_misnamed_targets_and_reconstructions_without_a_target(recon_dirs, capsys):
    """A target named *.hdf5 was skipped and a reconstruction with no target never mentioned, under a "mean of
    1/1" and exit 0; a uint8 target was scored (PSNR 12 where the float one gives 24) (an audit)."""
    import h5py

    raw, out = recon_dirs
    (raw / "vol1.h5").rename(raw / "vol1.hdf5")
    shutil.copy(out / "vol0.h5", out / "orphan.h5")
    code, stdout, err = run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)
    assert code == 1 and "mean of 1/2" in stdout, (stdout, err)
    assert "vol1.hdf5: an HDF5 file not named *.h5" in err and "rename it to *.h5" in err and "--input" not in err
    assert "have no target of that name" in err and "orphan.h5" in err
    res = json.loads((out / "metrics.json").read_text())
    assert res["without_target"] == ["orphan.h5"] and [r["file"] for r in res["volumes"]] == ["vol0.h5"]
    (raw / "vol1.hdf5").rename(raw / "vol1.h5")
    with h5py.File(raw / "vol1.h5", "r+") as f:
        t = f["reconstruction_rss"][()]
        del f["reconstruction_rss"]
        f["reconstruction_rss"] = np.round(255 * t / t.max()).astype(np.uint8)
    code, _, err = run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)
    assert code == 1 and "vol1.h5: reconstruction_rss is of dtype uint8" in err, err


def test_evaluate_waits_for_no_one_and_clears_only_its_own_temporaries(recon_dirs, capsys):
    """evaluate wrote beside a reconstruct still running in the same folder, and a killed evaluate's temporaries
    stayed for ever (a data-safety audit)."""
    raw, out = recon_dirs
    with files.run_lock(out, "reconstruct still running"):
        code, stdout, err = run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)
    assert code == 2 and "another run is writing here" in err and "reconstruct still running" in err
    assert "mean of" not in stdout  # refused before scoring: a half-done folder is never scored
    code, _, err = run(["evaluate", "--target", str(raw), "--recon", str(out.parent / "missing")], capsys)
    assert code == 2 and "missing: not a directory" in err and not (out.parent / "missing").exists()
    assert not (out / "metrics.json").exists() and not (out / "metrics.csv").exists()
    for name in (".metrics.json.k1ll3d.tmp", ".vol0.png.k1ll3d.tmp", ".notes.txt.x.tmp"):
        (out / name).write_text("half")
    assert run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)[0] == 0
    assert [p.name for p in temps(out)] == [".notes.txt.x.tmp"]  # someone else's: left alone
    assert (out / "metrics.json").is_file() and not (out / files.LOCK_NAME).exists()


def test_evaluate_never_overwrites_metrics_files_it_did_not_write(recon_dirs, capsys):
    """A user's own metrics.csv / metrics.json in the recon folder (evaluate's default --output) were replaced."""
    raw, out = recon_dirs
    assert run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)[0] == 0
    assert run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)[0] == 0  # its own: redone
    for name, text in (("metrics.csv", "my precious,csv\n"), ("metrics.json", '{"mine": 1}')):
        ours = (out / name).read_text()
        (out / name).write_text(text)
        code, _, err = run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)
        assert code == 2 and f"{name}: exists and was not written by evaluate; not overwritten" in err
        assert (out / name).read_text() == text
        (out / name).write_text(ours)
    (out / "metrics.json").write_text((out / "metrics.json").read_text()[:60])  # its own, damaged: redone
    code, _, err = run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)
    assert json.loads((out / "metrics.json").read_text())["volumes"]
    assert code == 1 and "exists and was not drawn by evaluate" in err  # its record of the figures is gone: kept
    for name in ("metrics.csv", "metrics.json"):  # emptied (a write killed before its first byte): redone
        (out / name).write_text("")
        assert run(["evaluate", "--target", str(raw), "--recon", str(out)], capsys)[0] in (0, 1)
        assert (out / name).stat().st_size > 0


def _write(path: Path, **datasets) -> None:
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)


@pytest.mark.parametrize("case,pattern", [
    ("zero_slices", "t.h5: reconstruction_rss has shape (0, 8, 8): expected a non-empty volume"),
    ("all_zero", "t.h5: reconstruction_rss is all zero"),
    ("negative", "t.h5: reconstruction_rss has maximum -1 (not a magnitude image)"),
    ("slices", "r.h5: has 3 slices, its target t.h5 has 2"),
    ("size", r"r.h5: cannot crop an image of size 4x4 to 8x8"),
    ("nan", "r.h5: reconstruction contains NaN or Inf"),
])
def test_evaluate_names_the_file_at_fault(tmp_path, case, pattern):
    from ambient_mri.metrics import evaluate_file

    rng = np.random.default_rng(0)
    gt = rng.random((2, 8, 8), dtype=np.float32)
    rec = gt + 0.01
    if case == "zero_slices":
        gt = gt[:0]
    elif case == "all_zero":
        gt = np.zeros_like(gt)
    elif case == "negative":
        gt = -np.ones_like(gt)
    elif case == "slices":
        rec = np.concatenate([rec, rec[:1]])
    elif case == "size":
        rec = rec[:, :4, :4]
    elif case == "nan":
        rec[0, 0, 0] = np.nan
    _write(tmp_path / "t.h5", reconstruction_rss=gt)
    _write(tmp_path / "r.h5", reconstruction=rec)
    before = checksums(tmp_path)
    with pytest.raises(am.DataFileError) as e:
        evaluate_file(tmp_path / "t.h5", tmp_path / "r.h5")
    assert pattern.replace("\\", "") in str(e.value)
    assert checksums(tmp_path) == before


def test_evaluate_a_folder_of_hostile_reconstructions(tmp_path, capsys):
    """A compound-dtype or group `reconstruction` gave a traceback and no metrics at all; figures crashed after
    the metrics were written (a w x w reconstruction of a taller target, a complex target); an identical
    reconstruction wrote `Infinity` into metrics.json; a swapped output was scored silently; a rerun kept the
    figure of a volume that now fails. Now: every good volume scored and drawn, each bad one listed once by path."""
    rng = np.random.default_rng(0)
    t, r = tmp_path / "t", tmp_path / "r"
    t.mkdir()
    r.mkdir()
    gt = {n: rng.random((2, 16, 16), dtype=np.float32) + 0.5 for n in "abdef"}
    gt["c"] = rng.random((2, 20, 12), dtype=np.float32) + 0.5
    gt["f"] = gt["f"] * np.exp(1j * rng.random((2, 16, 16))).astype(np.complex64)
    for n, g in gt.items():
        _write(t / f"{n}.h5", reconstruction_rss=g)
    with h5py.File(r / "a.h5", "w") as f:
        f.create_dataset("reconstruction", data=np.zeros((2, 16, 16), [("re", "<f4"), ("im", "<f4")]))
    with h5py.File(r / "b.h5", "w") as f:
        f.create_group("reconstruction")
    _write(r / "c.h5", reconstruction=gt["c"][:, 4:16] + 0.01)    # fastMRI's w x w of a taller target
    _write(r / "d.h5", reconstruction=gt["d"])                     # identical: PSNR inf
    _write(r / "e.h5", reconstruction=gt["e"] + 0.01)
    with h5py.File(r / "e.h5", "a") as f:                          # made by reconstruct from another volume
        f.attrs["settings"] = json.dumps({"source": {"name": "x.h5"}})
    _write(r / "f.h5", reconstruction=np.abs(gt["f"]) + 0.01)
    (r / "mine.png").write_bytes(b"a user's figure")
    (r / "f.png").write_bytes(b"a user's figure named like a volume")
    code, out, err = run(["evaluate", "--target", str(t), "--recon", str(r)], capsys)
    assert f"{r / 'f.png'}: exists and was not drawn by evaluate" in err
    assert (r / "f.png").read_bytes() == b"a user's figure named like a volume"
    (r / "f.png").unlink()
    code, out, err = run(["evaluate", "--target", str(t), "--recon", str(r)], capsys)
    assert code == 1 and f"{r / 'a.h5'}: reconstruction has dtype" in err and f"{r / 'b.h5'}: 'reconstruction' is a " \
        "group" in err and f"{r / 'a.h5'}: {r / 'a.h5'}" not in err
    assert "e.h5 records being made from x.h5" in err
    res = json.loads((r / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    rows = {v["file"]: v for v in res["volumes"]}
    assert sorted(rows) == ["c.h5", "d.h5", "e.h5", "f.h5"] and rows["d.h5"]["PSNR"] is None and "note" in rows["d.h5"]
    assert "warning" in rows["e.h5"] and sorted(res["figures"]) == ["c.png", "d.png", "e.png", "f.png"]
    assert all((r / png).is_file() for png in res["figures"])
    (r / "c.h5").write_bytes(b"junk")                              # a rerun: c now fails, its old figure goes
    code, _, err = run(["evaluate", "--target", str(t), "--recon", str(r)], capsys)
    assert code == 1 and "c.h5: cannot be read as HDF5" in err and not (r / "c.png").exists()
    assert (r / "mine.png").read_bytes() == b"a user's figure" and (r / "d.png").is_file()


def test_evaluate_a_target_wider_than_tall_is_scored_not_blamed_on_the_reconstruction(tmp_path):
    from ambient_mri.metrics import evaluate_file

    gt = np.random.default_rng(0).random((2, 16, 17), dtype=np.float32) + 0.5
    _write(tmp_path / "t.h5", reconstruction_rss=gt)
    _write(tmp_path / "r.h5", reconstruction=gt + 0.01)
    assert evaluate_file(tmp_path / "t.h5", tmp_path / "r.h5")["NMSE"] < 1e-3


def test_evaluate_a_complex_reconstruction_scores_its_magnitude(tmp_path, capsys):
    rng = np.random.default_rng(1)
    gt = rng.random((2, 8, 8), dtype=np.float32) + 0.5
    (tmp_path / "t").mkdir()
    (tmp_path / "r").mkdir()
    _write(tmp_path / "t" / "v.h5", reconstruction_rss=gt)
    _write(tmp_path / "r" / "v.h5", reconstruction=(gt * np.exp(1j * 0.3)).astype(np.complex64))
    code, stdout, _ = run(["evaluate", "--target", str(tmp_path / "t"), "--recon", str(tmp_path / "r")], capsys)
    assert code == 0 and (tmp_path / "r" / "v.png").is_file()
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["volumes"][0]["NMSE"] < 1e-10


# ----------------------------------------------------------------------------------------------------------------
# train and recipes
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def prepared(raw, tmp_path) -> Path:
    prepare_fastmri(raw, tmp_path / "prep", **PREP)
    return tmp_path / "prep" / "train"


def _recipe_file(tmp_path: Path, prepared: Path, **training) -> Path:
    r = tiny_recipe(tmp_path / "runs", **{"batch_size": 2, **training})  # 3 training slices
    r["data"] = {"path": str(prepared), "holdout": 1}
    p = tmp_path / "tiny.yaml"
    p.write_text(json.dumps(r))  # JSON is YAML
    return p


def test_a_resume_on_other_data_of_the_same_names_and_shapes_is_refused(raw, tmp_path, capsys):
    """The prepared data summary held counts, shapes and mask settings only: a resume on other scans prepared under
    the same names trained one model on two data sets without a word. Moving the data stays allowed."""
    opts = dict(mask="equispaced", acceleration=3, center_fraction=0.1875, progress=False)  # lines to drop
    prepare_fastmri(raw, tmp_path / "prep", **opts)
    recipe = _recipe_file(tmp_path, tmp_path / "prep" / "train", steps=2)
    code, _, err = run(["train", str(recipe), "--no-progress"], capsys)
    assert code == 0, err
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "prep" / "train", moved)
    code, _, err = run(["train", str(recipe), "--set", f"data.path={moved}", "--set", "training.steps=3",
                        "--no-progress"], capsys)
    assert code == 0, err
    other = tmp_path / "other_raw"
    for i in range(2):   # the same names, shapes and settings; other anatomy
        make_fastmri_volume(other / f"vol{i}.h5", blobs(2, 32, seed=10 + i), num_coils=4, noise_std=1e-3, seed=i)
    prepare_fastmri(other, tmp_path / "other_prep", **opts)
    code, _, err = run(["train", str(recipe), "--set", f"data.path={tmp_path / 'other_prep' / 'train'}", "--set",
                        "training.steps=4", "--no-progress"], capsys)
    assert code == 2 and "content_sha256" in err and "different training" in err, err


@pytest.mark.parametrize("override,pattern", [
    ("training.lr=.nan", "training.lr: must be a finite number"),
    ("training.lr=.inf", "training.lr: must be a finite number"),
    ("network.channel_mult=[]", "network.channel_mult: must be a non-empty list"),
    ("network.model_channels=0", "network.model_channels: must be an even number >= 2"),
    ("network.attn_levels=[9]", "network.attn_levels: must be levels in 0..1"),
    ("network.dropout=1.5", "network.dropout: must be in [0, 1)"),
    ("training.P_std=0", "training.P_std: must be > 0"),
    ("corruption.extra_lines=0", "corruption.extra_lines: must be >= 1"),
    ("training.steps=!!python/object/apply:os.system [\"touch PWNED\"]", "is not a plain YAML value"),
])
def test_recipe_values_are_validated_by_key(tmp_path, prepared, capsys, override, pattern, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", str(_recipe_file(tmp_path, prepared)), "--set", override, "--no-progress"], capsys)
    assert code == 2 and pattern in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "PWNED").exists()


def test_a_recipe_that_is_a_list_is_refused(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- steps: 3\n- lr: 1e-3\n")
    code, _, err = run(["train", str(tmp_path / "list.yaml")], capsys)
    assert code == 2 and "list.yaml: a recipe is a mapping" in err


def test_a_recipe_file_that_is_not_text_is_refused(tmp_path, capsys):
    (tmp_path / "bin.yaml").write_bytes(bytes(range(128, 256)))
    code, _, err = run(["train", str(tmp_path / "bin.yaml")], capsys)
    assert code == 2 and "bin.yaml: not a YAML recipe (not UTF-8 text)" in err


def test_a_recipe_that_is_a_folder_or_bad_yaml_gets_one_line(tmp_path, capsys, monkeypatch):
    """A folder named like a recipe was "not found"; a python tag or broken YAML gave PyYAML's four-line message
    with a caret excerpt (an audit). The tag's code never runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "tag.yaml").write_text('name: x\nbad: !!python/object/apply:os.system ["touch PWNED"]\n')
    (tmp_path / "broken.yaml").write_text("name: [x\n")
    (tmp_path / "nokey.yaml").write_text("name: x\nfoo\nbar: 1\n")
    for name, msg in (("dir.yaml", "dir.yaml: a folder, not a recipe file"),
                      ("tag.yaml", "tag.yaml: not valid YAML (could not determine a constructor for the tag "
                                   "'tag:yaml.org,2002:python/object/apply:os.system' at line 2, column 6)"),
                      ("broken.yaml", "broken.yaml: not valid YAML (while parsing a flow sequence (line 1, column "
                                      "7): expected ',' or ']', but got '<stream end>' at line 2, column 1)"),
                      # the mistake (line 2) is named, not only where PyYAML noticed it (line 3)
                      ("nokey.yaml", "nokey.yaml: not valid YAML (while scanning a simple key (line 2, column 1): "
                                     "could not find expected ':' at line 3, column 1)")):
        code, _, err = run(["train", str(tmp_path / name)], capsys)
        assert code == 2 and msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "PWNED").exists()


def test_train_output_that_is_a_file_names_it(tmp_path, prepared, capsys):
    (tmp_path / "afile").write_text("x")
    code, _, err = run(["train", str(_recipe_file(tmp_path, prepared)), "--set", f"output={tmp_path / 'afile'}",
                        "--no-progress"], capsys)
    assert code == 2 and "afile" in err and "not writable" in err and err.count("\n") == 1


def test_train_full_disk_names_the_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    data, _ = multicoil_measurements()
    from ambient_mri.data.factory import with_further

    recipe = tiny_recipe(tmp_path, steps=2)

    def full_save(obj, f, *a, **kw):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 128 vs 0")

    monkeypatch.setattr(torch, "save", full_save)
    from ambient_mri.training import trainer

    # the disk fills during the write (the up-front space check passed)
    monkeypatch.setattr(trainer, "ensure_space", lambda *a: None)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10, 10))
    with pytest.raises(am.DataFileError, match=r"checkpoint\.pt: cannot be written \(no space left on device\)"):
        train(recipe, dataset=(with_further(data, load_recipe(recipe)), {}), progress=False)
    assert not temps(tmp_path)


def test_a_failed_first_run_leaves_no_stub_folder(tmp_path, monkeypatch):
    data, _ = multicoil_measurements()
    from ambient_mri.data.factory import with_further
    from ambient_mri.training import trainer

    recipe = tiny_recipe(tmp_path, steps=2)

    def boom(*a, **kw):
        raise RuntimeError("the loss blew up")

    monkeypatch.setattr(trainer, "measurement_loss", boom)
    with pytest.raises(RuntimeError, match="blew up"):
        train(recipe, dataset=(with_further(data, load_recipe(recipe)), {}), progress=False)
    assert not (tmp_path / "tiny").exists()
    nested = {**recipe, "output": str(tmp_path / "runs"), "name": "a/b"}  # the folders it made above the run too
    with pytest.raises(RuntimeError, match="blew up"):
        train(nested, dataset=(with_further(data, load_recipe(nested)), {}), progress=False)
    assert not (tmp_path / "runs").exists()


def test_resume_after_a_kill_clears_temporaries_and_logs_each_step_once(tmp_path):
    data, _ = multicoil_measurements()
    from ambient_mri.data.factory import with_further

    recipe = tiny_recipe(tmp_path, steps=4, checkpoint_every=2)
    ds = (with_further(data, load_recipe(recipe)), {})
    run_dir = train({**recipe, "training": {**recipe["training"], "steps": 2}}, dataset=ds, progress=False)
    # a kill during the next checkpoint write: temporaries, and log lines past the checkpoint
    (run_dir / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half")
    (run_dir / ".model.pt.k1ll3d.tmp").write_bytes(b"half")
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 1.0}) + "\n" + '{"step": 4, "lo')
    train(recipe, dataset=ds, progress=False)
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and not temps(run_dir)


def test_two_trainings_on_one_run_folder(tmp_path):
    data, _ = multicoil_measurements()
    from ambient_mri.data.factory import with_further

    recipe = tiny_recipe(tmp_path, steps=2)
    with files.run_lock(tmp_path / "tiny", "train tiny (the first)"):
        with pytest.raises(am.DataFileError, match="another run is writing here"):
            train(recipe, dataset=(with_further(data, load_recipe(recipe)), {}), progress=False)


# ----------------------------------------------------------------------------------------------------------------
# sample and model files
# ----------------------------------------------------------------------------------------------------------------


def test_sample_with_zero_steps_leaves_nothing(tmp_path, capsys):
    code, _, err = run(["sample", "--model", str(tmp_path / "m.pt"), "--num", "2", "--steps", "0", "--output",
                        str(tmp_path / "o")], capsys)
    assert code == 2 and "--steps must be >= 1" in err and not (tmp_path / "o").exists()


def test_sample_with_a_missing_model_leaves_no_folder(tmp_path, capsys):
    code, _, err = run(["sample", "--model", str(tmp_path / "m.pt"), "--num", "2", "--output", str(tmp_path / "o")],
                       capsys)
    assert code == 2 and "m.pt: no such file" in err and not (tmp_path / "o").exists()


def _pixel_model(path: Path):
    from ambient_mri.model import Denoiser, save_model
    from ambient_mri.training.trainer import network_config
    from helpers import TINY_NET

    r = load_recipe({"network": TINY_NET, "corruption": {"operator": "pixel", "p": 0.5, "cond": ["mask"]}})
    net = Denoiser(network_config(r, 1, 1), {"operator": "pixel", "ambient": True, "cond": ["mask"],
                                            "image_shape": [1, 8, 8], "acquisition": {"p": 0.5}})
    save_model(net, path)
    return net


def test_sample_refusals_inside_the_run_leave_no_folder_and_huge_counts_are_refused_first(tmp_path, capsys):
    _pixel_model(tmp_path / "pix.pt")
    base = ["sample", "--model", str(tmp_path / "pix.pt"), "--steps", "2", "--no-progress"]
    code, _, err = run([*base, "--num", "2", "--sigma-min", "1e9", "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "sigma" in err and not (tmp_path / "o").exists()
    code, _, err = run([*base, "--num", str(10**13), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "samples of 1x8x8 needs about" in err and "lower --num" in err
    assert not (tmp_path / "o").exists()
    # steps whose σ grid alone would not fit, and torch running out of memory inside the network: one line each
    code, _, err = run([*base[:3], "--no-progress", "--steps", str(10**10), "--num", "1", "--output",
                        str(tmp_path / "o")], capsys)
    assert code == 2 and "steps must be an integer in [1, 100000]" in err and not (tmp_path / "o").exists()


def test_sample_out_of_memory_inside_the_network_is_one_line(tmp_path, capsys, monkeypatch):
    """The up-front memory check counts the samples, not the network's working memory: torch's allocator error
    came out as a traceback (an audit, under ulimit -v)."""
    import ambient_mri.image_recon as image_recon

    _pixel_model(tmp_path / "pix.pt")

    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 80000000000 bytes.")

    monkeypatch.setattr(image_recon, "sample_images", exhausted)
    code, _, err = run(["sample", "--model", str(tmp_path / "pix.pt"), "--num", "1", "--no-progress", "--output",
                        str(tmp_path / "o")], capsys)
    assert code == 2 and "out of memory on the default device" in err and "lower --batch-size" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_sample_reruns_leave_only_their_own_images(tmp_path, capsys):
    """A rerun with fewer samples removes the earlier run's images and a killed run's temporaries; sample_*.png
    that no run of the command recorded are someone's: refused before sampling."""
    _pixel_model(tmp_path / "pix.pt")
    out = tmp_path / "s"
    base = ["sample", "--model", str(tmp_path / "pix.pt"), "--steps", "2", "--output", str(out), "--no-progress"]
    assert run([*base, "--num", "4"], capsys)[0] == 0
    (out / ".sample_00009.png.x.tmp").write_bytes(b"killed")
    assert run([*base, "--num", "2"], capsys)[0] == 0
    assert sorted(p.name for p in out.glob("sample_*.png")) == ["sample_00000.png", "sample_00001.png"]
    assert np.load(out / "samples.npy").shape[0] == 2 and not temps(out)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "sample_holiday.png").write_bytes(b"a photo")
    (mine / "samples.json").write_text('{"album": "2025"}')
    (mine / ".draft.tmp").write_text("mine too")
    before = checksums(mine)
    code, _, err = run([*base[:-3], "--output", str(mine), "--num", "2", "--no-progress"], capsys)
    assert code == 2 and "did not record writing" in err and checksums(mine) == before
    assert (mine / ".draft.tmp").is_file()
    theirs = tmp_path / "theirs"  # their own samples.npy and grid.png, no PNG of ours: not overwritten either
    theirs.mkdir()
    np.save(theirs / "samples.npy", np.ones(3))
    (theirs / "grid.png").write_bytes(b"their grid")
    before = checksums(theirs)
    code, _, err = run([*base[:-3], "--output", str(theirs), "--num", "2", "--no-progress"], capsys)
    assert code == 2 and "did not record writing" in err and checksums(theirs) == before
    from ambient_mri.image_commands import write_samples  # the Python writer refuses them too

    with pytest.raises(am.DataFileError, match="did not record writing"):
        write_samples(np.zeros((2, 1, 8, 8), np.float32), theirs, {"model": "m", "num": 2, "steps": 2})
    assert checksums(theirs) == before


def test_a_sample_run_killed_while_writing_leaves_a_folder_the_rerun_takes(tmp_path, capsys, monkeypatch):
    """Killed between samples.npy and samples.json, the folder held a samples.npy the rerun refused as someone's
    (an audit); killed before samples.npy now, it holds only this command's samples.json: never old samples
    beside new settings."""
    import ambient_mri.image_commands as ic

    _pixel_model(tmp_path / "pix.pt")
    out = tmp_path / "s"
    base = ["sample", "--model", str(tmp_path / "pix.pt"), "--steps", "2", "--output", str(out), "--no-progress"]
    assert run([*base, "--num", "3", "--seed", "1"], capsys)[0] == 0
    with monkeypatch.context() as mp:
        def killed(*a, **k):
            raise KeyboardInterrupt
        mp.setattr(ic.np, "save", killed)
        assert run([*base, "--num", "2", "--seed", "2"], capsys)[0] == 130
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["samples.json"]
    assert json.loads((out / "samples.json").read_text())["seed"] == 2
    assert run([*base, "--num", "2", "--seed", "2"], capsys)[0] == 0
    assert np.load(out / "samples.npy").shape[0] == 2 and len(list(out.glob("sample_*.png"))) == 2


def test_two_sample_runs_into_one_folder(tmp_path, capsys):
    """The second run is refused by name and leaves the first run's images and temporaries alone (it would have
    removed them as an earlier run's)."""
    _pixel_model(tmp_path / "pix.pt")
    out = tmp_path / "s"
    base = ["sample", "--model", str(tmp_path / "pix.pt"), "--steps", "2", "--output", str(out), "--no-progress"]
    assert run([*base, "--num", "4"], capsys)[0] == 0
    (out / ".sample_00003.png.first.tmp").write_bytes(b"being written")
    before = checksums(out)
    with files.run_lock(out, "sample (the first)"):
        code, _, err = run([*base, "--num", "2"], capsys)
    assert code == 2 and "another run is writing here" in err and checksums(out) == before


def test_memorization_output_inside_the_training_folder_is_refused(tmp_path, capsys):
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    from PIL import Image

    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(train_dir / f"{i}.png")
    np.save(tmp_path / "samples.npy", np.zeros((2, 1, 8, 8), np.float32))
    before = checksums(train_dir)
    code, _, err = run(["memorization", "--samples", str(tmp_path / "samples.npy"), "--train", str(train_dir),
                        "--output", str(train_dir / "figs")], capsys)
    assert code == 2 and "is inside the --train folder" in err and checksums(train_dir) == before
    assert not (train_dir / "figs").exists()
    # a `sample` folder kept in the training folder: its sample_*.png were read as training images, so each
    # sample was its own nearest neighbour (100 % copies, reported as a result)
    (train_dir / "gen").mkdir()
    np.save(train_dir / "gen" / "samples.npy", np.zeros((2, 1, 8, 8), np.float32))
    for i in range(2):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(train_dir / "gen" / f"sample_{i:05d}.png")
    code, _, err = run(["memorization", "--samples", str(train_dir / "gen"), "--train", str(train_dir),
                        "--output", str(tmp_path / "figs")], capsys)
    assert code == 2 and f"--samples {train_dir / 'gen'} is inside the --train folder {train_dir}, with its" in err
    assert not (tmp_path / "figs").exists()
    # a bare .npy there is no training image: it runs
    np.save(train_dir / "mine.npy", np.zeros((2, 1, 8, 8), np.float32))
    assert run(["memorization", "--samples", str(train_dir / "mine.npy"), "--train", str(train_dir), "--output",
                str(tmp_path / "figs")], capsys)[0] == 0


def test_memorization_reads_sample_arrays_in_their_scale_and_never_overwrites_a_users_figures(tmp_path, capsys):
    """.npy samples were always read as [-1, 1]: uint8 copies of the training set counted as 0 % copies; the
    study wrote over a user's histogram.png and memorization.json; bad --num-pairs / --thresholds crashed after
    the whole study had run."""
    rng = np.random.default_rng(0)
    train = (rng.random((12, 16, 16)) * 255).astype(np.uint8)
    np.save(tmp_path / "train.npy", train)
    np.save(tmp_path / "copies.npy", train[:6])                       # uint8 copies of training images
    code, out, _ = run(["memorization", "--samples", str(tmp_path / "copies.npy"), "--train",
                        str(tmp_path / "train.npy"), "--output", str(tmp_path / "a")], capsys)
    res = json.loads((tmp_path / "a" / "memorization.json").read_text())
    assert code == 0 and res["models"]["copies.npy"]["copies"] == 1.0
    written = out.splitlines()[-1]  # the last line names every file written, the neighbour figures too
    assert all(str(p) in written for p in (tmp_path / "a").iterdir()), written
    # the default output of a .npy file is its folder, and a rerun there replaces its own figures
    user = tmp_path / "user"
    user.mkdir()
    np.save(user / "s.npy", train[:6])
    code, _, _ = run(["memorization", "--samples", str(user / "s.npy"), "--train", str(tmp_path / "train.npy")],
                     capsys)
    assert code == 0 and (user / "memorization.json").is_file()
    assert run(["memorization", "--samples", str(user / "s.npy"), "--train", str(tmp_path / "train.npy")],
               capsys)[0] == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "histogram.png").write_text("my figure")
    code, _, err = run(["memorization", "--samples", str(tmp_path / "copies.npy"), "--train",
                        str(tmp_path / "train.npy"), "--output", str(mine)], capsys)
    assert code == 2 and "holds histogram.png" in err and (mine / "histogram.png").read_text() == "my figure"
    assert sorted(p.name for p in mine.iterdir()) == ["histogram.png"]
    base = ["memorization", "--samples", str(tmp_path / "copies.npy"), "--train", str(tmp_path / "train.npy"),
            "--output", str(tmp_path / "b")]
    for extra, msg in ((["--num-pairs", "0"], "--num-pairs must be >= 1"),
                       (["--thresholds", "0.9", "0.9"], "thresholds must be different numbers in \\[-1, 1\\)"),
                       (["--thresholds", "nan"], "thresholds must be"), (["--thresholds", "1.5"], "thresholds must"),
                       (["--samples", str(tmp_path / "copies.npy"), str(tmp_path / "copies.npy"), "--labels", "a/b",
                         "a_b"], "same figure name")):
        code, _, err = run(base + extra, capsys)
        assert code == 2 and re.search(msg, err), (extra, err)
    assert not (tmp_path / "b").exists()
    code, out, _ = run(base + ["--thresholds", "0.95", "0.951"], capsys)
    assert code == 0 and ">0.951" in out
    np.save(tmp_path / "ints.npy", train.astype(np.int64))
    code, _, err = run(["memorization", "--samples", str(tmp_path / "ints.npy"), "--train",
                        str(tmp_path / "train.npy"), "--output", str(tmp_path / "c")], capsys)
    assert code == 2 and "dtype int64" in err
    from ambient_mri.memorization import load_samples, study

    np.save(tmp_path / "unit.npy", train[:6] / 255.0)
    with warnings.catch_warnings(record=True) as seen:  # said once, by the study that compares them
        warnings.simplefilter("always")
        study({"unit": load_samples(tmp_path / "unit.npy")}, str(tmp_path / "train.npy"))
    assert [str(w.message).count("every value is >= 0") for w in seen] == [1], [str(w.message) for w in seen]
    over = (train[:6] / 127.5 - 1.0) * 1.04          # an unclamped sampler's overshoot: clipped, with a warning
    np.save(tmp_path / "over.npy", over.astype(np.float32))
    with pytest.warns(UserWarning, match="reach 1.04, outside the model scale"):
        assert np.abs(load_samples(tmp_path / "over.npy")).max() == 1.0
    # a study stopped while drawing its figures does not block the rerun into its folder
    import ambient_mri.memorization as mem

    result = mem.study({"copies": load_samples(tmp_path / "copies.npy")}, str(tmp_path / "train.npy"))
    with pytest.MonkeyPatch.context() as mp:
        def broken(*a, **k):
            raise RuntimeError("killed while drawing")
        mp.setattr(mem, "plot_neighbours", broken)
        with pytest.raises(RuntimeError):
            mem.write_study(result, tmp_path / "stopped")
    assert (tmp_path / "stopped" / "histogram.png").is_file()
    assert mem.write_study(result, tmp_path / "stopped")["json"].endswith("memorization.json")
    # reruns with other labels: the earlier figures went stale beside a JSON that no longer listed them, and the
    # third run refused the command's own neighbours_a.png as someone's (an audit); a killed study's temporaries
    # stayed; two studies at once mixed one's JSON with the other's figures
    two = mem.study({"a": load_samples(tmp_path / "copies.npy"), "b": load_samples(tmp_path / "copies.npy")},
                    str(tmp_path / "train.npy"))
    relabel = tmp_path / "relabel"
    mem.write_study(two, relabel)
    mem.write_study(result, relabel)
    assert sorted(p.name for p in relabel.glob("*.png")) == ["histogram.png", "neighbours_copies.png"]
    (relabel / ".histogram.png.k1ll3d.tmp").write_bytes(b"half")
    (relabel / ".my_notes.tmp").write_text("mine")
    mem.write_study(two, relabel)
    assert sorted(p.name for p in relabel.glob("*.png")) == ["histogram.png", "neighbours_a.png", "neighbours_b.png"]
    assert [p.name for p in relabel.glob(".*.tmp")] == [".my_notes.tmp"]
    with files.run_lock(relabel, "another study"), pytest.raises(am.DataFileError, match="another run is writing"):
        mem.write_study(result, relabel)
    # a damaged record of an earlier study that lists a user's file as a figure: that file is never removed
    meta = json.loads((relabel / "memorization.json").read_text())
    meta["figures"]["neighbours_a"] = str(relabel / "samples.npy")
    (relabel / "memorization.json").write_text(json.dumps(meta))
    np.save(relabel / "samples.npy", np.zeros(3))
    mem.write_study(result, relabel)
    assert (relabel / "samples.npy").is_file()
    np.save(tmp_path / "far.npy", (over * 100).astype(np.float32))
    with pytest.raises(am.DataFileError, match="outside the value range"):
        load_samples(tmp_path / "far.npy")


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MODEL",))


def test_an_unsafe_model_file_is_refused_without_advice_to_unsafe_loading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "ambient_mri.model/1", "info": _Payload(), "config": {}, "state_dict": {}},
               tmp_path / "evil.pt")
    with pytest.raises(am.DataFileError) as e:
        am.load_model(tmp_path / "evil.pt")
    msg = str(e.value)
    assert "evil.pt" in msg and "refuses" in msg and "weights_only=False" not in msg
    assert not (tmp_path / "PWNED_MODEL").exists()


def _denoiser():
    from ambient_mri.model import Denoiser
    from ambient_mri.training.trainer import network_config
    from helpers import TINY_NET

    r = load_recipe({"network": TINY_NET})
    return Denoiser(network_config(r, 2, 2), {"operator": "multicoil", "cond": ["mask", "ones"],
                                               "image_shape": [32, 32]})


def test_files_that_are_no_model_are_named_for_what_they_are(tmp_path):
    """A recipe given as the model was said to hold 'pickled Python objects'; a damaged record gave a bare
    ValueError; an unknown operator was accepted."""
    from ambient_mri.model import save_model

    (tmp_path / "recipe.yaml").write_text("name: x\n")
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("kspace", data=np.zeros(3))
    (tmp_path / "run").mkdir()
    save_model(_denoiser(), tmp_path / "run" / "model.pt")
    for path, msg in (("recipe.yaml", "is a text file \\(a recipe"), ("scan.h5", "is an HDF5 file"),
                      ("run", "is a folder, not a model file.*holds .*model.pt")):
        with pytest.raises(am.DataFileError, match=msg):
            am.load_model(tmp_path / path)
    assert am.load_model(tmp_path / "run" / "model.pt").record.operator == "multicoil"
    obj = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    for key, value, msg in (("image_shape", "abc", "training record \\(info\\) cannot be read \\(ValueError"),
                            ("operator", "bogus", "operator 'bogus' is not one of"),
                            ("image_shape", [64], r"image_shape \[64\] is not \(H, W\) for operator 'multicoil'"),
                            # sampling divided by or stopped at these: NaN or near-blank samples, silently (an audit)
                            ("sigma_n", float("nan"), "record's sigma_n is nan, out of range"),
                            ("sigma_data", -0.5, "record's sigma_data is -0.5, out of range"),
                            ("sigma", {"P_mean": float("nan"), "P_std": 1.2}, "record's sigma.P_mean is nan"),
                            ("acquisition", {"p": 1.5}, "record's acquisition.p is 1.5, out of range")):
        bad = {**obj, "info": {**obj["info"], key: value}}
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(am.DataFileError, match=f"bad.pt: .*{msg}"):
            am.load_model(tmp_path / "bad.pt")
    # a record and a network config that disagree (hand-edited): the first network call failed, or NaN samples
    for cfg, msg in (({"img_channels": 5}, "network takes 5 image channel\\(s\\) but its training record describes 2"),
                     ({"sigma_data": float("nan")}, "network's sigma_data is nan, not a positive number")):
        torch.save({**obj, "config": {**obj["config"], **cfg}}, tmp_path / "bad.pt")
        with pytest.raises(am.DataFileError, match=f"bad.pt: its {msg}"):
            am.load_model(tmp_path / "bad.pt")
    # a plain pickle was handed to torch's unpickler, which printed its protocol warning before the refusal (an
    # audit); torch.save's legacy format still reaches torch.load
    import pickle

    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    torch.save({"a": 1}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(am.DataFileError, match="plain.pt: is a plain Python pickle"):
            am.load_model(tmp_path / "plain.pt")
        with pytest.raises(am.DataFileError, match="legacy.pt: not an ambient_mri model file"):
            am.load_model(tmp_path / "legacy.pt")


def test_a_diverged_model_file_is_refused_by_name(tmp_path):
    """NaN weights (a diverged run) would give an all-NaN reconstruction reported as done."""
    from ambient_mri.model import save_model

    net = _denoiser()
    with torch.no_grad():
        next(net.parameters()).fill_(float("nan"))
    save_model(net, tmp_path / "nan.pt")
    with pytest.raises(am.DataFileError, match=r"nan.pt: weights contain NaN or Inf .*diverged"):
        am.load_model(tmp_path / "nan.pt")


def test_a_damaged_model_file_or_checkpoint_is_refused_by_name(tmp_path):
    """torch.load skips the archive's checksums: a model file with one flipped byte in its weights loaded and ran;
    a truncated checkpoint's message was cut off mid-sentence."""
    import zipfile

    from ambient_mri.model import save_model

    save_model(_denoiser(), tmp_path / "m.pt")
    am.load_model(tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        big = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray((tmp_path / "m.pt").read_bytes())
    name_len, extra_len = np.frombuffer(bytes(raw[big.header_offset + 26:big.header_offset + 30]), "<u2")
    raw[big.header_offset + 30 + int(name_len) + int(extra_len) + 5] ^= 0x10   # inside its data (past the local
    # header, whose extra field torch pads for alignment)
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(am.DataFileError, match=f"flipped.pt: is damaged: a member fails its checksum \\(Bad CRC-32 "
                                               f"for file '{big.filename}'"):
        am.load_model(tmp_path / "flipped.pt")
    from torch.utils.serialization import config  # saved without checksums (CRC 0): torch's own, not damaged

    config.save.compute_crc32 = False
    try:
        save_model(_denoiser(), tmp_path / "nocrc.pt")
    finally:
        config.save.compute_crc32 = True
    am.load_model(tmp_path / "nocrc.pt")
    with zipfile.ZipFile(tmp_path / "odd.pt", "w") as z:  # a member zipfile cannot read: named, no traceback
        z.writestr(zipfile.ZipInfo("odd/data.pkl"), b"x" * 10)
    raw = bytearray((tmp_path / "odd.pt").read_bytes())
    raw[8:10] = (99).to_bytes(2, "little")    # the local header's compression method: unknown
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 10:cd + 12] = (99).to_bytes(2, "little")
    (tmp_path / "odd.pt").write_bytes(bytes(raw))
    with pytest.raises(am.DataFileError, match="odd.pt: not a loadable ambient_mri file \\(NotImplementedError"):
        am.load_model(tmp_path / "odd.pt")
    data, _ = multicoil_measurements()
    from ambient_mri.data.factory import with_further

    recipe = tiny_recipe(tmp_path, steps=2)
    train(recipe, dataset=(with_further(data, load_recipe(recipe)), {}), progress=False)
    ckpt = next(tmp_path.rglob("checkpoint.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    longer = {**recipe, "training": {**recipe["training"], "steps": 4}}
    with pytest.raises(am.DataFileError, match=r"checkpoint.pt: is damaged: not a complete zip archive .*copy it "
                                               r"again, or use another checkpoint"):
        train(longer, dataset=(with_further(data, load_recipe(longer)), {}), progress=False)


@pytest.mark.parametrize("fmt,pattern", [("ambient_mri.model/9", "newer ambient_mri; upgrade"),
                                         ("ambient_mri.model/0", "an older model format"),
                                         ("other_tool/7", "not an ambient_mri model file")])
def test_a_model_file_of_another_format_is_refused(tmp_path, fmt, pattern):
    from ambient_mri.model import save_model

    save_model(_denoiser(), tmp_path / "m.pt")
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**obj, "format": fmt}, tmp_path / "m.pt")
    with pytest.raises(am.DataFileError, match=f"m.pt: model file format '{fmt}' is not .*{pattern}"):
        am.load_model(tmp_path / "m.pt")


def test_a_model_record_with_an_impossible_image_shape_names_the_model(tmp_path):
    from ambient_mri.model import save_model

    save_model(_denoiser(), tmp_path / "m.pt")
    obj = torch.load(tmp_path / "m.pt", weights_only=True)
    obj["info"]["image_shape"] = [-1, 0]
    torch.save(obj, tmp_path / "m.pt")
    with pytest.raises(am.DataFileError, match=r"m.pt: the training record's image_shape \[-1, 0\] has a size"):
        am.load_model(tmp_path / "m.pt")


def test_the_largest_seed_works_for_an_ambient_pixel_model(tmp_path, capsys):
    """Derived seeds (seed * 100_003 + b) passed numpy's 2**32 limit from seed 42949 on: a traceback after the
    output folder was made."""
    from ambient_mri.files import MAX_SEED
    from ambient_mri.model import Denoiser, save_model
    from ambient_mri.training.trainer import network_config
    from helpers import TINY_NET

    r = load_recipe({"network": TINY_NET, "corruption": {"operator": "pixel", "p": 0.5, "cond": ["mask"]}})
    net = Denoiser(network_config(r, 1, 1), {"operator": "pixel", "ambient": True, "cond": ["mask"],
                                            "image_shape": [1, 8, 8], "acquisition": {"p": 0.5}})
    save_model(net, tmp_path / "pix.pt")
    code, _, _ = run(["sample", "--model", str(tmp_path / "pix.pt"), "--num", "1", "--steps", "2", "--seed",
                      str(MAX_SEED), "--output", str(tmp_path / "s"), "--device", "cpu"], capsys)
    assert code == 0 and (tmp_path / "s" / "samples.npy").is_file()
    from ambient_mri.image_recon import inpaint

    res = inpaint(net, torch.zeros(1, 8, 8), torch.ones(1, 8, 8), steps=2, seed=MAX_SEED)
    assert bool(torch.isfinite(res.image).all())


def test_a_pickled_npy_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    from ambient_mri.memorization import load_samples

    with pytest.raises(am.DataFileError) as e:
        load_samples(tmp_path / "obj.npy")
    assert "obj.npy: holds Python objects" in str(e.value) and "allow_pickle" not in str(e.value)
    # empty, truncated, damaged .npz and files that are no numpy file at all: numpy's EOFError and BadZipFile
    # came out as tracebacks, and random bytes were said to hold a pickle (an audit)
    import pickle

    from ambient_mri.data.images import read_image_array

    np.savez(tmp_path / "good.npz", images=np.zeros((4, 8, 8), np.float32))
    data = (tmp_path / "good.npz").read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    npz = {"empty.npz": b"", "cut.npz": data[: len(data) // 2], "flipped.npz": bytes(flipped)}
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    npy = {"empty.npy": b"", "noise.npy": os.urandom(64), "pickle.npy": pickle.dumps({"a": 1}, protocol=4)}
    for name, content in {**npz, **npy}.items():
        (tmp_path / name).write_bytes(content)
    for name, pattern in (("empty.npz", "is empty or cut short"), ("cut.npz", "is a damaged .npz"),
                          ("flipped.npz", "is a damaged .npz"), ("empty.npy", "is empty or cut short"),
                          ("noise.npy", "is not a numpy file"), ("pickle.npy", "holds Python objects"),
                          ("objects.npz", "holds Python objects")):
        readers = [read_image_array] + ([load_samples] if name.endswith(".npy") else [])
        for read in readers:
            with pytest.raises(am.DataFileError, match=f"{name}: {pattern}"):
                read(tmp_path / name)


def test_atomic_path_removes_its_temporary_on_any_failure(tmp_path):
    with pytest.raises(ValueError):
        with files.atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("interrupted")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# recipes and training (a hostile-input helper's findings)
# ----------------------------------------------------------------------------------------------------------------


def _image_recipe(tmp_path: Path, data_path, **over) -> dict:
    r = {"name": "img", "output": str(tmp_path / "runs"), "network": dict(TINY_NET),
         "data": {"kind": "images", "path": str(data_path), "holdout": 1},
         "corruption": {"operator": "pixel", "p": 0.5, "ambient": True, "delta": 0.1, "cond": ["mask"]},
         "training": {"steps": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "device": "cpu"}}
    for key, value in over.items():
        section, name = key.split("__")
        r.setdefault(section, {})[name] = value
    return r


def _pngs(folder: Path, n: int = 6, size: int = 8) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = (np.random.default_rng(i).random((size, size)) * 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.png")
    return folder


def _always_nan(monkeypatch):
    """Every step's loss NaN: a run that diverges from its first step."""
    import ambient_mri.training.trainer as trainer

    real = trainer.step_loss
    monkeypatch.setattr(trainer, "step_loss", lambda *a, **k: real(*a, **k) * float("nan"))


def test_a_failed_first_run_never_removes_a_folder_its_path_resolves_to(tmp_path, monkeypatch):
    """run_folder tested `created` on the unresolved path: "out/new/.." did not exist until make_folder made
    out/new, so an existing folder counted as new and a diverged run removed it, with the user's files."""
    _pngs(tmp_path / "imgs")
    keep = tmp_path / "out" / "keep"
    keep.mkdir(parents=True)
    (keep / "notes.txt").write_text("precious")
    _always_nan(monkeypatch)
    r = _image_recipe(tmp_path, tmp_path / "imgs")
    r.update(output=str(tmp_path / "out" / "new" / ".."), name="keep")
    with pytest.raises(am.AmbientMRIError, match="training diverged: the loss was NaN or Inf"):
        train(r, progress=False)
    assert (keep / "notes.txt").read_text() == "precious" and not (keep / "model.pt").exists()


def test_a_diverged_run_stops_without_writing_a_model(tmp_path, monkeypatch):
    """P_mean 1e300 gave NaN on every step; the run wrote checkpoints of an untrained model and exited 0 (such a
    P_mean is refused now, below; a NaN loss on every step stands in for it)."""
    _pngs(tmp_path / "imgs")
    with pytest.raises(am.RecipeError, match=r"training.P_mean: must be in \[-30, ln\(1e5\) - 5 P_std\]"):
        train(_image_recipe(tmp_path, tmp_path / "imgs", training__P_mean=800), progress=False)
    _always_nan(monkeypatch)
    with pytest.raises(am.AmbientMRIError, match="training diverged"):
        train(_image_recipe(tmp_path, tmp_path / "imgs"), progress=False)
    assert not (tmp_path / "runs").exists()  # a first run's folders go with it


def test_weights_that_overflow_are_never_saved_and_extreme_recipe_values_are_refused(tmp_path, monkeypatch):
    """lr 1e6 left a finite loss while the weights overflowed: the run exited 0 with NaN in model.pt and
    checkpoint.pt; lr 1e308 failed inside torch's Adam; sigma_n 1e9 and input_cg 1e6 were taken; a recipe nested
    3000 deep raised RecursionError from PyYAML (an audit)."""
    import ambient_mri.training.trainer as trainer
    from ambient_mri.training.recipe import load_recipe

    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    real = trainer.step_loss

    def overflow_after_first(fwd, model, *a, **k):  # what a huge lr does to the weights, on step 2
        loss = real(fwd, model, *a, **k)
        if a[2] >= 1:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(trainer, "step_loss", overflow_after_first)
    with pytest.raises(am.AmbientMRIError, match=r"training diverged: at step 2 .* hold NaN or Inf"):
        train(_image_recipe(tmp_path, tmp_path / "a.npy", training__steps=2), progress=False)
    assert not list((tmp_path / "runs").glob("*/model.pt")) and not list((tmp_path / "runs").glob("*/checkpoint.pt"))
    for over, msg in (({"training__lr": 1e308}, r"training.lr: must be in \(0, 1\]"),
                      ({"corruption__sigma_n": 1e9}, r"corruption.sigma_n: must be in \[0, 2\]")):
        with pytest.raises(am.RecipeError, match=msg):
            train(_image_recipe(tmp_path, tmp_path / "a.npy", **over), progress=False)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(am.RecipeError, match="deep.yaml: not a YAML recipe .nested too deeply"):
        load_recipe(deep)


def test_reconstruct_names_the_model_file_trained_for_images(raw, tmp_path, capsys):
    """'model was trained for the 'pixel' operator, not multi-coil MRI' did not say which file (an audit)."""
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    model = train(_image_recipe(tmp_path, tmp_path / "a.npy"), progress=False) / "model.pt"
    code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(tmp_path / "rec"), "--method", "fast",
                        "--model", str(model)], capsys)
    assert code == 2 and f"{model}: model was trained for the 'pixel' operator" in err, err
    assert not (tmp_path / "rec").exists()


class _UnreadableInWorkers(torch.utils.data.Dataset):
    """A training set whose examples raise the reader's DataFileError in a loader worker (a file truncated
    mid-run), while the main process still reads them."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None:
            raise am.DataFileError("/data/train/vol3.h5", "slice 3: cannot be read (truncated?)")
        return self.base[i]


def test_a_data_error_in_a_loader_worker_is_one_line_not_a_traceback(tmp_path, capsys):
    """With DataLoader workers (4 by default on CUDA) a DataFileError came back as torch's 60-line RuntimeError."""
    from ambient_mri.data.factory import build_training_data

    _pngs(tmp_path / "imgs")
    r = _image_recipe(tmp_path, tmp_path / "imgs", training__num_workers=2)
    data, info = build_training_data(load_recipe(r))
    with pytest.raises(am.AmbientMRIError) as e:
        train(r, progress=False, dataset=(_UnreadableInWorkers(data), info))
    assert str(e.value) == "/data/train/vol3.h5: slice 3: cannot be read (truncated?)"


def test_a_finished_run_resumed_with_fewer_steps_or_without_its_model(tmp_path):
    """Fewer steps than done exited 0 and wrote steps: 2 into the run's recipe.yaml beside a 4-step checkpoint; a
    finished run whose model.pt was removed was 'resumed' without writing it again."""
    _pngs(tmp_path / "imgs")
    r = _image_recipe(tmp_path, tmp_path / "imgs", training__steps=4)
    run_dir = train(r, progress=False)
    recipe = (run_dir / "recipe.yaml").read_text()
    with pytest.raises(am.AmbientMRIError, match="has done 4 steps, more than training.steps 2"):
        train(_image_recipe(tmp_path, tmp_path / "imgs", training__steps=2), progress=False)
    assert (run_dir / "recipe.yaml").read_text() == recipe
    model = (run_dir / "model.pt").read_bytes()
    (run_dir / "model.pt").unlink()
    train(r, progress=False)
    assert am.load_model(run_dir / "model.pt").record.operator == "pixel"
    assert len((run_dir / "model.pt").read_bytes()) == len(model)
    # a damaged model.pt (cut short) was kept by the resume of a finished run: now written again
    (run_dir / "model.pt").write_bytes(model[: len(model) // 2])
    train(r, progress=False)
    assert am.load_model(run_dir / "model.pt").record.operator == "pixel"


def test_a_resume_rewrites_a_model_left_from_the_step_before(tmp_path):
    """checkpoint.pt is written before model.pt and the preview: a kill between them left step 2's model.pt beside
    step 4's checkpoint, and the finished resume kept it (whole, loadable, 2 steps behind) and lost the preview
    (a kill-and-resume audit)."""
    from ambient_mri.model import safe_load

    _pngs(tmp_path / "imgs")
    r = _image_recipe(tmp_path, tmp_path / "imgs", training__steps=4)
    run_dir = train(_image_recipe(tmp_path, tmp_path / "imgs", training__steps=2), progress=False)
    older = (run_dir / "model.pt").read_bytes()
    train(r, progress=False)
    final = safe_load(run_dir / "model.pt")["state_dict"]
    inode = (run_dir / "model.pt").stat().st_ino
    train(r, progress=False)                                      # the checkpoint's own model.pt: left alone
    assert (run_dir / "model.pt").stat().st_ino == inode
    (run_dir / "model.pt").write_bytes(older)
    (run_dir / "preview_0000004.png").unlink()
    train(r, progress=False)
    again = safe_load(run_dir / "model.pt")["state_dict"]
    assert all(torch.equal(again[k], v) for k, v in final.items())
    assert (run_dir / "preview_0000004.png").is_file()
    assert safe_load(run_dir / "checkpoint.pt")["step"] == 4


def test_sample_into_the_models_training_folder_is_refused(tmp_path, capsys):
    """sample --output inside the training folder of an image model put sample_*.png and grid.png among its
    training images: the next run there would train on them (an audit)."""
    _pngs(tmp_path / "imgs")
    run_dir = train(_image_recipe(tmp_path, tmp_path / "imgs"), progress=False)
    before = checksums(tmp_path / "imgs")
    code, _, err = run(["sample", "--model", str(run_dir / "model.pt"), "--num", "1", "--steps", "2",
                        "--no-progress", "--output", str(tmp_path / "imgs" / "gen")], capsys)
    assert code == 2 and "inside the model's training folder" in err and checksums(tmp_path / "imgs") == before


def test_a_new_run_never_writes_over_a_users_files_in_its_folder(tmp_path):
    """A run folder without checkpoint.pt was taken as new: a user's recipe.yaml, log.jsonl and preview PNG in it
    were replaced (an audit). A first run killed before its first checkpoint still starts again there."""
    _pngs(tmp_path / "imgs")
    r = _image_recipe(tmp_path, tmp_path / "imgs")
    mine = Path(r["output"]) / r["name"]
    mine.mkdir(parents=True)
    for name, text in (("recipe.yaml", "lr: 0.1\n"), ("log.jsonl", '{"step": 1}\n'), ("preview_0000002.png", "x")):
        (mine / name).write_text(text)
    before = checksums(mine)
    with pytest.raises(am.AmbientMRIError, match="holds recipe.yaml, log.jsonl, preview_0000002.png, which no "
                                                 "training run wrote"):
        train(r, progress=False)
    assert checksums(mine) == before
    # what a killed first run leaves (its own recipe.yaml and train.log, no checkpoint) is no obstacle
    shutil.rmtree(mine)
    run_dir = train(r, progress=False)
    for name in ("checkpoint.pt", "model.pt", "log.jsonl"):
        (run_dir / name).unlink()
    for png in run_dir.glob("preview_*.png"):
        png.unlink()
    assert train(r, progress=False) == run_dir and am.load_model(run_dir / "model.pt").record.operator == "pixel"
    # the same left by an older version, whose recipe.yaml had fewer fields (no data.augment, no input_cg)
    old = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    del old["data"]["augment"], old["network"]["input_cg"]
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(old))
    for name in ("checkpoint.pt", "model.pt"):
        (run_dir / name).unlink()
    assert train(r, progress=False) == run_dir and (run_dir / "checkpoint.pt").is_file()


def test_a_checkpoint_that_is_not_ours_is_refused_before_the_folder_is_touched(tmp_path):
    """A checkpoint.pt without a training state (a user's torch file, or model.pt copied over it) was refused only
    after recipe.yaml had been written over and train.log appended to (an audit); a damaged byte in log.jsonl
    stopped a resume with a UnicodeDecodeError."""
    _pngs(tmp_path / "imgs")
    r = _image_recipe(tmp_path, tmp_path / "imgs")
    theirs = Path(r["output"]) / r["name"]
    theirs.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(3)}}, theirs / "checkpoint.pt")
    (theirs / "recipe.yaml").write_text("my notes\n")
    before = checksums(theirs)
    with pytest.raises(am.DataFileError, match="checkpoint.pt: not a training checkpoint \\(no ema, model, "
                                               "optimizer, step; this is a model file\\)"):
        train(r, progress=False)
    assert checksums(theirs) == before and not (theirs / "train.log").exists()
    shutil.rmtree(theirs)
    run_dir = train(r, progress=False)
    with open(run_dir / "log.jsonl", "ab") as f:
        f.write(b"\xff\n")
    r["training"] = {**r.get("training", {}), "steps": r["training"]["steps"] + 1}
    assert train(r, progress=False) == run_dir
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == r["training"]["steps"]


def test_a_finished_run_without_its_checkpoint_is_never_trained_over(tmp_path):
    """A user who deleted checkpoint.pt to save space (model.pt is what the docs point to) lost the model: a new
    run with the same name wrote over model.pt and log.jsonl without a word."""
    _pngs(tmp_path / "imgs")
    r = _image_recipe(tmp_path, tmp_path / "imgs")
    run_dir = train(r, progress=False)
    (run_dir / "checkpoint.pt").unlink()
    model = (run_dir / "model.pt").read_bytes()
    with pytest.raises(am.AmbientMRIError, match="holds a trained model.pt but no checkpoint.pt"):
        train(r, progress=False)
    assert (run_dir / "model.pt").read_bytes() == model


def test_the_run_folder_may_not_overlap_the_data_or_write_over_the_recipe(tmp_path):
    imgs = _pngs(tmp_path / "imgs")
    for output, name in ((tmp_path, "imgs"), (imgs / "runs", "r1"), (tmp_path / "x", "..")):
        r = _image_recipe(tmp_path, imgs)
        r.update(output=str(output), name=name)
        with pytest.raises(am.AmbientMRIError, match="overlaps the training data|without '.' or '..' parts"):
            train(r, progress=False)
    assert sorted(p.name for p in imgs.iterdir()) == [f"{i}.png" for i in range(6)]
    import yaml

    here = tmp_path / "work"
    here.mkdir()
    recipe = here / "recipe.yaml"
    recipe.write_text("# my notes\n" + yaml.safe_dump({**_image_recipe(tmp_path, imgs), "output": str(tmp_path),
                                                       "name": "work"}))
    before = recipe.read_bytes()
    with pytest.raises(am.DataFileError, match="would be written over the input"):
        train(str(recipe), progress=False)
    assert recipe.read_bytes() == before


@pytest.mark.parametrize("over,pattern", [
    ({"network__model_channels": 3}, "network.model_channels: must be an even number"),
    ({"corruption__delta": 0.0}, r"corruption.delta: must be in \(0, 1\)"),
    ({"training__consistency_weight": 1.0, "corruption__sigma_n": 0.1}, "cannot be combined with corruption.cond"),
    ({"training__consistency_weight": 1.0, "corruption__cond": ["ones"]}, "applies to noisy images"),
])
def test_recipe_settings_that_crashed_or_did_nothing_are_refused(tmp_path, over, pattern):
    with pytest.raises(am.RecipeError, match=pattern):
        load_recipe(_image_recipe(tmp_path, tmp_path, **over))


def test_a_batch_larger_than_the_training_set_is_refused(tmp_path):
    """Every batch repeated examples, silently (batch 100 on 6 images)."""
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    with pytest.raises(am.AmbientMRIError, match="batch_size 8 is larger than the 5 training examples"):
        train(_image_recipe(tmp_path, tmp_path / "a.npy", training__batch_size=8), progress=False)
    assert not (tmp_path / "runs").exists()


def test_settings_that_do_not_apply_to_the_data_are_refused(tmp_path):
    """Image-only keys on prepared MRI data were ignored (corruption.p even recorded in the model), a path given
    with a built-in set was ignored, and prepared data without a path read the working directory."""
    with pytest.raises(am.RecipeError, match="data.path: data.kind 'mnist' is a built-in set"):
        load_recipe({**tiny_recipe(tmp_path), "data": {"kind": "mnist", "path": str(tmp_path)},
                     "corruption": {"operator": "pixel", "p": 0.5, "ambient": True, "delta": 0.1}})
    (tmp_path / "prep").mkdir()
    path = {"path": str(tmp_path / "prep")}
    for over, pattern in (({"corruption": {"operator": "multicoil", "ambient": True, "extra_lines": 2, "p": 0.5},
                            "data": path}, "corruption.p: image-data settings"),
                          ({"data": {**path, "image_size": [16, 16]}}, "data.image_size: image-data settings"),
                          ({"corruption": {"operator": "singlecoil"}, "data": path}, "use multicoil, not"),
                          ({}, "needs data.path")):
        with pytest.raises(am.RecipeError, match=pattern):  # when training reads the data, before any folder
            train({**tiny_recipe(tmp_path), **over}, progress=False)
        assert not (tmp_path / "tiny").exists()


def test_a_recipe_key_given_twice_is_refused(tmp_path):
    """YAML keeps the last: a second `training:` block with only lr replaced the whole first one."""
    f = tmp_path / "r.yaml"
    f.write_text("name: x\ntraining:\n  steps: 2\n  batch_size: 2\ntraining:\n  lr: 100\n")
    with pytest.raises(am.RecipeError, match=r"r.yaml: recipe key 'training' is given twice \(line 5\)"):
        load_recipe(f)


def test_image_data_that_loaded_silently_wrong(tmp_path):
    """int64 0..255, uint16, float 0..1000 and complex arrays went into training out of [-1, 1] (or lost their
    imaginary part); a 16-bit PNG was clipped to white; a .ipynb_checkpoints copy was trained on; a box covering
    the image left nothing to learn."""
    from PIL import Image

    from ambient_mri.data.image_measurements import ImageMeasurements
    from ambient_mri.data.images import image_set_from_array, read_image_folder

    a = np.random.default_rng(0).random((4, 8, 8))
    for bad, pattern in ((np.round(a * 255).astype(np.int64), "outside the value range"),
                         (a.astype(np.complex64), "dtype complex64"), (a * 1000, "outside the value range")):
        with pytest.raises(am.AmbientMRIError, match=pattern):
            image_set_from_array(bad)
    twelve_bit = np.round(a * 4095).astype(np.uint16)  # with its range given, an integer array is fine
    assert abs(image_set_from_array(twelve_bit, value_range=(0, 4095)).images.mean() - (2 * a.mean() - 1)) < 1e-3
    folder = _pngs(tmp_path / "imgs", n=2)
    Image.fromarray((np.full((8, 8), 0.25) * 65535).astype(np.uint16)).save(folder / "deep.png")
    (folder / ".ipynb_checkpoints").mkdir()
    shutil.copy(folder / "0.png", folder / ".ipynb_checkpoints" / "0-checkpoint.png")
    s = read_image_folder(folder)
    assert len(s) == 3 and s.names[-1] == "deep.png"
    assert abs((s.images[-1].mean() + 1) / 2 - 0.25) < 1e-3  # on [0, 1]; convert("L") gave ~1
    # a 32-bit integer TIFF holding 8-bit values was read as 16-bit (almost black, an audit): refused by name
    Image.fromarray(np.full((8, 8), 200, np.int32)).save(folder / "deep32.tif")
    with pytest.raises(am.DataFileError, match="deep32.tif: is a 32-bit integer image"):
        read_image_folder(folder)
    with pytest.raises(am.AmbientMRIError, match="keep no pixel"):
        ImageMeasurements(s, box=8)


def test_resume_on_other_images_of_the_same_shape_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.random((6, 8, 8)).astype(np.float32))
    np.save(tmp_path / "b.npy", rng.random((6, 8, 8)).astype(np.float32))
    r = _image_recipe(tmp_path, tmp_path / "a.npy")
    train(r, progress=False)
    r["data"]["path"] = str(tmp_path / "b.npy")
    r["training"]["steps"] = 4
    with pytest.raises(am.AmbientMRIError, match="content_sha256"):
        train(r, progress=False)


def test_review_mends_resume_and_divergence(tmp_path, monkeypatch):
    """A checkpoint of the previous version has no content_sha256: its resume was refused. One bad batch at the
    start of a run stopped it as diverged when log_every was small."""
    import ambient_mri.training.trainer as trainer

    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))
    r = _image_recipe(tmp_path, tmp_path / "a.npy")
    run_dir = train(r, progress=False)
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    del ck["data"]["content_sha256"]
    torch.save(ck, run_dir / "checkpoint.pt")
    r["training"]["steps"] = 3
    train(r, progress=False)
    real, calls = trainer.step_loss, []

    def first_nan(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == 1 else loss

    monkeypatch.setattr(trainer, "step_loss", first_nan)
    r2 = _image_recipe(tmp_path, tmp_path / "a.npy", training__steps=6)
    r2["name"] = "one_bad_batch"
    train(r2, progress=False)
    assert len(calls) == 6 and (tmp_path / "runs" / "one_bad_batch" / "model.pt").is_file()


def test_review_mends_reconstruct_and_evaluate(recon_dirs, tmp_path, capsys):
    """An output of a version that knew its input by name, size and mtime alone cannot be proven to come from
    this input: redone once; a figure that failed unexpectedly (a compound zero_filled) lost metrics.csv and
    metrics.json."""
    raw, out = recon_dirs
    with h5py.File(out / "vol0.h5", "a") as f:
        legacy = json.loads(f.attrs["settings"])
        del legacy["source"]["sample_sha256"]
        f.attrs["settings"] = json.dumps(legacy, sort_keys=True)
    code, stdout, _ = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)
    assert code == 0 and "1 volume(s) reconstructed" in stdout and "1 already there" in stdout
    with h5py.File(out / "vol0.h5", "a") as f:
        assert "sample_sha256" in json.loads(f.attrs["settings"])["source"]
        del f["zero_filled"]
        f.create_dataset("zero_filled", data=np.zeros((2, 32, 32), [("re", "<f4"), ("im", "<f4")]))
    t = tmp_path / "t"
    t.mkdir()
    for v in ("vol0.h5", "vol1.h5"):
        with h5py.File(raw / v, "r") as f:
            _write(t / v, reconstruction_rss=f["reconstruction_rss"][()])
    code, _, err = run(["evaluate", "--target", str(t), "--recon", str(out)], capsys)
    assert code == 0 and (out / "metrics.csv").is_file() and (out / "vol0.png").is_file(), err


def _zero_tail(path: Path) -> None:
    """Zero the last 4 KiB in place (same size): h5py opens the file, then raises RuntimeError on its metadata."""
    n = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(n - 4096)
        f.write(b"\0" * 4096)


def test_files_with_damaged_metadata_are_named_and_our_own_are_redone(recon_dirs, tmp_path, capsys):
    """h5py's RuntimeError on damaged metadata was not caught: evaluate stopped with a traceback and scored none of
    the other volumes, reconstruct could never redo its own damaged output (listed as 'unexpected RuntimeError' on
    every rerun), and a damaged input gave the same. Outputs damaged in place (readable, same size) were kept:
    a reconstruction with zeroed slices, a prepared file whose lines training refuses (a kill-and-resume audit)."""
    raw, out = recon_dirs
    t = tmp_path / "t"
    t.mkdir()
    for v in ("vol0.h5", "vol1.h5"):
        with h5py.File(raw / v, "r") as f:
            _write(t / v, reconstruction_rss=f["reconstruction_rss"][()])
    _zero_tail(out / "vol0.h5")
    with pytest.raises(RuntimeError):
        with h5py.File(out / "vol0.h5", "r") as f:
            "reconstruction" in f  # noqa: B015 - the membership test is what raises
    code, _, err = run(["evaluate", "--target", str(t), "--recon", str(out)], capsys)
    assert code == 1 and "vol0.h5: cannot be read as HDF5" in err and (out / "vol1.png").is_file()
    code, stdout, _ = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)
    assert code == 0 and "1 volume(s) reconstructed" in stdout and "1 already there" in stdout
    assert run(["evaluate", "--target", str(t), "--recon", str(out)], capsys)[0] == 0
    with h5py.File(out / "vol1.h5", "a") as f:  # damaged in place since: readable, finite, same settings
        f["reconstruction"][0] = 0
    code, stdout, _ = run(["reconstruct", "--input", str(raw), "--output", str(out), *ZF], capsys)
    assert code == 0 and "1 volume(s) reconstructed" in stdout and "1 already there" in stdout
    with h5py.File(out / "vol1.h5", "r") as f:
        assert f["reconstruction"][0].max() > 0
    prepare_fastmri(raw, tmp_path / "prep", **PREP)
    with h5py.File(tmp_path / "prep" / "train" / "vol1.h5", "a") as f:  # training refuses it; prepare skipped it
        f["lines"][...] = 0
    res = prepare_fastmri(raw, tmp_path / "prep", **PREP)
    assert [r.status for r in res.results] == ["skipped", "prepared"]
    _zero_tail(raw / "vol1.h5")
    code, _, err = run(["reconstruct", "--input", str(raw), "--output", str(tmp_path / "again"), *ZF], capsys)
    assert code == 1 and "vol1.h5: damaged HDF5 file" in err


def test_out_of_memory_and_invisible_augmentation_are_clear_errors(tmp_path, monkeypatch):
    """model_channels 100000 or image_size 100000 x 100000 ended in torch's allocator traceback; rotate 1e-300 made
    copies equal to their originals (one clean image corrupted twice), past the rule that refuses exact repeats."""
    import ambient_mri.training.trainer as trainer
    from ambient_mri.data.augment import augment_images

    with pytest.raises(am.AmbientMRIError, match="2 augmented copies equal their original"):
        augment_images(np.random.default_rng(0).random((2, 8, 8)).astype(np.float32),
                       {"copies": 1, "rotate": 1e-300}, seed=0)
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((6, 8, 8)).astype(np.float32))

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 40000000000 bytes.")

    monkeypatch.setattr(trainer, "_loop", oom)
    with pytest.raises(am.AmbientMRIError, match="out of memory on cpu .* lower training.batch_size"):
        train(_image_recipe(tmp_path, tmp_path / "a.npy"), progress=False)
    assert not (tmp_path / "runs").exists()


def test_demo_sizes_are_checked_before_the_thread_benchmark_and_against_memory(tmp_path, capsys):
    """--size 0 or -4 reached the thread benchmark (a torch traceback); --size 100000 allocated until it failed."""
    for size, msg in (("0", "--size must be an even number >= 16, got 0"),
                      ("-4", "--size must be an even number >= 16, got -4"),
                      ("100000", "the demo data at --size 100000 with 8 coils needs about .* GiB of memory")):
        code, _, err = run(["demo", "--output", str(tmp_path / "d"), "--size", size], capsys)
        assert code == 2 and re.search(msg, err), err
    assert not (tmp_path / "d").exists()


def test_overrides_and_names_that_gave_tracebacks_or_reset_a_section(tmp_path):
    """training={steps: 2} replaced the whole section (lr back to its default); overrides through a value, of the
    wrong type, or a 300-character name gave TypeErrors and OSErrors."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo_mni_r4.yaml"
    r = load_recipe(recipe, ["training={steps: 2}"])
    assert r.training.steps == 2 and r.training.lr == 1e-3
    for overrides, msg in ((["training.steps.x=1"], "training.steps is a value, not a section"),
                           (["name.x=1"], "name is a value, not a section"), ([5], "a list of 'key=value' strings"),
                           ("steps=2", "a list of 'key=value' strings"), ({5: 2}, "a list of 'key=value' strings"),
                           ([f"name={'x' * 300}"], "at most 255 bytes"), (["name=' '"], "without '.' or '..'"),
                           (['name="a\\nb"'], "control characters"), (['name="a\\x00b"'], "control characters"),
                           (["corruption.cond=[mask, ones, mask]"], "channel\\(s\\) mask given more than once")):
        with pytest.raises(am.RecipeError, match=msg):
            load_recipe(recipe, overrides)


def test_a_center_fraction_that_leaves_nothing_to_undersample_is_refused():
    with pytest.raises(am.AmbientMRIError, match="makes all 16 columns ACS lines"):
        kspace_mask("random", (16, 16), 2, 0.999, seed=0)


def test_reconstruct_never_overwrites_a_reconstruction_file_it_did_not_write(raw, tmp_path, capsys):
    """A fastMRI submission file of the same name (only a 'reconstruction' dataset) was replaced."""
    out = tmp_path / "out"
    out.mkdir()
    with h5py.File(out / "vol0.h5", "w") as f:
        f["reconstruction"] = np.full((2, 32, 32), 7.0, np.float32)
    code, _, err = run(["reconstruct", "--input", str(raw / "vol0.h5"), "--output", str(out), *ZF], capsys)
    assert code == 2 and "is not a reconstruction file ambient-mri wrote" in err
    with h5py.File(out / "vol0.h5", "r") as f:
        assert set(f) == {"reconstruction"} and float(f["reconstruction"][0, 0, 0]) == 7.0


def test_folder_commands_list_hdf5_files_under_another_suffix(raw, tmp_path, capsys):
    """A folder's b.hdf5 and c.H5 were skipped in silence ("1 volume(s) reconstructed", exit 0), though
    --input b.hdf5 alone is read."""
    mix = tmp_path / "mix"
    mix.mkdir()
    for name, src in (("a.h5", "vol0.h5"), ("b.hdf5", "vol1.h5"), ("c.H5", "vol0.h5")):
        shutil.copy(raw / src, mix / name)
    code, out, err = run(["reconstruct", "--input", str(mix), "--output", str(tmp_path / "rec"), *ZF], capsys)
    assert code == 1 and "1 volume(s) reconstructed" in out and "2 volume(s) failed" in err
    for name in ("b.hdf5", "c.H5"):
        assert f"{name}: an HDF5 file not named *.h5" in err
    summary = prepare_fastmri(mix, tmp_path / "prep", acceleration=4, center_fraction=0.25, progress=False)
    assert sorted(Path(r.source).name for r in summary.results if r.status == "refused") == ["b.hdf5", "c.H5"]
    (mix / "a.h5").unlink()
    code, _, err = run(["reconstruct", "--input", str(mix), "--output", str(tmp_path / "rec2"), *ZF], capsys)
    assert code == 2 and "no .h5 files in this folder" in err and "but 2 named otherwise" in err


def test_reconstruct_file_never_overwrites_another_volume(raw, tmp_path):
    """The API wrote a reconstruction over another raw volume given as out_path (the CLI refused it)."""
    other = tmp_path / "other.h5"
    shutil.copy(raw / "vol1.h5", other)
    before = other.read_bytes()
    with pytest.raises(am.DataFileError, match="other.h5.*is not a reconstruction file ambient-mri wrote"):
        am.reconstruct_file(raw / "vol0.h5", other, acceleration=4, center_fraction=0.25, method="zero_filled",
                           progress=False)
    assert other.read_bytes() == before
    out = am.reconstruct_file(raw / "vol0.h5", tmp_path / "mine.h5", acceleration=4, center_fraction=0.25,
                              method="zero_filled", progress=False)
    am.reconstruct_file(raw / "vol0.h5", out, acceleration=4, center_fraction=0.25, method="zero_filled",
                       progress=False)  # its own output is redone


def test_prepare_demo_never_mixes_two_demos_nor_writes_over_a_users_record(tmp_path, capsys):
    """A rerun with other --coils kept the old volumes beside new ones and wrote a record of the new settings; a
    user's demo.json in the output was written over."""
    out = tmp_path / "d"
    assert run(["prepare", "demo", "--output", str(out), "--size", "16", "--coils", "2", "--slices", "6"],
               capsys)[0] == 0
    record = (out / "demo.json").read_text()
    code, _, err = run(["prepare", "demo", "--output", str(out), "--size", "16", "--coils", "4", "--slices", "6"],
                       capsys)
    assert code == 2 and "holds a demo built with other settings (coils: 2)" in err
    assert (out / "demo.json").read_text() == record
    assert run(["prepare", "demo", "--output", str(out), "--size", "16", "--coils", "2", "--slices", "6"],
               capsys)[0] == 0   # the same settings: a rerun
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "demo.json").write_text('{"mine": "precious"}')
    code, _, err = run(["prepare", "demo", "--output", str(mine), "--size", "16", "--coils", "2", "--slices", "6"],
                       capsys)
    assert code == 2 and "not a demo record" in err and (mine / "demo.json").read_text() == '{"mine": "precious"}'


def test_memorization_study_reads_arrays_in_their_scale_as_the_command_does():
    """study() took in-memory uint8 (or [0, 1]) training images or samples as [-1, 1] values: every near-copy
    counted as novel (copies 0.0, no word); a torch training set was taken for a path (an audit)."""
    from ambient_mri.memorization import study

    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (6, 1, 8, 8)).astype(np.float32)
    near = np.clip(train[:3] + rng.normal(0, 0.02, (3, 1, 8, 8)), -1, 1).astype(np.float32)
    ref = study({"a": near}, train)["models"]["a"]["copies"]
    assert ref == 1.0
    as_uint8 = np.round((train + 1) * 127.5).astype(np.uint8)
    assert study({"a": near}, as_uint8)["models"]["a"]["copies"] == ref
    assert study({"a": np.round((near + 1) * 127.5).astype(np.uint8)}, train)["models"]["a"]["copies"] == ref
    assert study({"a": torch.from_numpy(near)}, torch.from_numpy(train))["models"]["a"]["copies"] == ref
    with pytest.warns(UserWarning, match="every value is >= 0"):
        study({"a": near}, (train + 1) / 2)
    with pytest.raises(am.AmbientMRIError, match="images of dtype int64"):
        study({"a": near}, train.astype(np.int64))


def test_image_api_reads_arrays_as_given_and_refuses_a_sigma_n_beyond_the_scale(tmp_path):
    """inpaint/denoise crashed inside torch on big-endian and negative-stride arrays, and a sigma_n of 50 (σ on
    0..255 images) turned the range check off: 8-bit images were denoised as [-1, 1] ones (an audit)."""
    from ambient_mri.image_recon import denoise, inpaint

    net = _pixel_model(tmp_path / "pix.pt")
    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (1, 1, 8, 8)).astype(np.float32)
    mask = (rng.random((1, 1, 8, 8)) > 0.3).astype(np.float32)
    ref = torch.as_tensor(inpaint(net, img, mask, method="dps", steps=2, seed=0).image)
    flipped = np.ascontiguousarray(img[..., ::-1])[..., ::-1]          # the same values through a negative stride
    for x, m in ((img.astype(">f4"), mask.astype(">f4")), (flipped, mask)):
        assert torch.equal(torch.as_tensor(inpaint(net, x, m, method="dps", steps=2, seed=0).image), ref)
    with pytest.raises(am.AmbientMRIError, match="sigma_n must be at most 2 .*, got 50"):
        denoise(net, (img + 1) * 127.5, sigma_n=50.0)
    with pytest.raises(am.AmbientMRIError, match="image: expected numbers"):
        inpaint(net, img.astype(object), mask)


def test_probe_sample_and_load_samples_take_their_arguments_as_meant(tmp_path):
    """memorization_probe scored a 0..255 reference with an all-zero mask (nothing kept, so inpaint's check of the
    kept pixels passed) at PSNR -37; sample_images(heun="no") ran Heun; a .npz was called 'no such file'."""
    from ambient_mri.image_recon import memorization_probe, sample_images
    from ambient_mri.memorization import load_samples

    net = _pixel_model(tmp_path / "pix.pt")
    img = np.random.default_rng(0).uniform(0, 255, (1, 1, 8, 8)).astype(np.float32)
    with pytest.raises(am.AmbientMRIError, match="images: values reach 25"):
        memorization_probe(net, img, mask=np.zeros((1, 1, 8, 8), np.float32), steps=2)
    assert np.isfinite(memorization_probe(net, img / 127.5 - 1, steps=2)["mean_psnr"])
    with pytest.raises(am.AmbientMRIError, match="heun must be True or False, got 'no'"):
        sample_images(net, 1, steps=2, heun="no")
    assert torch.equal(sample_images(net, 1, steps=2, heun=0), sample_images(net, 1, steps=2, heun=False))
    np.savez(tmp_path / "s.npz", a=np.zeros((2, 8, 8)))
    with pytest.raises(am.DataFileError, match=r"s.npz: is neither a .npy file nor a folder"):
        load_samples(tmp_path / "s.npz")


def test_sixteen_bit_pgm_images_load_and_single_thresholds_and_size_arrays_are_taken(tmp_path):
    """The 32-bit TIFF refusal also refused 16-bit PGMs (Pillow opens them in mode I); a single threshold and an
    image_size given as a numpy array had become errors (a review)."""
    from PIL import Image

    from ambient_mri.data.images import load_images, read_image_folder
    from ambient_mri.memorization import check_thresholds

    folder = tmp_path / "pgm"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(folder / "a.pgm")
    assert Image.open(folder / "a.pgm").mode.startswith("I")
    s = read_image_folder(folder)
    assert abs((s.images.mean() + 1) / 2 - 30000 / 65535) < 1e-4
    assert check_thresholds(0.9) == (0.9,)
    assert load_images(str(folder), image_size=np.array([4, 4])).images.shape == (1, 1, 4, 4)


def test_an_acs_block_wider_than_the_training_kspace_names_the_recipe_section():
    """corruption.acs_lines 1000 on 32-column k-space stopped training with "acs_lines must be an integer in
    [0, 32]": no recipe section, no example (an audit)."""
    from ambient_mri.data.measurements import ArrayMeasurements, WithFurtherCorruption

    mask = torch.zeros(4, 1, 1, 32)
    mask[..., ::2] = 1
    data = WithFurtherCorruption(ArrayMeasurements(torch.zeros(4, 8, 32, dtype=torch.complex64), mask),
                                 extra_lines=2, acs_lines=1000)
    with pytest.raises(am.AmbientMRIError, match=r"^corruption: acs_lines must be .* training example 1\)$"):
        data[1]


def test_evaluate_shows_progress_only_when_asked(recon_dirs, capsys):
    """A folder of fastMRI validation volumes took minutes of SSIM with nothing on the screen."""
    from ambient_mri.metrics import evaluate_dirs

    raw, out = recon_dirs
    evaluate_dirs(raw, out)
    assert capsys.readouterr().err == ""
    evaluate_dirs(raw, out, progress=True)
    err = capsys.readouterr().err
    assert "evaluate:" in err and "/2 [" in err


def test_memorization_labels_that_cannot_name_a_figure_are_refused_first(tmp_path):
    """A samples folder named in another encoding (its label) crashed inside matplotlib, and a 250-character label
    in the file system, both after memorization.json was written (an audit)."""
    from ambient_mri.memorization import study_folder

    for label, msg in (("caf\udce9", "undecodable bytes"), ("y" * 250, "too long for its figure's file name"),
                       ("a\nb", "control characters")):
        with pytest.raises(am.AmbientMRIError, match=msg):
            study_folder(tmp_path / "out", [label])
    # folder names in any script are labels (a full-width space, a zero-width non-joiner, a no-break space)
    ok = ["café", "y" * 200, "写真\u3000集", "نمونه\u200cها", "a\u00a0b"]
    assert study_folder(tmp_path / "out", ok) == set() and not (tmp_path / "out").exists()
