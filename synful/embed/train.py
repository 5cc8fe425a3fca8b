"""Train the SimCLR encoder of an embedding training setup (resumable, TensorBoard).

Setup directory (made by ``prepare_training.py -e EXP -t T --kind embedding``)::

    02_train/setup_t<T>/
      embedding_train_config.ini   [EmbeddingTraining]
      worker_config.ini            [Worker]
      train.py                     python train.py [ITERATIONS]
      checkpoints/                 model_<it>.weights.h5 (encoder + projector), optimizer_<it>.npz (Adam state),
                                   resolved_embedding_train_config.ini, channels.json
      log/                         TensorBoard scalars: loss (NT-Xent), top1 (share of views whose most similar
                                   other view is their partner), learning_rate; train_loss.jsonl (every step)

Each step draws ``batch_size`` distinct synapses (seeded by ``seed`` and the iteration, so a resumed run
draws the batches an uninterrupted one would), makes two independent views of each (a random crop,
:func:`synful.embed.data.random_crop`, of the cube read ``crop_margin`` larger on each side, then
:func:`synful.embed.data.augment`) and takes one Adam step on the NT-Xent loss of their projections.

The cubes are read once (:class:`~synful.embed.data.CubeReader`, funlib Array reads of each cube's ROI) and
augmented in numpy: gunpowder's SimpleAugment / IntensityAugment draw one transform per request and
SpecifiedLocation picks the location, so a pipeline cannot hand out the *same* synapse twice with two
independent transforms, which SimCLR's positive pairs need.  Memory: ``channels * z * y * x * 4`` bytes per
training synapse, the cube read with its crop margins (10 x 56 x 56 x 3 channels: 376 kB).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..config import ConfigError, read_config, write_config
from ..config.sections import EMBEDDING_TRAIN_SECTIONS, EmbeddingTraining
from ..errors import SynfulError
from ..io.files import TRAIN_LOCK, atomic_write, exclusive_lock, numbered_files, numbered_path, write_json

logger = logging.getLogger(__name__)

__all__ = ["TRAIN_CONFIG", "EmbedTrainError", "read_train_setup", "checkpoint_path", "list_checkpoints",
           "latest_checkpoint", "load_synapses", "open_cube_reader", "build_simclr", "train", "submit_training"]

TRAIN_CONFIG = "embedding_train_config.ini"
CHECKPOINT_PATTERN = "model_{}.weights.h5"
OPTIMIZER_PATTERN = "optimizer_{}.npz"
#: why a checkpoint may not fit: the one architectural default that changed since the first release
MASKS_HINT = ("checkpoints written before [EmbeddingTraining] masks_as_input existed need masks_as_input = true")


class EmbedTrainError(SynfulError):
    """An embedding training setup cannot run (no synapses, too few for a batch, missing checkpoint, ...)."""


def read_train_setup(setup_dir) -> EmbeddingTraining:
    """The [EmbeddingTraining] section of ``<setup>/embedding_train_config.ini``."""
    return read_config(Path(setup_dir) / TRAIN_CONFIG, EMBEDDING_TRAIN_SECTIONS)[EmbeddingTraining]


def checkpoint_path(setup_dir, iteration: int) -> Path:
    """``<setup>/checkpoints/model_<iteration>.weights.h5``: encoder and projector weights after ``iteration`` steps."""
    return numbered_path(Path(setup_dir) / "checkpoints", CHECKPOINT_PATTERN, iteration)


def _optimizer_path(setup_dir, iteration: int) -> Path:
    return numbered_path(Path(setup_dir) / "checkpoints", OPTIMIZER_PATTERN, iteration)


def list_checkpoints(setup_dir) -> list[tuple[int, Path]]:
    """All ``(iteration, weights path)`` of a setup, by increasing iteration."""
    return numbered_files(Path(setup_dir) / "checkpoints", CHECKPOINT_PATTERN)


def latest_checkpoint(setup_dir) -> tuple[int, Path] | None:
    """``(iteration, weights path)`` of the newest checkpoint, or None."""
    found = list_checkpoints(setup_dir)
    return found[-1] if found else None


def open_document_store(cfg: EmbeddingTraining, setup_dir, source: str):
    """The document store ``store_url`` names (it must exist), errors naming ``source`` and the key."""
    from ..transmitters.db import StoreError, open_store

    try:
        return open_store(cfg.store_url, must_exist=True, base_dir=Path(setup_dir),
                          credentials_file=cfg.credentials_file, credentials_env=cfg.credentials_env)
    except StoreError as e:
        raise StoreError(f"{source} store_url: {e}") from None


def load_synapses(cfg: EmbeddingTraining, setup_dir, part: str | None, source: str):
    """The synapses of the setup's source: with ``source = transmitter`` the ``part`` of ``split_name``
    (every synapse when ``part`` or ``split_name`` is None), with ``source = partners`` the run's partners."""
    from .data import partner_synapses, transmitter_synapses

    if cfg.source == "partners":
        from ..store import open_run_store

        if cfg.partner_run is None:
            raise ConfigError(f"{source} partner_run: required with source = partners")
        if not (Path(cfg.partner_run) / "predict_config.ini").is_file():
            raise ConfigError(f"{source} partner_run: {cfg.partner_run} is not a prediction run (no predict_config.ini)")
        with open_run_store(cfg.partner_run) as store:
            return partner_synapses(store, min_score=cfg.min_score)
    with open_document_store(cfg, setup_dir, source) as store:
        return transmitter_synapses(store, cfg.database, split_name=cfg.split_name, part=part)


