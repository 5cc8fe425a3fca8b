"""The plan of a prediction run: configs read and checked, block geometry derived, no TensorFlow.

:func:`plan_prediction` turns ``PREDICT_DIR/predict_config.ini`` (and the training setup's
``train_config.ini``) into a :class:`PredictionPlan`; :meth:`PredictionPlan.signature` says what a
resumed run must share with the run that wrote its done markers.
"""

from __future__ import annotations

import functools
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

    def task_rois(self) -> tuple[Roi, Roi, Roi]:
        """daisy's (total, read, write) ROIs (nm) of the run: the blocks' write ROIs tile ``roi``.

        The far end grows by the tile overlap too, so the blocks (write ROIs) are those of the ROI alone.
        """
        total = self.roi.grow(self.context, self.context + self.tile_overlap * self.voxel_size)
        return total, Roi((0, 0, 0), self.block_read), Roi(self.context, self.block_write)

    def grid_shape(self) -> tuple[int, int, int]:
        """Blocks per axis (z, y, x): ``roi`` in write blocks, the last one cropped."""
        return tuple(-(-int(s) // int(b)) for s, b in zip(self.roi.shape, self.block_write))

    @functools.cached_property
    def tissue_mask(self):
        """The ``[Prediction] tissue_mask_container`` mask (:class:`synful.tissue.TissueMask`), or None."""
        from ..tissue import read_tissue_mask

        p = self.prediction
        if p.tissue_mask_container is None:
            return None
        return read_tissue_mask(p.tissue_mask_container, p.tissue_mask_dataset,
                                where=f"{self.predict_dir / 'predict_config.ini'} [Prediction] tissue_mask")

    def skip_mask(self):
        """daisy's skip mask over :meth:`grid_shape` (uint8, 1 = a block without tissue), or None."""
        from ..tissue import task_skip_mask

        return task_skip_mask(self.tissue_mask, *self.task_rois(), self.grid_shape())

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
            # sigmoid and uint8/int8 encoding run on the device since v3 (ties may round differently)
            "encoding": "on-device",
        }
        if self.tissue_mask is not None:  # only then, so runs without a mask keep their signature
            keys["tissue_mask"] = self.tissue_mask.digest()
        return "v3-" + hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def matches(self, signature: str | None) -> bool:
        """True if ``signature`` (as stored by an earlier run of these outputs) is this plan's."""
        return signature == self.signature()

    @staticmethod
    def from_older_version(signature: str | None) -> bool:
        """True for the signature of a run started by an earlier synful: absolute paths (no prefix) or
        host-side encoding ("v2-"), whose uint8 values may differ by one at rounding boundaries."""
        return bool(signature) and not str(signature).startswith("v3-")


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


def _training_config(cfg: Prediction, source: str) -> Training:
    """The ``[Training]`` of ``[Prediction] train_setup``."""
    ini = Path(cfg.train_setup) / "train_config.ini"
    if not ini.is_file():
        raise PredictionError(f"{source} [Prediction] train_setup: {cfg.train_setup} has no train_config.ini")
    return read_train_config(ini)


def _checkpoint(cfg: Prediction, source: str) -> Path:
    """The checkpoint file of ``[Prediction] iteration``; PredictionError naming it and the iterations there."""
    from ..train import checkpoint_path, list_checkpoints

    ckpt = Path(checkpoint_path(cfg.train_setup, cfg.iteration))
    if not ckpt.exists():
        have = [it for it, _ in list_checkpoints(cfg.train_setup)]
        raise PredictionError(f"{source} [Prediction] iteration: no checkpoint for iteration {cfg.iteration} "
                              f"({ckpt} does not exist; iterations with checkpoints: "
                              f"{', '.join(map(str, have)) if have else 'none'})")
    return ckpt


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


def plan_prediction(predict_dir, problems=None) -> PredictionPlan | None:
    """Read and check ``PREDICT_DIR/predict_config.ini``; derive the block geometry.

    Raises :class:`PredictionError` / :class:`~synful.config.ConfigError` (messages name the file,
    key and value, or the raw container/dataset) for a missing training setup or checkpoint, a missing
    raw container or dataset, raw that is not uint8 (:func:`synful.preflight.check_raw_dtype`), a raw
    voxel size that differs from the training one, a ROI not on the voxel grid, not inside the raw data
    or empty (an empty raw dataset included), a network input shape the U-Net cannot take (named as
    ``[Prediction] input_shape`` when the prediction overrides it, else as the training setup's
    ``[Training] input_shape``), or one whose output is smaller than the total downsampling factor on
    some axis (no tile stride on the pooling grid fits; the message names ``input_shape`` and the next
    input size that works).  Imports no TensorFlow.

    ``problems`` (a :class:`synful.preflight.Problems` that collects) records every problem instead of
    raising, checking what does not depend on an earlier failure, and returns None when there was one.
    """
    from ..models import head_names
    from ..preflight import Problems

    p = Problems(collect=False) if problems is None else problems
    found = len(p.messages)
    predict_dir = Path(predict_dir).resolve()
    ini = predict_dir / "predict_config.ini"
    source = str(ini)
    ok, pcfg = p.run(read_predict_config, ini)
    if not ok:
        return None
    cfg = pcfg.prediction
    _, training = p.run(_training_config, cfg, source)
    _, ckpt = p.run(_checkpoint, cfg, source)
    _, raw = p.run(_checked_raw, cfg, training, source) if training is not None else (False, None)
    _, geometry = (p.run(_tile_geometry, cfg, training, Coordinate(training.voxel_size), source)
                   if training is not None else (False, None))
    if len(p.messages) > found:
        return None
    raw_container, raw_dataset, raw_roi, roi = raw
    return PredictionPlan(
        predict_dir=predict_dir, name=_run_name(predict_dir), prediction=cfg, training=training, checkpoint=ckpt,
        raw_container=str(raw_container), raw_dataset=raw_dataset, voxel_size=Coordinate(training.voxel_size),
        raw_roi=raw_roi, roi=roi, **geometry, heads=head_names(training))


def _checked_raw(cfg: Prediction, training: Training, source: str) -> tuple[str, str, Roi, Roi]:
    """``(container, dataset, raw ROI, ROI to predict)``: the raw opened and checked (uint8, the training
    voxel size), the ROI inside it and not empty."""
    from ..preflight import check_raw_dtype

    raw_container, raw_dataset, sample_roi = _raw_source(cfg, training, source)
    raw = _open_raw(raw_container, raw_dataset, source)
    name = f"{raw_container}/{raw_dataset}"
    # the workers' normalisation takes uint8 only: refuse other raw here, not in every worker
    check_raw_dtype(raw.dtype, name, PredictionError)
    voxel_size = Coordinate(raw.voxel_size)
    if tuple(voxel_size) != tuple(training.voxel_size):
        raise PredictionError(f"{name}: voxel size {tuple(voxel_size)} nm differs from the "
                              f"training voxel_size {tuple(training.voxel_size)} of {cfg.train_setup}")
    if raw.roi.empty:
        raise PredictionError(f"{name}: empty raw dataset (shape {tuple(raw.shape)}), nothing to predict")
    roi = _prediction_roi(cfg, raw.roi, sample_roi, voxel_size, source, name)
    if roi.empty:
        raise PredictionError(f"{source} [Prediction]: the ROI to predict {_fmt_roi(roi)} is empty (the manifest "
                              f"sample's ROI does not overlap the raw data {name} {_fmt_roi(raw.roi)})")
    return str(raw_container), raw_dataset, raw.roi, roi


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
        train_ini = Path(cfg.train_setup) / "train_config.ini"
        prefix = f"[Training] input_shape {tuple(input_shape)} "
        if cfg.input_shape is None or not str(e).startswith(prefix):  # the training config is at fault
            raise ConfigError(f"{train_ini} {e}") from None
        # the [Prediction] override is at fault: name it, not the training key output_shape names
        raise ConfigError(f"{source} [Prediction] input_shape {tuple(input_shape)} "
                          f"{str(e).removeprefix(prefix)} (the network of {train_ini})") from None
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
