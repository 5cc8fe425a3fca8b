"""Train the VGG3D transmitter classifier of a training setup (resumable, TensorBoard).

Setup directory (made by ``prepare_training.py -e EXP -t T --kind transmitter``)::

    02_train/setup_t<T>/
      transmitter_train_config.ini   [TransmitterTraining]
      worker_config.ini              [Worker]
      train.py                       python train.py [ITERATIONS] (default: [TransmitterTraining] iterations)
      checkpoints/                   model_checkpoint_<it>.keras (model + optimizer), classes.json
      log/                           TensorBoard scalars (loss, accuracy, per-class sampling)

Data: the synapses of the ``train`` part of split ``split_name`` in the store;
a sample is a cube of ``input_shape`` voxels centred on a synapse (its x, y, z
in nm), cut from ``raw_container/raw_dataset``; its label is the index of the
synapse's class in ``synapse_types`` (+ ``neither``).

The gunpowder pipeline has one branch per class (source, normalize, zero
padding, a random synapse of that class, augmentations, the constant class
label) under a RandomProvider that picks a class uniformly: every batch is
class-balanced in expectation, whatever the class frequencies.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..config import ConfigError, read_transmitter_train_config, write_config
from ..errors import SynfulError
from ..io.files import TRAIN_LOCK, atomic_write, exclusive_lock, numbered_files, numbered_path, write_json

logger = logging.getLogger(__name__)

__all__ = [
    "TRAIN_CONFIG",
    "TransmitterTrainError",
    "checkpoint_path",
    "latest_checkpoint",
    "load_training_setup",
    "build_pipeline",
    "train",
]

TRAIN_CONFIG = "transmitter_train_config.ini"
#: checkpoint file names in checkpoints/, ``{}`` the iteration (see :func:`synful.io.files.numbered_files`)
CHECKPOINT_PATTERN = "model_{}.keras"
#: the earlier name of the checkpoints, still found (resume, prediction, pruning) so existing setups keep working
OLD_CHECKPOINT_PATTERN = "model_checkpoint_{}.keras"


class TransmitterTrainError(SynfulError):
    """A transmitter training setup cannot run (no training synapses, missing checkpoint, ...)."""


def checkpoint_path(setup_dir, iteration: int) -> Path:
    """``<setup>/checkpoints/model_<iteration>.keras``, or ``model_checkpoint_<iteration>.keras`` when only that exists."""
    path = numbered_path(Path(setup_dir) / "checkpoints", CHECKPOINT_PATTERN, iteration)
    old = numbered_path(Path(setup_dir) / "checkpoints", OLD_CHECKPOINT_PATTERN, iteration)
    return old if old.is_file() and not path.is_file() else path


def list_checkpoints(setup_dir) -> list[tuple[int, Path]]:
    """All ``(iteration, path)`` in ``<setup>/checkpoints`` by increasing iteration, old names included."""
    d = Path(setup_dir) / "checkpoints"
    found = dict(numbered_files(d, OLD_CHECKPOINT_PATTERN))
    found.update(numbered_files(d, CHECKPOINT_PATTERN))  # the current name wins for an iteration saved under both
    return sorted(found.items())


def latest_checkpoint(setup_dir) -> tuple[int, Path] | None:
    """``(iteration, path)`` of the newest checkpoint in ``<setup>/checkpoints``, or None."""
    found = list_checkpoints(setup_dir)
    return found[-1] if found else None


def load_training_setup(setup_dir):
    """``(config, class names, store)`` of a transmitter training setup; the caller closes the store."""
    from .db import StoreError, open_store
    from .splits import class_names

    setup_dir = Path(setup_dir).resolve()
    cfg = read_transmitter_train_config(setup_dir / TRAIN_CONFIG)
    classes = class_names(cfg.synapse_types, cfg.neither_class)
    try:
        store = open_store(cfg.store_url, must_exist=True, base_dir=setup_dir, credentials_file=cfg.credentials_file,
                           credentials_env=cfg.credentials_env)
    except StoreError as e:
        raise StoreError(f"{setup_dir / TRAIN_CONFIG} [TransmitterTraining] store_url: {e}") from None
    return cfg, classes, store


def open_raw(container, dataset, voxel_size, source: str):
    """The raw volume as a funlib Array; ConfigError if its voxel size is not ``voxel_size``."""
    from ..io.volumes import open_volume

    raw = open_volume(container, dataset)
    if tuple(raw.voxel_size) != tuple(voxel_size):
        raise ConfigError(f"{source} voxel_size: {tuple(voxel_size)} nm, but {container}/{dataset} has voxel size "
                          f"{tuple(raw.voxel_size)} nm")
    return raw


def synapse_location(synapse: dict):
    """A synapse document's location as a (z, y, x) nm Coordinate."""
    from funlib.geometry import Coordinate

    return Coordinate(int(round(synapse["z"])), int(round(synapse["y"])), int(round(synapse["x"])))