def open_cube_reader(cfg: EmbeddingTraining, source: str):
    """A :class:`~synful.embed.data.CubeReader` on the raw, segmentation and (optional) cleft of the config."""
    from ..io.volumes import open_volume
    from .data import CubeReader

    seg_container = cfg.seg_container or cfg.raw_container
    raw = open_volume(cfg.raw_container, cfg.raw_dataset)
    seg = open_volume(seg_container, cfg.seg_dataset)
    cleft = open_volume(seg_container, cfg.cleft_dataset) if cfg.cleft_dataset else None
    return CubeReader(raw, seg, cfg.input_shape, cfg.voxel_size, cleft=cleft, source=source)


def build_simclr(cfg: EmbeddingTraining, channels: int, dtype: str = "float32", source: str = ""):
    """``(encoder, projector, combined)``: the combined model (cube -> projection) holds both for one weights file."""
    import keras

    from .model import encoder_from_config, projector_from_config

    encoder = encoder_from_config(cfg, channels, dtype=dtype, source=source)
    head = projector_from_config(cfg, channels, dtype=dtype)
    inputs = keras.Input(shape=encoder.input_shape[1:], name="cube")
    combined = keras.Model(inputs, head(encoder(inputs)), name="simclr")
    return encoder, head, combined


def _views(cubes: np.ndarray, idx: np.ndarray, rng, cfg: EmbeddingTraining, planes) -> tuple[np.ndarray, np.ndarray]:
    """Two augmented views ``(n, z, y, x, channels)`` float32 of ``cubes[idx]``."""
    from .data import augment, random_crop

    kw = dict(flip=cfg.flip_augment, rotation_planes=planes if cfg.rotate_augment else (),
              noise_sigma=cfg.noise_sigma, contrast=cfg.contrast, brightness=cfg.brightness)
    v1 = np.stack([augment(random_crop(cubes[i], cfg.input_shape, rng), rng, **kw) for i in idx])
    v2 = np.stack([augment(random_crop(cubes[i], cfg.input_shape, rng), rng, **kw) for i in idx])
    return np.moveaxis(v1, 1, -1), np.moveaxis(v2, 1, -1)


