"""Classify every synapse of one split part with a trained VGG3D; one collection per run.

Prediction setup (``prepare_prediction.py -e EXP -t T -i ITER [-v]`` on a
transmitter training setup)::

    03_predict/setup_t<T>_p<P>/
      transmitter_predict_config.ini   [TransmitterPrediction]
      transmitter_prediction.json      written last: run metadata, marks the run complete

Output: collection ``<split>_<exp>_t<T>_p<P>`` of database ``<db>_predictions``
(MongoDB), or table ``"<db>_predictions.<split>_<exp>_t<T>_p<P>"`` (SQLite),
one document per synapse::

    synapse_id, skeleton_id, x, y, z (nm), label (true class name),
    probabilities (list, in class order), predicted (class name), predicted_index

A complete collection is never replaced unless ``overwrite``; an incomplete
one (a run that died) is resumed, skipping synapses already predicted.
Synapses are split into ``num_workers`` shares, each predicted by its own
process (own model, own store connection) in batches of ``batch_size``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..config import read_transmitter_predict_config, read_transmitter_train_config, to_dict, write_config
from ..errors import SynfulError
from ..io.files import write_json
from ..models.unet import normalize_raw as _normalize_raw
from .db import StoreError, claim_run_collection, open_store, prediction_collection_name
from .train import TRAIN_CONFIG, checkpoint_path, open_raw, synapse_location

logger = logging.getLogger(__name__)

__all__ = ["PREDICT_CONFIG", "RUN_FILE", "TransmitterPredictError", "RunSettings", "run_settings",
           "normalize_raw", "read_cubes", "load_classifier", "predict", "read_predictions"]

PREDICT_CONFIG = "transmitter_predict_config.ini"
RUN_FILE = "transmitter_prediction.json"


class TransmitterPredictError(SynfulError):
    """A prediction run cannot start (missing checkpoint, empty split part, ...)."""


class RunSettings:
    """Everything a prediction run (and its evaluation) needs, resolved from both configs."""

    def __init__(self, predict_dir):
        from ..scaffold import run_ids

        self.predict_dir = Path(predict_dir).resolve()
        self.config = read_transmitter_predict_config(self.predict_dir / PREDICT_CONFIG)
        p = self.config
        self.train_dir = Path(p.train_setup)
        self.train_config = t = read_transmitter_train_config(self.train_dir / TRAIN_CONFIG)
        own_store = p.store_url is not None
        self.store_kwargs = dict(
            url=p.store_url if own_store else t.store_url,
            base_dir=self.predict_dir if own_store else self.train_dir,
            credentials_file=p.credentials_file if own_store else t.credentials_file,
            credentials_env=p.credentials_env if own_store else t.credentials_env)
        self.database = p.database or t.database
        self.split_name = p.split_name or t.split_name
        self.split_part = p.split_part
        self.raw_container = p.raw_container or t.raw_container
        self.raw_dataset = p.raw_dataset or t.raw_dataset
        self.checkpoint = checkpoint_path(self.train_dir, p.iteration)
        classes_file = self.train_dir / "checkpoints" / "classes.json"
        if not self.checkpoint.is_file() or not classes_file.is_file():
            raise TransmitterPredictError(f"{self.predict_dir / PREDICT_CONFIG} [TransmitterPrediction] iteration: "
                                          f"no checkpoint {self.checkpoint}")
        self.classes = json.loads(classes_file.read_text())
        self.run_name = run_ids(self.predict_dir).name
        self.predictions_database = f"{self.database}_predictions"
        self.collection = prediction_collection_name(self.split_name, self.run_name)

    def open_store(self):
        # the synapses and the split must be there already; only the prediction collection is new
        try:
            return open_store(self.store_kwargs["url"], must_exist=True, base_dir=self.store_kwargs["base_dir"],
                              credentials_file=self.store_kwargs["credentials_file"],
                              credentials_env=self.store_kwargs["credentials_env"])
        except StoreError as e:
            source = (f"{self.predict_dir / PREDICT_CONFIG} [TransmitterPrediction]" if self.config.store_url
                      is not None else f"{self.train_dir / TRAIN_CONFIG} [TransmitterTraining]")
            raise StoreError(f"{source} store_url: {e}") from None


def run_settings(predict_dir) -> RunSettings:
    """The resolved settings of the prediction setup ``predict_dir``."""
    return RunSettings(predict_dir)


def normalize_raw(data: np.ndarray) -> np.ndarray:
    """Raw grey values to float32 in [-1, 1], exactly as in training (gunpowder Normalize, then 2x - 1).

    Integer data is divided by its dtype's maximum (uint8: 255); float data
    is taken as already in [0, 1].  (:func:`synful.models.normalize_raw` for any dtype.)
    """
    return _normalize_raw(data, uint8_only=False)


def read_cubes(raw, synapses: list[dict], input_shape) -> np.ndarray:
    """Cubes ``(n, z, y, x, 1)`` float32 centred on the synapses (zero raw outside the volume, as in training)."""
    from funlib.geometry import Coordinate, Roi

    vs = Coordinate(raw.voxel_size)
    size = Coordinate(input_shape) * vs
    out = np.empty((len(synapses), *input_shape, 1), np.float32)
    for i, s in enumerate(synapses):
        # same snapping as gunpowder's SpecifiedLocation: the ROI offset is rounded to the voxel grid
        begin = synapse_location(s) - size / 2
        begin = Coordinate(int(v * round((b - o) / v)) + o for b, v, o in zip(begin, vs, raw.offset))
        data = raw.to_ndarray(Roi(begin, size), fill_value=0)
        # gunpowder pads with 0 after Normalize, which becomes -1 here too
        out[i, ..., 0] = normalize_raw(data)
    return out


def load_classifier(settings: RunSettings):
    """The run's VGG3D with the checkpoint's weights, its layers computing in the policy that
    ``[TransmitterPrediction] mixed_precision`` asks for (float16 only where a GPU is visible)."""
    from ..models.precision import layer_policy
    from .model import vgg3d_from_config

    policy = layer_policy(settings.config.mixed_precision,
                          f"{settings.predict_dir / PREDICT_CONFIG} [TransmitterPrediction] mixed_precision")
    # built anew from the training config: a model loaded from its file keeps the policy it was saved with
    model = vgg3d_from_config(settings.train_config, len(settings.classes), dtype=policy)
    try:
        model.load_weights(settings.checkpoint)
    except ValueError as e:
        raise TransmitterPredictError(f"{settings.checkpoint}: does not fit the network of "
                                      f"{settings.train_dir / TRAIN_CONFIG} (changed since training?): {e}") from None
    return model


def run_signature(settings: RunSettings) -> str:
    """A digest of what a run's predictions are computed from: the checkpoint's bytes, the classes, the
    network and raw of the training config, the raw dataset and the layer precision.  Paths enter only by
    name, so a moved experiment keeps its signature."""
    import hashlib

    from ..models.precision import layer_policy

    h = hashlib.sha256()
    with open(settings.checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    t = settings.train_config
    h.update(json.dumps({
        "classes": settings.classes, "input_shape": list(t.input_shape), "voxel_size": list(t.voxel_size),
        "raw": [Path(settings.raw_container).name, settings.raw_dataset],
        "policy": layer_policy(settings.config.mixed_precision, "[TransmitterPrediction] mixed_precision"),
    }, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _predict_share(settings_dir: str, synapses: list[dict], worker: int, signature: str = "") -> int:
    """Predict ``synapses`` and insert their documents; runs in a worker process."""
    s = RunSettings(settings_dir)
    model = load_classifier(s)
    raw = open_raw(s.raw_container, s.raw_dataset, s.train_config.voxel_size,
                   f"{s.predict_dir / PREDICT_CONFIG} [TransmitterPrediction] raw_container")
    input_shape = tuple(model.input_shape[1:4])
    done = 0
    with s.open_store() as store:
        coll = store.collection(s.predictions_database, s.collection)
        bs = s.config.batch_size
        for i in range(0, len(synapses), bs):
            batch = synapses[i:i + bs]
            logits = np.asarray(model.predict_on_batch(read_cubes(raw, batch, input_shape)), np.float64)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            docs = []
            for syn, p in zip(batch, probs):
                k = int(np.argmax(p))
                docs.append({"synapse_id": syn["synapse_id"], "skeleton_id": syn["skeleton_id"],
                             "x": syn["x"], "y": syn["y"], "z": syn["z"], "label": syn.get("label"),
                             "probabilities": [float(v) for v in p], "predicted": s.classes[k],
                             "predicted_index": k, "run_signature": signature})
            coll.insert_many(docs)
            done += len(docs)
            logger.debug("worker %d: %d/%d synapses", worker, done, len(synapses))
    return done


def predict(predict_dir, *, overwrite: bool | None = None) -> dict:
    """Predict the split part of the setup in ``predict_dir``; return (and write) the run metadata.

    ``overwrite`` (default: the config's ``overwrite``) allows replacing a
    complete collection of this run; without it StoreError is raised.
    """
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from .splits import split_synapses

    s = RunSettings(predict_dir)
    overwrite = s.config.overwrite if overwrite is None else bool(overwrite)
    run_file = s.predict_dir / RUN_FILE
    t0 = time.perf_counter()
    with s.open_store() as store:
        synapses = split_synapses(store, s.database, s.split_name, s.split_part,
                                  synapse_types=s.train_config.synapse_types,
                                  neither_class=s.train_config.neither_class)
        signature = run_signature(s)
        _, done = claim_run_collection(store, s.predictions_database, s.collection, run_file, signature,
                                       overwrite=overwrite, config_name=PREDICT_CONFIG, kind="prediction",
                                       redo=f" for {s.checkpoint.name}")
        done_ids = {d["synapse_id"] for d in done}
        store_url = store.url
    if not synapses:
        raise TransmitterPredictError(f"split {s.split_name!r} has no {s.split_part} synapses")
    todo = [syn for syn in synapses if syn["synapse_id"] not in done_ids]
    if done_ids:
        logger.info("resuming: %d of %d synapses already predicted", len(done_ids), len(synapses))
    workers = max(1, min(s.config.num_workers, len(todo)))
    shares = [todo[w::workers] for w in range(workers)]
    if workers == 1:
        counts = [_predict_share(str(s.predict_dir), todo, 0, signature)] if todo else [0]
    else:
        # spawn: TensorFlow is not fork-safe
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            counts = list(ex.map(_predict_share, [str(s.predict_dir)] * workers, shares, range(workers),
                                 [signature] * workers))
    meta = {
        "collection": s.collection,
        "database": s.predictions_database,
        "store": store_url,
        "split": s.split_name,
        "split_part": s.split_part,
        "checkpoint": str(s.checkpoint),
        "run_signature": signature,
        "classes": s.classes,
        "synapses": len(synapses),
        "predicted_now": int(sum(counts)),
        "workers": workers,
        "wall_seconds": time.perf_counter() - t0,
        "config": to_dict(s.config),
    }
    write_config(s.predict_dir / f"resolved_{PREDICT_CONFIG}", s.config)
    write_json(run_file, meta)
    return meta


def read_predictions(predict_dir) -> tuple[list[dict], list[str]]:
    """``(prediction documents, class names)`` of the complete run in ``predict_dir``."""
    s = RunSettings(predict_dir)
    if not (s.predict_dir / RUN_FILE).is_file():
        raise TransmitterPredictError(f"{s.predict_dir}: no complete prediction run ({RUN_FILE} missing; "
                                      f"run `synful transmitter predict {s.predict_dir}`)")
    with s.open_store() as store:
        return store.collection(s.predictions_database, s.collection).find(), s.classes
