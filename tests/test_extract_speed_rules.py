"""The sparse candidate finding of synful.extract (compat = none) against straightforward dense versions.

Components, distance transforms and NMS peaks are computed from the above-threshold voxels only; each
must equal what cc3d, scipy's distance transform of each component's padded bounding box and a maximum
filter over the whole block give, on random blocks with plateaus, touching components and border contact.
"""

from __future__ import annotations

import dataclasses

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from synful.config import Extraction
from synful.extract import find_partners
from synful.extract.candidates import _nms_peaks
from synful.extract.common import _ellipsoid
from synful.extract.sparse import _runs, _sparse_components, _sparse_sq_edt

VS = (40, 8, 8)


def random_block(shape, seed, levels=12):
    """Smoothed noise quantized to a few levels: plateaus, components touching each other and the border."""
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), (0.7, 1.5, 1.5))
    a = (a - a.min()) / (a.max() - a.min())
    return (np.round(a * levels) / levels).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_components_equal_cc3d(seed):
    prob = random_block((7, 23, 31), seed)
    mask = prob > 0.55
    fg = np.flatnonzero(mask)
    lab, n, _ = _sparse_components(fg, mask.shape)
    ref, m = cc3d.connected_components(mask, connectivity=26, return_N=True)
    assert n == m and np.array_equal(lab, ref.ravel()[fg].astype(np.int64))
    seg = (np.random.default_rng(seed).random(mask.shape) * 3).astype(np.uint64)
    seg = ndimage.zoom(seg, 1, order=0)
    lab, n, _ = _sparse_components(fg, mask.shape, seg.ravel()[fg])
    ref, m = cc3d.connected_components(np.where(mask, seg + 1, 0), connectivity=26, return_N=True)
    assert n == m and np.array_equal(lab, ref.ravel()[fg].astype(np.int64))


def staircase():
    """Columns of 3 voxels along y, each starting where the last ended, one x further: in (z, x, y) order
    the end of one column is followed by the start of the next at y + 1 (not one segment)."""
    mask = np.zeros((6, 20, 26), bool)
    for i in range(6):
        mask[2:4, 3 * i:3 * i + 3, 4 + i] = True
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2, "staircase"])
@pytest.mark.parametrize("split", [False, True])
def test_sparse_edt_equals_padded_bounding_box_edt(seed, split):
    mask = staircase() if seed == "staircase" else random_block((6, 20, 26), seed) > 0.5
    fg = np.flatnonzero(mask)
    keys = (np.arange(mask.size) % 26 >= 13).astype(np.int64)[fg] if split else None  # a cut at x = 13
    lab, n, runs = _sparse_components(fg, mask.shape, keys)
    d2 = _sparse_sq_edt(fg, lab, mask.shape, VS, runs)
    labels = np.zeros(mask.size, np.int64)
    labels[fg] = lab
    labels = labels.reshape(mask.shape)
    ref = np.zeros(mask.size)
    for i, box in enumerate(ndimage.find_objects(labels)):
        crop = np.pad(labels[box] == i + 1, 1)
        dt = ndimage.distance_transform_edt(crop, sampling=VS)[1:-1, 1:-1, 1:-1]
        idx = np.argwhere(labels[box] == i + 1)
        glob = np.ravel_multi_index(tuple((idx + [b.start for b in box]).T), mask.shape)
        ref[glob] = dt[tuple(idx.T)] ** 2
    np.testing.assert_allclose(d2, ref[fg], rtol=1e-9, atol=1e-6)
    # runs: consecutive voxels of one row (and one key)
    run_of, rs, re = _runs(fg, mask.shape, keys)
    assert np.all(fg[re] - fg[rs] == re - rs) and np.all(fg[rs] // 26 == fg[re] // 26)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("radius", [(80, 80, 80), (40, 24, 40), (120, 8, 16)])
def test_nms_peaks_equal_a_full_maximum_filter(seed, radius):
    prob = random_block((9, 40, 44), seed, levels=8)
    mask = prob > 0.5
    fp = _ellipsoid(np.asarray(radius, float) / np.asarray(VS, float))
    full = ndimage.maximum_filter(prob, footprint=fp, mode="constant", cval=0.0)
    expected = np.flatnonzero(mask & (prob == full))
    assert np.array_equal(_nms_peaks(prob, np.flatnonzero(mask), fp), expected)


def test_find_partners_nms_equals_a_dense_formulation():
    """Peaks from a full maximum filter, plateaus from cc3d, the plateau voxel nearest its centroid."""
    prob = random_block((9, 40, 44), 5, levels=8)
    cfg = dataclasses.replace(Extraction(), method="nms", nms_radius=(80, 40, 40), score_type="sum")
    vec = np.zeros((3,) + prob.shape, np.float32)
    got = find_partners(prob, vec, VS, (0, 0, 0), cfg)
    fp = _ellipsoid(np.asarray(cfg.nms_radius, float) / np.asarray(VS, float))
    mask = prob > cfg.cc_threshold
    peaks = mask & (prob == ndimage.maximum_filter(prob, footprint=fp, mode="constant", cval=0.0))
    plateaus, n = cc3d.connected_components(peaks, connectivity=26, return_N=True)
    expected = set()
    for i in range(1, n + 1):
        idx = np.argwhere(plateaus == i)
        d = (((idx - idx.mean(axis=0)) * VS) ** 2).sum(axis=1)
        best = idx[np.flatnonzero(np.isclose(d, d.min(), rtol=1e-12, atol=1e-9))[0]]
        expected.add(tuple(int(b * v) for b, v in zip(best, VS)))
    assert {tuple(int(p[f"post_{a}"]) for a in "zyx") for p in got} == expected