class _Trainer:
    """The model, the optimiser and one tf.function step; saving and restoring checkpoints."""

    def __init__(self, cfg: EmbeddingTraining, channels: int, policy: str, source: str):
        import keras
        import tensorflow as tf

        from .model import nt_xent_loss

        self.cfg = cfg
        self.encoder, self.head, self.model = build_simclr(cfg, channels, policy, source)
        opt = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
        self.mixed = policy == "mixed_float16"
        self.optimizer = keras.optimizers.LossScaleOptimizer(opt) if self.mixed else opt  # float16 grads underflow
        self.optimizer.build(self.model.trainable_variables)

        def step(v1, v2):
            from keras import ops

            n = ops.shape(v1)[0]
            with tf.GradientTape() as tape:
                # both views in one pass: batch normalisation sees them together, as in SimCLR
                z = self.model(ops.concatenate([v1, v2], 0), training=True)
                z1, z2 = z[:n], z[n:]
                loss = nt_xent_loss(z1, z2, cfg.temperature)
                scaled = self.optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, self.model.trainable_variables)
            self.optimizer.apply(grads, self.model.trainable_variables)
            z = ops.cast(z, "float32")
            z = z / ops.maximum(ops.norm(z, axis=1, keepdims=True), 1e-12)
            sim = ops.matmul(z, ops.transpose(z)) - 3.0 * ops.eye(ops.shape(z)[0])
            partner = ops.concatenate([ops.arange(n, 2 * n), ops.arange(0, n)], 0)
            top1 = ops.mean(ops.cast(ops.equal(ops.argmax(sim, axis=1), partner), "float32"))
            return loss, top1

        self.step = tf.function(step, reduce_retracing=True)

    def save(self, setup_dir, iteration: int) -> Path:
        from ..models.checkpoints import save_training_state

        return save_training_state(self.model, self.optimizer, checkpoint_path(setup_dir, iteration),
                                   _optimizer_path(setup_dir, iteration))

    def restore(self, setup_dir, iteration: int):
        from ..models.checkpoints import restore_training_state

        path = checkpoint_path(setup_dir, iteration)
        try:
            restore_training_state(self.model, self.optimizer, path, _optimizer_path(setup_dir, iteration),
                                   self.cfg.learning_rate)
        except ValueError as e:
            raise EmbedTrainError(f"{path}: does not fit the network of {TRAIN_CONFIG} (changed since training? "
                                  f"{MASKS_HINT}): {e}") from None


def _prune(setup_dir, keep: int):
    if keep <= 0:
        return
    for it, path in list_checkpoints(setup_dir)[:-keep]:
        path.unlink(missing_ok=True)
        _optimizer_path(setup_dir, it).unlink(missing_ok=True)


