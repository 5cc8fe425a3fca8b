"""Typed, validated ini configs.

Every run of synful is driven by ini files (``train_config.ini``,
``predict_config.ini``, ``worker_config.ini``).  Each ini section maps to one
frozen dataclass below; each field carries its type, default and a one-line
doc (``doc`` metadata) from which the commented templates in ``configs/`` and
the README's key reference are generated, so the three can never drift.

Reading validates everything up front and raises :class:`ConfigError` whose
message names the place, e.g.::

    experiments/exp/02_train/setup_t0/train_config.ini [Training] fmap_num: expected an integer, got 'four'

Conventions: lengths, offsets and radii are in nm; shapes in voxels; all
3-tuples are (z, y, x).  Path-valued keys that are relative resolve against
the folder of the ini file that holds them.
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import io
import math
import os
import re
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import SynfulError

__all__ = [
    "ConfigError",
    "Training",
    "Prediction",
    "Extraction",
    "Evaluation",
    "Worker",
    "PredictConfig",
    "TRAIN_SECTIONS",
    "PREDICT_SECTIONS",
    "WORKER_SECTIONS",
    "SYNAPSE_TYPES",
    "TransmitterTraining",
    "TransmitterPrediction",
    "TRANSMITTER_TRAIN_SECTIONS",
    "TRANSMITTER_PREDICT_SECTIONS",
    "read_transmitter_train_config",
    "read_transmitter_predict_config",
    "read_config",
    "read_train_config",
    "read_predict_config",
    "read_worker_config",
    "check_worker_section",
    "check_evaluation",
    "MATCHING_MODES",
    "FILTER_REDUNDANT_DIST_TYPES",
    "write_config",
    "render_template",
    "fill_template",
    "config_reference_markdown",
    "to_dict",
]


class ConfigError(SynfulError, ValueError):
    """A config value, section or file is invalid; the message names file, section and key."""


def key(default: Any = dataclasses.MISSING, doc: str = "", *, choices: tuple | None = None,
        minimum: float | None = None, maximum: float | None = None, positive: bool = False, path: bool = False):
    """Declare one config key: its default, one-line doc and constraints.

    ``minimum`` / ``maximum`` are inclusive bounds; ``positive=True`` requires
    values > 0.  Numbers must be finite (nan and inf are refused for every key).
    ``path=True`` marks a str key whose relative value resolves against the
    folder of the ini file it was read from.  A key without default is required.
    """
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum, "positive": positive,
            "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


Int3 = tuple[int, int, int]
Float3 = tuple[float, float, float]


# --------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Training:
    """[Training] of train_config.ini: network, targets, losses and the training loop."""

    manifest: str = key("../../01_data/manifest.yaml", "dataset manifest (YAML) listing the training samples", path=True)
    voxel_size: Int3 = key((40, 4, 4), "voxel size of the training data, nm (z, y, x)", minimum=1)
    input_shape: Int3 = key((42, 430, 430), "network input shape, voxels (z, y, x)", minimum=1)
    unet_model: str = key("vanilla", "U-Net variant: vanilla (one decoder) or dh_unet (one decoder per task)",
                          choices=("vanilla", "dh_unet"))
    tasks: str = key("both", "what the network predicts: both, indicator (syn_indicator only) or vectors (partner_vectors only)",
                     choices=("both", "indicator", "vectors"))
    fmap_num: int = key(4, "feature maps of the first U-Net level", minimum=1)
    fmap_inc_factor: int = key(5, "feature-map multiplier per level", minimum=1)
    downsample_factors: list[Int3] = key([(1, 3, 3), (1, 3, 3), (3, 3, 3)],
                                         "downsampling factor per level, voxels (z, y, x) each", minimum=1)
    kernel_size: Int3 = key((3, 3, 3), "convolution kernel shape, voxels (z, y, x)", minimum=1)
    level_kernel_sizes: list[Int3] = key([], "kernel shape per U-Net level, top level first, bottom level last "
                                             "(one more than downsample_factors), e.g. (1, 3, 3) at fine levels and "
                                             "(3, 3, 3) at coarse ones for cheap z context; empty: kernel_size at "
                                             "every level", minimum=1)
    num_convs: int = key(2, "convolutions per U-Net level and side", minimum=1)
    upsampling: str = key("transposed_conv", "upsampling mode: transposed_conv or nearest",
                          choices=("transposed_conv", "nearest"))
    vector_scale: float = key(1.0, "partner_vectors head output = 1x1x1 convolution x this (nm); e.g. 100 lets "
                                   "small weights reach typical partner distances", minimum=0)
    blob_radius: float = key(100.0, "radius of the post-synaptic indicator blob, nm", minimum=0)
    d_blob_radius: float = key(100.0, "radius around a post site in which partner vectors are trained, nm", minimum=0)
    max_partner_distance: float = key(0.0, "pre sites are read this far (nm) around the network output, at least "
                                      "within the network input (0, as Synful); partners farther apart get no "
                                      "vector targets; larger values make elastic augmentation slower", minimum=0)
    m_loss_type: str = key("sigmoid_ce", "indicator loss: sigmoid_ce or mse", choices=("sigmoid_ce", "mse"))
    m_loss_scale: float = key(1.0, "weight of the indicator loss", minimum=0)
    d_loss_scale: float = key(0.01, "weight of the partner-vector loss (vectors are in nm)", minimum=0)
    balance_clip: tuple[float, float] = key((0.01, 0.99), "clip range (min, max) of the class-balance fraction",
                                                     minimum=0, maximum=1)
    reject_probability: float = key(0.95, "probability to reject a batch without synapses", minimum=0, maximum=1)
    learning_rate: float = key(0.5e-4, "Adam learning rate", minimum=0)
    adam_beta1: float = key(0.95, "Adam beta1", minimum=0, maximum=1)
    adam_beta2: float = key(0.999, "Adam beta2", minimum=0, maximum=1)
    adam_epsilon: float = key(1e-8, "Adam epsilon", minimum=0)
    elastic_augment: bool = key(True, "anisotropic elastic augmentation")
    simple_augment: bool = key(True, "in-plane mirror and transpose augmentation")
    intensity_augment: bool = key(True, "z-section-wise intensity augmentation")
    defect_augment: bool = key(False, "missing / low-contrast section augmentation")
    mixed_precision: bool = key(False, "train with mixed_float16 (GPU only)")
    xla: bool = key(False, "compile the training step with XLA")
    iterations: int = key(500000, "train until this iteration (python train.py N or --iterations N overrides)",
                          minimum=1)
    checkpoint_every: int = key(2000, "save a checkpoint every N iterations", minimum=1)
    keep_checkpoints: int = key(5, "keep the last K checkpoints (0 keeps all)", minimum=0)
    snapshot_every: int = key(1000, "write a zarr snapshot every M iterations (0: never)", minimum=0)
    log_every: int = key(10, "write TensorBoard scalars every N iterations", minimum=1)
    image_every: int = key(1000, "write TensorBoard image summaries every N iterations (0: never)", minimum=0)
    cache_size: int = key(40, "batches held by PreCache", minimum=1)
    num_workers: int = key(5, "PreCache worker processes (0: load batches in the training process)", minimum=0)
    seed: int = key(42, "random seed", minimum=0)


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """[Prediction] of predict_config.ini: blockwise network inference."""

    train_setup: str = key("../../02_train/setup_t0", "training setup directory holding the checkpoints", path=True)
    iteration: int = key(doc="checkpoint iteration to predict with", minimum=1)
    split_part: str = key("test", "which split of the manifest this run predicts: validation or test",
                          choices=("validation", "test"))
    raw_container: Optional[str] = key(None, "raw container (zarr/N5/HDF5); None: the manifest's first sample of split_part",
                                       path=True)
    raw_dataset: str = key("volumes/raw", "raw dataset inside raw_container")
    roi_offset: Optional[Int3] = key(None, "offset of the ROI to predict, nm (z, y, x); None: the whole dataset")
    roi_shape: Optional[Int3] = key(None, "shape of the ROI to predict, nm (z, y, x); None: the whole dataset")
    input_shape: Optional[Int3] = key(None, "network input shape for prediction, voxels; None: the training input shape",
                                      minimum=1)
    block_factor: Int3 = key((1, 1, 1), "write block = tile stride times this, per axis (tile stride: the largest "
                             "multiple of the total downsampling not above the network output)", minimum=1)
    padding: str = key("zero", "context beyond the raw data: zero or mirror", choices=("zero", "mirror"))
    out_container: str = key("predictions.zarr", "output zarr container", path=True)
    indicator_dataset: str = key("volumes/pred_syn_indicator", "output dataset of the synapse indicator")
    vectors_dataset: str = key("volumes/pred_partner_vectors", "output dataset of the partner vectors")
    indicator_dtype: str = key("uint8", "indicator storage: uint8 (probability x 255), float16 or float32",
                               choices=("uint8", "float16", "float32"))
    vectors_dtype: str = key("float16", "vector storage: int8 (nm / vectors_scale), float16 or float32",
                             choices=("int8", "float16", "float32"))
    vectors_scale: float = key(4.0, "nm per int8 unit when vectors_dtype = int8", minimum=0)
    batch_size: int = key(1, "network inputs (tiles of a block) per network call", minimum=1)
    mixed_precision: bool = key(False, "predict with mixed_float16 (GPU only)")
    block_timeout: float = key(3600.0, "seconds one block may take before its worker is killed and the block retried",
                               minimum=1)


@dataclass(frozen=True, kw_only=True)
class Extraction:
    """[Extraction] of predict_config.ini: partners from indicator and vectors, into the store."""

    method: str = key("cc", "candidate detection: cc (connected components) or nms (maxima)", choices=("cc", "nms"))
    cc_threshold: float = key(0.5, "indicator threshold (probability 0..1)", minimum=0, maximum=1)
    nms_radius: Int3 = key((80, 80, 80), "NMS radius, nm (z, y, x)", minimum=0)
    loc_type: str = key("edt", "post site per component: edt (distance-transform maximum) or max (indicator maximum)",
                        choices=("edt", "max"))
    score_type: str = key("sum", "component score: sum, mean, max or count", choices=("sum", "mean", "max", "count"))
    vector_type: str = key("point", "pre site from the vector at the post site (point) or averaged over the component (mean)",
                           choices=("point", "mean"))
    indicator_scale: Optional[float] = key(None, "probability per stored unit of an indicator dataset that has no "
                                                 "'scale' attribute (e.g. 0.00392156862745098 = 1/255 for uint8 "
                                                 "0..255); None: such a dataset is an error", positive=True)
    partner_vectors_scale: Optional[float] = key(None, "nm per stored unit of a partner-vector dataset that has no "
                                                       "'scale' attribute; None: such a dataset is an error",
                                                 positive=True)
    compat: str = key("none", "none: our extraction; synful: reproduce the partners of Synful's original detection "
                              "code (6-connected components, EDT on the bounding box, pre sites snapped to the voxel "
                              "grid, NMS plateaus at their centre of mass, score > score_thr; see README 'Differences "
                              "from Synful')", choices=("none", "synful"))
    score_thr: float = key(0.0, "drop partners scoring below this", minimum=0)
    min_distance: float = key(0.0, "drop partners whose pre-post distance is below this, nm", minimum=0)
    max_distance: Optional[float] = key(None, "drop partners whose pre-post distance is above this, nm; None: no limit",
                                        minimum=0)
    context: Int3 = key((400, 400, 400), "read context around each extraction block, nm (z, y, x)", minimum=0)
    block_shape: Int3 = key((2000, 2000, 2000), "extraction write block, nm (z, y, x)", minimum=1)
    seg_container: Optional[str] = key(None, "segmentation container for pre/post segment ids; None: no lookup", path=True)
    seg_dataset: str = key("volumes/labels/neuron_ids", "segmentation dataset inside seg_container")
    remove_same_segment: bool = key(False, "drop partners whose pre and post segment ids are equal")
    split_by_segment: bool = key(False, "cc: split indicator components where seg_container changes segment, so "
                                        "the post sites of one synapse in touching neurons stay apart (needs "
                                        "seg_container at the voxel size of the predictions)")
    store_url: str = key("sqlite:///partners.sqlite", "result store: sqlite:///path (relative to the run dir) or mongodb://host:port")
    database: str = key("synful", "database name (MongoDB)")
    collection: Optional[str] = key(None, "result collection; None: partners_<exp>_t<T>_p<P>")
    credentials_file: Optional[str] = key(None, "file holding the MongoDB URL with credentials; never logged", path=True)
    credentials_env: Optional[str] = key(None, "environment variable holding the MongoDB URL with credentials; never logged")


#: [Evaluation] matching modes, the default first
MATCHING_MODES = ("location", "segment", "skeleton")
#: [Evaluation] filter_redundant_dist_type values, the default first
FILTER_REDUNDANT_DIST_TYPES = ("euclidean", "geodesic")


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """[Evaluation] of predict_config.ini: the synaptic-partner metric (keys as the evaluation JSON).

    ``matching`` fixes which ids a predicted and a ground-truth partner must
    share (see synful.evaluate); it never depends on the data: inputs that lack
    the ids it needs are an error.
    """

    gt_synlinks: Optional[str] = key(None, "ground-truth partners (FAFB JSON, CSV, or CREMI HDF5/zarr annotations); "
                                           "None: the partners of the manifest sample", path=True)
    pred_synlinks: Optional[str] = key(None, "predicted partners (FAFB JSON, CSV, Parquet or Feather); None: this run's result collection",
                                       path=True)
    skeleton_ids: Optional[str] = key(None, "file with one neuron (skeleton) id per line: FAFB protocol, evaluated per "
                                            "neuron (needs matching = skeleton); None: all partners at once", path=True)
    matching: str = key("location", "ids a prediction and a ground-truth partner must share to match: location "
                                    "(none, distance only), segment (pre_seg_id and post_seg_id, both sides from one "
                                    "segmentation) or skeleton (pre_skel_id and post_skel_id; needed by skeleton_ids)",
                        choices=MATCHING_MODES)
    matching_seg_container: Optional[str] = key(None, "matching = segment: the segmentation (usually the ground "
                                                      "truth's neuron labels) in which the predictions' pre and post "
                                                      "segment ids are looked up for matching only (filters keep the "
                                                      "predictions' own ids); None: the ids the predictions carry",
                                                path=True)
    matching_seg_dataset: str = key("volumes/labels/neuron_ids", "dataset of matching_seg_container")
    score_thresholds: list[float] = key([0.0], "score thresholds to sweep (keep score >= threshold)")
    matching_threshold: float = key(400.0, "maximal matching distance, nm", minimum=0)
    matching_threshold_only_pre: bool = key(False, "match on pre-site distance only")
    matching_threshold_only_post: bool = key(False, "match on post-site distance only (both false: both sites, cost their mean)")
    only_input_synapses: bool = key(False, "per neuron, evaluate only its input synapses (needs skeleton_ids)")
    only_output_synapses: bool = key(False, "per neuron, evaluate only its output synapses (needs skeleton_ids)")
    filter_same_id: bool = key(True, "drop predictions whose pre id equals their post id")
    filter_same_id_type: str = key("seg", "id type for filter_same_id: seg or skel", choices=("seg", "skel"))
    filter_redundant: bool = key(True, "keep the best-scoring prediction per cluster of nearby post sites of the same pair")
    filter_redundant_dist_thr: float = key(100.0, "clustering distance of filter_redundant, nm", minimum=0)
    filter_redundant_id_type: str = key("seg", "id type for filter_redundant: seg or skel", choices=("seg", "skel"))
    filter_redundant_ignore_ids: list[int] = key([], "ids never clustered by filter_redundant")
    filter_seg_ids: list[int] = key([0], "drop predictions whose pre or post segment id is listed (e.g. 0, background)")
    filter_redundant_dist_type: str = key("euclidean", "distance of filter_redundant: euclidean (between post sites) or "
                                                       "geodesic (along the evaluated neuron's skeleton between the "
                                                       "nodes nearest the post sites; needs skeleton_ids and skeletons)",
                                          choices=FILTER_REDUNDANT_DIST_TYPES)
    skeletons: Optional[str] = key(None, "skeleton files for geodesic distances: a folder of <skeleton_id>.swc / "
                                         "<skeleton_id>.json files, or one JSON node list (synful_fafb gt_skeletons)",
                                   path=True)
    results_dir: Optional[str] = key(None, "results folder (Synful's key); synful evaluate --out overrides it; None: "
                                           "<config stem>_evaluation beside the JSON, or <setup>/evaluation", path=True)
    multiprocess: bool = key(True, "Synful's key (thresholds in parallel processes); accepted, no effect: one pass "
                                   "evaluates all thresholds")
    roi_file: Optional[str] = key(None, "Synful's key, stored but never read by its evaluator; accepted, a value is "
                                        "ignored with a warning")
    syn_dir: Optional[str] = key(None, "Synful's key, stored but never read by its evaluator; accepted, a value is "
                                       "ignored with a warning")


@dataclass(frozen=True, kw_only=True)
class Worker:
    """[Worker] of worker_config.ini: where and with what resources a stage runs."""

    executor: str = key("local", "local (this machine) or slurm (submitit)", choices=("local", "slurm"))
    cluster_profile: Optional[str] = key(None, "cluster profile: a name in configs/clusters/ (e.g. local) or a YAML path; "
                                           "keys left at their built-in default take its values")
    singularity_container: Optional[str] = key(None, "Singularity/Apptainer image (.sif) to run in; None: no container",
                                               path=True)
    mount_dirs: list[str] = key([], "directories bound into the container, each SRC or SRC:DST[:ro]; SRC must exist")
    queue: str = key("gpu", "Slurm partition (checked with sinfo before submitting)")
    num_cpus: int = key(5, "CPUs per job", minimum=1)
    mem: str = key("25G", "memory per job (Slurm syntax, e.g. 25G)")
    gpus: int = key(1, "GPUs per job", minimum=0)
    time_limit: str = key("48:00:00", "wall-clock limit per job (HH:MM:SS or minutes)")
    num_block_workers: int = key(0, "blockwise workers; 0: local: one per GPU (NVML), or one per 2 CPUs without GPUs; "
                                 "slurm: 1", minimum=0)
    num_cache_workers: int = key(5, "data-loading processes per training job", minimum=0)
    max_retries: int = key(2, "times a failed block is retried and a failed worker replaced", minimum=0)
    account: Optional[str] = key(None, "Slurm account")
    sbatch_extra: list[str] = key([], "extra sbatch options in long form, e.g. --qos=high, --exclusive")


# the six transmitters of Eckstein et al. (Cell 2024), in Synister's order of the FAFB data
SYNAPSE_TYPES = ("gaba", "acetylcholine", "glutamate", "serotonin", "octopamine", "dopamine")


@dataclass(frozen=True, kw_only=True)
class TransmitterTraining:
    """[TransmitterTraining] of transmitter_train_config.ini: data, split, VGG3D and the training loop."""

    store_url: str = key("sqlite:///../../01_data/transmitters.sqlite",
                         "synapse/skeleton/split store: sqlite:///path (relative to this file's folder) or mongodb://host:port")
    database: str = key("synister", "database holding the synapses, skeletons, hemilineages and splits collections")
    credentials_file: Optional[str] = key(None, "file holding the MongoDB URL with credentials; never logged", path=True)
    credentials_env: Optional[str] = key(None, "environment variable holding the MongoDB URL with credentials; never logged")
    split_name: str = key("skeleton", "split (made by `synful transmitter split`) whose train part is trained on")
    raw_container: str = key("../../01_data/raw.zarr", "raw EM container (zarr/N5/HDF5) the synapse locations refer to",
                             path=True)
    raw_dataset: str = key("volumes/raw", "raw dataset inside raw_container")
    synapse_types: list[str] = key(list(SYNAPSE_TYPES), "transmitter classes, in output order")
    neither_class: bool = key(False, "add a last class 'neither' for synapses whose known transmitter is not in synapse_types")
    voxel_size: Int3 = key((40, 4, 4), "voxel size of the raw data, nm (z, y, x)", minimum=1)
    input_shape: Int3 = key((16, 160, 160), "cube centred on each synapse, voxels (z, y, x)", minimum=1)
    fmaps: int = key(12, "feature maps of the first VGG level", minimum=1)
    fmap_inc: list[int] = key([2, 2, 2, 2], "feature-map multiplier per level", minimum=1)
    n_convolutions: list[int] = key([2, 2, 2, 2], "convolutions per level", minimum=1)
    downsample_factors: list[Int3] = key([(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)],
                                         "max-pooling factor after each level, voxels (z, y, x)", minimum=1)
    fc_size: int = key(4096, "units of each of the two fully connected layers", minimum=1)
    dropout: float = key(0.5, "dropout rate before each fully connected layer", minimum=0, maximum=1)
    batch_norm: bool = key(True, "batch normalisation after each convolution")
    batch_size: int = key(8, "cubes per training step", minimum=1)
    learning_rate: float = key(1e-4, "Adam learning rate", minimum=0)
    elastic_augment: bool = key(True, "anisotropic elastic augmentation")
    simple_augment: bool = key(True, "in-plane mirror and transpose augmentation")
    intensity_augment: bool = key(True, "intensity scale and shift augmentation")
    mixed_precision: bool = key(False, "train with mixed_float16 (GPU only)")
    checkpoint_every: int = key(1000, "save a checkpoint every N iterations", minimum=1)
    keep_checkpoints: int = key(5, "keep the last K checkpoints (0 keeps all)", minimum=0)
    log_every: int = key(10, "write TensorBoard scalars every N iterations", minimum=1)
    cache_size: int = key(40, "batches held by PreCache", minimum=1)
    num_workers: int = key(5, "PreCache worker processes (0: load batches in the training process)", minimum=0)
    seed: int = key(42, "random seed", minimum=0)


@dataclass(frozen=True, kw_only=True)
class TransmitterPrediction:
    """[TransmitterPrediction] of transmitter_predict_config.ini: classify every synapse of one split part."""

    train_setup: str = key("../../02_train/setup_t0", "training setup directory holding the checkpoints", path=True)
    iteration: int = key(doc="checkpoint iteration to predict with", minimum=1)
    split_part: str = key("test", "which part of the split to predict: train, validation or test",
                          choices=("train", "validation", "test"))
    split_name: Optional[str] = key(None, "split to predict; None: the training setup's split_name")
    store_url: Optional[str] = key(None, "store of synapses and predictions; None: the training setup's")
    database: Optional[str] = key(None, "database; None: the training setup's (predictions go to <database>_predictions)")
    credentials_file: Optional[str] = key(None, "file holding the MongoDB URL with credentials; never logged", path=True)
    credentials_env: Optional[str] = key(None, "environment variable holding the MongoDB URL with credentials; never logged")
    raw_container: Optional[str] = key(None, "raw container; None: the training setup's", path=True)
    raw_dataset: Optional[str] = key(None, "raw dataset; None: the training setup's")
    batch_size: int = key(16, "cubes per network call", minimum=1)
    num_workers: int = key(1, "worker processes, each predicting a share of the synapses", minimum=1)
    overwrite: bool = key(False, "replace an existing prediction collection of this run (otherwise refuse)")
    mixed_precision: bool = key(False, "predict with mixed_float16 (GPU only)")


TRAIN_SECTIONS = (Training,)
PREDICT_SECTIONS = (Prediction, Extraction, Evaluation)
WORKER_SECTIONS = (Worker,)
TRANSMITTER_TRAIN_SECTIONS = (TransmitterTraining,)
TRANSMITTER_PREDICT_SECTIONS = (TransmitterPrediction,)


@dataclass(frozen=True, kw_only=True)
class PredictConfig:
    """The three sections of a predict_config.ini."""

    prediction: Prediction
    extraction: Extraction
    evaluation: Evaluation


# --------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is tuple:
        args = typing.get_args(tp)
        return f"{len(args)} comma-separated {_plural(args[0])}"
    if origin is list:
        inner = typing.get_args(tp)[0]
        if typing.get_origin(inner) is tuple:
            return f"a list of {len(typing.get_args(inner))}-tuples of {_plural(typing.get_args(inner)[0])}"
        return f"a comma-separated list of {_plural(inner)}"
    return str(tp)


def _plural(tp) -> str:
    return {int: "integers", float: "numbers", str: "strings"}.get(tp, str(tp))


def _split_items(text: str) -> list[str]:
    text = text.strip()
    if text.startswith(("[", "(")) and text.endswith(("]", ")")):
        text = text[1:-1]
    return [t.strip() for t in text.split(",") if t.strip() != ""]


def _parse_scalar(tp, text: str):
    text = text.strip()
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is str:
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            return text[1:-1]
        return text
    raise TypeError(tp)


def _parse_value(tp, text: str):
    """Parse ``text`` as type ``tp``; raise ValueError with a short reason."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if type(None) in typing.get_args(tp) and text.strip() in ("", "None", "none", "null"):
            return None
        errors = []
        for a in args:
            try:
                return _parse_value(a, text)
            except ValueError as e:  # try the next alternative
                errors.append(e)
        raise ValueError(" or ".join(_type_name(a) for a in args))
    if origin is tuple:
        args = typing.get_args(tp)
        items = _split_items(text)
        if len(items) != len(args):
            raise ValueError(f"{_type_name(tp)} (z, y, x)" if len(args) == 3 else _type_name(tp))
        try:
            return tuple(_parse_scalar(a, t) for a, t in zip(args, items))
        except ValueError:
            raise ValueError(_type_name(tp)) from None
    if origin is list:
        inner = typing.get_args(tp)[0]
        if typing.get_origin(inner) is tuple:
            if text.strip() in ("", "[]"):
                return []
            try:
                value = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError):
                raise ValueError(_type_name(tp)) from None
            n = len(typing.get_args(inner))
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, (list, tuple)) and len(v) == n for v in value):
                raise ValueError(_type_name(tp))
            try:
                return [tuple(_parse_scalar(a, str(t)) for a, t in zip(typing.get_args(inner), v)) for v in value]
            except ValueError:
                raise ValueError(_type_name(tp)) from None
        try:
            return [_parse_scalar(inner, t) for t in _split_items(text)]
        except ValueError:
            raise ValueError(_type_name(tp)) from None
    try:
        return _parse_scalar(tp, text)
    except ValueError:
        raise ValueError(_type_name(tp)) from None


