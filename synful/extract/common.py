"""What every part of the extraction shares: its error, file names, partner ids, small JSON helpers."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from ..errors import SynfulError
from ..io.files import write_json

TASK_ID = "extract"
TRACKING_DIR = "extract_tracking"
#: in TRACKING_DIR: the signature the done markers were made under
SIGNATURE_FILE = "signature.json"
#: in the run directory: the run's identity (uuid), made by its first extraction
RUN_FILE = "extraction_run.json"
SUMMARY_FILE = "extraction_summary.json"
HISTOGRAM_FILE = "extraction_scores.png"
_BITS = 21
_HALF = 1 << (_BITS - 1)


class ExtractionError(SynfulError):
    """Extraction cannot run on these inputs or did not finish."""


def partner_id(post_nm: np.ndarray, voxel_size) -> np.ndarray:
    """Deterministic int64 ids from post sites (n, 3) nm: the voxel index, 21 signed bits per axis.

    Unique for voxel indices in [-2**20, 2**20) per axis (FAFB needs < 2**19).
    """
    idx = np.floor_divide(np.asarray(post_nm, dtype=np.int64), np.asarray(voxel_size, dtype=np.int64))
    if idx.size and (idx.min() < -_HALF or idx.max() >= _HALF):
        raise ExtractionError(f"post site voxel index outside [-{_HALF}, {_HALF}) per axis: "
                              f"cannot form a partner id")
    u = (idx + _HALF).astype(np.int64)
    return (u[:, 0] << (2 * _BITS)) | (u[:, 1] << _BITS) | u[:, 2]


def _ellipsoid(radius_vox) -> np.ndarray:
    """Footprint of the ellipsoid with semi-axes ``radius_vox`` (voxels, may be fractional): a bool array."""
    r = [int(np.floor(v)) for v in radius_vox]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    d = sum((g / max(rv, 1e-9)) ** 2 for g, rv in zip(grids, radius_vox))
    return d <= 1.0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ExtractionError(f"{path}: cannot read the {what}: {e}") from None
    if not isinstance(data, dict):
        raise ExtractionError(f"{path}: the {what} is not a JSON object")
    return data


def _write_json(path: Path, data):
    """Write ``data`` to ``path`` atomically (a reader sees the old or the new file, never half of one)."""
    try:
        write_json(path, data, indent=1, default=str)
    except OSError as e:
        raise ExtractionError(f"{path}: cannot write: {e.strerror or e}") from None
