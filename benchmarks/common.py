"""What every benchmark records: the machine, library versions and load, and timing statistics."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def machine_info(device: str) -> dict:
    import fastmri
    import h5py
    import sigpy

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_fft_backend": "MKL" if torch.backends.mkl.is_available() else "pocketfft",
        "numpy": np.__version__,
        "sigpy": sigpy.__version__,
        "fastmri": getattr(fastmri, "__version__", "unknown"),
        "h5py": h5py.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        # torch's CPU allocator hands out 4 KiB pages unless THP_MEM_ALLOC_ENABLE=1 (read once, at import);
        # numpy madvises huge pages for large arrays. This matters for 100 MB temporaries.
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "transparent_hugepage": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device != "cpu":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


def training_steps(model_path: str | os.PathLike) -> int | None:
    """The last step logged in the run directory of ``model_path`` (None when it has no log.jsonl)."""
    import json

    log = Path(model_path).parent / "log.jsonl"
    lines = log.read_text().strip().splitlines() if log.is_file() else []
    return json.loads(lines[-1])["step"] if lines else None


def write_record(record: dict, out: Path, tic: float) -> dict:
    """Close a benchmark record (load at the end, wall seconds since ``tic``) and write it as JSON atomically."""
    import time

    from ambient_mri.files import write_json

    record["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    record["wall_s"] = time.perf_counter() - tic
    write_json(out, record)
    print(f"\nwrote {out} ({record['wall_s']:.0f} s)")
    return record


def load_for_reevaluation(out: Path, keys: tuple[str, ...], planned: list[tuple]) -> dict:
    """The record at ``out`` that an ``--only`` run will update, checked before anything is measured: it must
    exist, parse, and hold a row for every ``planned`` key (values of ``keys``)."""
    import json

    try:
        earlier = json.loads(Path(out).read_text())
        have = {tuple(r[k] for k in keys) for r in earlier["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{out}: cannot re-evaluate into it ({type(e).__name__}: {e}); "
                         "run the full benchmark first") from None
    missing = sorted(set(planned) - have)
    if missing:
        raise SystemExit(f"{out}: no row for {missing}; a re-evaluation re-measures only what the record holds")
    return earlier


def merge_reevaluation(record: dict, earlier: dict, keys: tuple[str, ...], methods: list[str]) -> dict:
    """``record`` re-measured only ``methods`` (columns of its rows): put those columns into ``earlier`` (rows
    matched on ``keys``; a row's ``warnings`` for those methods too) and keep its settings, machine and timing, with
    this run (methods, the rows' keys, machine) appended to ``settings.reevaluated``. -> the merged record."""
    new = {tuple(r[k] for k in keys): r for r in record["rows"]}
    for row in earlier["rows"]:
        got = new.get(tuple(row[k] for k in keys))
        if got is None:
            continue
        row.update({m: got[m] for m in methods})
        if "warnings" in row:
            row["warnings"] = {**{k: v for k, v in row["warnings"].items() if k not in methods},
                               **{k: v for k, v in got.get("warnings", {}).items() if k in methods}}
    earlier["settings"]["reevaluated"] = [*earlier["settings"].get("reevaluated", []),
                                          {"methods": methods, "rows": [list(k) for k in new],
                                           "machine": record["machine"]}]
    return earlier


def stats(times_s: list[float]) -> dict:
    ms = np.asarray(times_s) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(med), "iqr_ms": float(q3 - q1), "q1_ms": float(q1), "q3_ms": float(q3),
            "min_ms": float(ms.min()), "all_ms": [round(float(v), 3) for v in ms]}
