"""The config sections: one frozen dataclass per ini section, each key declared with :func:`~.keys.key`.

Conventions: lengths, offsets and radii are in nm; shapes in voxels; all
3-tuples are (z, y, x).  Path-valued keys that are relative resolve against
the folder of the file that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from .keys import Int3, key


@dataclass(frozen=True, kw_only=True)
class Training:
    """[Training] of train_config.ini: network, targets, losses and the training loop.

    The loss defaults balance the two heads at the start of training: the vector head predicts in
    units of ``vector_scale`` = 100 nm, its initial loss is about the mean squared partner-vector
    component (3e3 to 5e3 nm^2 measured on ``synful synthetic`` data at 40 x 4 x 4 nm), and
    ``d_loss_scale`` = 1e-4 brings it to 0.3 to 0.5, the order of the initial indicator
    cross-entropy (0.6 to 0.7).
    """

    #: keys that moved or were renamed: old key -> where it is now (reading the old key is an error)
    MOVED: ClassVar[dict] = {"num_workers": "[Worker] num_cache_workers of worker_config.ini"}

    manifest: str = key("../../01_data/manifest.yaml", "dataset manifest (YAML) listing the training samples", path=True)
    voxel_size: Int3 = key((40, 4, 4), "voxel size of the training data, nm (z, y, x)", minimum=1)
    input_shape: Int3 = key((42, 430, 430), "network input shape, voxels (z, y, x)", minimum=1)
    unet_model: str = key("vanilla", "U-Net variant: vanilla (one decoder), dh_unet (one decoder per task) or "
                                     "paired (two independent U-Nets on the same input, one per task)",
                          choices=("vanilla", "dh_unet", "paired"))
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
    vector_scale: float = key(100.0, "nm per unit of the partner_vectors head (its 1x1x1 convolution times this): "
                                     "100 lets small weights reach typical partner distances", minimum=0)
    blob_radius: float = key(100.0, "radius of the post-synaptic indicator blob, nm", minimum=0)
    d_blob_radius: float = key(100.0, "radius around a post site in which partner vectors are trained, nm", minimum=0)
    max_partner_distance: float = key(0.0, "pre sites are read this far (nm) around the network output, at least "
                                      "within the network input (0, as Synful); partners farther apart get no "
                                      "vector targets; larger values make elastic augmentation slower", minimum=0)
    m_loss_type: str = key("sigmoid_ce", "indicator loss: sigmoid_ce or mse", choices=("sigmoid_ce", "mse"))
    m_loss_scale: float = key(1.0, "weight of the indicator loss", minimum=0)
    d_loss_scale: float = key(1e-4, "weight of the partner-vector loss, an MSE in nm^2 (1e-4: 0.3 to 0.5 at the "
                                    "start, the order of the indicator loss)", minimum=0)
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
    seed: int = key(42, "random seed", minimum=0)
    upsampling_relu: bool = key(False, "ReLU after the upsampling convolution (funlib.learn.tensorflow's U-Net, "
                                       "so Synful's networks, have one)")
    paired_fmap_num: int = key(0, "unet_model = paired: feature maps of the first level of the partner_vectors "
                                  "U-Net; 0: fmap_num", minimum=0)
    paired_fmap_inc_factor: int = key(0, "unet_model = paired: feature-map multiplier per level of the "
                                         "partner_vectors U-Net; 0: fmap_inc_factor", minimum=0)
    crop_to_factor: bool = key(False, "centre-crop each upsampled feature map so that what the level's convolutions "
                                      "leave is a multiple of the downsampling below it (funlib.learn.tensorflow's "
                                      "crop_to_factor, in its later U-Nets)")


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """[Prediction] of predict_config.ini: blockwise network inference."""

    #: renamed keys: old key -> new key (reading the old key is an error)
    MOVED: ClassVar[dict] = {"vectors_scale": "vectors_int8_nm"}

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
    vectors_dtype: str = key("float16", "vector storage: int8 (nm / vectors_int8_nm), float16 or float32",
                             choices=("int8", "float16", "float32"))
    vectors_int8_nm: float = key(4.0, "nm per stored int8 unit when vectors_dtype = int8", minimum=0)
    batch_size: int = key(1, "network inputs (tiles of a block) per network call", minimum=1)
    mixed_precision: bool = key(False, "predict with mixed_float16 (GPU only)")
    block_timeout: float = key(3600.0, "seconds one block may take before its worker is killed and the block retried",
                               minimum=1)
    tissue_mask_container: Optional[str] = key(None, "container of a low-resolution tissue mask (nonzero = tissue, "
                                               "any voxel size); blocks without tissue are neither predicted nor "
                                               "extracted; None: every block", path=True)
    tissue_mask_dataset: str = key("volumes/mask", "tissue mask dataset inside tissue_mask_container")


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
    score_thresholds: Optional[list[float]] = key(None, "score thresholds to sweep (keep score >= threshold); None: "
                                                        "derived from the data, the distinct 0, 5, ..., 100 % "
                                                        "quantiles of the scores left by filter_seg_ids and "
                                                        "filter_same_id, rounded down to 3 significant digits "
                                                        "(scores are sums, means, maxima or counts, see "
                                                        "[Extraction] score_type, so no fixed list fits every run)")
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
    num_cache_workers: int = key(5, "PreCache worker processes of a training job, loading batches ahead (0: load "
                                    "them in the training process)", minimum=0)
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
    iterations: int = key(500000, "train until this iteration (python train.py N or --iterations N overrides)",
                          minimum=1)
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


@dataclass(frozen=True, kw_only=True)
class EmbeddingTraining:
    """[EmbeddingTraining] of embedding_train_config.ini: synapses, channels, 3D ResNet encoder and SimCLR training."""

    source: str = key("transmitter", "where the synapses come from: transmitter (the store's synapses table, one "
                                     "site each) or partners (a prediction run's partner collection, pre and post "
                                     "sites)", choices=("transmitter", "partners"))
    store_url: str = key("sqlite:///../../01_data/transmitters.sqlite",
                         "document store of the synapses (source = transmitter) and of the embeddings: "
                         "sqlite:///path (relative to this file's folder) or mongodb://host:port")
    database: str = key("synister", "database of the synapses and splits (embeddings go to <database>_embeddings)")
    credentials_file: Optional[str] = key(None, "file holding the MongoDB URL with credentials; never logged", path=True)
    credentials_env: Optional[str] = key(None, "environment variable holding the MongoDB URL with credentials; never logged")
    split_name: Optional[str] = key("skeleton", "source = transmitter: train on this split's train part only "
                                                "(None: on every synapse of the store)")
    partner_run: Optional[str] = key(None, "source = partners: the prediction run directory (03_predict/setup_t<T>_p<P>) "
                                           "whose partner collection holds the synapses", path=True)
    min_score: float = key(0.0, "source = partners: only partners with at least this score", minimum=0)
    raw_container: str = key("../../01_data/raw.zarr", "raw EM container (zarr/N5/HDF5) the synapse sites refer to",
                             path=True)
    raw_dataset: str = key("volumes/raw", "raw dataset inside raw_container")
    seg_container: Optional[str] = key(None, "neuron segmentation container; None: raw_container", path=True)
    seg_dataset: str = key("volumes/labels/neuron_ids", "segmentation dataset (uint64 neuron ids, 0 = background)")
    cleft_dataset: Optional[str] = key(None, "optional cleft dataset in seg_container (non-zero = cleft): adds a "
                                             "fourth channel (features are also averaged over the cleft)")
    voxel_size: Int3 = key((40, 4, 4), "voxel size of raw and segmentation, nm (z, y, x)", minimum=1)
    input_shape: Int3 = key((8, 48, 48), "cube centred on each synapse, voxels (z, y, x)", minimum=1)
    fmaps: int = key(8, "feature maps of the ResNet stem", minimum=1)
    fmap_inc: int = key(2, "feature-map multiplier per ResNet stage", minimum=1)
    downsample_factors: list[Int3] = key([(1, 2, 2), (1, 2, 2), (2, 2, 2)],
                                         "stride of each ResNet stage after the first, voxels (z, y, x)", minimum=1)
    blocks_per_stage: int = key(1, "residual blocks per ResNet stage", minimum=1)
    masks_as_input: bool = key(False, "the mask channels enter the convolutions too (false: the convolutions see raw "
                                      "only and the masks only choose where features are averaged, so two views "
                                      "cannot be matched by the neurons' shapes)")
    projection_hidden: int = key(128, "units of the projector's hidden layer", minimum=1)
    projection_dim: int = key(128, "output dimension of the projector (the NT-Xent space)", minimum=1)
    temperature: float = key(0.1, "NT-Xent temperature (SimCLR: 0.07 to 0.1 at small batches)", positive=True)
    batch_size: int = key(32, "synapses per step (each gives two views: 2 x batch_size cubes)", minimum=2)
    learning_rate: float = key(1e-3, "Adam learning rate", minimum=0)
    crop_margin: Int3 = key((1, 12, 12), "random-crop augmentation: each view is the cube shifted by up to this many "
                                         "voxels (z, y, x) either way, independently per view (SimCLR's random crop)",
                            minimum=0)
    flip_augment: bool = key(True, "random mirroring along z, y and x (valid at any anisotropy)")
    rotate_augment: bool = key(True, "random 90-degree rotations in y-x; in the z planes too only when voxel_size is "
                                     "isotropic and the cube a cube")
    noise_sigma: float = key(0.05, "largest standard deviation of the Gaussian noise added to raw (raw in [-1, 1])",
                             minimum=0)
    contrast: float = key(0.2, "raw contrast factor drawn from [1 - contrast, 1 + contrast]", minimum=0, maximum=1)
    brightness: float = key(0.2, "raw brightness shift drawn from [-brightness, brightness]", minimum=0)
    mixed_precision: bool = key(False, "train with mixed_float16 (GPU only)")
    iterations: int = key(10000, "train until this iteration (python train.py N or --iterations N overrides)",
                          minimum=1)
    checkpoint_every: int = key(1000, "save a checkpoint every N iterations", minimum=1)
    keep_checkpoints: int = key(5, "keep the last K checkpoints (0 keeps all)", minimum=0)
    log_every: int = key(10, "write TensorBoard scalars every N iterations", minimum=1)
    seed: int = key(42, "random seed (network initialisation, batches, augmentations)", minimum=0)


@dataclass(frozen=True, kw_only=True)
class EmbeddingPrediction:
    """[EmbeddingPrediction] of embedding_predict_config.ini: one embedding per synapse, and its evaluation."""

    train_setup: str = key("../../02_train/setup_t0", "training setup directory holding the checkpoints", path=True)
    iteration: int = key(doc="checkpoint iteration to embed with", minimum=1)
    split_part: str = key("all", "synapses to embed: all, or one part (train, validation, test) of the training "
                                 "setup's split", choices=("all", "train", "validation", "test"))
    batch_size: int = key(64, "cubes per network call", minimum=1)
    overwrite: bool = key(False, "replace an existing embedding collection of this run (otherwise refuse)")
    mixed_precision: bool = key(False, "embed with mixed_float16 (GPU only)")
    probe_folds: int = key(5, "evaluation: folds of the cross-validated linear probe", minimum=2)
    transmitter_run: Optional[str] = key(None, "evaluation: a transmitter prediction run (03_predict/setup_t<T>_p<P>) "
                                               "whose supervised accuracy on its split part is compared with the "
                                               "linear probe's on the same synapses", path=True)
    seed: int = key(0, "evaluation: seed of the probe folds, UMAP and the Hopkins sample", minimum=0)


EMBEDDING_TRAIN_SECTIONS = (EmbeddingTraining,)
EMBEDDING_PREDICT_SECTIONS = (EmbeddingPrediction,)