def _class_label_node():
    import gunpowder as gp

    class ClassLabel(gp.BatchFilter):
        """Adds a nonspatial int64 array ``key`` holding the constant ``label`` to every batch."""

        def __init__(self, key, label: int):
            self.key, self.label = key, int(label)

        def setup(self):
            self.provides(self.key, gp.ArraySpec(nonspatial=True))

        def prepare(self, request):
            deps = gp.BatchRequest()
            for k, spec in request.items():
                if k != self.key:
                    deps[k] = spec.copy()
            return deps

        def process(self, batch, request):
            out = gp.Batch()
            out[self.key] = gp.Array(np.array(self.label, dtype=np.int64), gp.ArraySpec(nonspatial=True))
            return out

    return ClassLabel


def build_pipeline(cfg, raw, synapses_by_class: dict[int, list[dict]], raw_key, label_key):
    """The gunpowder training pipeline (without Stack / PreCache): one class-balanced sample per request.

    ``synapses_by_class`` maps class index -> synapse documents; classes
    without synapses are left out of the sampling.
    """
    import gunpowder as gp

    from ..gp.augment import anisotropic_elastic_augment

    ClassLabel = _class_label_node()
    branches = []
    for label, synapses in sorted(synapses_by_class.items()):
        if not synapses:
            continue
        b = (gp.ArraySource(raw_key, raw, interpolatable=True)
             + gp.Normalize(raw_key)
             + gp.Pad(raw_key, None)
             + gp.SpecifiedLocation([synapse_location(s) for s in synapses], choose_randomly=True))
        if cfg.elastic_augment:
            b += anisotropic_elastic_augment(cfg.input_shape)
        if cfg.simple_augment:
            b += gp.SimpleAugment(transpose_only=(1, 2), mirror_only=(1, 2))
        if cfg.intensity_augment:
            b += gp.IntensityAugment(raw_key, 0.9, 1.1, -0.1, 0.1)
        b += ClassLabel(label_key, label)
        branches.append(b)
    if not branches:
        raise TransmitterTrainError("no training synapses")
    return tuple(branches) + gp.RandomProvider() + gp.IntensityScaleShift(raw_key, 2, -1)


def write_scalars(writer, scalars: dict, step: int):
    """``{tag: value}`` as TensorBoard scalars of ``step`` in ``writer`` (flushed)."""
    import tensorflow as tf

    with writer.as_default(step=step):
        for tag, value in scalars.items():
            tf.summary.scalar(tag, float(value))
    writer.flush()


def _model_policy(model) -> str:
    """The dtype policy of a VGG3D's hidden layers (its logits are always float32)."""
    return model.get_layer("l0_conv0").dtype_policy.name


def _compile(model, cfg):
    import keras

    optimizer = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
    if _model_policy(model) == "mixed_float16":  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])


def _prune(setup_dir, keep: int):
    if keep <= 0:
        return
    for _, path in list_checkpoints(setup_dir)[:-keep]:
        path.unlink(missing_ok=True)


def _save(model, setup_dir, iteration: int, keep: int) -> Path:
    path = atomic_write(checkpoint_path(setup_dir, iteration), model.save)  # complete checkpoints only
    _prune(setup_dir, keep)
    return path