def _truncate_loss_log(path: Path, start: int):
    """Keep the lines of iterations <= ``start`` (the checkpoint resumed from): the steps a killed run made after
    its last checkpoint are run again and must not be logged twice."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            it = int(json.loads(line)["iteration"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
        if it <= start:
            keep.append(line)
    if len(keep) != len(lines):
        atomic_write(path, lambda tmp: tmp.write_text("".join(keep)))


def train(setup_dir, iterations: int | None = None) -> dict:
    """Train the setup's encoder up to ``iterations`` (default: the config's), resuming from its newest checkpoint.

    Returns ``{"iteration", "checkpoint", "train_synapses", "losses"}`` where ``losses`` is the NT-Xent loss
    of each step run now (``[(iteration, loss), ...]``).  The same list is appended to ``log/train_loss.jsonl``.
    """
    import keras
    import tensorflow as tf

    from ..models.precision import layer_policy
    from .data import allowed_rotation_planes

    setup_dir = Path(setup_dir).resolve()
    source = f"{setup_dir / TRAIN_CONFIG} [EmbeddingTraining]"
    cfg = read_train_setup(setup_dir)
    iterations = cfg.iterations if iterations is None else int(iterations)
    if iterations < 1:
        raise EmbedTrainError(f"iterations {iterations}: must be >= 1")
    synapses = load_synapses(cfg, setup_dir, "train" if cfg.split_name else None, source)
    if len(synapses) < 2:
        raise EmbedTrainError(f"{source}: {len(synapses)} training synapse(s); NT-Xent needs at least 2")
    reader = open_cube_reader(cfg, source)
    policy = layer_policy(cfg.mixed_precision, f"{source} mixed_precision")
    keras.utils.set_random_seed(cfg.seed)
    trainer = _Trainer(cfg, reader.channels, policy, source)
    with exclusive_lock(setup_dir / TRAIN_LOCK, f"embedding training of {setup_dir}"):
        (setup_dir / "checkpoints").mkdir(exist_ok=True)
        (setup_dir / "log").mkdir(exist_ok=True)
        write_config(setup_dir / "checkpoints" / f"resolved_{TRAIN_CONFIG}", cfg)
        write_json(setup_dir / "checkpoints" / "channels.json",
                   ["raw", "pre", "post"] + (["cleft"] if reader.channels == 4 else []), indent=None)
        latest = latest_checkpoint(setup_dir)
        start = 0
        if latest is not None:
            start = latest[0]
            logger.info("resuming from %s", latest[1])
            trainer.restore(setup_dir, start)
            if start >= iterations:
                return {"iteration": start, "checkpoint": str(latest[1]), "train_synapses": len(synapses), "losses": []}
        t0 = time.perf_counter()
        reader.input_shape = tuple(s + 2 * m for s, m in zip(cfg.input_shape, cfg.crop_margin))  # room for the crops
        cubes = reader.read_many(synapses)
        logger.info("read %d training cubes %s in %.1f s", len(synapses), cubes.shape[1:], time.perf_counter() - t0)
        planes = allowed_rotation_planes(cfg.voxel_size, cfg.input_shape)
        batch = min(cfg.batch_size, len(synapses))
        writer = tf.summary.create_file_writer(str(setup_dir / "log"))
        losses, path = [], None
        t0 = time.perf_counter()
        loss_path = setup_dir / "log" / "train_loss.jsonl"
        _truncate_loss_log(loss_path, start)
        with open(loss_path, "a") as loss_log:
            for it in range(start + 1, iterations + 1):
                rng = np.random.default_rng([cfg.seed, it])
                idx = rng.choice(len(synapses), size=batch, replace=False)
                v1, v2 = _views(cubes, idx, rng, cfg, planes)
                loss, top1 = trainer.step(v1, v2)
                loss, top1 = float(loss), float(top1)
                if not np.isfinite(loss):
                    raise EmbedTrainError(f"{source}: loss {loss} at iteration {it} (lower learning_rate?)")
                losses.append((it, loss))
                loss_log.write(json.dumps({"iteration": it, "loss": loss, "top1": top1}) + "\n")
                loss_log.flush()  # a killed run keeps the lines of the steps it ran
                if it % cfg.log_every == 0 or it == iterations:
                    with writer.as_default(step=it):
                        tf.summary.scalar("loss", loss)
                        tf.summary.scalar("top1", top1)
                        tf.summary.scalar("learning_rate", float(trainer.optimizer.learning_rate.numpy()))
                    writer.flush()
                    logger.info("iteration %d: NT-Xent %.4f top1 %.3f (%.2f s/it)", it, loss, top1,
                                (time.perf_counter() - t0) / (it - start))
                if it % cfg.checkpoint_every == 0 or it == iterations:
                    path = trainer.save(setup_dir, it)
                    _prune(setup_dir, cfg.keep_checkpoints)
        writer.close()
        return {"iteration": iterations, "checkpoint": str(path), "train_synapses": len(synapses), "losses": losses}


def submit_training(setup_dir, iterations: int | None = None, *, executor: str = "slurm"):
    """Submit ``synful embed train SETUP_DIR [--iterations N]`` as one job (worker_config.ini), like the
    transmitter training; the job is recorded in ``SETUP_DIR/jobs``."""
    import dataclasses

    from ..cluster import launch, synful_command
    from ..config import read_worker_config
    from ..scaffold import run_ids

    setup_dir = Path(setup_dir).resolve()
    if not (setup_dir / TRAIN_CONFIG).is_file():
        raise EmbedTrainError(f"{setup_dir}: not an embedding training setup (no {TRAIN_CONFIG})")
    worker = dataclasses.replace(read_worker_config(setup_dir / "worker_config.ini"), executor=executor)
    args = ["embed", "train", str(setup_dir)] + ([] if iterations is None else ["--iterations", str(int(iterations))])
    return launch(worker, synful_command(worker, args), name=f"embed_{run_ids(setup_dir).name}",
                  log_dir=setup_dir / "jobs")
