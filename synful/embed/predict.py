"""One embedding per synapse, into a per-run collection of the document store.

Prediction setup (``prepare_prediction.py -e EXP -t T -i ITER`` on an embedding training setup)::

    03_predict/setup_t<T>_p<P>/
      embedding_predict_config.ini   [EmbeddingPrediction]
      embedding_run.json             written last: run metadata, marks the run complete
      evaluation/                    ``synful embed evaluate``: JSON, UMAP and PCA PNGs

Output: collection ``<exp>_t<T>_p<P>`` of database ``<database>_embeddings`` (MongoDB), or table
``"<database>_embeddings.<exp>_t<T>_p<P>"`` (SQLite), one document per synapse::

    synapse_id (int64; the partner id with source = partners), x, y, z (nm, the cube centre),
    labels ({transmitter, skeleton} or {score, pre_segment, post_segment}),
    embedding (base64 of the little-endian float16 vector), dim, run_signature

A complete collection is never replaced unless ``overwrite``; an incomplete one (a run that died) is
resumed when its documents carry this run's signature, and refused otherwise.  Synapses are embedded in
batches of ``batch_size`` cubes per network call (the parallelism is the batch, no daisy).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..config import read_config, to_dict, write_config
from ..config.sections import EMBEDDING_PREDICT_SECTIONS, EmbeddingPrediction
from ..errors import SynfulError
from ..io.files import write_json
from .train import MASKS_HINT, TRAIN_CONFIG, build_simclr, checkpoint_path, load_synapses, open_cube_reader, read_train_setup

logger = logging.getLogger(__name__)

__all__ = ["PREDICT_CONFIG", "RUN_FILE", "EmbedPredictError", "RunSettings", "encode_vector", "decode_vector",
           "embedding_documents", "read_embedding_documents", "embed_cubes", "load_encoder", "predict",
           "read_embeddings"]

PREDICT_CONFIG = "embedding_predict_config.ini"
RUN_FILE = "embedding_run.json"


class EmbedPredictError(SynfulError):
    """An embedding run cannot start or be read (missing checkpoint, incomplete run, ...)."""


def encode_vector(v) -> str:
    """A vector as base64 of its little-endian float16 bytes (256 bytes -> 344 characters for 128 dims)."""
    return base64.b64encode(np.asarray(v, dtype="<f2").tobytes()).decode("ascii")


def decode_vector(text: str, dim: int) -> np.ndarray:
    """The float16 vector of :func:`encode_vector`; EmbedPredictError if it does not hold ``dim`` values."""
    v = np.frombuffer(base64.b64decode(text), dtype="<f2")
    if v.shape != (dim,):
        raise EmbedPredictError(f"embedding of {v.size} values, expected dim {dim}")
    return v.astype(np.float16)


def embedding_documents(synapses, vectors: np.ndarray, signature: str) -> list[dict]:
    """Documents (see the module doc) of ``synapses`` (:class:`~synful.embed.data.Synapse`) and their
    ``(n, dim)`` vectors (stored as float16)."""
    vectors = np.asarray(vectors)
    docs = []
    for s, v in zip(synapses, vectors):
        z, y, x = (int(c) for c in s.centre)
        docs.append({"synapse_id": int(s.id), "x": x, "y": y, "z": z, "labels": dict(s.labels),
                     "embedding": encode_vector(v), "dim": int(vectors.shape[1]), "run_signature": signature})
    return docs


def read_embedding_documents(collection) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """``(ids int64 (n,), embeddings float16 (n, dim), documents)`` of a collection, by synapse id."""
    docs = sorted(collection.find(), key=lambda d: d["synapse_id"])
    if not docs:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float16), []
    ids = np.array([d["synapse_id"] for d in docs], dtype=np.int64)
    dims = {d["dim"] for d in docs}
    if len(dims) != 1:
        raise EmbedPredictError(f"{collection.name}: embeddings of several dimensions {sorted(dims)}")
    dim = dims.pop()
    return ids, np.stack([decode_vector(d["embedding"], dim) for d in docs]), docs


class RunSettings:
    """The resolved settings of an embedding prediction setup."""

    def __init__(self, predict_dir):
        from ..scaffold import run_ids

        self.predict_dir = Path(predict_dir).resolve()
        self.source = f"{self.predict_dir / PREDICT_CONFIG} [EmbeddingPrediction]"
        self.config: EmbeddingPrediction = read_config(self.predict_dir / PREDICT_CONFIG,
                                                        EMBEDDING_PREDICT_SECTIONS)[EmbeddingPrediction]
        self.train_dir = Path(self.config.train_setup)
        self.train_source = f"{self.train_dir / TRAIN_CONFIG} [EmbeddingTraining]"
        self.train_config = read_train_setup(self.train_dir)
        self.checkpoint = checkpoint_path(self.train_dir, self.config.iteration)
        if not self.checkpoint.is_file():
            raise EmbedPredictError(f"{self.source} iteration: no checkpoint {self.checkpoint}")
        self.run_name = run_ids(self.predict_dir).name
        self.database = f"{self.train_config.database}_embeddings"
        self.collection = self.run_name

    def open_store(self):
        from .train import open_document_store

        return open_document_store(self.train_config, self.train_dir, self.train_source)

    def synapses(self):
        part = None if self.config.split_part == "all" else self.config.split_part
        if part is not None and self.train_config.split_name is None:
            raise EmbedPredictError(f"{self.source} split_part: {part}, but {self.train_source} split_name is None")
        return load_synapses(self.train_config, self.train_dir, part, self.train_source)

    def policy(self) -> str:
        from ..models.precision import layer_policy

        return layer_policy(self.config.mixed_precision, f"{self.source} mixed_precision")


def load_encoder(train_config, checkpoint, channels: int, dtype: str = "float32"):
    """The trained encoder (the checkpoint holds encoder and projector), its layers of policy ``dtype``."""
    _, _, combined = build_simclr(train_config, channels, dtype)
    try:
        combined.load_weights(str(checkpoint))
    except ValueError as e:
        raise EmbedPredictError(f"{checkpoint}: does not fit the network of its {TRAIN_CONFIG} "
                                f"(changed since training? {MASKS_HINT}): {e}") from None
    return combined.get_layer("encoder")


def embed_cubes(encoder, reader, synapses, batch_size: int) -> np.ndarray:
    """``(n, features)`` float32 encoder outputs of ``synapses``' cubes, ``batch_size`` per network call."""
    out = []
    for i in range(0, len(synapses), batch_size):
        cubes = np.moveaxis(reader.read_many(synapses[i:i + batch_size]), 1, -1)
        out.append(np.asarray(encoder.predict_on_batch(cubes), np.float32))
    dim = encoder.output_shape[-1]
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def run_signature(settings: RunSettings, channels: int) -> str:
    """A digest of what the embeddings are computed from: the checkpoint's bytes, cube shape, voxel size,
    channels, the raw and segmentation dataset names and the layer precision (paths by name only)."""
    h = hashlib.sha256()
    with open(settings.checkpoint, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    t = settings.train_config
    h.update(json.dumps({"input_shape": list(t.input_shape), "voxel_size": list(t.voxel_size), "channels": channels,
                         "raw": [Path(t.raw_container).name, t.raw_dataset],
                         "seg": [Path(t.seg_container or t.raw_container).name, t.seg_dataset, t.cleft_dataset],
                         "policy": settings.policy()}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def predict(predict_dir, *, overwrite: bool | None = None) -> dict:
    """Embed the synapses of the setup in ``predict_dir``; return (and write) the run metadata.

    ``overwrite`` (default: the config's) allows replacing a complete collection of this run; without
    it a StoreError naming the collection is raised.
    """
    from ..transmitters.db import claim_run_collection

    s = RunSettings(predict_dir)
    overwrite = s.config.overwrite if overwrite is None else bool(overwrite)
    run_file = s.predict_dir / RUN_FILE
    t0 = time.perf_counter()
    reader = open_cube_reader(s.train_config, s.train_source)
    signature = run_signature(s, reader.channels)
    synapses = s.synapses()
    with s.open_store() as store:
        coll, done = claim_run_collection(store, s.database, s.collection, run_file, signature,
                                          overwrite=overwrite, config_name=PREDICT_CONFIG, kind="embedding")
        done_ids = {d["synapse_id"] for d in done}
        todo = [syn for syn in synapses if syn.id not in done_ids]
        if done_ids:
            logger.info("resuming: %d of %d synapses already embedded", len(done_ids), len(synapses))
        encoder = load_encoder(s.train_config, s.checkpoint, reader.channels, s.policy())
        bs = s.config.batch_size
        t_net = time.perf_counter()
        for i in range(0, len(todo), bs):
            batch = todo[i:i + bs]
            coll.insert_many(embedding_documents(batch, embed_cubes(encoder, reader, batch, bs), signature))
        t_net = time.perf_counter() - t_net
        store_url = store.url
    meta = {"collection": s.collection, "database": s.database, "store": store_url,
            "split_part": s.config.split_part, "checkpoint": str(s.checkpoint), "run_signature": signature,
            "synapses": len(synapses), "embedded_now": len(todo), "dim": int(encoder.output_shape[-1]),
            "synapses_per_second": len(todo) / t_net if todo and t_net > 0 else None,
            "wall_seconds": time.perf_counter() - t0, "config": to_dict(s.config)}
    write_config(s.predict_dir / f"resolved_{PREDICT_CONFIG}", s.config)
    write_json(run_file, meta)
    return meta


def read_embeddings(predict_dir) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """``(ids, float16 embeddings, documents)`` of the complete run in ``predict_dir``."""
    s = RunSettings(predict_dir)
    if not (s.predict_dir / RUN_FILE).is_file():
        raise EmbedPredictError(f"{s.predict_dir}: no complete embedding run ({RUN_FILE} missing; run "
                                f"`synful embed predict {s.predict_dir}`)")
    with s.open_store() as store:
        return read_embedding_documents(store.collection(s.database, s.collection))