def train(setup_dir, iterations: int | None = None) -> dict:
    """Train the setup's VGG3D up to ``iterations`` (default: the config's ``iterations``), resuming from
    its newest checkpoint.

    Returns ``{"iteration", "checkpoint", "classes", "train_synapses"}``.  A
    checkpoint (model and optimizer state) is written every
    ``checkpoint_every`` iterations and at the end; TensorBoard scalars go to
    ``<setup>/log``.
    """
    import keras

    from ..models.precision import layer_policy

    setup_dir = Path(setup_dir).resolve()
    source = str(setup_dir / TRAIN_CONFIG)
    cfg, classes, store = load_training_setup(setup_dir)
    iterations = cfg.iterations if iterations is None else int(iterations)
    if iterations < 1:
        raise TransmitterTrainError(f"iterations {iterations}: must be >= 1")
    synapses, by_class = _training_synapses(cfg, classes, store, source)
    raw = open_raw(cfg.raw_container, cfg.raw_dataset, cfg.voxel_size, f"{source} [TransmitterTraining]")

    policy = layer_policy(cfg.mixed_precision, f"{source} [TransmitterTraining] mixed_precision")
    keras.utils.set_random_seed(cfg.seed)
    with exclusive_lock(setup_dir / TRAIN_LOCK, f"transmitter training of {setup_dir}"):
        _write_setup_records(setup_dir, cfg, classes, source)
        latest = latest_checkpoint(setup_dir)
        start, model = _resume_or_build(latest, cfg, classes, policy)
        if start >= iterations:
            logger.info("already trained to iteration %d >= %d", start, iterations)
            return {"iteration": start, "checkpoint": str(latest[1]), "classes": classes,
                    "train_synapses": len(synapses)}
        keys = _keys()
        path = _training_loop(setup_dir, cfg, classes, model, build_pipeline(cfg, raw, by_class, *keys), keys, start,
                              iterations)
    return {"iteration": iterations, "checkpoint": str(path), "classes": classes, "train_synapses": len(synapses)}


def _keys():
    """The gunpowder keys of raw and class label."""
    import gunpowder as gp

    return gp.ArrayKey("RAW"), gp.ArrayKey("LABEL")


def _training_synapses(cfg, classes: list[str], store, source: str) -> tuple[list[dict], dict[int, list[dict]]]:
    """The split's train synapses (closing ``store``) and them by class index; an error when there are none."""
    from .splits import split_synapses

    with store:
        synapses = split_synapses(store, cfg.database, cfg.split_name, "train", synapse_types=cfg.synapse_types,
                                  neither_class=cfg.neither_class)
    if not synapses:
        raise TransmitterTrainError(f"{source}: split {cfg.split_name!r} has no train synapses of classes "
                                    f"{', '.join(classes)}")
    by_class = {i: [s for s in synapses if s["label"] == c] for i, c in enumerate(classes)}
    missing = [classes[i] for i, s in by_class.items() if not s]
    if missing:
        logger.warning("no training synapses of class(es) %s: they are never sampled", ", ".join(missing))
    return synapses, by_class


def _write_setup_records(setup_dir: Path, cfg, classes: list[str], source: str):
    """``checkpoints/resolved_transmitter_train_config.ini`` and ``checkpoints/classes.json`` (which must not change)."""
    (setup_dir / "checkpoints").mkdir(exist_ok=True)
    write_config(setup_dir / "checkpoints" / "resolved_transmitter_train_config.ini", cfg)
    classes_file = setup_dir / "checkpoints" / "classes.json"
    if classes_file.is_file() and json.loads(classes_file.read_text()) != classes:
        raise TransmitterTrainError(f"{source}: classes {classes} differ from those of the existing checkpoints "
                                    f"{json.loads(classes_file.read_text())} (start a new setup)")
    write_json(classes_file, classes, indent=None)


def _resume_or_build(latest, cfg, classes: list[str], policy: str):
    """``(start iteration, compiled model)``: the ``latest`` checkpoint (rebuilt when its layer policy is not
    ``policy``, keeping the weights) or a new VGG3D."""
    import keras

    from .model import vgg3d_from_config

    if latest is None:
        model = vgg3d_from_config(cfg, len(classes), dtype=policy)
        _compile(model, cfg)
        return 0, model
    start, path = latest
    logger.info("resuming from %s", path)
    model = keras.models.load_model(path)
    if _model_policy(model) != policy:
        logger.warning("%s was trained with layer policy %s, now %s: its weights are kept, the optimizer "
                       "state starts anew", path, _model_policy(model), policy)
        weights = model.get_weights()
        model = vgg3d_from_config(cfg, len(classes), dtype=policy)
        model.set_weights(weights)
        _compile(model, cfg)
    return start, model


