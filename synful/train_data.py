"""The gunpowder pipeline of partner training: samples, augmentations, targets, the Keras train node.

:func:`training_pipeline` builds it from the ``[Training]`` config and the samples of the
manifest (:func:`_training_samples`); :mod:`synful.train` runs it.
"""

from __future__ import annotations

import numpy as np

from .config import ConfigError, Training

__all__ = ["INTENSITY", "DEFECTS", "Keys", "sample_raw_shape", "training_pipeline"]

# Synful's elastic augmentation (voxels: control points every 4 sections / 40 pixels, in-plane
# jitter only), rotation in-plane, occasional slipped / shifted sections.
INTENSITY = dict(scale_min=0.9, scale_max=1.1, shift_min=-0.1, shift_max=0.1)
DEFECTS = dict(prob_missing=0.03, prob_low_contrast=0.01, contrast_scale=0.5)


def _training_samples(cfg: Training):
    from .io.manifest import open_sample, read_manifest, read_sample_partners
    from .preflight import check_raw_dtype
    from .train import TrainError  # defined there, where callers catch it

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
        check_raw_dtype(arrays.raw.dtype, f"{s.container}/{s.raw_dataset}", TrainError)
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
    from .train import TrainError

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


def training_pipeline(cfg: Training, samples, trainer=None, snapshot_dir=None, first: int = 0,
                      num_cache_workers: int = 0):
    """The gunpowder pipeline and request of one training iteration: ``(pipeline, request, keys, train_node)``.

    ``samples``: ``(Sample, SampleArrays, partners)`` triples.  Per sample: raw (normalised to
    [0, 1]; zero-padded by the network context), labels and the partner graphs, then a random
    location whose network output lies inside the sample ROI (its input may reach beyond);
    over all samples a random provider, the augmentations of ``cfg``, raw mapped to [-1, 1]
    (:data:`synful.models.RAW_SCALE` / ``RAW_SHIFT``), the indicator and vector targets, rejection
    of batches without synapse (``reject_probability``), class balancing (``balance_clip``) and, with
    ``num_cache_workers`` > 0 (``[Worker] num_cache_workers``, see :func:`synful.train.cache_workers`),
    :class:`synful.gp.SeededPreCache` with that many processes (batch ``n`` drawn with seed ``batch_seed(cfg.seed, n)``,
    counting from ``first``; without workers, the caller seeds each request with
    :func:`synful.gp.seeded_request`).  With a ``trainer`` a :class:`synful.gp.KerasTrain` node follows, and with a
    ``snapshot_dir`` an :class:`synful.gp.IterationSnapshot`.  Without a trainer the request holds
    raw and targets only (to inspect the data).
    """
    import gunpowder as gp

    from .gp import SeededPreCache
    from .models import output_shape

    k = Keys()
    vs = gp.Coordinate(cfg.voxel_size)
    input_size = gp.Coordinate(cfg.input_shape) * vs
    output_size = gp.Coordinate(output_shape(cfg)) * vs
    context = (input_size - output_size) / 2

    pipeline = _sample_sources(samples, k, context) + gp.RandomProvider()
    pipeline = _augmentations(cfg, samples, k, pipeline)
    pipeline = _targets(cfg, k, context, pipeline)
    if num_cache_workers > 0:
        pipeline += SeededPreCache(cfg.seed, first=first, cache_size=cfg.cache_size, num_workers=num_cache_workers)

    request = gp.BatchRequest()
    request.add(k.raw, input_size)
    for key in (k.labels, k.gt_indicator, k.indicator_weights, k.gt_vectors, k.vectors_mask):
        request.add(key, output_size)

    train_node = None
    if trainer is not None:
        pipeline, train_node = _train_and_snapshot(cfg, k, trainer, snapshot_dir, pipeline, request, output_size)
    return pipeline, request, k, train_node


def _sample_sources(samples, k: Keys, context) -> tuple:
    """Per sample: raw (normalised to [0, 1], zero-padded by the network context), labels and partners
    at a random location."""
    import gunpowder as gp

    from .gp import PartnerSource

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
    return tuple(sources)


def _augmentations(cfg: Training, samples, k: Keys, pipeline):
    """The augmentations ``cfg`` switches on, then raw mapped to [-1, 1]."""
    import gunpowder as gp

    from .gp.augment import anisotropic_elastic_augment
    from .models import RAW_SCALE, RAW_SHIFT

    if cfg.elastic_augment:
        # the smallest sample bounds what a deformation may ask for (checked against the input shape up front)
        smallest = np.min([sample_raw_shape(cfg, arrays.roi) for _, arrays, _ in samples], axis=0)
        pipeline += anisotropic_elastic_augment(cfg.input_shape, limits={
            k.raw: gp.Coordinate(smallest) * gp.Coordinate(cfg.voxel_size)})
    if cfg.simple_augment:
        pipeline += gp.SimpleAugment(mirror_only=[1, 2], transpose_only=[1, 2])
    if cfg.intensity_augment:
        pipeline += gp.IntensityAugment(k.raw, slab=(1, -1, -1), **INTENSITY)
    if cfg.defect_augment:
        pipeline += gp.DefectAugment(k.raw, axis=0, **DEFECTS)
    return pipeline + gp.IntensityScaleShift(k.raw, RAW_SCALE, RAW_SHIFT)


def _targets(cfg: Training, k: Keys, context, pipeline):
    """Indicator and vector targets, rejection of batches without synapse, class balancing."""
    import gunpowder as gp

    from .gp import AddPartnerVectorMap, AddSynapseIndicator, SeededReject
    from .models import output_shape

    pipeline += AddSynapseIndicator(k.post, k.labels, k.gt_indicator, radius=cfg.blob_radius)
    pipeline += AddPartnerVectorMap(k.pre, k.post, k.labels, k.gt_vectors, k.vectors_mask,
                                    radius=cfg.d_blob_radius,
                                    pre_context=np.maximum(np.asarray(context), cfg.max_partner_distance))
    if cfg.reject_probability > 0:
        # a batch "has a synapse" when some output voxel is painted; reject the others with this probability
        n_out = int(np.prod(output_shape(cfg)))
        pipeline += SeededReject(mask=k.gt_indicator, min_masked=0.5 / n_out,
                                 reject_probability=cfg.reject_probability)
    return pipeline + gp.BalanceLabels(k.gt_indicator, k.indicator_weights, clipmin=cfg.balance_clip[0],
                                       clipmax=cfg.balance_clip[1])


def _train_and_snapshot(cfg: Training, k: Keys, trainer, snapshot_dir, pipeline, request, output_size):
    """``(pipeline, train node)``: a KerasTrain node (its outputs added to ``request``) and, with a
    ``snapshot_dir``, an IterationSnapshot."""
    import gunpowder as gp

    from .gp import IterationSnapshot, KerasTrain
    from .models import head_names

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
    return pipeline, train_node
