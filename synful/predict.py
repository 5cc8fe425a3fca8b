"""Blockwise network prediction over whole volumes with daisy 2, one worker per GPU.

``synful predict PREDICT_DIR`` runs :func:`predict`:

1. :func:`plan_prediction` reads ``predict_config.ini`` (and the training setup's
   ``train_config.ini``), checks the checkpoint, the raw dataset and the ROI, and derives the block
   geometry -- all without TensorFlow, so bad input fails before any worker starts.
2. The output datasets are prepared with chunks equal to the write block, so every block writes
   whole chunks and concurrent workers never share one.
3. A daisy task covers the ROI with blocks, each cut into ``block_factor`` tiles (one network input
   each).  A valid U-Net gives the same values as one pass over a larger input only where both
   inputs sit at the same phase of its pooling grid, i.e. where their origins differ by a multiple of
   the total downsampling factor (the per-axis product of ``downsample_factors``; (3, 27, 27) voxels
   for Synful's [[1,3,3],[1,3,3],[3,3,3]]).  So tiles step by the *tile stride*: per axis the largest
   multiple of that factor not above the network output shape (Synful's default output
   (6, 218, 218) -> stride (6, 216, 216)).  Consecutive tiles overlap by output - stride voxels and
   each is cropped to its stride.  Write ROI = tile stride x ``block_factor``; read ROI = write ROI
   grown by the network context on each side plus that overlap at the far end (what the block's last
   tile reads).  Every tile's input origin is therefore ``ROI.begin - context + k x factor x
   voxel_size``, on the one phase grid of a single pass whose input begins at ``ROI.begin -
   context``, and the blockwise result equals that single pass over the whole ROI exactly (for any
   number of levels, anisotropic factors, workers and ROIs that are no multiple of the block).
   Blocks at the far end overhang the ROI (``fit = overhang``): the network always sees its full
   input, and writes are cropped to the ROI.  Context beyond the raw data is zero- or mirror-padded
   (relative to the whole dataset, so a block sees exactly what a single pass over the volume would
   see) before the training normalisation.
4. Workers (:func:`run_worker`, the hidden ``synful predict-worker`` command) take blocks from the
   daisy scheduler over TCP until none are left, loading the model once (with their first block, so
   a rerun of a finished run starts no TensorFlow) and running the network on ``batch_size`` tiles
   at a time.  :func:`spawn_worker` starts one; locally each holds one GPU
   (``CUDA_VISIBLE_DEVICES``), or runs on CPU threads when there is none.  The scheduler process
   itself only hands out blocks and draws the progress bar.  No worker outlives the scheduler: a
   worker slot whose scheduler ended (even by SIGKILL) cancels its worker (Slurm job or process),
   and a worker that loses the scheduler's connection exits (:func:`synful.cluster.serve_blocks`).
5. daisy's done markers live in ``PREDICT_DIR/blocks/``: a rerun skips finished blocks, and refuses
   to resume when what determines the output changed (:meth:`PredictionPlan.signature`: checkpoint
   content, raw data, geometry, settings -- not where the experiment lives, so a copied or moved
   experiment resumes); ``overwrite=True`` starts over.
   Run metadata (resolved config, checkpoint, versions, times, block counts, throughput) is written
   beside the outputs as ``<run>_prediction.json`` and ``<run>_predict_config.ini``.

Output contract (read by extraction): zarr datasets made by
:func:`synful.io.volumes.prepare_volume` over the ROI, voxel size of the raw data:

- indicator ``(z, y, x)``: stored value x ``attrs["scale"]`` = probability (sigmoid of the logits);
  uint8 has scale 1/255, float16/float32 scale 1.
- vectors ``(3, z, y, x)`` (channels first; channel order z, y, x): stored value x
  ``attrs["scale"]`` = nm; int8 has scale ``vectors_scale`` (clipped to [-127, 127]), floats 1.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from .config import (ConfigError, Prediction, Training, Worker, read_predict_config, read_train_config,
                     read_worker_config, to_dict, write_config)
from .errors import SynfulError

__all__ = [
    "PredictionError",
    "PredictionPlan",
    "plan_prediction",
    "predict",
    "run_worker",
    "spawn_worker",
    "read_padded",
    "encode_indicator",
    "encode_vectors",
    "BlockPredictor",
    "load_model",
    "KILL_AFTER_BLOCKS_ENV",
]

logger = logging.getLogger(__name__)

#: Test hook: a worker SIGKILLs itself while holding block N+1 after N finished blocks.
KILL_AFTER_BLOCKS_ENV = "SYNFUL_TEST_KILL_AFTER_BLOCKS"
#: CPU threads a worker may use (set by the scheduler for local CPU workers and Slurm jobs).
THREADS_ENV = "SYNFUL_NUM_THREADS"

HEAD_INDICATOR = "syn_indicator"
HEAD_VECTORS = "partner_vectors"


class PredictionError(SynfulError):
    """Prediction cannot start or did not finish; the message says why and where."""


# --------------------------------------------------------------------------------------
# plan: everything derived from the configs, no TensorFlow
# --------------------------------------------------------------------------------------

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
        from .scaffold import run_ids

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
            "datasets": self.datasets(), "dtypes": [p.indicator_dtype, p.vectors_dtype, p.vectors_scale],
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
            "datasets": self.datasets(), "dtypes": [p.indicator_dtype, p.vectors_dtype, p.vectors_scale],
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
    from .io.volumes import open_volume

    return str(open_volume(container, dataset).dtype)


def _run_name(predict_dir: Path) -> str:
    from .scaffold import run_ids

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
    from .train import checkpoint_path

    ckpt = Path(checkpoint_path(setup, cfg.iteration))
    if not ckpt.exists():
        raise PredictionError(f"{source} [Prediction] iteration: no checkpoint for iteration {cfg.iteration} "
                              f"({ckpt} does not exist)")
    return training, ckpt


def _raw_source(cfg: Prediction, training: Training, source: str) -> tuple[str, str, Roi | None]:
    """(container, dataset, default ROI or None): the config's raw, else the manifest's first sample of split_part."""
    if cfg.raw_container is not None:
        return cfg.raw_container, cfg.raw_dataset, None
    from .io.manifest import read_manifest

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
    from .io.volumes import open_volume
    from .models import head_names, output_shape

    predict_dir = Path(predict_dir).resolve()
    ini = predict_dir / "predict_config.ini"
    source = str(ini)
    cfg = read_predict_config(ini).prediction
    training, ckpt = _training_setup(cfg, source)
    raw_container, raw_dataset, sample_roi = _raw_source(cfg, training, source)
    if not Path(raw_container).exists():
        raise PredictionError(f"{source} [Prediction] raw_container: {raw_container} does not exist")
    try:
        raw = open_volume(raw_container, raw_dataset)
    except SynfulError:
        raise
    except Exception as e:  # a missing dataset surfaces as KeyError / FileNotFoundError / ValueError
        raise PredictionError(f"{source} [Prediction] raw_dataset: cannot open {raw_container}/{raw_dataset}: {e}") \
            from None
    voxel_size = Coordinate(raw.voxel_size)
    if tuple(voxel_size) != tuple(training.voxel_size):
        raise PredictionError(f"{raw_container}/{raw_dataset}: voxel size {tuple(voxel_size)} nm differs from the "
                              f"training voxel_size {tuple(training.voxel_size)} of {cfg.train_setup}")
    raw_roi = raw.roi

    if (cfg.roi_offset is None) != (cfg.roi_shape is None):
        raise ConfigError(f"{source} [Prediction] roi_offset, roi_shape: give both or neither")
    if cfg.roi_offset is None:
        roi = raw_roi if sample_roi is None else sample_roi.intersect(raw_roi)
    else:
        roi = Roi(cfg.roi_offset, cfg.roi_shape)
        for key_, value in (("roi_offset", roi.offset), ("roi_shape", roi.shape)):
            if any(v % s for v, s in zip(value, voxel_size)):
                raise ConfigError(f"{source} [Prediction] {key_}: {tuple(value)} nm is not a multiple of the voxel "
                                  f"size {tuple(voxel_size)} nm")
        if any(s <= 0 for s in roi.shape):
            raise ConfigError(f"{source} [Prediction] roi_shape: must be positive, got {tuple(roi.shape)}")
        if not raw_roi.contains(roi):
            raise PredictionError(f"{source} [Prediction] roi_offset/roi_shape: ROI {_fmt_roi(roi)} lies outside the "
                                  f"raw data {raw_container}/{raw_dataset} {_fmt_roi(raw_roi)}")

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
    return PredictionPlan(
        predict_dir=predict_dir, name=_run_name(predict_dir), prediction=cfg, training=training, checkpoint=ckpt,
        raw_container=str(raw_container), raw_dataset=raw_dataset, voxel_size=voxel_size, raw_roi=raw_roi, roi=roi,
        input_shape=input_shape, output_shape=out_shape, context=context, downsample_factor=factor,
        tile_stride=stride, block_write=block_write, block_read=block_read, heads=head_names(training))


def _fmt_roi(roi: Roi) -> str:
    return f"[offset {tuple(roi.offset)}, shape {tuple(roi.shape)}] nm"


# --------------------------------------------------------------------------------------
# array helpers (no TensorFlow)
# --------------------------------------------------------------------------------------

def read_padded(array, roi: Roi, padding: str = "zero") -> np.ndarray:
    """Read ``array`` (a funlib Array, no channels) over ``roi`` (nm, on the voxel grid), padding outside the data.

    ``padding = "zero"`` fills voxels outside ``array.roi`` with 0; ``"mirror"`` reflects at the
    dataset's own borders (numpy's ``reflect``: the border voxel is not repeated), so any block
    sees exactly the values a single ``np.pad`` of the whole dataset would give.  Returns an
    ndarray of shape ``roi.shape / voxel_size`` and the array's dtype.
    """
    vs = Coordinate(array.voxel_size)
    if array.roi.contains(roi):
        return np.asarray(array[roi])
    begin = (roi.begin - array.roi.begin) / vs
    shape = roi.shape / vs
    size = array.roi.shape / vs
    index, valid = [], []
    for b, s, n in zip(begin, shape, size):
        i = np.arange(b, b + s)
        if padding == "mirror":
            if n == 1:
                j = np.zeros_like(i)
            else:
                period = 2 * (n - 1)
                j = np.mod(i, period)
                j = np.where(j >= n, period - j, j)
            ok = np.ones(len(i), bool)
        elif padding == "zero":
            ok = (i >= 0) & (i < n)
            j = np.clip(i, 0, n - 1)
        else:
            raise ConfigError(f"padding: expected zero or mirror, got {padding!r}")
        index.append(j)
        valid.append(ok)
    if not all(v.any() for v in valid):
        return np.zeros(tuple(shape), dtype=array.dtype)
    lo = [int(j[v].min()) for j, v in zip(index, valid)]
    hi = [int(j[v].max()) + 1 for j, v in zip(index, valid)]
    sub = Roi(array.roi.begin + Coordinate(lo) * vs, Coordinate([h - l for l, h in zip(lo, hi)]) * vs)
    data = np.asarray(array[sub])
    local = [np.where(v, j - l, 0) for j, v, l in zip(index, valid, lo)]
    out = data[np.ix_(*local)]
    if padding == "zero":
        mask = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
        out = np.where(mask, out, np.zeros((), dtype=out.dtype))
    return np.ascontiguousarray(out)


def encode_indicator(prob: np.ndarray, dtype: str) -> tuple[np.ndarray, float]:
    """Probabilities in [0, 1] -> (stored array, scale) with stored x scale = probability.

    uint8: ``round(p * 255)``, scale 1/255; float16 / float32: p, scale 1.
    """
    if dtype == "uint8":
        return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8), 1.0 / 255.0
    if dtype in ("float16", "float32"):
        return prob.astype(dtype), 1.0
    raise ConfigError(f"indicator_dtype: expected uint8, float16 or float32, got {dtype!r}")


def encode_vectors(vectors: np.ndarray, dtype: str, scale: float) -> tuple[np.ndarray, float]:
    """Vectors in nm -> (stored array, scale) with stored x scale = nm.

    int8: ``round(v / scale)`` clipped to [-127, 127], scale ``scale``; float16 / float32: v, scale 1.
    """
    if dtype == "int8":
        if not scale > 0:
            raise ConfigError(f"vectors_scale: must be > 0 for int8 vectors, got {scale}")
        return np.clip(np.rint(vectors / scale), -127, 127).astype(np.int8), float(scale)
    if dtype in ("float16", "float32"):
        return vectors.astype(dtype), 1.0
    raise ConfigError(f"vectors_dtype: expected int8, float16 or float32, got {dtype!r}")


def _indicator_scale(p: Prediction) -> float:
    return 1.0 / 255.0 if p.indicator_dtype == "uint8" else 1.0


def _vectors_scale(p: Prediction) -> float:
    return float(p.vectors_scale) if p.vectors_dtype == "int8" else 1.0


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------

def _prepare_outputs(plan: PredictionPlan, overwrite: bool = False) -> dict:
    """Create (``overwrite``: replace; else reopen) the output datasets over the ROI; set ``scale``.

    Chunks are one write block, so concurrent workers never write the same chunk.
    """
    from .io.volumes import prepare_volume

    p = plan.prediction
    chunk = tuple(plan.block_write / plan.voxel_size)
    spec = {HEAD_INDICATOR: (p.indicator_dtype, None, _indicator_scale(p)),
            HEAD_VECTORS: (p.vectors_dtype, 3, _vectors_scale(p))}
    out = {}
    for head, dataset in plan.datasets().items():
        dtype, channels, scale = spec[head]
        array = prepare_volume(p.out_container, dataset, plan.roi, plan.voxel_size, dtype, num_channels=channels,
                               chunk_shape=chunk, mode="w" if overwrite else "a")
        array.attrs["scale"] = scale
        out[head] = array
    return out


def _open_outputs(plan: PredictionPlan) -> dict:
    """The prepared output datasets, writable in place."""
    from .io.volumes import open_volume

    return {h: open_volume(plan.prediction.out_container, d, mode="r+") for h, d in plan.datasets().items()}


# --------------------------------------------------------------------------------------
# the network on blocks (TensorFlow, in workers only)
# --------------------------------------------------------------------------------------

def _configure_tensorflow(plan: PredictionPlan):
    """CPU threads (``$SYNFUL_NUM_THREADS``) and GPU memory growth; must run before the model is built."""
    import tensorflow as tf

    threads = int(os.environ.get(THREADS_ENV, "0") or 0)
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)


def load_model(plan: PredictionPlan):
    """The trained network built for ``plan.input_shape`` with the checkpoint's weights.

    ``[Prediction] mixed_precision`` decides the layer policy (mixed_float16 only where a GPU is visible).
    """
    from .train import load_model_for_prediction

    return load_model_for_prediction(plan.prediction.train_setup, plan.prediction.iteration, tuple(plan.input_shape),
                                     mixed_precision=plan.prediction.mixed_precision)


class BlockPredictor:
    """Runs the network over blocks and writes the encoded outputs.

    ``predict_block(read_roi, write_roi)`` (nm, z, y, x; ``read_roi`` must begin ``plan.context``
    before ``write_roi``; the block reads ``write_roi`` grown by ``plan.context`` on each side and
    ``plan.tile_overlap`` voxels more at the far end, daisy's read ROI) returns float32 arrays over
    ``write_roi``: ``syn_indicator`` probabilities ``(z, y, x)``
    and ``partner_vectors`` nm ``(3, z, y, x)``; ``write_block`` crops them to the run ROI and stores
    them.  The block is cut into ``block_factor`` tiles whose inputs start ``plan.tile_stride`` voxels
    apart (a multiple of the total downsampling factor, so all tiles share the pooling phase of a
    single pass); each tile's output is cropped to its stride.  Tiles go through the network
    ``batch_size`` at a time (the last batch zero-filled so the compiled function keeps one shape).
    """

    def __init__(self, plan: PredictionPlan, model=None):
        import tensorflow as tf

        from .io.volumes import open_volume

        self.plan = plan
        self.model = model if model is not None else load_model(plan)
        self.raw = open_volume(plan.raw_container, plan.raw_dataset)
        self.outputs = _open_outputs(plan)
        self.batch_size = int(plan.prediction.batch_size)
        self.sigmoid = plan.training.m_loss_type == "sigmoid_ce"
        spec = tf.TensorSpec((self.batch_size, *plan.input_shape, 1), tf.float32)
        model_ = self.model

        @tf.function(input_signature=[spec], reduce_retracing=True)
        def run(x):
            out = model_(x, training=False)
            return {k: tf.cast(v, tf.float32) for k, v in out.items()}

        self._run = run

    def predict_block(self, read_roi: Roi, write_roi: Roi) -> dict[str, np.ndarray]:
        from .models import normalize_raw

        plan = self.plan
        if read_roi.begin != write_roi.begin - plan.context:
            raise PredictionError(f"block read ROI {_fmt_roi(read_roi)} does not begin at write ROI "
                                  f"{_fmt_roi(write_roi)} minus the context {tuple(plan.context)} nm")
        # what the tiles read: up to the last tile's input end, whatever the caller's read ROI says
        read_roi = write_roi.grow(plan.context, plan.context + plan.tile_overlap * plan.voxel_size)
        raw = normalize_raw(read_padded(self.raw, read_roi, plan.prediction.padding))
        stride = plan.tile_stride
        in_vox = plan.input_shape
        factor = tuple(plan.prediction.block_factor)
        wshape = tuple(write_roi.shape / plan.voxel_size)
        result = {}
        if HEAD_INDICATOR in plan.heads:
            result[HEAD_INDICATOR] = np.empty(wshape, np.float32)
        if HEAD_VECTORS in plan.heads:
            result[HEAD_VECTORS] = np.empty((3, *wshape), np.float32)
        tiles = [Coordinate(t) * stride for t in np.ndindex(*factor)]
        for start in range(0, len(tiles), self.batch_size):
            batch_tiles = tiles[start:start + self.batch_size]
            x = np.zeros((self.batch_size, *in_vox, 1), np.float32)
            for i, t in enumerate(batch_tiles):
                x[i, ..., 0] = raw[t[0]:t[0] + in_vox[0], t[1]:t[1] + in_vox[1], t[2]:t[2] + in_vox[2]]
            y = {k: v.numpy() for k, v in self._run(x).items()}
            for i, t in enumerate(batch_tiles):
                sl = tuple(slice(t[d], t[d] + stride[d]) for d in range(3))
                crop = tuple(slice(0, stride[d]) for d in range(3))  # the overlap is the next tile's
                if HEAD_INDICATOR in result:
                    logits = y[HEAD_INDICATOR][i, ..., 0][crop]
                    if self.sigmoid:
                        prob = 1.0 / (1.0 + np.exp(-logits))
                    else:  # mse-trained indicator regresses the probability directly
                        prob = np.clip(logits, 0.0, 1.0)
                    result[HEAD_INDICATOR][sl] = prob
                if HEAD_VECTORS in result:
                    result[HEAD_VECTORS][(slice(None),) + sl] = np.moveaxis(y[HEAD_VECTORS][i][crop], -1, 0)
        return result

    def write_block(self, write_roi: Roi, result: dict[str, np.ndarray]):
        plan = self.plan
        p = plan.prediction
        roi = write_roi.intersect(plan.roi)
        if roi.empty:
            return
        rel = (roi.begin - write_roi.begin) / plan.voxel_size
        shape = roi.shape / plan.voxel_size
        sl = tuple(slice(rel[d], rel[d] + shape[d]) for d in range(3))
        if HEAD_INDICATOR in result:
            data, _ = encode_indicator(result[HEAD_INDICATOR][sl], p.indicator_dtype)
            self.outputs[HEAD_INDICATOR][roi] = data
        if HEAD_VECTORS in result:
            data, _ = encode_vectors(result[HEAD_VECTORS][(slice(None),) + sl], p.vectors_dtype, p.vectors_scale)
            self.outputs[HEAD_VECTORS][roi] = data

    def process(self, block):
        """Predict and write one daisy block."""
        self.write_block(block.write_roi, self.predict_block(block.read_roi, block.write_roi))


# --------------------------------------------------------------------------------------
# workers
# --------------------------------------------------------------------------------------

def _signature_path(plan: PredictionPlan) -> Path:
    return plan.predict_dir / "blocks" / f"{plan.task_id}.signature.json"


def run_worker(predict_dir) -> int:
    """Worker entry point (``synful predict-worker PREDICT_DIR``): process the blocks the daisy scheduler
    named in ``$DAISY_CONTEXT`` hands out until there are none left, loading the model once.

    Returns the number of blocks processed.  Refuses to run when the run's configuration changed
    since the scheduler started it (the signature in ``PREDICT_DIR/blocks/`` differs).  Raises
    :class:`synful.cluster.SchedulerLost` (the worker exits) when the scheduler is gone.
    """
    import daisy.v2 as daisy

    from .cluster import serve_blocks

    plan = plan_prediction(predict_dir)
    sig_file = _signature_path(plan)
    if sig_file.is_file() and not plan.matches(json.loads(sig_file.read_text()).get("signature")):
        raise PredictionError(f"{plan.predict_dir}: configuration changed since this run started; "
                              f"rerun `synful predict {plan.predict_dir}` (with --overwrite to start over)")
    kill_after = int(os.environ.get(KILL_AFTER_BLOCKS_ENV, "0") or 0)
    predictor = None
    done = 0
    t0 = time.time()

    def process(block):
        nonlocal predictor, done
        if predictor is None:  # TensorFlow only once there is work: a rerun of a finished run stays cheap
            _configure_tensorflow(plan)
            predictor = BlockPredictor(plan)
        if kill_after and done >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die hard while holding a block
        predictor.process(block)
        done += 1

    # a failed block ends this worker (daisy replaces it, up to max_retries x workers); a lost
    # scheduler ends it with SchedulerLost
    serve_blocks(daisy.Client(), process)
    logger.info("worker processed %d blocks in %.1f s", done, time.time() - t0)
    return done


def spawn_worker(worker_cfg: Worker, argv: list[str], *, name: str, log_dir: Path, env: dict,
                 gpu: int | None) -> int:
    """Start one worker and wait for it; return its exit code.

    The one place a worker is launched: :func:`synful.cluster.run` makes it a local subprocess (``gpu``
    sets ``CUDA_VISIBLE_DEVICES``) or a Slurm job, inside the worker's container if one is configured,
    and cancels it if this process is interrupted or terminated, or the scheduler that started this
    worker slot ends (even by SIGKILL).  Replace this function to launch workers elsewhere.
    """
    from .cluster import run

    return run(worker_cfg, argv, name=name, log_dir=log_dir, env=env, gpu=gpu)


class _GpuSlot:
    """An exclusive claim on one GPU while a worker runs, as a flock on ``lock_dir/gpu<i>.lock``.

    The lock dies with the process holding it, so a crashed worker's GPU is free for its replacement.
    """

    def __init__(self, lock_dir: Path, gpus: list[int]):
        self.lock_dir, self.gpus, self.handle, self.gpu = lock_dir, gpus, None, None

    def __enter__(self):
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for g in self.gpus:
            f = open(self.lock_dir / f"gpu{g}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self.handle, self.gpu = f, g
            break
        return self.gpu

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()
        return False


@dataclass(frozen=True)
class _WorkerSpawner:
    """daisy's process function, run in daisy's worker-slot process: start one worker and wait for it.

    Picklable (paths and config values only).  Locally, a worker claims a free GPU of ``gpus`` for its
    lifetime, or runs on ``threads`` CPU threads when none is free.
    """

    predict_dir: str
    worker_cfg: Worker
    gpus: tuple[int, ...]
    threads: int

    def __call__(self, *, context):
        from .cluster import synful_command

        predict_dir = Path(self.predict_dir)
        env = {"DAISY_CONTEXT": context.to_env(), "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        if self.threads:
            env[THREADS_ENV] = str(self.threads)
        argv = synful_command(self.worker_cfg, ["predict-worker", str(predict_dir)])
        name = f"predict-worker-{context.get('worker_id', '0')}"
        log_dir = predict_dir / "log" / "predict"
        with _GpuSlot(predict_dir / "blocks" / "gpu_locks", list(self.gpus)) as gpu:
            if self.worker_cfg.executor == "local" and gpu is None:
                env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker must not touch a GPU another worker holds
            elif gpu is not None:
                env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers GPUs as NVML does
            rc = spawn_worker(self.worker_cfg, argv, name=name, log_dir=log_dir, env=env, gpu=gpu)
        if rc != 0:
            raise RuntimeError(f"{name} exited with code {rc}{_log_tail(log_dir, name)}")


#: TensorFlow's C++ start-up chatter (absl log lines), left out of error messages
_TF_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)")


def _log_tail(log_dir: Path, name: str, lines: int = 6) -> str:
    """The stderr log of the last job called ``name`` and its last lines, for an error message."""
    from .cluster import read_job_records

    records = [r for r in read_job_records(log_dir) if r.get("name") == name]
    if not records or not records[-1].get("stderr"):
        return f" (logs in {log_dir})"
    path = Path(records[-1]["stderr"])
    try:
        text = [ln for ln in path.read_text(errors="replace").splitlines()
                if ln.strip() and not _TF_NOISE.match(ln)][-lines:]
    except OSError:
        text = []
    return f"; log {path}" + ("".join("\n  " + ln for ln in text) if text else "")


# --------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------

class _Progress:
    """daisy progress observer: one bar with blocks done, voxels/s and ETA of the blocks still to do."""

    def __init__(self, task_id: str, voxels_per_block: float, enabled: bool = True):
        self.task_id, self.vpb, self.enabled = task_id, voxels_per_block, enabled
        self.bar, self.t0, self.last = None, None, None

    def _update(self, states, final=False):
        s = states.get(self.task_id)
        if s is None:
            return
        self.last = s
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=int(s.total_block_count), unit="block", dynamic_ncols=True, desc="predict",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} blocks "
                                       "[{elapsed}{postfix}]")
        done = int(s.completed_count)
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        processed = done - int(s.skipped_count)
        if self.t0 is None:
            self.t0 = time.time()
        parts = []
        if processed > 0:
            # since the run started, worker start-up included: the rate a user can plan with
            elapsed = max(time.time() - self.t0, 1e-6)
            left = int(s.total_block_count) - done
            parts += [f"{processed * self.vpb / elapsed / 1e6:.3g} Mvoxel/s",
                      f"ETA {_dt.timedelta(seconds=int(left * elapsed / processed))}"]
        if int(s.failed_count):
            parts.append(f"{int(s.failed_count)} failed")
        self.bar.set_postfix_str(", ".join(parts), refresh=final)

    def on_start(self, states):
        self.t0 = time.time()
        self._update(states)

    def on_progress(self, states):
        self._update(states)

    def on_finish(self, states):
        self._update(states, final=True)
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------

def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def predict(predict_dir, overwrite: bool = False, *, progress: bool = True, in_process: bool = False,
            executor: str | None = None) -> dict:
    """Predict the ROI of ``PREDICT_DIR/predict_config.ini`` blockwise; return the run metadata.

    Workers come from ``PREDICT_DIR/worker_config.ini`` [Worker]: ``num_block_workers`` (0: one per
    GPU found, or one per 2 CPU cores without GPUs), ``executor`` (local or slurm), ``max_retries``
    (retries per block; the run tolerates ``max_retries x workers`` worker crashes).  A rerun resumes:
    blocks marked done are skipped; ``overwrite=True`` deletes the outputs and the done markers first.
    ``in_process=True`` runs every block in this process (daisy's serial mode; for debugging).
    ``executor`` (``local`` or ``slurm``) overrides the worker config's.

    Raises :class:`PredictionError` before any worker starts for bad configs, a missing checkpoint or a
    ROI outside the raw data, and after the run when blocks remain undone (a rerun resumes).
    """
    import daisy.logging as daisy_logging
    import daisy.v2 as daisy

    from .cluster import block_worker_count, check_worker, discover_gpus

    worker_ini = Path(predict_dir).resolve() / "worker_config.ini"
    worker_cfg = read_worker_config(worker_ini) if worker_ini.is_file() else Worker()
    plan = plan_prediction(predict_dir)
    if executor is not None:  # `synful predict --submit`: workers as Slurm jobs whatever the config says
        from dataclasses import replace

        worker_cfg = replace(worker_cfg, executor=executor)
    worker_cfg = check_worker(worker_cfg)
    p = plan.prediction
    sig_file = _signature_path(plan)

    if overwrite:
        shutil.rmtree(plan.tracking_dir, ignore_errors=True)
        sig_file.unlink(missing_ok=True)
    elif sig_file.is_file():
        if not plan.matches(json.loads(sig_file.read_text()).get("signature")):
            raise PredictionError(f"{plan.predict_dir}: the configuration changed since the last (unfinished or "
                                  f"finished) run of these outputs; rerun with --overwrite to start over")
    elif plan.tracking_dir.exists():
        raise PredictionError(f"{plan.tracking_dir}: done markers without a run signature; "
                              f"rerun with --overwrite to start over")

    from .io.volumes import VolumeError

    try:
        _prepare_outputs(plan, overwrite=overwrite)
    except VolumeError as e:
        raise PredictionError(f"{e}\n(outputs of an earlier run with other settings: rerun with --overwrite)") from None
    # a run id: kept while a run resumes, new whenever the outputs start over (--overwrite, first run);
    # extraction keys its done markers on it and refuses metadata of another id (an unfinished newer run)
    run_id = (json.loads(sig_file.read_text()).get("run_id") if sig_file.is_file() else None) or uuid.uuid4().hex
    signature = plan.signature()
    _write_json(sig_file, {"signature": signature, "task_id": plan.task_id, "run_id": run_id})
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    write_config(plan.out_dir / f"{plan.name}_predict_config.ini", p)

    local = worker_cfg.executor == "local"
    gpus = discover_gpus() if (local and worker_cfg.gpus > 0 and not in_process) else []
    n_workers = block_worker_count(worker_cfg, gpus)
    if local:  # share this machine's cores (network on CPU workers; raw decoding and encoding on all)
        threads = max(1, (os.cpu_count() or 1) // max(1, n_workers))
    else:
        threads = int(worker_cfg.num_cpus)

    start, t0 = _now(), time.time()
    roi_voxels = float(np.prod(plan.roi.shape / plan.voxel_size))
    voxels_per_block = roi_voxels / plan.num_blocks  # on average: blocks at the far end are cropped
    observer = _Progress(plan.task_id, voxels_per_block, enabled=progress)
    # the far end grows by the tile overlap too, so the blocks (write ROIs) are those of the ROI alone
    total_roi = plan.roi.grow(plan.context, plan.context + plan.tile_overlap * plan.voxel_size)
    common = dict(read_write_conflict=False, fit="overhang", max_retries=int(worker_cfg.max_retries),
                  tracking_path=str(plan.tracking_dir), timeout=float(p.block_timeout))
    read_roi = Roi((0, 0, 0), plan.block_read)
    write_roi = Roi(plan.context, plan.block_write)

    daisy_logging.set_log_basedir(str(plan.log_dir))
    logger.info("predict %s: ROI %s, %d blocks of %s nm, %d worker(s)%s", plan.name, _fmt_roi(plan.roi),
                plan.num_blocks, tuple(plan.block_write), n_workers, f" on GPUs {gpus}" if gpus else " on CPU")
    error, stats = None, {}
    if in_process:
        predictor = BlockPredictor(plan)
        task = daisy.Task(plan.task_id, total_roi, read_roi, write_roi, process_function=predictor.process,
                          max_workers=1, **common)
        states = daisy.run_blockwise(task, multiprocessing=False, return_states=True, progress=observer,
                                     summary=False)
    else:
        spawner = _WorkerSpawner(str(plan.predict_dir), worker_cfg, tuple(gpus), threads)
        task = daisy.Task(plan.task_id, total_roi, read_roi, write_roi, process_function=spawner,
                          max_workers=n_workers, max_worker_restarts=int(worker_cfg.max_retries) * n_workers,
                          resource_tracking=True, **common)
        server = daisy.Server()  # unlike run_blockwise, returns (not raises) when workers keep dying
        states = server.run_blockwise(task, progress=observer, summary=False, host="127.0.0.1" if local else None)
        stats = ((server.last_tracking_summary or {}).get("per_task") or {}).get(plan.task_id) or {}
    state = states.get(plan.task_id) or observer.last
    if state is not None and state.abandoned:
        error = f"task abandoned: {state.abandon_reason}"
        tail = str(state.first_worker_error or state.last_worker_error or "")
        if "RuntimeError: " in tail:  # skip daisy's traceback down to our message
            tail = tail[tail.rindex("RuntimeError: ") + len("RuntimeError: "):]
        if tail.strip():
            error += "\nfirst worker error: " + "\n".join(tail.strip().splitlines()[-8:])
    end, wall = _now(), time.time() - t0

    total = int(state.total_block_count) if state is not None else plan.num_blocks
    completed = int(state.completed_count) if state is not None else 0
    skipped = int(state.skipped_count) if state is not None else 0
    processed = completed - skipped
    voxels = roi_voxels * processed / max(total, 1)
    meta = {
        "run": plan.name,
        "run_id": run_id,
        "signature": signature,
        "predict_dir": str(plan.predict_dir),
        "config": to_dict(p),
        "train_setup": p.train_setup,
        "checkpoint": str(plan.checkpoint),
        "iteration": p.iteration,
        "synful_version": _version(),
        "git_commit": _git_commit(),
        "start": start,
        "end": end,
        "wall_seconds": round(wall, 3),
        "raw": {"container": plan.raw_container, "dataset": plan.raw_dataset, "roi_offset": list(plan.raw_roi.offset),
                "roi_shape": list(plan.raw_roi.shape)},
        "roi_offset": list(plan.roi.offset),
        "roi_shape": list(plan.roi.shape),
        "voxel_size": list(plan.voxel_size),
        "input_shape": list(plan.input_shape),
        "output_shape": list(plan.output_shape),
        "downsample_factor": list(plan.downsample_factor),
        "tile_stride": list(plan.tile_stride),
        "block_write_shape": list(plan.block_write),
        "block_read_shape": list(plan.block_read),
        "outputs": {h: {"container": p.out_container, "dataset": d,
                        "dtype": p.indicator_dtype if h == HEAD_INDICATOR else p.vectors_dtype,
                        "scale": _indicator_scale(p) if h == HEAD_INDICATOR else _vectors_scale(p)}
                    for h, d in plan.datasets().items()},
        "workers": {"count": 1 if in_process else n_workers, "executor": "in_process" if in_process else
                    worker_cfg.executor, "gpus": gpus, "threads_per_worker": threads},
        "blocks": {"total": total, "processed": processed, "skipped": skipped,
                   "failed": int(state.failed_count) if state is not None else 0,
                   "orphaned": int(state.orphaned_count) if state is not None else 0,
                   "worker_restarts": int(state.worker_restart_count) if state is not None else 0},
        "voxels_processed": int(voxels),
        # end to end: zarr in, zarr out, worker start-up and model loading included
        "voxels_per_second": round(voxels / wall, 1) if wall > 0 else None,
        # inside blocks (daisy's per-block measurements): the steady rate of one worker, i.e. per GPU
        "voxels_per_worker_second": (round(voxels / float(stats["total_block_secs"]), 1)
                                     if stats.get("total_block_secs") and processed else None),
        "block_seconds_mean": round(float(stats["mean_block_ms"]) / 1000, 4) if stats.get("mean_block_ms") else None,
        "peak_rss_bytes": int(stats["max_peak_rss_bytes"]) if stats.get("max_peak_rss_bytes") else None,
        "complete": error is None and completed == total,
    }
    _write_json(plan.metadata_path, meta)
    if error is not None or completed != total:
        reason = error or f"{total - completed} of {total} blocks not done"
        raise PredictionError(f"prediction of {plan.predict_dir} did not finish: {reason}\n"
                              f"worker logs: {plan.log_dir}; rerun `synful predict {plan.predict_dir}` to resume")
    logger.info("predict %s: %d blocks done (%d skipped) in %.1f s, %.0f voxels/s", plan.name, total, skipped, wall,
                meta["voxels_per_second"] or 0.0)
    return meta


def _version() -> str:
    from . import __version__

    return __version__
