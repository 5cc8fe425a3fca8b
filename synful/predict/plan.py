"""The plan of a prediction run: configs read and checked, block geometry derived, no TensorFlow.

:func:`plan_prediction` turns ``PREDICT_DIR/predict_config.ini`` (and the training setup's
``train_config.ini``) into a :class:`PredictionPlan`; :meth:`PredictionPlan.signature` says what a
resumed run must share with the run that wrote its done markers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..config import ConfigError, Prediction, Training, read_predict_config, read_train_config, to_dict
from ..errors import SynfulError

HEAD_INDICATOR = "syn_indicator"
HEAD_VECTORS = "partner_vectors"


class PredictionError(SynfulError):
    """Prediction cannot start or did not finish; the message says why and where."""


@dataclass(frozen=True)
class PredictionPlan:
    """The resolved geometry and files of one prediction run.

    ROIs, offsets, ``context``, ``block_write`` and ``block_read`` are in nm; ``input_shape``,
    ``output_shape``, ``downsample_factor`` and ``tile_stride`` in voxels; all (z, y, x).

    ``downsample_factor`` is the network's total downsampling per axis (the product of
    ``downsample_factors``); ``tile_stride`` the largest multiple of it not above ``output_shape``:
    tiles of a block start ``tile_stride`` apart, so every tile's input origin is
    ``roi.begin - context + k x downsample_factor x voxel_size`` (one pooling phase for all tiles).
    ``block_write`` is ``tile_stride x block_factor x voxel_size``; ``block_read`` is that grown by
    ``context`` on both sides and by ``tile_overlap`` (``output_shape - tile_stride`` voxels, how far
    the last tile's output reaches past its stride) at the far end.  ``heads`` are the network outputs
    written (``syn_indicator``, ``partner_vectors``).
    """

    predict_dir: Path
    name: str
    prediction: Prediction
    training: Training
    checkpoint: Path
    raw_container: str
    raw_dataset: str
    voxel_size: Coordinate
    raw_roi: Roi
    roi: Roi
    input_shape: Coordinate
    output_shape: Coordinate
    context: Coordinate
    downsample_factor: Coordinate
    tile_stride: Coordinate
    block_write: Coordinate
    block_read: Coordinate
    heads: tuple[str, ...]

    @property
    def tile_overlap(self) -> Coordinate:
        """Voxels (z, y, x) by which consecutive tiles overlap: ``output_shape - tile_stride``."""
        return self.output_shape - self.tile_stride

    @property
    def task_id(self) -> str:
        """daisy task id (also the name of the done-marker group)."""
        return f"predict_{self.name}"

    @property
    def tracking_dir(self) -> Path:
        """daisy's block tracking (done markers, failure counts) of this run."""
        return self.predict_dir / "blocks" / self.task_id

    @property
    def log_dir(self) -> Path:
        """Per-worker logs."""
        return self.predict_dir / "log" / "predict"

    @property
    def out_dir(self) -> Path:
        """The folder holding the output container, where the run metadata goes."""
        return Path(self.prediction.out_container).parent

    @property
    def metadata_path(self) -> Path:
        return self.out_dir / f"{self.name}_prediction.json"

    @property
    def num_blocks(self) -> int:
        n = 1
        for s, b in zip(self.roi.shape, self.block_write):
            n *= -(-s // b)
        return n

    def datasets(self) -> dict[str, str]:
        """head name -> output dataset."""
        names = {HEAD_INDICATOR: self.prediction.indicator_dataset, HEAD_VECTORS: self.prediction.vectors_dataset}
        return {h: names[h] for h in self.heads}

    @property
    def experiment_dir(self) -> Path:
        """The experiment holding this run (``<exp>`` of ``<exp>/03_predict/setup_t<T>_p<P>``); the run
        directory itself for a run outside the experiment layout."""
        from ..scaffold import run_ids

        try:
            run_ids(self.predict_dir)
        except SynfulError:
            return self.predict_dir
        return self.predict_dir.parent.parent

    def signature(self) -> str:
        """A hash of everything that decides the values written; a resumed run must match it.

        It does not depend on where the experiment lives, so a copied or moved experiment resumes:
        a path inside the experiment enters relative to it (outside it: absolute), the checkpoint by
        the sha256 of its content, the raw data by its location, dataset, dtype, voxel size and ROI.
        Another checkpoint, raw dataset, ROI, network input, tiling, padding, output location or
        encoding, or training config gives another signature.
        """
        p = self.prediction
        root = self.experiment_dir
        keys = {
            "checkpoint_sha256": _content_sha256(self.checkpoint),
            "raw": {"container": _portable(self.raw_container, root), "dataset": self.raw_dataset,
                    "dtype": _raw_dtype(self.raw_container, self.raw_dataset), "voxel_size": list(self.voxel_size),
                    "roi": [list(self.raw_roi.offset), list(self.raw_roi.shape)]},
            "roi": [list(self.roi.offset), list(self.roi.shape)], "input_shape": list(self.input_shape),
            # the tiling decides the values too (pooling phase): a change must not resume old blocks
            "tiling": "phase-aligned", "tile_stride": list(self.tile_stride),
            "block_write": list(self.block_write), "block_read": list(self.block_read),
            "padding": p.padding, "out": _portable(p.out_container, root),
            "datasets": self.datasets(), "dtypes": [p.indicator_dtype, p.vectors_dtype, p.vectors_int8_nm],
            "mixed_precision": p.mixed_precision, "training": _portable(to_dict(self.training), root),
        }
        return "v2-" + hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def legacy_signature(self) -> str:
        """The signature of synful <= 0.x runs (absolute paths): a run started by it resumes in place."""
        p = self.prediction
        keys = {
            "checkpoint": str(self.checkpoint), "raw": [self.raw_container, self.raw_dataset],
            "roi": [list(self.roi.offset), list(self.roi.shape)], "input_shape": list(self.input_shape),
            "tiling": "phase-aligned", "tile_stride": list(self.tile_stride),
            "block_write": list(self.block_write), "block_read": list(self.block_read),
            "padding": p.padding, "out": p.out_container,
            "datasets": self.datasets(), "dtypes": [p.indicator_dtype, p.vectors_dtype, p.vectors_int8_nm],
            "mixed_precision": p.mixed_precision, "training": to_dict(self.training),
        }
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def matches(self, signature: str | None) -> bool:
        """True if ``signature`` (as stored by an earlier run of these outputs) is this plan's."""
        return signature == self.signature() or (signature is not None and not signature.startswith("v2-")
                                                 and signature == self.legacy_signature())


def _portable(value, root: Path):
    """``value`` with every absolute path inside ``root`` made relative to it (``<experiment>/...``); lists and
    dicts recursively.  What a signature hashes instead of where the experiment happens to live."""
    if isinstance(value, dict):
        return {k: _portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v, root) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(os.path.normpath(value))
        if path == root or root in path.parents:
            return "<experiment>/" + path.relative_to(root).as_posix()
    return value


_SHA256_CACHE: dict[tuple, str] = {}


def _content_sha256(path: Path) -> str:
    """sha256 of a file's bytes, or of a directory's files (relative names and bytes, in name order);
    cached per process by path, size and mtime (a signature is computed several times per run)."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if stamp not in _SHA256_CACHE:
        h = hashlib.sha256()
        for f in files:
            if path.is_dir():
                h.update(f.relative_to(path).as_posix().encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _SHA256_CACHE[stamp] = h.hexdigest()
    return _SHA256_CACHE[stamp]


def _raw_dtype(container: str, dataset: str) -> str:
    from ..io.volumes import open_volume

    return str(open_volume(container, dataset).dtype)


def _run_name(predict_dir: Path) -> str:
    from ..scaffold import run_ids

    try:
        return run_ids(predict_dir).name
    except SynfulError:  # a run directory outside the experiment layout: name it after the folder
        return predict_dir.name


def _training_setup(cfg: Prediction, source: str) -> tuple[Training, Path]:
    setup = Path(cfg.train_setup)
    ini = setup / "train_config.ini"
    if not ini.is_file():
        raise PredictionError(f"{source} [Prediction] train_setup: {setup} has no train_config.ini")
    training = read_train_config(ini)
    from ..train import checkpoint_path

    ckpt = Path(checkpoint_path(setup, cfg.iteration))
    if not ckpt.exists():
        raise PredictionError(f"{source} [Prediction] iteration: no checkpoint for iteration {cfg.iteration} "
                              f"({ckpt} does not exist)")
    return training, ckpt


def _raw_source(cfg: Prediction, training: Training, source: str) -> tuple[str, str, Roi | None]:
    """(container, dataset, default ROI or None): the config's raw, else the manifest's first sample of split_part."""
    if cfg.raw_container is not None:
        return cfg.raw_container, cfg.raw_dataset, None
    from ..io.manifest import read_manifest

    samples = [s for s in read_manifest(training.manifest) if s.split == cfg.split_part]
    if not samples:
        raise PredictionError(f"{source} [Prediction] raw_container: None, and the manifest {training.manifest} "
                              f"has no sample with split {cfg.split_part}")
    return samples[0].container, samples[0].raw_dataset, samples[0].roi


def plan_prediction(predict_dir) -> PredictionPlan:
    """Read and check ``PREDICT_DIR/predict_config.ini``; derive the block geometry.

    Raises :class:`PredictionError` / :class:`~synful.config.ConfigError` (messages name the file,
    key and value) for a missing training setup or checkpoint, a missing raw dataset, a raw voxel
    size that differs from the training one, a ROI not on the voxel grid or not inside the raw data,
    a network input shape the U-Net cannot take, or one whose output is smaller than the total
    downsampling factor on some axis (no tile stride on the pooling grid fits; the message names
    ``input_shape`` and the next input size that works).  Imports no TensorFlow.
    """
    from ..models import head_names

    predict_dir = Path(predict_dir).resolve()
    ini = predict_dir / "predict_config.ini"
    source = str(ini)
    cfg = read_predict_config(ini).prediction
    training, ckpt = _training_setup(cfg, source)
    raw_container, raw_dataset, sample_roi = _raw_source(cfg, training, source)
    raw = _open_raw(raw_container, raw_dataset, source)
    voxel_size = Coordinate(raw.voxel_size)
    if tuple(voxel_size) != tuple(training.voxel_size):
        raise PredictionError(f"{raw_container}/{raw_dataset}: voxel size {tuple(voxel_size)} nm differs from the "
                              f"training voxel_size {tuple(training.voxel_size)} of {cfg.train_setup}")
    roi = _prediction_roi(cfg, raw.roi, sample_roi, voxel_size, source, f"{raw_container}/{raw_dataset}")
    return PredictionPlan(
        predict_dir=predict_dir, name=_run_name(predict_dir), prediction=cfg, training=training, checkpoint=ckpt,
        raw_container=str(raw_container), raw_dataset=raw_dataset, voxel_size=voxel_size, raw_roi=raw.roi, roi=roi,
        **_tile_geometry(cfg, training, voxel_size, source), heads=head_names(training))


def _open_raw(raw_container: str, raw_dataset: str, source: str):
    """The raw dataset as a funlib Array; a missing container or dataset is a :class:`PredictionError`."""
    from ..io.volumes import open_volume

    if not Path(raw_container).exists():
        raise PredictionError(f"{source} [Prediction] raw_container: {raw_container} does not exist")
    try:
        return open_volume(raw_container, raw_dataset)
    except SynfulError:
        raise
    except Exception as e:  # a missing dataset surfaces as KeyError / FileNotFoundError / ValueError
        raise PredictionError(f"{source} [Prediction] raw_dataset: cannot open {raw_container}/{raw_dataset}: {e}") \
            from None


def _prediction_roi(cfg: Prediction, raw_roi: Roi, sample_roi: Roi | None, voxel_size: Coordinate, source: str,
                    raw_name: str) -> Roi:
    """The ROI to predict (nm): the config's, checked against the voxel grid and the raw data; else the
    manifest sample's ROI within the raw data; else all of the raw data."""
    if (cfg.roi_offset is None) != (cfg.roi_shape is None):
        raise ConfigError(f"{source} [Prediction] roi_offset, roi_shape: give both or neither")
    if cfg.roi_offset is None:
        return raw_roi if sample_roi is None else sample_roi.intersect(raw_roi)
    roi = Roi(cfg.roi_offset, cfg.roi_shape)
    for key_, value in (("roi_offset", roi.offset), ("roi_shape", roi.shape)):
        if any(v % s for v, s in zip(value, voxel_size)):
            raise ConfigError(f"{source} [Prediction] {key_}: {tuple(value)} nm is not a multiple of the voxel "
                              f"size {tuple(voxel_size)} nm")
    if any(s <= 0 for s in roi.shape):
        raise ConfigError(f"{source} [Prediction] roi_shape: must be positive, got {tuple(roi.shape)}")
    if not raw_roi.contains(roi):
        raise PredictionError(f"{source} [Prediction] roi_offset/roi_shape: ROI {_fmt_roi(roi)} lies outside the "
                              f"raw data {raw_name} {_fmt_roi(raw_roi)}")
    return roi


def _tile_geometry(cfg: Prediction, training: Training, voxel_size: Coordinate, source: str) -> dict:
    """The network and block geometry of :class:`PredictionPlan`: ``input_shape``, ``output_shape``,
    ``context``, ``downsample_factor``, ``tile_stride``, ``block_write``, ``block_read``."""
    from ..models import output_shape

    input_shape = Coordinate(cfg.input_shape if cfg.input_shape is not None else training.input_shape)
    try:
        out_shape = Coordinate(output_shape(training, input_shape))
    except ConfigError as e:
        raise ConfigError(f"{source} [Prediction] input_shape {tuple(input_shape)}: {e}") from None
    diff = input_shape - out_shape
    if any(d % 2 for d in diff):
        raise ConfigError(f"{source} [Prediction] input_shape {tuple(input_shape)}: the network context "
                          f"{tuple(diff)} voxels is not symmetric")
    context = (diff / 2) * voxel_size
    factor = Coordinate(int(np.prod([f[d] for f in training.downsample_factors])) for d in range(3))
    for d, (o, f) in enumerate(zip(out_shape, factor)):
        if o < f:
            bigger = list(input_shape)
            bigger[d] += f  # valid input sizes step by the total factor, and so do output sizes
            raise ConfigError(
                f"{source} [Prediction] input_shape {tuple(input_shape)}: the network output "
                f"{tuple(out_shape)} voxels is smaller than the total downsampling factor {tuple(factor)} along "
                f"{'zyx'[d]}, so blockwise tiles cannot keep one pooling phase; use a larger input_shape "
                f"(e.g. {tuple(bigger)})")
    stride = Coordinate((o // f) * f for o, f in zip(out_shape, factor))
    block_write = stride * Coordinate(cfg.block_factor) * voxel_size
    block_read = block_write + context * 2 + (out_shape - stride) * voxel_size
    return dict(input_shape=input_shape, output_shape=out_shape, context=context, downsample_factor=factor,
                tile_stride=stride, block_write=block_write, block_read=block_read)


def _fmt_roi(roi: Roi) -> str:
    return f"[offset {tuple(roi.offset)}, shape {tuple(roi.shape)}] nm"


def signature_path(plan: PredictionPlan) -> Path:
    """Where a run keeps its signature and run id (beside daisy's done markers)."""
    return plan.predict_dir / "blocks" / f"{plan.task_id}.signature.json"
