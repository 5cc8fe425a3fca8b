"""Augmentations shared by the partner and the transmitter training pipelines."""

from __future__ import annotations

import math

import gunpowder as gp

__all__ = ["ELASTIC", "elastic_subsample", "anisotropic_elastic_augment"]

# Synful's elastic deformation for anisotropic EM (voxels, z/y/x): control points every 4 sections and
# 40 pixels, in-plane jitter of 2 pixels, in-plane rotation, rare section slips and shifts.
ELASTIC = dict(control_point_spacing=(4, 40, 40), jitter_sigma=(0, 2, 2), rotation_interval=(0, math.pi / 2),
               prob_slip=0.05, prob_shift=0.05, max_misalign=10)
MAX_SUBSAMPLE = 8  # Synful's


def elastic_subsample(input_shape) -> int:
    """ElasticAugment's subsampling of its transformation grid for an input of ``input_shape`` voxels.

    The grid is subsampled along every axis alike; an axis with fewer than four grid points after
    subsampling collapses (gunpowder then reads a single section and loses graph nodes), so thin
    inputs (few z sections) get a finer grid.
    """
    return int(max(1, min(MAX_SUBSAMPLE, min(input_shape) // 4)))


def anisotropic_elastic_augment(input_shape) -> gp.ElasticAugment:
    """A gunpowder ElasticAugment with Synful's parameters, its grid subsampled for ``input_shape`` (voxels)."""
    return gp.ElasticAugment(**ELASTIC, subsample=elastic_subsample(input_shape))