def _training_loop(setup_dir: Path, cfg, classes: list[str], model, pipeline, keys, start: int,
                   iterations: int) -> Path:
    """Train on batches ``start + 1 .. iterations``, logging and checkpointing; return the last checkpoint."""
    import dask
    import gunpowder as gp
    import tensorflow as tf

    from ..gp.precache import SeededPreCache, seeded_request

    raw_key, label_key = keys
    pipeline += gp.Stack(cfg.batch_size)
    if cfg.num_workers > 0:
        pipeline += SeededPreCache(cfg.seed, first=start, cache_size=cfg.cache_size, num_workers=cfg.num_workers)
    voxel_size = gp.Coordinate(cfg.voxel_size)
    input_size = gp.Coordinate(cfg.input_shape) * voxel_size

    request = gp.BatchRequest()
    request.add(raw_key, input_size)
    request[label_key] = gp.ArraySpec(nonspatial=True)
    writer = tf.summary.create_file_writer(str(setup_dir / "log"))
    path = None
    t0, seen = time.perf_counter(), np.zeros(len(classes), dtype=np.int64)
    # PreCache forks its workers; dask's thread pool does not survive a fork, so volumes are read without threads
    with dask.config.set(scheduler="synchronous"), gp.build(pipeline):
        for it in range(start + 1, iterations + 1):
            # without workers, batch `it` is drawn with its own seed; SeededPreCache seeds its workers' batches
            batch = pipeline.request_batch(request if cfg.num_workers > 0 else seeded_request(request, cfg.seed, it))
            x = batch[raw_key].data.astype(np.float32)[..., None]  # (b, z, y, x, 1)
            y = batch[label_key].data.astype(np.int64).reshape(-1)
            seen += np.bincount(y, minlength=len(classes))
            model.reset_metrics()  # report this batch's loss and accuracy, not a running mean
            logs = model.train_on_batch(x, y, return_dict=True)
            if it % cfg.log_every == 0 or it == iterations:
                scalars = {"loss": logs["loss"], "accuracy": logs["accuracy"],
                           **{f"sampled/{c}": n / max(1, seen.sum()) for c, n in zip(classes, seen)}}
                write_scalars(writer, scalars, it)
                logger.info("iteration %d: loss %.4f accuracy %.3f (%.2f s/it)", it, logs["loss"], logs["accuracy"],
                            (time.perf_counter() - t0) / (it - start))
            if it % cfg.checkpoint_every == 0 or it == iterations:
                path = _save(model, setup_dir, it, cfg.keep_checkpoints)
    writer.close()
    return path


def submit_training(setup_dir, iterations: int | None = None, *, executor: str = "slurm"):
    """Submit ``synful transmitter train SETUP_DIR [--iterations N]`` as one job, like partner training
    (without ``iterations``, the job trains to the config's ``iterations``).

    Uses the setup's worker_config.ini (``executor`` overrides its executor)
    through :func:`synful.cluster.launch`; the job is recorded in
    ``SETUP_DIR/jobs/jobs.jsonl`` so ``synful status`` shows it.  Training
    resumes from the newest checkpoint, so resubmitting continues a run.
    """
    import dataclasses

    from ..cluster import launch, synful_command
    from ..config import read_worker_config
    from ..scaffold import run_ids

    setup_dir = Path(setup_dir).resolve()
    if not (setup_dir / TRAIN_CONFIG).is_file():
        raise TransmitterTrainError(f"{setup_dir}: not a transmitter training setup (no {TRAIN_CONFIG})")
    worker = dataclasses.replace(read_worker_config(setup_dir / "worker_config.ini"), executor=executor)
    args = ["transmitter", "train", str(setup_dir)] + ([] if iterations is None else
                                                        ["--iterations", str(int(iterations))])
    return launch(worker, synful_command(worker, args), name=f"train_{run_ids(setup_dir).name}",
                  log_dir=setup_dir / "jobs")
