"""Training: a gunpowder pipeline feeding a Keras U-Net, resumable, with TensorBoard and snapshots.

``train(setup_dir)`` reads ``setup_dir/train_config.ini`` ([Training]) and trains until
``iterations``; everything it writes lives in the setup directory::

    checkpoints/model_<it>.weights.h5    network weights (what prediction loads)
    checkpoints/optimizer_<it>.npz       Adam state, for an exact resume
    checkpoints/resolved_train_config.ini, checkpoints/provenance.json
    log/                                 TensorBoard (losses, learning rate, iterations/s, GPU, images)
    log/train.log                        the training log (what ``synful status`` tails for local training)
    snapshots/batch_<it>.zarr            raw, targets, weights, predictions

A rerun resumes from the latest checkpoint; the last ``keep_checkpoints`` are kept.  Batches are
loaded ahead by ``[Worker] num_cache_workers`` PreCache processes of the setup's worker_config.ini.  The gunpowder
pipeline is built in :mod:`synful.train_data`; TensorBoard, GPU and provenance records in
:mod:`synful.train_monitor`.

Losses (Synful's): the indicator loss is sigmoid cross-entropy of the ``syn_indicator`` logits
(or MSE of their sigmoid) against the 0/1 post-synaptic blob, weighted per voxel by the
class-balancing weights and averaged over voxels of non-zero weight; the vector loss is the MSE
(nm^2) of ``partner_vectors`` over the voxels of the vectors mask; the total is
``m_loss_scale * m_loss + d_loss_scale * d_loss`` over the heads of ``tasks``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from .config import ConfigError, Training, Worker, read_train_config, read_worker_config
from .errors import SynfulError
from .io.files import TRAIN_LOCK, exclusive_lock, numbered_files, numbered_path
# the pipeline and the monitoring live in their own modules; their names stay importable from here
from .train_data import (DEFECTS, INTENSITY, Keys, _check_sample_shape, _training_samples,  # noqa: F401
                         sample_raw_shape, training_pipeline)
from .train_monitor import GpuMonitor, _device_name, _image_summaries, _log_scalars, _write_provenance  # noqa: F401

__all__ = [
    "TrainError",
    "CHECKPOINT_DIR",
    "LOG_DIR",
    "SNAPSHOT_DIR",
    "checkpoint_path",
    "optimizer_state_path",
    "list_checkpoints",
    "latest_checkpoint",
    "cache_workers",
    "load_model_for_prediction",
    "compute_losses",
    "KerasTrainer",
    "training_pipeline",
    "train",
]

logger = logging.getLogger(__name__)
# the loss lines every log_every iterations: to log/train.log only, the console has the progress bar
progress_logger = logging.getLogger(__name__ + ".progress")
progress_logger.propagate = False
progress_logger.setLevel(logging.INFO)

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "log"
#: the text log of a training run in LOG_DIR (beside the TensorBoard events)
LOG_FILE = "train.log"
SNAPSHOT_DIR = "snapshots"
#: checkpoint file names in CHECKPOINT_DIR, ``{}`` the iteration (see :func:`synful.io.files.numbered_files`)
CHECKPOINT_PATTERN = "model_{}.weights.h5"
OPTIMIZER_PATTERN = "optimizer_{}.npz"


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
        from .models.checkpoints import save_training_state

        return save_training_state(self.model, self.optimizer, checkpoint_path(setup_dir, self.iteration),
                                   optimizer_state_path(setup_dir, self.iteration))

    def restore(self, setup_dir, iteration: int):
        """Load the weights (and, when saved, the optimiser state) of ``iteration``."""
        from .models.checkpoints import restore_training_state

        restore_training_state(self.model, self.optimizer, checkpoint_path(setup_dir, iteration),
                               optimizer_state_path(setup_dir, iteration), self.cfg.learning_rate)
        self.iteration = int(iteration)


def _prune_checkpoints(setup_dir, keep: int):
    if keep <= 0:
        return
    for it, path in list_checkpoints(setup_dir)[:-keep]:
        path.unlink(missing_ok=True)
        optimizer_state_path(setup_dir, it).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------

def cache_workers(setup_dir) -> int:
    """PreCache worker processes of a setup: ``[Worker] num_cache_workers`` of its worker_config.ini.

    Its cluster profile applies as for jobs (a key at its built-in default takes the profile's
    value); a setup without worker_config.ini gets the built-in default.
    """
    path = Path(setup_dir) / "worker_config.ini"
    if not path.is_file():
        return Worker().num_cache_workers
    from .cluster.profiles import resolve_worker

    return resolve_worker(read_worker_config(path))[0].num_cache_workers


def train(setup_dir, iterations: int | None = None) -> int:
    """Train the setup in ``setup_dir`` until ``iterations`` (default: the config's); return the last iteration.

    Resumes from the latest checkpoint (weights and optimiser state); returns at once when that is
    already at or past ``iterations``.  Everything is validated before training starts: the config
    (ConfigError naming keys, e.g. an ``input_shape`` too small for ``downsample_factors``), the
    manifest and its samples.  Saves a checkpoint every ``checkpoint_every`` iterations, at the end
    and on Ctrl-C, keeping the last ``keep_checkpoints``.  Appends its log to ``log/train.log``.
    """
    from .preflight import check_training_setup

    setup_dir = Path(setup_dir).resolve()
    target = None if iterations is None else int(iterations)
    if target is not None and target < 1:
        raise ConfigError(f"iterations: must be >= 1, got {target}")
    # the checks `synful validate` runs: config, output shape (naming the file), manifest and samples
    cfg = check_training_setup(setup_dir)
    target = cfg.iterations if target is None else target
    with exclusive_lock(setup_dir / TRAIN_LOCK, f"training of {setup_dir}"):
        return _train_locked(setup_dir, cfg, target)


def _train_locked(setup_dir: Path, cfg: Training, target: int) -> int:
    latest = latest_checkpoint(setup_dir)
    start = latest[0] if latest else 0
    if start >= target:
        logger.info("%s: checkpoint at iteration %d already reaches %d", setup_dir, start, target)
        return start
    workers = cache_workers(setup_dir)
    samples = _training_samples(cfg)
    with _LogFile(setup_dir / LOG_DIR / LOG_FILE):
        logger.info("training %s from iteration %d to %d (%d cache workers)", setup_dir, start, target, workers)
        trainer = _start_trainer(setup_dir, cfg, latest, target)
        pipeline, request, keys, train_node = training_pipeline(cfg, samples, trainer, setup_dir / SNAPSHOT_DIR,
                                                                first=start, num_cache_workers=workers)
        _training_loop(setup_dir, cfg, trainer, (pipeline, request, keys, train_node), target, workers)
        logger.info("trained %s until iteration %d", setup_dir, trainer.iteration)
    return trainer.iteration


class _LogFile:
    """Context: the ``synful`` loggers also write (INFO and up) to ``path``, appending; a failed run logs its error."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path, encoding="utf-8")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        self.logger = logging.getLogger("synful")
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        progress_logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)  # the file gets INFO even when the console is quieter
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            self.logger.error("training stopped: %s: %s", exc_type.__name__, exc)
        self.logger.removeHandler(self.handler)
        progress_logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        self.handler.close()
        return False


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
    _write_provenance(setup_dir / CHECKPOINT_DIR, cfg, start, target, trainer.mixed_precision)
    return trainer


