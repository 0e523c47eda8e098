"""The ``ismrmrd_header`` of a fastMRI file: encoded and recon matrix sizes and the k-space padding, from the XML
(or from the array shapes when a file has none)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataFileError

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
HEADER_KEY = "ismrmrd_header"


def read_header(path: Path, hf: h5py.File, kshape: tuple[int, ...], target_shape: tuple | None) -> dict:
    if HEADER_KEY not in hf:
        return _header_from_shapes(kshape, target_shape)
    try:
        raw = hf[HEADER_KEY][()]
    except (OSError, TypeError) as err:
        raise DataFileError(path, f"ismrmrd_header cannot be read: {err}") from err
    return _parse_header(path, raw)


def _header_from_shapes(kshape: tuple[int, ...], target_shape: tuple | None) -> dict:
    """Without a header: no padding, encoded size = k-space size, recon size = target size (else k-space)."""
    H, W = kshape[-2:]
    h, w = target_shape[-2:] if target_shape is not None else (H, W)
    return {
        "encoding_size": (int(H), int(W), 1),
        "recon_size": (int(h), int(w), 1),
        "enc_limits_min": 0,
        "enc_limits_center": int(W) // 2,
        "enc_limits_max": int(W),
        "padding_left": 0,
        "padding_right": int(W),
        "from_xml": False,
    }


def _parse_header(path: Path, raw) -> dict:
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.size == 1 else raw.tobytes()
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    try:
        root = ET.fromstring(bytes(raw))
    except (ET.ParseError, TypeError, ValueError) as err:
        raise DataFileError(path, f"ismrmrd_header is not valid XML: {err}") from err
    query = _header_query(path, root)
    enc = ["encoding", "encodedSpace", "matrixSize"]
    rec = ["encoding", "reconSpace", "matrixSize"]
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    enc_size = tuple(query(enc + [a]) for a in "xyz")
    recon_size = tuple(query(rec + [a]) for a in "xyz")
    center, maximum = query(lims + ["center"]), query(lims + ["maximum"])
    minimum = query(lims + ["minimum"], default=0)
    if center < 0 or maximum < 0 or center > maximum:  # center 9999 of 0..31 gave padding [-9983, -9951], ignored
        raise DataFileError(
            path, f"ismrmrd_header has invalid encoding limits (center {center}, maximum {maximum})"
        )
    # Same arithmetic as fastmri.data.mri_data.SliceDataset._retrieve_metadata.
    padding_left = enc_size[1] // 2 - center
    return {
        "encoding_size": enc_size,
        "recon_size": recon_size,
        "enc_limits_min": minimum,
        "enc_limits_center": center,
        "enc_limits_max": maximum + 1,
        "padding_left": padding_left,
        "padding_right": padding_left + maximum + 1,
        "from_xml": True,
    }


def _header_query(path: Path, root: ET.Element):
    """fastmri.et_query semantics (descendant search, ISMRMRD namespace), returning ints."""
    namespaced = root.tag.startswith("{")
    ns = {"i": ISMRMRD_NAMESPACE}

    def query(names: list[str], default: int | None = None) -> int:
        expr = "." + "".join(f"//i:{n}" if namespaced else f"//{n}" for n in names)
        el = root.find(expr, ns)
        if el is None or el.text is None:
            if default is not None:
                return default
            raise DataFileError(path, f"ismrmrd_header lacks {'/'.join(names)}")
        try:
            return int(el.text.strip())
        except ValueError as err:
            raise DataFileError(
                path, f"ismrmrd_header {'/'.join(names)} is not an integer: {el.text.strip()!r}"
            ) from err

    return query


