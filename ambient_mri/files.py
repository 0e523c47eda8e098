"""Writing without losing anything: atomic writes, no output over an input, one run per output, free space.

Every file the package writes goes through ``atomic_path``: a temporary ``.NAME.<random>.tmp`` beside the
target, fsynced and renamed onto it only when complete, so a reader (or a resumed run) never sees half a file.
A killed run leaves only such temporaries; the next run that owns the folder removes them (``remove_temps``)
under its lock (``run_lock``), which also keeps two runs from writing one output at once.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import numbers
import os
import shutil
import socket
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import AmbientMRIError, DataFileError

LOCK_NAME = ".ambient_mri.lock"
SPACE_MARGIN = 16 * 2**20  # bytes kept free beyond an estimate: HDF5 metadata, logs, rounding


def os_reason(err: BaseException) -> str:
    """A one-line reason for an OS-level write failure, naming a full disk plainly."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def make_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` (and parents) or raise DataFileError naming it: a file in the way, no permission."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataFileError(folder, f"{what} is not writable; files cannot be written there (it is an existing "
                            "file, not a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataFileError(folder, f"{what} is not writable; files cannot be written there "
                            f"({os_reason(e)})") from None
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally it is fsynced and renamed onto
    ``path``. On any failure the temporary is removed, and a write failure (full disk, no permission) becomes a
    DataFileError naming ``path``."""
    path = Path(path)
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # torch and h5py report a failed write as RuntimeError / OSError with their own wording
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and _disk_full(path.parent)):
            reason = "no space left on device" if _disk_full(path.parent) else os_reason(e)
            raise DataFileError(path, f"cannot be written ({reason})") from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a whole file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_digest(datasets: dict) -> str:
    """SHA-256 of named arrays (name, dtype, shape, bytes, in name order): stored with an output and checked before
    a rerun skips it, so an output damaged in place since (same size, readable) is redone, not kept."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(datasets):
        a = np.ascontiguousarray(datasets[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_h5(path: str | os.PathLike, datasets: dict, attrs: dict | None = None) -> None:
    """One HDF5 file of ``datasets`` (bytes become ASCII strings, as fastMRI's ``ismrmrd_header``) and ``attrs``,
    written atomically."""
    import h5py

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as hf:
        for name, data in datasets.items():
            if isinstance(data, bytes):
                hf.create_dataset(name, data=data, dtype=h5py.string_dtype("ascii"))
            else:
                hf.create_dataset(name, data=data)
        for name, value in (attrs or {}).items():
            hf.attrs[name] = value


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """A matplotlib figure as an atomic PNG; the figure is closed."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


@contextlib.contextmanager
def removed_if_left_empty(*folders: str | os.PathLike) -> Iterator[None]:
    """Those of ``folders`` (outermost first) that do not exist yet, and their parents that do not either, are
    removed, innermost first, if they are empty when the block ends, however it ends: a command that writes
    nothing leaves no folder behind."""
    created: list[Path] = []
    # resolved first: in "typo/../existing/out" the name "typo/.." is missing but its folder is not (the missing
    # tail holds no symlink to resolve). A parent another run makes in the meantime and fills stays.
    for d in (Path(os.path.realpath(f)) for f in folders):
        missing = []
        while not d.exists() and d != d.parent:  # mkdir(parents=True) makes these too
            missing.append(d)
            d = d.parent
        created += [m for m in reversed(missing) if m not in created]
    try:
        yield
    finally:
        for d in reversed(created):
            if d.is_dir() and not any(d.iterdir()):
                with contextlib.suppress(OSError):
                    d.rmdir()


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")  # what a folder of HDF5 files may hold; folder commands take *.h5


def refuse_file_name_for_folder(out: str | os.PathLike, what: str) -> None:
    """An --output folder named like an HDF5 file (``out.h5``) that is not a folder yet is a mistaken file name:
    refused, so no folder of that name is made. ``what``: what the folder holds, for the message."""
    out = Path(out)
    if out.suffix.lower() in HDF5_SUFFIXES and not out.is_dir():
        raise DataFileError(out, f"--output is a folder for {what}, not a file name")


def refuse_unless_truncated_h5(path: str | os.PathLike, err: Exception, option: str = "--output") -> None:
    """For an output file h5py could not open (``err``): redo it only if it is empty or begins with the HDF5
    signature (a truncated HDF5 file, what a damaged earlier output looks like); anything else (a text file, a
    NIfTI, a user's raw scan named .h5, a file another program holds locked or that cannot be read) is someone's
    data or cannot be judged: DataFileError, never overwritten."""
    keep = f"it will not be overwritten (move it, or use another {option})"
    if "unable to lock file" in str(err).lower():  # HDF5 file locking: another program has it open to write
        raise DataFileError(path, f"exists and is open in another program (HDF5 file lock); {keep}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(HDF5_SIGNATURE))
    except OSError as e:
        raise DataFileError(path, f"exists and cannot be read ({os_reason(e)}); {keep}") from None
    if head and head != HDF5_SIGNATURE:
        raise DataFileError(path, f"exists and is not an HDF5 file; {keep}")


def remove_temps(folder: str | os.PathLike, names: Iterable[str] = (), patterns: Iterable[str] = ()) -> list[Path]:
    """Remove the temporaries (``.NAME.<random>.tmp``) that a killed run left in ``folder`` of the files this run
    writes: ``names`` taken literally (``vol[1].h5`` is no pattern), ``patterns`` as globs (``sample_*.png``);
    call it holding the folder's ``run_lock``. Only those: any other ``.*.tmp`` there is someone else's."""
    folder = Path(folder)
    gone = []
    if folder.is_dir():
        for name in [glob.escape(n) for n in names] + list(patterns):
            for p in folder.glob(f".{name}.*.tmp"):
                if p.is_file() and p.name != LOCK_NAME:
                    with contextlib.suppress(OSError):
                        p.unlink()
                        gone.append(p)
    return gone


def input_files(path: str | os.PathLike, pattern: str = "*.h5", limit: int | None = None,
                what: str = "fastMRI .h5 files", hint: str = "rename it, or give it as --input on its own"
                ) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The inputs of a folder command: one file, or a folder's ``pattern`` files (sorted, no hidden ones), split
    into usable files and (file, reason) for unusable ones (a dangling symlink, a folder, no permission), which
    commands list as bad instead of skipping in silence."""
    path = Path(path)
    misnamed: list[tuple[Path, str]] = []
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.glob(pattern) if not p.name.startswith("."))
        if pattern == "*.h5":  # HDF5 files under another suffix were skipped in silence
            misnamed = [(p, unusable_reason(p) or f"an HDF5 file not named *.h5: folder commands take *.h5 files "
                         f"({hint})") for p in sorted(path.iterdir())
                        if not p.name.startswith(".") and p.suffix.lower() in HDF5_SUFFIXES
                        and p not in files]  # glob ignores case on macOS
    elif path.is_symlink():
        raise DataFileError(path, f"a symlink to {os.readlink(path)}, which does not exist")
    else:
        raise DataFileError(path, "no such file or folder")
    if not files:
        also = f", but {len(misnamed)} named otherwise (e.g. {misnamed[0][0].name}): rename them" if misnamed else ""
        raise DataFileError(path, f"no {pattern.lstrip('*')} files in this folder (expected {what}){also}")
    if limit is not None:
        if limit < 1:
            raise AmbientMRIError(f"--limit must be >= 1, got {limit}")
        files = files[:limit]
    checked = [(f, unusable_reason(f)) for f in files]
    return [f for f, why in checked if not why], [(f, why) for f, why in checked if why] + misnamed


def unusable_reason(path: Path) -> str:
    """'' for a readable regular file, else why it cannot be an input (found before any reading)."""
    if path.is_symlink() and not path.exists():
        return f"a symlink to {os.readlink(path)}, which does not exist"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "cannot be read (no permission)"
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(lock: Path) -> dict:
    try:
        other = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return other if isinstance(other, dict) else {}


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # e.g. NFS mounted without a lock manager


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold ``folder/.ambient_mri.lock`` for the block: a second run on the same output is refused by name.
    The lock is an exclusive ``flock`` on that file, which the kernel drops however the holder ends, so a killed
    run's lock never blocks the next run and two runs restarted at once cannot both take it over (a dead pid's
    file removed and made again by hand was racy, and a kill before the pid was written blocked every later run).
    On a file system without locks the file itself is the lock, created exclusively; a dead pid's on this host is
    taken over."""
    import fcntl

    folder = make_folder(folder)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    while True:
        try:
            fd, created = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644), True
        except FileExistsError:
            try:
                fd, created = os.open(lock, os.O_RDWR), False
            except FileNotFoundError:  # its holder removed it in between
                continue
            except OSError as e:
                raise DataFileError(folder, f"cannot open the lock file {LOCK_NAME} ({os_reason(e)})") from None
        except OSError as e:
            raise DataFileError(folder, f"cannot create the lock file {LOCK_NAME} ({os_reason(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except OSError as e:
            if e.errno in _NO_LOCKS and created:  # no locks here: the exclusive create made the file ours
                locked = False
            else:
                os.close(fd)
                if e.errno not in _NO_LOCKS and not isinstance(e, BlockingIOError):
                    raise DataFileError(folder, f"cannot lock {LOCK_NAME} ({os_reason(e)})") from None
                other = _holder(lock)
                pid, host = other.get("pid"), other.get("host")
                dead = isinstance(pid, int) and host == me["host"] and not _alive(pid)
                if dead and e.errno in _NO_LOCKS:  # a killed run's file, without a lock to tell: taken over
                    with contextlib.suppress(OSError):
                        lock.unlink()
                    continue
                who = f"`{other['command']}`, pid {pid} on {host}" if "command" in other else "just starting"
                gone = " (that process has ended; one it started may still hold the lock)" if dead else ""
                raise DataFileError(folder, f"another run is writing here ({who}){gone}; wait for it to finish, or "
                                    f"delete {lock} if no such run exists") from None
        if not locked:
            break
        try:  # the holder may have removed the file between our open and our lock: then lock the new one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(me).encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):  # only our own file: a run that removed this folder may have let another
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:  # run make it again, with its own lock
                lock.unlink()  # before the lock is dropped, so a run waiting on this file sees it gone and retries
        os.close(fd)


def _resolved(p: str | os.PathLike) -> Path:
    return Path(os.path.realpath(p))


def refuse_overwrite(inputs: Iterable[str | os.PathLike], outputs: Iterable[str | os.PathLike],
                     option: str = "--output") -> None:
    """Raise before any work when an output path is (after symlinks) one of the inputs, or an output folder is
    an input file: a command never writes over its own input."""
    ins = {_resolved(p): Path(p) for p in inputs}
    for out in outputs:
        r = _resolved(out)
        if r in ins:
            raise DataFileError(out, f"would be written over the input {ins[r]}; refusing to touch input data: "
                                f"choose another {option}")


def ensure_space(folder: str | os.PathLike, nbytes: float, what: str) -> None:
    """Refuse to start a write of about ``nbytes`` into ``folder`` when the disk cannot hold it."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < nbytes + SPACE_MARGIN:
        raise DataFileError(folder, f"not enough disk space for {what}: needs about {_mb(nbytes + SPACE_MARGIN)}, "
                            f"{_mb(free)} free")


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def check_finite_number(name: str, value, minimum: float | None = None, strict: bool = False,
                        maximum: float | None = None) -> None:
    """A number from the user (None: not given): real and finite (numpy scalars count, bools and strings do not),
    above ``minimum`` (strictly with ``strict``) and, with ``maximum``, in [minimum, maximum]."""
    import math

    if value is None:
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise AmbientMRIError(f"{name} must be a finite number, got {value!r}")
    low = minimum is not None and (value < minimum or (strict and value == minimum))
    if maximum is not None and (low or value > maximum):
        raise AmbientMRIError(f"{name} must be in [{minimum:g}, {maximum:g}], got {value!r}")
    if low:
        raise AmbientMRIError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK = 16, 1 << 16


def source_fingerprint(path: str | os.PathLike) -> dict:
    """An input file's identity for resuming: its name, size, mtime and a SHA-256 of 16 blocks of 64 KiB spread
    evenly over it (the first and the last among them; 1 MiB read at most). Two different scans of one size and
    mtime (tar, ``cp -p`` and rsync keep mtimes) differ in every block of their k-space, so an output made from the
    other one is redone, not kept."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        st = path.stat()
        last = max(st.st_size - FINGERPRINT_BLOCK, 0)
        with open(path, "rb") as f:
            for offset in sorted({last * i // (FINGERPRINT_BLOCKS - 1) for i in range(FINGERPRINT_BLOCKS)}):
                f.seek(offset)
                h.update(f.read(FINGERPRINT_BLOCK))
    except OSError as e:
        raise DataFileError(path, f"cannot be read ({os_reason(e)})") from None
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample_sha256": h.hexdigest()}


def check_count(name: str, v, low: int = 1, high: int | None = None) -> None:
    """An integer from the user (numpy integers count, bools and floats do not) in [low, high]."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low or (high is not None and v > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise AmbientMRIError(f"{name} must be an integer {span}, got {v!r}")


MAX_SEED = 2**31 - 1   # numpy takes seeds below 2**32; samplers, ranks and workers add offsets to it


def check_seed(seed, name: str = "seed") -> None:
    """A seed numpy and torch accept once the per-batch offsets are added: an integer in [0, MAX_SEED]."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise AmbientMRIError(f"{name} must be an integer in [0, {MAX_SEED}], got {seed!r}")


# what np.load (allow_pickle=False) and reading an .npz member raise on a bad file: empty -> EOFError, a damaged
# archive -> BadZipFile, anything else numpy cannot parse -> ValueError or OSError
NPY_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def npy_problem(err: Exception, path: str | os.PathLike) -> str:
    """Why ``np.load(path, allow_pickle=False)`` (or an .npz member) failed, without numpy's advice to load it
    unsafely."""
    if isinstance(err, EOFError):
        return "is empty or cut short: no array data"
    if isinstance(err, zipfile.BadZipFile):
        return f"is a damaged .npz archive ({err})"
    if "pickle" in str(err):  # an object array, or numpy's fallback for a file without its header
        try:
            with open(path, "rb") as f:
                head = f.read(6)
        except OSError:
            head = b""
        # an .npy header, an .npz (zip) archive, or the PROTO opcode every pickle since protocol 2 starts with
        if not (head == b"\x93NUMPY" or head[:2] == b"PK" or head[:1] == b"\x80"):
            return "is not a numpy file (no .npy header, not an .npz archive): save arrays with np.save / np.savez"
        return "holds Python objects (a pickle), which are never loaded: save a plain numeric array (np.save)"
    return f"cannot be read as a numpy array ({err})"