def _format_value(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, list):
        if not value:
            return "[]"
        if isinstance(value[0], tuple):
            return "[" + ", ".join("[" + ", ".join(str(x) for x in v) + "]" for v in value) + "]"
        return ", ".join(_format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _check_bounds(meta, value, where: str):
    def scalars(v):
        if isinstance(v, (list, tuple)):
            for x in v:
                yield from scalars(x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield v

    if value is None:
        return
    lo, hi, choices = meta.get("minimum"), meta.get("maximum"), meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got '{value}'")
    for v in scalars(value):
        # nan passes every comparison and inf every open bound: refuse both first
        if not math.isfinite(v):
            raise ConfigError(f"{where}: expected a finite number, got {_format_value(value)}")
        if meta.get("positive") and not v > 0:
            raise ConfigError(f"{where}: must be > 0, got {_format_value(value)}")
        if lo is not None and v < lo:
            raise ConfigError(f"{where}: must be >= {lo:g}, got {_format_value(value)}")
        if hi is not None and v > hi:
            raise ConfigError(f"{where}: must be <= {hi:g}, got {_format_value(value)}")


def section_name(cls) -> str:
    """The ini section name of a section dataclass (its class name)."""
    return cls.__name__


def _build_section(cls, items: dict[str, str], source: str, base_dir: Path | None):
    name = section_name(cls)
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - set(fields))
    if unknown:
        raise ConfigError(f"{source} [{name}] {unknown[0]}: unknown key (known keys: {', '.join(fields)})")
    values = {}
    for fname, f in fields.items():
        where = f"{source} [{name}] {fname}"
        if fname not in items:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key ({f.metadata['doc']})")
            continue
        raw = items[fname]
        try:
            value = _parse_value(hints[fname], raw)
        except ValueError as e:
            raise ConfigError(f"{where}: expected {e}, got '{raw.strip()}'") from None
        _check_bounds(f.metadata, value, where)
        if f.metadata.get("path") and value is not None and base_dir is not None:
            value = str((base_dir / os.path.expanduser(value)).resolve())
        values[fname] = value
    return cls(**values)


def read_config(path: str | os.PathLike, sections: tuple = (), *, resolve_paths: bool = True) -> dict:
    """Read and validate an ini file holding exactly ``sections`` (section dataclasses).

    Returns ``{section class: instance}``.  Raises :class:`ConfigError` naming
    the file (and section and key) for an unreadable file, a missing or unknown
    section, an unknown or missing key, or a value of the wrong type or range.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{source}: config file not found")
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"),
                                       default_section="__no_default__")
    parser.optionxform = str  # keys are case-sensitive
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise ConfigError(f"{source}: not a valid ini file: {str(e).splitlines()[0]}") from None
    by_name = {section_name(c): c for c in sections}
    for s in parser.sections():
        if s not in by_name:
            raise ConfigError(f"{source} [{s}]: unknown section (expected {', '.join(by_name)})")
    out = {}
    base_dir = path.parent.resolve() if resolve_paths else None
    for name, cls in by_name.items():
        if not parser.has_section(name):
            raise ConfigError(f"{source} [{name}]: missing section")
        out[cls] = _build_section(cls, dict(parser.items(name)), source, base_dir)
    return out


def read_train_config(path) -> Training:
    """Read a train_config.ini ([Training])."""
    return read_config(path, TRAIN_SECTIONS)[Training]


def check_evaluation(settings: Evaluation, source: str) -> Evaluation:
    """Cross-key checks of [Evaluation] (ini and evaluation JSON); ``source`` prefixes the message.

    Returns ``settings``; raises :class:`ConfigError` naming the key at fault.
    """
    if settings.only_input_synapses and settings.only_output_synapses:
        raise ConfigError(f"{source} only_output_synapses: only_input_synapses and only_output_synapses "
                          f"cannot both be true")
    if settings.matching_threshold_only_pre and settings.matching_threshold_only_post:
        raise ConfigError(f"{source} matching_threshold_only_post: matching_threshold_only_pre and "
                          f"matching_threshold_only_post cannot both be true (both false matches on both sites)")
    if not settings.score_thresholds:
        raise ConfigError(f"{source} score_thresholds: give at least one score threshold")
    if (settings.only_input_synapses or settings.only_output_synapses) and settings.skeleton_ids is None:
        key = "only_input_synapses" if settings.only_input_synapses else "only_output_synapses"
        raise ConfigError(f"{source} {key}: needs skeleton_ids (inputs and outputs are per neuron)")
    if settings.skeleton_ids is not None and settings.matching != "skeleton":
        raise ConfigError(f"{source} matching: skeleton_ids (the FAFB per-neuron protocol) needs matching = "
                          f"skeleton, got {settings.matching}")
    if settings.matching_seg_container is not None and settings.matching != "segment":
        raise ConfigError(f"{source} matching_seg_container: looks up segment ids for matching = segment, got "
                          f"matching = {settings.matching}")
    if settings.filter_redundant and settings.filter_redundant_dist_type == "geodesic":
        if settings.skeleton_ids is None:
            raise ConfigError(f"{source} filter_redundant_dist_type: geodesic measures along each evaluated neuron's "
                              f"skeleton and needs skeleton_ids (the FAFB per-neuron protocol)")
        if settings.skeletons is None:
            raise ConfigError(f"{source} skeletons: filter_redundant_dist_type = geodesic needs skeleton files "
                              f"(a folder of <skeleton_id>.swc / .json files, or one JSON node list); no CATMAID "
                              f"server is used")
    return settings


def read_predict_config(path) -> PredictConfig:
    """Read a predict_config.ini ([Prediction], [Extraction], [Evaluation]), cross-key checks included."""
    c = read_config(path, PREDICT_SECTIONS)
    check_evaluation(c[Evaluation], f"{path} [Evaluation]")
    return PredictConfig(prediction=c[Prediction], extraction=c[Extraction], evaluation=c[Evaluation])


def read_worker_config(path) -> Worker:
    """Read a worker_config.ini ([Worker]); its strings are checked by :func:`check_worker_section`."""
    return check_worker_section(read_config(path, WORKER_SECTIONS)[Worker], f"{path} [Worker]")


#: Slurm syntax of the [Worker] strings that reach an sbatch script or a container command line
SLURM_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # partition, account
SLURM_MEM_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", re.IGNORECASE)  # 25G, 500M, 1.5T, plain MB
SLURM_TIME_RE = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")  # MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
SBATCH_OPTION_RE = re.compile(r"--([A-Za-z][A-Za-z0-9_-]*)(?:=(.+))?")  # long form only
_MOUNT_OPTIONS = ("ro", "rw")


def _control_character(text: str) -> str | None:
    """The first control or line/paragraph-separator character of ``text`` (``\\n``, ``\\r``, NUL, ...), or None."""
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)


def check_worker_section(settings: Worker, where: str = "[Worker]") -> Worker:
    """Refuse [Worker] strings that could change a generated job script or container command; return ``settings``.

    Every string (and list item) must be free of control characters: a newline in e.g. ``account``
    would end its ``#SBATCH`` line, and the next line of the script would run as a shell command.
    Each value must also have its Slurm / Singularity syntax: ``queue`` and ``account`` a name of
    letters, digits, ``_``, ``.``, ``-``; ``mem`` a positive size (``25G``, ``500M``, plain MB);
    ``time_limit`` a positive ``MM``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH[:MM[:SS]]``; each
    ``sbatch_extra`` item ``--option`` or ``--option=value``; each ``mount_dirs`` item ``SRC``,
    ``SRC:DST`` or ``SRC:DST:ro|rw`` without ``,`` (Singularity reads a comma as a second bind) and
    with an absolute ``DST``.  ``where`` prefixes messages (``FILE [Worker]``); raises
    :class:`ConfigError` naming the key and showing the value (``repr``, so a newline is visible).
    Whether the partition, image and directories exist is checked before launching
    (:func:`synful.cluster.check_worker`), not here.
    """
    def fail(key_: str, value, why: str):
        raise ConfigError(f"{where} {key_}: {why}, got {value!r}")

    for f in dataclasses.fields(Worker):
        value = getattr(settings, f.name)
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(item, str) and (c := _control_character(item)) is not None:
                fail(f.name, item, f"control character {c!r} not allowed (it would break the job script line)")
    if not SLURM_NAME_RE.fullmatch(settings.queue):
        fail("queue", settings.queue, "expected a Slurm partition name (letters, digits, '_', '.', '-')")
    if settings.account is not None and not SLURM_NAME_RE.fullmatch(settings.account):
        fail("account", settings.account, "expected a Slurm account name (letters, digits, '_', '.', '-')")
    m = SLURM_MEM_RE.fullmatch(settings.mem.strip())
    if not m or float(m.group(1)) <= 0:
        fail("mem", settings.mem, "expected a positive size like 500M or 25G")
    m = SLURM_TIME_RE.fullmatch(settings.time_limit.strip())
    if not m or not any(int(g) for g in m.groups() if g is not None):
        fail("time_limit", settings.time_limit, "expected a positive MM, HH:MM:SS or D-HH:MM:SS")
    for item in settings.sbatch_extra:
        if not SBATCH_OPTION_RE.fullmatch(item.strip()):
            fail("sbatch_extra", item, "use the long form --option=value (e.g. --qos=high) or --flag")
    for item in settings.mount_dirs:
        parts = item.split(":")
        if (not parts[0] or len(parts) > 3 or "," in item or (len(parts) > 1 and not parts[1].startswith("/"))
                or (len(parts) == 3 and parts[2] not in _MOUNT_OPTIONS)):
            fail("mount_dirs", item, "expected SRC, SRC:DST or SRC:DST:ro|rw (DST absolute, no ',')")
    return settings


def read_transmitter_train_config(path) -> TransmitterTraining:
    """Read a transmitter_train_config.ini ([TransmitterTraining])."""
    return read_config(path, TRANSMITTER_TRAIN_SECTIONS)[TransmitterTraining]


def read_transmitter_predict_config(path) -> TransmitterPrediction:
    """Read a transmitter_predict_config.ini ([TransmitterPrediction])."""
    return read_config(path, TRANSMITTER_PREDICT_SECTIONS)[TransmitterPrediction]


def to_dict(section) -> dict:
    """A section instance as a plain JSON-able dict."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(section).items()}


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------

def _hint_text(cls, f) -> str:
    tp = _hints(cls)[f.name]
    origin = typing.get_origin(tp)
    opt = origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    if opt:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    text = _type_name(tp)
    if f.metadata.get("choices"):
        text = "one of " + ", ".join(f.metadata["choices"])
    if opt:
        text += ", or None"
    return text


def render_template(sections: tuple, values: dict | None = None) -> str:
    """A commented ini text for ``sections``; ``values`` ({section name: {key: value}}) override defaults.

    Each key is preceded by a comment with its doc, type and default.  A
    required key without value is written commented out.
    """
    values = values or {}
    out = io.StringIO()
    for i, cls in enumerate(sections):
        name = section_name(cls)
        if i:
            out.write("\n")
        out.write(f"# {cls.__doc__.strip().splitlines()[0]}\n[{name}]\n")
        over = values.get(name, {})
        for f in dataclasses.fields(cls):
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            dtext = _format_value(default) if has_default else "required"
            out.write(f"# {f.metadata['doc']} ({_hint_text(cls, f)}; default: {dtext})\n")
            if f.name in over:
                out.write(f"{f.name} = {_format_value(over[f.name])}\n")
            elif has_default:
                out.write(f"{f.name} = {_format_value(default)}\n")
            else:
                out.write(f"# {f.name} =\n")
    return out.getvalue()


def fill_template(text: str, values: dict) -> str:
    """Set keys in an ini template text, keeping its comments.

    ``values`` is {section name: {key: value}}.  A key line (possibly commented
    out as ``# key =``) inside its section is replaced; a key absent from the
    section is appended to it.  Unknown sections raise ConfigError.
    """
    lines = text.splitlines()
    pending = {s: dict(kv) for s, kv in values.items()}
    current = None
    out: list[str] = []

    def flush(section):
        for k, v in pending.pop(section, {}).items():
            out.append(f"{k} = {_format_value(v)}")

    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if current is not None:
                # insert leftovers before trailing comments/blank lines of the previous section
                tail = []
                while out and (out[-1].strip() == "" or out[-1].lstrip().startswith("#")):
                    tail.insert(0, out.pop())
                flush(current)
                out.extend(tail)
            current = stripped[1:-1]
            out.append(line)
            continue
        if current in pending:
            body = stripped.lstrip("#;").strip() if stripped.startswith(("#", ";")) else stripped
            if "=" in body:
                k = body.split("=", 1)[0].strip()
                is_key_line = not stripped.startswith(("#", ";")) or body.endswith("=")
                if is_key_line and k in pending[current]:
                    out.append(f"{k} = {_format_value(pending[current].pop(k))}")
                    continue
        out.append(line)
    if current is not None:
        flush(current)
    if pending:
        raise ConfigError(f"template has no section [{next(iter(pending))}]")
    return "\n".join(out) + "\n"


def write_config(path, *sections) -> Path:
    """Write section instances (resolved values) as a commented ini file; atomically."""
    path = Path(path)
    values = {section_name(type(s)): dataclasses.asdict(s) for s in sections}
    for name, kv in values.items():
        for k, v in kv.items():
            if isinstance(v, list) and v and isinstance(v[0], list):
                kv[k] = [tuple(x) for x in v]
    text = render_template(tuple(type(s) for s in sections), values)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def config_reference_markdown() -> str:
    """The README's reference of every config key, generated from the dataclasses."""
    files = (("train_config.ini", TRAIN_SECTIONS), ("predict_config.ini", PREDICT_SECTIONS),
             ("worker_config.ini", WORKER_SECTIONS),
             ("transmitter_train_config.ini", TRANSMITTER_TRAIN_SECTIONS),
             ("transmitter_predict_config.ini", TRANSMITTER_PREDICT_SECTIONS))
    out = io.StringIO()
    for fname, sections in files:
        for cls in sections:
            out.write(f"#### `{fname}` [{section_name(cls)}]\n\n| key | type | default | meaning |\n|---|---|---|---|\n")
            for f in dataclasses.fields(cls):
                if f.default is not dataclasses.MISSING:
                    d = _format_value(f.default)
                elif f.default_factory is not dataclasses.MISSING:
                    d = _format_value(f.default_factory())
                else:
                    d = "*required*"
                out.write(f"| `{f.name}` | {_hint_text(cls, f)} | `{d}` | {f.metadata['doc']} |\n")
            out.write("\n")
    return out.getvalue()


def write_templates(out_dir) -> list[Path]:
    """Write the commented templates train/predict/worker_config.ini into ``out_dir`` (configs/)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, sections in (("train_config.ini", TRAIN_SECTIONS), ("predict_config.ini", PREDICT_SECTIONS),
                           ("worker_config.ini", WORKER_SECTIONS),
                           ("transmitter_train_config.ini", TRANSMITTER_TRAIN_SECTIONS),
                           ("transmitter_predict_config.ini", TRANSMITTER_PREDICT_SECTIONS)):
        (out_dir / name).write_text(render_template(sections))
        written.append(out_dir / name)
    return written


README_BEGIN = "<!-- config reference: generated by `python -m synful.config --readme README.md` -->"
README_END = "<!-- end of config reference -->"


def update_readme(readme) -> bool:
    """Replace the config reference between the README markers; True if the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    new = text[:start] + "\n\n" + config_reference_markdown() + text[end:]
    if new != text:
        readme.write_text(new)
    return new != text


if __name__ == "__main__":
    import argparse as _argparse

    _p = _argparse.ArgumentParser(description="regenerate configs/ templates and the README key reference")
    _p.add_argument("--templates", help="directory to write the ini templates into (configs/)")
    _p.add_argument("--readme", help="README.md whose config reference to regenerate")
    _a = _p.parse_args()
    if _a.templates:
        for _w in write_templates(_a.templates):
            print(f"wrote {_w}")
    if _a.readme:
        print(f"{_a.readme}: {'updated' if update_readme(_a.readme) else 'up to date'}")
