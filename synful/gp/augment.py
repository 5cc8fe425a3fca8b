"""Augmentations shared by the partner and the transmitter training pipelines."""

from __future__ import annotations

import math

import gunpowder as gp

__all__ = ["ELASTIC", "MAX_TRIES", "elastic_subsample", "anisotropic_elastic_augment", "required_raw_shape",
           "BoundedElasticAugment"]

# Synful's elastic deformation for anisotropic EM (voxels, z/y/x): control points every 4 sections and
# 40 pixels, in-plane jitter of 2 pixels, in-plane rotation, rare section slips and shifts.
ELASTIC = dict(control_point_spacing=(4, 40, 40), jitter_sigma=(0, 2, 2), rotation_interval=(0, math.pi / 2),
               prob_slip=0.05, prob_shift=0.05, max_misalign=10)
MAX_SUBSAMPLE = 8  # Synful's
MAX_TRIES = 100


def elastic_subsample(input_shape) -> int:
    """ElasticAugment's subsampling of its transformation grid for an input of ``input_shape`` voxels.

    The grid is subsampled along every axis alike; an axis with fewer than four grid points after
    subsampling collapses (gunpowder then reads a single section and loses graph nodes), so thin
    inputs (few z sections) get a finer grid.
    """
    return int(max(1, min(MAX_SUBSAMPLE, min(input_shape) // 4)))


def required_raw_shape(input_shape, *, elastic: bool, transpose: bool) -> tuple[int, int, int]:
    """The raw extent (voxels, z/y/x) a training sample must offer a network input of ``input_shape``.

    Without augmentation: the input itself; ``transpose`` (SimpleAugment swapping y and x) needs the
    larger in-plane side on both axes.  ``elastic`` (:data:`ELASTIC`) needs, in plane, the bounding box
    of the input rotated by 45 degrees plus 3 sigma of control-point jitter and one section slip on
    either side; rarer draws that reach further are redrawn (:class:`BoundedElasticAugment`).
    """
    z, y, x = (int(s) for s in input_shape)
    if elastic:
        side = math.ceil(math.hypot(y, x)) + 2 * math.ceil(3 * ELASTIC["jitter_sigma"][1]) + 2 * ELASTIC["max_misalign"]
        return z, side, side
    if transpose:
        return z, max(y, x), max(y, x)
    return z, y, x


class BoundedElasticAugment(gp.ElasticAugment):
    """gunpowder's ElasticAugment that redraws a transformation whose upstream request exceeds a bound.

    A random rotation, jitter or accumulation of section shifts can ask upstream for more raw than a
    sample holds, and gunpowder then fails the whole training ("Can not satisfy request").  Here a
    transformation that asks for an array ROI larger than ``limits[key]`` (nm, z/y/x) is redrawn, up
    to :data:`MAX_TRIES` times (then the request fails, naming the key and the bound).  The redraws
    use gunpowder's seeded random state, so batches stay reproducible.
    """

    def __init__(self, limits: dict, **kwargs):
        super().__init__(**kwargs)
        self.limits = {k: gp.Coordinate(v) for k, v in limits.items()}

    def prepare(self, request):
        for _ in range(MAX_TRIES):
            deps = super().prepare(request)
            too_big = [k for k, lim in self.limits.items()
                       if k in deps and deps[k].roi is not None
                       and any(s > m for s, m in zip(deps[k].roi.shape, lim))]
            if not too_big:
                return deps
        raise RuntimeError(f"ElasticAugment: {MAX_TRIES} transformations in a row need more of {too_big[0]} than "
                           f"its bound {tuple(self.limits[too_big[0]])} nm")


def anisotropic_elastic_augment(input_shape, limits: dict | None = None) -> gp.ElasticAugment:
    """A gunpowder ElasticAugment with Synful's parameters, its grid subsampled for ``input_shape`` (voxels).

    ``limits`` (array key -> largest upstream ROI shape, nm) bounds what a transformation may request
    (see :class:`BoundedElasticAugment`).
    """
    params = dict(**ELASTIC, subsample=elastic_subsample(input_shape))
    if limits:
        return BoundedElasticAugment(limits, **params)
    return gp.ElasticAugment(**params)