def _save_checkpoint(trainer: KerasTrainer, setup_dir: Path, cfg: Training):
    trainer.save(setup_dir)
    _prune_checkpoints(setup_dir, cfg.keep_checkpoints)


def _loss_terms(cfg: Training, losses: dict) -> dict[str, str]:
    """``{"loss", "m", "d"}``: the total and the weighted loss terms of the heads trained, formatted."""
    terms = {"loss": losses["loss"]}
    if "m_loss" in losses:
        terms["m"] = cfg.m_loss_scale * losses["m_loss"]
    if "d_loss" in losses:
        terms["d"] = cfg.d_loss_scale * losses["d_loss"]
    return {k: f"{v:.4g}" for k, v in terms.items()}


def _training_loop(setup_dir: Path, cfg: Training, trainer: KerasTrainer, built, target: int, workers: int):
    """Request batches (each one training step) until ``target``, logging and checkpointing as ``cfg`` says.

    The progress bar shows the weighted loss terms (``m``: ``m_loss_scale * m_loss``, ``d``:
    ``d_loss_scale * d_loss``) beside their sum, so their balance is visible; every ``log_every``
    iterations they go to TensorBoard and the log.
    """
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
                batch = pipeline.request_batch(request if workers > 0
                                               else seeded_request(request, cfg.seed, trainer.iteration))
                it = trainer.iteration
                losses = train_node.last_losses
                bar.update(1)
                bar.set_postfix(_loss_terms(cfg, losses), refresh=False)
                if not all(np.isfinite(v) for v in losses.values()):
                    raise TrainError(f"iteration {it}: non-finite loss {losses}; last checkpoint: iteration {saved}")
                if it % cfg.log_every == 0:
                    now = time.perf_counter()
                    rate = (it - last_it) / max(now - last_t, 1e-9)
                    last_t, last_it = now, it
                    _log_scalars(losses, trainer, rate, gpu, it)
                    progress_logger.info("iteration %d: %s, %.3g it/s", it,
                                ", ".join(f"{k} {v}" for k, v in _loss_terms(cfg, losses).items()), rate)
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
