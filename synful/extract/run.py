"""A run's inputs opened once per process (:class:`_Run`): the prediction datasets, their scales, the
segmentation, the store and the block layout."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from ..errors import SynfulError
from .common import SIGNATURE_FILE, TRACKING_DIR, ExtractionError, _read_json
from .signature import _canonical, _changes, _hash, _signature_parts


def _open_array(container, dataset, what: str, hint: str = "run prediction first?"):
    """A funlib.persistence Array of ``container/dataset``; ExtractionError naming it (and ``hint``) when it
    cannot be opened."""
    from ..io.volumes import open_volume

    try:
        return open_volume(str(container), dataset)
    except SynfulError as e:
        raise ExtractionError(f"{e} (the {what} dataset; {hint})") from None
    except Exception as e:
        raise ExtractionError(f"{container} [{dataset}]: cannot open {what} dataset: {e}") from None


def _dataset_attrs(array, container, dataset) -> dict:
    """The attributes stored with ``container/dataset`` (zarr v2, HDF5, zarr v3 or N5)."""
    from ..io.volumes import volume_format

    fmt = volume_format(Path(container), dataset)
    if fmt in ("zarr3", "n5"):
        meta = Path(container) / str(dataset).strip("/") / ("zarr.json" if fmt == "zarr3" else "attributes.json")
        data = json.loads(meta.read_text())
        return dict(data.get("attributes", {}) if fmt == "zarr3" else data)
    source = getattr(array, "_source_data", None)  # the zarr / h5py dataset behind the funlib Array
    return dict(getattr(source, "attrs", None) or array.attrs)


def _stored_scale(array, container, dataset, override, key: str, where: str) -> float:
    """What one stored unit of ``array`` means (probability, or nm): its ``scale`` attribute, else ``override``.

    Prediction writes ``scale`` on its outputs; a dataset without it (written
    by another tool) needs ``[Extraction] <key>``, since guessing would read
    e.g. a uint8 indicator as 0..255.  A non-numeric, non-finite or
    non-positive attribute, and an attribute that disagrees with ``override``,
    are errors.
    """
    raw = _dataset_attrs(array, container, dataset).get("scale")
    if raw is None:
        if override is None:
            raise ExtractionError(f"{container}/{dataset}: no 'scale' attribute (what one stored unit means); "
                                  f"set {where} {key}, or write the attribute")
        return float(override)
    try:
        scale = float(raw)
    except (TypeError, ValueError):
        scale = float("nan")
    if not (np.isfinite(scale) and scale > 0):
        raise ExtractionError(f"{container}/{dataset}: 'scale' attribute must be a finite number > 0, got {raw!r}")
    if override is not None and not np.isclose(scale, float(override), rtol=1e-6, atol=0):
        raise ExtractionError(f"{where} {key}: {override!r} disagrees with the 'scale' attribute {scale!r} of "
                              f"{container}/{dataset}; remove {key} (it is for datasets without the attribute)")
    return scale


class _Run:
    """Everything a block needs, opened once per process."""

    def __init__(self, predict_dir):
        from ..config import read_predict_config
        from ..store import store_from_config

        self.predict_dir = Path(predict_dir).resolve()
        ini = self.predict_dir / "predict_config.ini"
        cfg = read_predict_config(ini)
        self.cfg = cfg.extraction
        self.prediction = p = cfg.prediction
        self.indicator = _open_array(p.out_container, p.indicator_dataset, "indicator")
        self.vectors = _open_array(p.out_container, p.vectors_dataset, "partner-vector")
        self.indicator_scale = _stored_scale(self.indicator, p.out_container, p.indicator_dataset,
                                             self.cfg.indicator_scale, "indicator_scale", f"{ini} [Extraction]")
        self.vectors_scale = _stored_scale(self.vectors, p.out_container, p.vectors_dataset,
                                           self.cfg.partner_vectors_scale, "partner_vectors_scale",
                                           f"{ini} [Extraction]")
        if tuple(self.vectors.shape[:1]) != (3,) or self.vectors.roi != self.indicator.roi \
                or self.vectors.voxel_size != self.indicator.voxel_size:
            raise ExtractionError(
                f"{p.out_container}: {p.vectors_dataset} must be (3, z, y, x) over the ROI and voxel size of "
                f"{p.indicator_dataset} (got shape {tuple(self.vectors.shape)}, roi {self.vectors.roi}, "
                f"voxel size {self.vectors.voxel_size} vs {self.indicator.roi}, {self.indicator.voxel_size})")
        self.segmentation = None
        if self.cfg.seg_container is not None:
            self.segmentation = _open_array(self.cfg.seg_container, self.cfg.seg_dataset, "segmentation",
                                            "check [Extraction] seg_container / seg_dataset, or `synful segment` "
                                            "to make one from the raw")
        if self.cfg.split_by_segment:
            where = f"{self.predict_dir / 'predict_config.ini'} [Extraction] split_by_segment"
            if self.segmentation is None:
                raise ExtractionError(f"{where}: needs seg_container")
            if self.segmentation.voxel_size != self.indicator.voxel_size:
                raise ExtractionError(
                    f"{where}: {self.cfg.seg_container}/{self.cfg.seg_dataset} has voxel size "
                    f"{tuple(self.segmentation.voxel_size)}, the predictions {tuple(self.indicator.voxel_size)}")
        self._store_factory = functools.partial(store_from_config, self.cfg, self.predict_dir)
        self._store = None
        self._parts = None  # the signature's parts, computed once per process
        self._signature_checked = False

    def signature_parts(self) -> dict:
        """What the partners depend on (see :mod:`synful.extract`), JSON-normalised; computed once."""
        if self._parts is None:
            self._parts = _canonical(_signature_parts(self))
        return self._parts

    def check_signature(self) -> None:
        """Refuse to process blocks of an extraction started with other inputs (changed since it started)."""
        if self._signature_checked:
            return
        path = self.predict_dir / TRACKING_DIR / SIGNATURE_FILE
        if path.is_file():
            started = _read_json(path, "extraction signature")
            if started.get("signature") != _hash(self.signature_parts()):
                changes = _changes(started.get("parts") or {}, self.signature_parts()) or ["the signature differs"]
                raise ExtractionError(f"{path}: the extraction's inputs changed since it started "
                                      f"({'; '.join(changes)}); rerun `synful extract {self.predict_dir}`")
        self._signature_checked = True

    @property
    def store(self):
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def tissue_mask(self):
        """The run's ``[Prediction] tissue_mask_container`` mask (read once), or None: blocks without tissue
        were not predicted and are not extracted."""
        from ..tissue import read_tissue_mask

        p = self.prediction
        if p.tissue_mask_container is None:
            return None
        if getattr(self, "_tissue_mask", None) is None:
            self._tissue_mask = read_tissue_mask(p.tissue_mask_container, p.tissue_mask_dataset,
                                                 where=f"{self.predict_dir / 'predict_config.ini'} [Prediction] "
                                                       f"tissue_mask")
        return self._tissue_mask

    def block_geometry(self):
        """(total_roi, read_roi, write_roi) for daisy: write blocks of block_shape, grown by context."""
        from funlib.geometry import Coordinate, Roi

        vs = self.indicator.voxel_size
        # a block larger than the volume would only read (and allocate) fill values
        block = Coordinate(*(min(-(-int(b) // v) * v, s)
                             for b, v, s in zip(self.cfg.block_shape, vs, self.indicator.roi.shape)))
        ctx = Coordinate(*(-(-int(c) // v) * v for c, v in zip(self.cfg.context, vs)))
        total = self.indicator.roi.grow(ctx, ctx)
        return total, Roi((0, 0, 0), block + ctx * 2), Roi(ctx, block)


#: the runs opened in this process, by resolved run directory
_RUNS: dict[str, _Run] = {}


def _run_for(predict_dir) -> _Run:
    key = str(Path(predict_dir).resolve())
    if key not in _RUNS:
        _RUNS[key] = _Run(key)
    return _RUNS[key]


def _release(run: _Run) -> None:
    """Close the run's store and forget it: an open SQLite writer would keep its -wal file (and lock) around."""
    _RUNS.pop(str(run.predict_dir), None)
    if run._store is not None:
        run._store.close()
        run._store = None


def _forget(predict_dir) -> None:
    """Drop this process's open run of ``predict_dir`` (if any): the next :func:`_run_for` rereads its config."""
    _RUNS.pop(str(predict_dir), None)
