"""Training: a gunpowder pipeline feeding a Keras U-Net, resumable, with TensorBoard and snapshots.

``train(setup_dir)`` reads ``setup_dir/train_config.ini`` ([Training]) and trains until
``iterations``; everything it writes lives in the setup directory::

    checkpoints/model_<it>.weights.h5    network weights (what prediction loads)
    checkpoints/optimizer_<it>.npz       Adam state, for an exact resume
    checkpoints/resolved_train_config.ini, checkpoints/provenance.json
    log/                                 TensorBoard (losses, learning rate, iterations/s, GPU, images)
    snapshots/batch_<it>.zarr            raw, targets, weights, predictions

A rerun resumes from the latest checkpoint; the last ``keep_checkpoints`` are kept.

Losses (Synful's): the indicator loss is sigmoid cross-entropy of the ``syn_indicator`` logits
(or MSE of their sigmoid) against the 0/1 post-synaptic blob, weighted per voxel by the
class-balancing weights and averaged over voxels of non-zero weight; the vector loss is the MSE
(nm^2) of ``partner_vectors`` over the voxels of the vectors mask; the total is
``m_loss_scale * m_loss + d_loss_scale * d_loss`` over the heads of ``tasks``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np

from . import __version__
from .config import ConfigError, Training, read_train_config, to_dict, write_config
from .errors import SynfulError
from .io.files import atomic_write, git_commit, numbered_files, numbered_path, write_json

__all__ = [
    "TrainError",
    "CHECKPOINT_DIR",
    "LOG_DIR",
    "SNAPSHOT_DIR",
    "checkpoint_path",
    "optimizer_state_path",
    "list_checkpoints",
    "latest_checkpoint",
    "load_model_for_prediction",
    "compute_losses",
    "KerasTrainer",
    "training_pipeline",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "log"
SNAPSHOT_DIR = "snapshots"
#: checkpoint file names in CHECKPOINT_DIR, ``{}`` the iteration (see :func:`synful.io.files.numbered_files`)
CHECKPOINT_PATTERN = "model_{}.weights.h5"
OPTIMIZER_PATTERN = "optimizer_{}.npz"

# Synful's elastic augmentation (voxels: control points every 4 sections / 40 pixels, in-plane
# jitter only), rotation in-plane, occasional slipped / shifted sections.
INTENSITY = dict(scale_min=0.9, scale_max=1.1, shift_min=-0.1, shift_max=0.1)
DEFECTS = dict(prob_missing=0.03, prob_low_contrast=0.01, contrast_scale=0.5)


class TrainError(SynfulError):
    """Training cannot start or resume (missing data, checkpoint, ...)."""


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------

def checkpoint_path(setup_dir, iteration: int) -> Path:
    """``setup_dir/checkpoints/model_<iteration>.weights.h5``: the network weights after ``iteration`` steps."""
    return numbered_path(Path(setup_dir) / CHECKPOINT_DIR, CHECKPOINT_PATTERN, iteration)


def optimizer_state_path(setup_dir, iteration: int) -> Path:
    """``setup_dir/checkpoints/optimizer_<iteration>.npz``: the optimiser state saved with the weights."""
    return numbered_path(Path(setup_dir) / CHECKPOINT_DIR, OPTIMIZER_PATTERN, iteration)


def list_checkpoints(setup_dir) -> list[tuple[int, Path]]:
    """All ``(iteration, weights path)`` of a setup, by increasing iteration."""
    return numbered_files(Path(setup_dir) / CHECKPOINT_DIR, CHECKPOINT_PATTERN)


def latest_checkpoint(setup_dir) -> tuple[int, Path] | None:
    """``(iteration, weights path)`` of the newest checkpoint, or None when there is none."""
    found = list_checkpoints(setup_dir)
    return found[-1] if found else None


def load_model_for_prediction(setup_dir, iteration: int, input_shape=None, *, mixed_precision: bool | None = None):
    """The trained U-Net of ``setup_dir`` at ``iteration``, built for ``input_shape`` voxels.

    Reads ``setup_dir/train_config.ini``; ``input_shape`` (z, y, x) defaults to the training input
    shape and may be larger (the weights do not depend on it); ``mixed_precision`` overrides the
    config's.  Raises :class:`TrainError` naming the checkpoint path (and the iterations there
    are) when it is missing, and ConfigError when ``input_shape`` does not fit the network.
    """
    setup_dir = Path(setup_dir)
    cfg = read_train_config(setup_dir / "train_config.ini")
    if mixed_precision is not None:
        cfg = dataclasses.replace(cfg, mixed_precision=bool(mixed_precision))
    path = checkpoint_path(setup_dir, iteration)
    if not path.is_file():
        have = [it for it, _ in list_checkpoints(setup_dir)]
        raise TrainError(f"{path}: checkpoint not found (iterations with checkpoints: "
                         f"{', '.join(map(str, have)) if have else 'none'})")
    from .models import build_unet

    model = build_unet(cfg, input_shape)
    model.load_weights(str(path))
    return model


# --------------------------------------------------------------------------------------
# losses and the optimisation step
# --------------------------------------------------------------------------------------

def compute_losses(cfg: Training, outputs: dict, targets: dict) -> dict:
    """Scalar losses (float32 tensors) ``loss``, and ``m_loss`` / ``d_loss`` for the heads present.

    ``outputs``: network outputs (``syn_indicator`` logits ``(b, z, y, x, 1)``, ``partner_vectors``
    ``(b, z, y, x, 3)`` nm).  ``targets``: ``gt_syn_indicator`` (0/1) and ``indicator_weights``
    ``(b, z, y, x, 1)``, ``gt_partner_vectors`` ``(b, z, y, x, 3)`` nm and ``vectors_mask``
    ``(b, z, y, x, 1)``.  Weighted means divide by the number of non-zero weights (TF1's
    ``SUM_BY_NONZERO_WEIGHTS``, as Synful), or by 1 when there is none.
    """
    from keras import ops

    losses = {}
    total = ops.convert_to_tensor(0.0, "float32")
    if "syn_indicator" in outputs:
        logits = ops.cast(outputs["syn_indicator"], "float32")
        gt = ops.cast(targets["gt_syn_indicator"], "float32")
        w = ops.cast(targets["indicator_weights"], "float32")
        if cfg.m_loss_type == "sigmoid_ce":
            per_voxel = ops.binary_crossentropy(gt, logits, from_logits=True)
        else:
            per_voxel = ops.square(ops.sigmoid(logits) - gt)
        n = ops.maximum(ops.sum(ops.cast(w > 0, "float32")), 1.0)
        losses["m_loss"] = ops.sum(w * per_voxel) / n
        total = total + cfg.m_loss_scale * losses["m_loss"]
    if "partner_vectors" in outputs:
        pred = ops.cast(outputs["partner_vectors"], "float32")
        gt = ops.cast(targets["gt_partner_vectors"], "float32")
        mask = ops.cast(targets["vectors_mask"], "float32")
        n = ops.maximum(ops.sum(ops.cast(mask > 0, "float32")) * 3.0, 1.0)
        losses["d_loss"] = ops.sum(mask * ops.square(pred - gt)) / n
        total = total + cfg.d_loss_scale * losses["d_loss"]
    losses["loss"] = total
    return losses


def _uses_mixed_precision(model) -> bool:
    return any(getattr(layer.dtype_policy, "name", "") == "mixed_float16" for layer in model.layers)


class KerasTrainer:
    """Model, Adam optimiser and the compiled training step of one setup (a :class:`synful.gp.Trainer`).

    ``train_step(inputs, targets)`` takes ``inputs["raw"]`` ``(1, z, y, x, 1)`` and the targets of
    :func:`compute_losses` as numpy, performs one Adam step (loss-scaled with mixed precision;
    XLA-compiled with ``cfg.xla``) and returns ``(losses, outputs)`` as numpy: scalar losses and
    the outputs, ``syn_indicator`` as a probability (sigmoid of the logits).
    """

    def __init__(self, cfg: Training, model):
        import keras
        import tensorflow as tf

        self.cfg = cfg
        self.model = model
        opt = keras.optimizers.Adam(learning_rate=cfg.learning_rate, beta_1=cfg.adam_beta1, beta_2=cfg.adam_beta2,
                                    epsilon=cfg.adam_epsilon)
        self.mixed_precision = _uses_mixed_precision(model)
        self.optimizer = keras.optimizers.LossScaleOptimizer(opt) if self.mixed_precision else opt
        self.optimizer.build(model.trainable_variables)
        self.iteration = 0
        self._step = tf.function(self._step_impl, jit_compile=bool(cfg.xla), reduce_retracing=True)

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.learning_rate.numpy())

    def _step_impl(self, raw, targets):
        import tensorflow as tf
        from keras import ops

        with tf.GradientTape() as tape:
            outputs = self.model(raw, training=True)
            losses = compute_losses(self.cfg, outputs, targets)
            scaled = self.optimizer.scale_loss(losses["loss"])
        grads = tape.gradient(scaled, self.model.trainable_variables)
        self.optimizer.apply(grads, self.model.trainable_variables)
        out = dict(outputs)
        if "syn_indicator" in out:
            out["syn_indicator"] = ops.sigmoid(ops.cast(out["syn_indicator"], "float32"))
        return losses, out

    def train_step(self, inputs: dict, targets: dict) -> tuple[dict, dict]:
        losses, outputs = self._step(inputs["raw"], targets)
        self.iteration += 1
        return ({k: float(v) for k, v in losses.items()}, {k: np.asarray(v) for k, v in outputs.items()})

    def save(self, setup_dir) -> Path:
        """Write weights and optimiser state of the current iteration (each atomically); return the weights path."""
        from keras import ops

        path = checkpoint_path(setup_dir, self.iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        store = {}
        self.optimizer.save_own_variables(store)

        def write_optimizer(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **{k: ops.convert_to_numpy(v) for k, v in store.items()})

        def write_checkpoint(tmp):
            self.model.save_weights(str(tmp))
            atomic_write(optimizer_state_path(setup_dir, self.iteration), write_optimizer)

        # the weights last: a checkpoint exists only when complete
        return atomic_write(path, write_checkpoint)

    def restore(self, setup_dir, iteration: int):
        """Load the weights (and, when saved, the optimiser state) of ``iteration``."""
        path = checkpoint_path(setup_dir, iteration)
        self.model.load_weights(str(path))
        opt_path = optimizer_state_path(setup_dir, iteration)
        if opt_path.is_file():
            with np.load(opt_path) as f:
                store = {k: f[k] for k in f.files}
            self.optimizer.load_own_variables(store)
            # the config's learning rate wins over the saved one
            self.optimizer.learning_rate.assign(self.cfg.learning_rate)
        else:
            logger.warning("%s: no optimiser state, resuming with a fresh Adam state", opt_path)
        self.iteration = int(iteration)


def _prune_checkpoints(setup_dir, keep: int):
    if keep <= 0:
        return
    for it, path in list_checkpoints(setup_dir)[:-keep]:
        path.unlink(missing_ok=True)
        optimizer_state_path(setup_dir, it).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# the gunpowder pipeline
# --------------------------------------------------------------------------------------

def _training_samples(cfg: Training):
    from .io.manifest import open_sample, read_manifest, read_sample_partners

    samples = [s for s in read_manifest(cfg.manifest) if s.split == "train"]
    if not samples:
        raise TrainError(f"{cfg.manifest}: no sample with split: train ([Training] manifest)")
    out = []
    for s in samples:
        if not s.labels_dataset:
            raise TrainError(f"{cfg.manifest}: sample {s.name}: labels_dataset is needed for training "
                             f"(targets are restricted to neurons)")
        arrays = open_sample(s)
        if tuple(arrays.raw.voxel_size) != tuple(cfg.voxel_size):
            raise ConfigError(f"[Training] voxel_size {tuple(cfg.voxel_size)} differs from the voxel size "
                              f"{tuple(arrays.raw.voxel_size)} of sample {s.name} ({s.container}/{s.raw_dataset})")
        if arrays.raw.dtype != np.uint8:
            raise TrainError(f"{s.container}/{s.raw_dataset}: raw must be uint8, got {arrays.raw.dtype}")
        _check_sample_shape(cfg, s, arrays)
        out.append((s, arrays, read_sample_partners(s, by="post")))
    return out


def sample_raw_shape(cfg: Training, roi) -> tuple[int, int, int]:
    """The raw extent (voxels, z/y/x) a sample of ``roi`` (nm) offers the network: its ROI grown by the
    network context on each side (zeros beyond the data), where the network output stays inside it."""
    from .models import output_shape

    context = np.subtract(cfg.input_shape, output_shape(cfg))
    return tuple(int(v) for v in np.asarray(roi.shape) // np.asarray(cfg.voxel_size) + context)


def _check_sample_shape(cfg: Training, sample, arrays):
    from .gp.augment import required_raw_shape

    have = sample_raw_shape(cfg, arrays.roi)
    need = required_raw_shape(cfg.input_shape, elastic=cfg.elastic_augment, transpose=cfg.simple_augment)
    if any(h < n for h, n in zip(have, need)):
        shape = tuple(int(v) for v in np.asarray(arrays.roi.shape) // np.asarray(cfg.voxel_size))
        margins = [k for k, on in (("elastic_augment", cfg.elastic_augment), ("simple_augment", cfg.simple_augment))
                   if on]
        raise TrainError(f"{cfg.manifest}: sample {sample.name}: ROI of {shape} voxels (z, y, x), {have} with the "
                         f"network context, but training needs {need}: [Training] input_shape {tuple(cfg.input_shape)}"
                         + (f" plus the margins of {' and '.join(margins)}" if margins else "")
                         + " (use a larger ROI, a smaller input_shape or fewer augmentations)")


class Keys:
    """The gunpowder keys of the training pipeline."""

    def __init__(self):
        import gunpowder as gp

        self.raw = gp.ArrayKey("RAW")
        self.labels = gp.ArrayKey("GT_NEURON_IDS")
        self.pre = gp.GraphKey("PRE_SITES")
        self.post = gp.GraphKey("POST_SITES")
        self.gt_indicator = gp.ArrayKey("GT_SYN_INDICATOR")
        self.indicator_weights = gp.ArrayKey("INDICATOR_WEIGHTS")
        self.gt_vectors = gp.ArrayKey("GT_PARTNER_VECTORS")
        self.vectors_mask = gp.ArrayKey("VECTORS_MASK")
        self.pred_indicator = gp.ArrayKey("PRED_SYN_INDICATOR")
        self.pred_vectors = gp.ArrayKey("PRED_PARTNER_VECTORS")


def training_pipeline(cfg: Training, samples, trainer=None, snapshot_dir=None, first: int = 0):
    """The gunpowder pipeline and request of one training iteration: ``(pipeline, request, keys, train_node)``.

    ``samples``: ``(Sample, SampleArrays, partners)`` triples.  Per sample: raw (normalised to
    [0, 1]; zero-padded by the network context), labels and the partner graphs, then a random
    location whose network output lies inside the sample ROI (its input may reach beyond);
    over all samples a random provider, the augmentations of ``cfg``, raw mapped to [-1, 1]
    (:data:`synful.models.RAW_SCALE` / ``RAW_SHIFT``), the indicator and vector targets, rejection
    of batches without synapse (``reject_probability``), class balancing (``balance_clip``) and
    :class:`synful.gp.SeededPreCache` (batch ``n`` drawn with seed ``batch_seed(cfg.seed, n)``,
    counting from ``first``; without workers, the caller seeds each request with
    :func:`synful.gp.seeded_request`).  With a ``trainer`` a :class:`synful.gp.KerasTrain` node follows, and with a
    ``snapshot_dir`` an :class:`synful.gp.IterationSnapshot`.  Without a trainer the request holds
    raw and targets only (to inspect the data).
    """
    import gunpowder as gp

    from .gp import (AddPartnerVectorMap, AddSynapseIndicator, IterationSnapshot, KerasTrain, PartnerSource,
                     SeededPreCache, SeededReject)
    from .gp.augment import anisotropic_elastic_augment
    from .models import RAW_SCALE, RAW_SHIFT, head_names, output_shape

    k = Keys()
    vs = gp.Coordinate(cfg.voxel_size)
    input_size = gp.Coordinate(cfg.input_shape) * vs
    output_size = gp.Coordinate(output_shape(cfg)) * vs
    context = (input_size - output_size) / 2

    sources = []
    for sample, arrays, partners in samples:
        src = (gp.ArraySource(k.raw, arrays.raw, interpolatable=True),
               gp.ArraySource(k.labels, arrays.labels, interpolatable=False),
               PartnerSource(partners, k.pre, k.post)) + gp.MergeProvider()
        src += gp.Normalize(k.raw)  # uint8 -> float32 [0, 1]
        # raw is offered exactly on the sample ROI grown by the network context (real data where there
        # is some, zeros beyond), so random locations keep the network output inside the sample ROI
        src += gp.Pad(k.raw, context) + gp.Crop(k.raw, arrays.roi.grow(context, context))
        # labels: 0 (no targets) beyond the data; they do not restrict the locations
        src += gp.Pad(k.labels, None)
        src += gp.RandomLocation()
        sources.append(src)
    pipeline = tuple(sources) + gp.RandomProvider()
    if cfg.elastic_augment:
        # the smallest sample bounds what a deformation may ask for (checked against the input shape up front)
        smallest = np.min([sample_raw_shape(cfg, arrays.roi) for _, arrays, _ in samples], axis=0)
        pipeline += anisotropic_elastic_augment(cfg.input_shape, limits={k.raw: gp.Coordinate(smallest) * vs})
    if cfg.simple_augment:
        pipeline += gp.SimpleAugment(mirror_only=[1, 2], transpose_only=[1, 2])
    if cfg.intensity_augment:
        pipeline += gp.IntensityAugment(k.raw, slab=(1, -1, -1), **INTENSITY)
    if cfg.defect_augment:
        pipeline += gp.DefectAugment(k.raw, axis=0, **DEFECTS)
    pipeline += gp.IntensityScaleShift(k.raw, RAW_SCALE, RAW_SHIFT)
    pipeline += AddSynapseIndicator(k.post, k.labels, k.gt_indicator, radius=cfg.blob_radius)
    pipeline += AddPartnerVectorMap(k.pre, k.post, k.labels, k.gt_vectors, k.vectors_mask,
                                    radius=cfg.d_blob_radius,
                                    pre_context=np.maximum(np.asarray(context), cfg.max_partner_distance))
    if cfg.reject_probability > 0:
        # a batch "has a synapse" when some output voxel is painted; reject the others with this probability
        n_out = int(np.prod(output_shape(cfg)))
        pipeline += SeededReject(mask=k.gt_indicator, min_masked=0.5 / n_out,
                                 reject_probability=cfg.reject_probability)
    pipeline += gp.BalanceLabels(k.gt_indicator, k.indicator_weights, clipmin=cfg.balance_clip[0],
                                 clipmax=cfg.balance_clip[1])
    if cfg.num_workers > 0:
        pipeline += SeededPreCache(cfg.seed, first=first, cache_size=cfg.cache_size, num_workers=cfg.num_workers)

    request = gp.BatchRequest()
    request.add(k.raw, input_size)
    for key in (k.labels, k.gt_indicator, k.indicator_weights, k.gt_vectors, k.vectors_mask):
        request.add(key, output_size)

    train_node = None
    if trainer is not None:
        heads = head_names(cfg)
        targets = {"gt_syn_indicator": k.gt_indicator, "indicator_weights": k.indicator_weights,
                   "gt_partner_vectors": k.gt_vectors, "vectors_mask": k.vectors_mask}
        outputs = {}
        if "syn_indicator" in heads:
            outputs["syn_indicator"] = k.pred_indicator
            request.add(k.pred_indicator, output_size)
        if "partner_vectors" in heads:
            outputs["partner_vectors"] = k.pred_vectors
            request.add(k.pred_vectors, output_size)
        specs = {key: gp.ArraySpec(dtype=np.float32) for key in outputs.values()}
        train_node = KerasTrain(trainer, inputs={"raw": k.raw}, targets=targets, outputs=outputs, array_specs=specs)
        pipeline += train_node
        if snapshot_dir is not None and cfg.snapshot_every > 0:
            names = {k.raw: "volumes/raw", k.labels: "volumes/labels/neuron_ids",
                     k.gt_indicator: "volumes/gt_syn_indicator", k.indicator_weights: "volumes/indicator_weights",
                     k.gt_vectors: "volumes/gt_partner_vectors", k.vectors_mask: "volumes/vectors_mask",
                     k.pred_indicator: "volumes/pred_syn_indicator", k.pred_vectors: "volumes/pred_partner_vectors"}
            names = {key: n for key, n in names.items() if key in request}
            pipeline += IterationSnapshot(names, output_dir=str(snapshot_dir), every=cfg.snapshot_every)
    return pipeline, request, k, train_node


# --------------------------------------------------------------------------------------
# monitoring
# --------------------------------------------------------------------------------------

class GpuMonitor:
    """Memory and utilisation of the GPUs TensorFlow uses, through pynvml; inactive without GPU."""

    def __init__(self):
        self.handles = []
        try:
            import tensorflow as tf

            n = len(tf.config.list_physical_devices("GPU"))
            if n == 0:
                return
            import pynvml

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n)]
            for dev in ids[:n]:
                if dev.isdigit():
                    self.handles.append((dev, pynvml.nvmlDeviceGetHandleByIndex(int(dev))))
                else:
                    self.handles.append((dev, pynvml.nvmlDeviceGetHandleByUUID(dev)))
        except Exception as e:  # no driver / library: monitoring is optional
            logger.debug("GPU monitoring off: %s", e)
            self.handles = []

    def device_names(self) -> list[str]:
        import pynvml

        return [str(pynvml.nvmlDeviceGetName(h)) for _, h in self.handles]

    def sample(self) -> dict[str, float]:
        """``{"gpu<i>/memory_used_mib", "gpu<i>/memory_total_mib", "gpu<i>/utilization_percent"}``."""
        out = {}
        if not self.handles:
            return out
        import pynvml

        for i, (_, h) in enumerate(self.handles):
            try:
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
            except pynvml.NVMLError as e:
                logger.debug("pynvml: %s", e)
                continue
            out[f"gpu{i}/memory_used_mib"] = mem.used / 2 ** 20
            out[f"gpu{i}/memory_total_mib"] = mem.total / 2 ** 20
            out[f"gpu{i}/utilization_percent"] = float(util.gpu)
        return out


def _device_name() -> str:
    import platform

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _write_provenance(setup_dir: Path, cfg: Training, start: int, target: int, mixed: bool):
    d = setup_dir / CHECKPOINT_DIR
    d.mkdir(parents=True, exist_ok=True)
    write_config(d / "resolved_train_config.ini", cfg)
    import keras
    import tensorflow as tf

    info = {"synful_version": __version__, "git_commit": git_commit(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "device": _device_name(), "mixed_precision": mixed, "xla": cfg.xla,
            "start_iteration": start, "target_iteration": target,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": to_dict(cfg)}
    write_json(d / "provenance.json", info, default=str)


def _image_summaries(batch, keys, step: int):
    """Central z-section of raw (output ROI), ground-truth and predicted indicator, vector lengths."""
    import tensorflow as tf

    def section(a):
        a = np.asarray(a, dtype=np.float32)
        return a[a.shape[0] // 2]

    def scaled(a, lo, hi):
        return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)

    def image(tag, a):
        # rounded to uint8 here: tf.summary.image would truncate float pixels (255.5 x) instead
        pixels = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        tf.summary.image(tag, pixels[None, ..., None], step=step)

    out_roi = batch[keys.gt_indicator].spec.roi
    image("raw", scaled(section(batch[keys.raw].crop(out_roi).data), -1.0, 1.0))
    image("gt_syn_indicator", section(batch[keys.gt_indicator].data))
    if keys.pred_indicator in batch.arrays:
        image("pred_syn_indicator", section(batch[keys.pred_indicator].data))
    gt_len = np.linalg.norm(batch[keys.gt_vectors].data, axis=0)
    hi = float(gt_len.max()) or 1.0
    image("gt_partner_vector_length", scaled(section(gt_len), 0.0, hi))
    if keys.pred_vectors in batch.arrays:
        pred_len = np.linalg.norm(batch[keys.pred_vectors].data, axis=0)
        image("pred_partner_vector_length", scaled(section(pred_len), 0.0, hi))



# --------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------

def train(setup_dir, iterations: int | None = None) -> int:
    """Train the setup in ``setup_dir`` until ``iterations`` (default: the config's); return the last iteration.

    Resumes from the latest checkpoint (weights and optimiser state); returns at once when that is
    already at or past ``iterations``.  Everything is validated before training starts: the config
    (ConfigError naming keys, e.g. an ``input_shape`` too small for ``downsample_factors``), the
    manifest and its samples.  Saves a checkpoint every ``checkpoint_every`` iterations, at the end
    and on Ctrl-C, keeping the last ``keep_checkpoints``.
    """
    setup_dir = Path(setup_dir).resolve()
    cfg = read_train_config(setup_dir / "train_config.ini")
    target = cfg.iterations if iterations is None else int(iterations)
    if target < 1:
        raise ConfigError(f"iterations: must be >= 1, got {target}")
    from .models import output_shape

    output_shape(cfg)  # impossible shapes fail here, before any data is read
    latest = latest_checkpoint(setup_dir)
    start = latest[0] if latest else 0
    if start >= target:
        logger.info("%s: checkpoint at iteration %d already reaches %d", setup_dir, start, target)
        return start
    samples = _training_samples(cfg)
    trainer = _start_trainer(setup_dir, cfg, latest, target)
    pipeline, request, keys, train_node = training_pipeline(cfg, samples, trainer, setup_dir / SNAPSHOT_DIR,
                                                            first=start)
    _training_loop(setup_dir, cfg, trainer, (pipeline, request, keys, train_node), target)
    logger.info("trained %s until iteration %d", setup_dir, trainer.iteration)
    return trainer.iteration


def _start_trainer(setup_dir: Path, cfg: Training, latest, target: int) -> KerasTrainer:
    """A seeded new network and optimiser, restored from ``latest`` (``(iteration, path)`` or None); provenance written."""
    import keras

    from .models import build_unet

    start = latest[0] if latest else 0
    keras.utils.set_random_seed(cfg.seed + start)
    trainer = KerasTrainer(cfg, build_unet(cfg))
    if latest:
        trainer.restore(setup_dir, start)
        logger.info("resuming from %s (iteration %d)", latest[1], start)
    _write_provenance(setup_dir, cfg, start, target, trainer.mixed_precision)
    return trainer


def _save_checkpoint(trainer: KerasTrainer, setup_dir: Path, cfg: Training):
    trainer.save(setup_dir)
    _prune_checkpoints(setup_dir, cfg.keep_checkpoints)


def _log_scalars(losses: dict, trainer: KerasTrainer, rate: float, gpu: GpuMonitor, it: int):
    """Losses, learning rate, iterations/s and GPU state as TensorBoard scalars of step ``it``."""
    import tensorflow as tf

    for name, v in losses.items():
        tf.summary.scalar(f"loss/{name}", v, step=it)
    tf.summary.scalar("learning_rate", trainer.learning_rate, step=it)
    tf.summary.scalar("iterations_per_s", rate, step=it)
    for name, v in gpu.sample().items():
        tf.summary.scalar(name, v, step=it)


def _training_loop(setup_dir: Path, cfg: Training, trainer: KerasTrainer, built, target: int):
    """Request batches (each one training step) until ``target``, logging and checkpointing as ``cfg`` says."""
    import dask
    import gunpowder as gp
    import tensorflow as tf
    from tqdm import tqdm

    from .gp import seeded_request

    pipeline, request, keys, train_node = built
    writer = tf.summary.create_file_writer(str(setup_dir / LOG_DIR))
    gpu = GpuMonitor()
    saved = start = trainer.iteration
    last_t, last_it = time.perf_counter(), start
    # PreCache forks its workers; dask's thread pool does not survive a fork (a worker would wait
    # forever on it), so volumes are read without threads here
    with dask.config.set(scheduler="synchronous"), gp.build(pipeline), writer.as_default():
        bar = tqdm(total=target, initial=start, unit="it", desc="train", dynamic_ncols=True, mininterval=1.0)
        try:
            while trainer.iteration < target:
                # SeededPreCache seeds its workers' batches; without workers each iteration seeds its own
                batch = pipeline.request_batch(request if cfg.num_workers > 0
                                               else seeded_request(request, cfg.seed, trainer.iteration))
                it = trainer.iteration
                losses = train_node.last_losses
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss']:.4g}", refresh=False)
                if not all(np.isfinite(v) for v in losses.values()):
                    raise TrainError(f"iteration {it}: non-finite loss {losses}; last checkpoint: iteration {saved}")
                if it % cfg.log_every == 0:
                    now = time.perf_counter()
                    rate = (it - last_it) / max(now - last_t, 1e-9)
                    last_t, last_it = now, it
                    _log_scalars(losses, trainer, rate, gpu, it)
                    logger.debug("iteration %d: %s, %.3g it/s", it, losses, rate)
                if cfg.image_every and it % cfg.image_every == 0:
                    _image_summaries(batch, keys, it)
                if it % cfg.checkpoint_every == 0:
                    _save_checkpoint(trainer, setup_dir, cfg)
                    saved = it
        except KeyboardInterrupt:
            if trainer.iteration > saved:
                logger.warning("interrupted: saving iteration %d", trainer.iteration)
                _save_checkpoint(trainer, setup_dir, cfg)
            raise
        finally:
            bar.close()
            writer.flush()
    if trainer.iteration > saved:
        _save_checkpoint(trainer, setup_dir, cfg)
