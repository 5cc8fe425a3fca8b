"""``compat = synful``: Synful's original detection, reproduced (see README "Differences from Synful")."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .common import ExtractionError, _ellipsoid


def _synful_box_edt(crop: np.ndarray, voxel_size) -> np.ndarray:
    """Synful's distance map of a labelled crop: float32, the crop's shape.

    Label changes between neighbours along each axis are boundaries on the doubled grid (shape 2n - 1,
    a boundary between voxels i and i + 1 at 2i + 1); the crop's outer faces are not boundaries.  The
    EDT of the non-boundary points, sampled at voxel_size / 2, is read back at every second point.
    """
    shape = crop.shape
    boundaries = np.zeros(tuple(2 * s - 1 for s in shape), dtype=bool)
    for d in range(crop.ndim):
        upper = tuple(slice(1, None) if a == d else slice(None) for a in range(crop.ndim))
        lower = tuple(slice(None, -1) if a == d else slice(None) for a in range(crop.ndim))
        target = tuple(slice(1, None, 2) if a == d else slice(None, None, 2) for a in range(crop.ndim))
        boundaries[target] = crop[upper] != crop[lower]
    dt = ndimage.distance_transform_edt(~boundaries, sampling=tuple(float(v) / 2 for v in voxel_size))
    return dt.astype(np.float32)[(slice(None, None, 2),) * crop.ndim]


def _synful_cc(prob, mask, voxel_size, cfg):
    """compat = synful, method = cc: post sites (block-local nm, int64), scores and touching flags, or None.

    6-connected components (scipy.ndimage.label); per component (bounding boxes as regionprops gives
    them): the argmax, masked to the component and first in C order, of the bounding-box EDT
    (:func:`_synful_box_edt`) or of the indicator (``loc_type = max``); score over the component with
    numpy masked arrays (the indicator's dtype), count = its voxel count.
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    boxes = ndimage.find_objects(labels)
    post = np.empty((n, 3), dtype=np.int64)
    score = np.empty(n, dtype=np.float64)
    for i, box in enumerate(boxes):
        crop = labels[box]
        outside = crop != i + 1
        values = _synful_box_edt(crop, voxel_size) if cfg.loc_type == "edt" else prob[box]
        local = np.unravel_index(np.ma.masked_array(values, outside).argmax(), crop.shape)
        post[i] = (np.array(local) + [b.start for b in box]) * voxel_size
        region = np.ma.masked_array(prob[box], outside)
        score[i] = {"sum": region.sum, "mean": region.mean, "max": region.max,
                    "count": lambda: int((~outside).sum())}[cfg.score_type]()
    border = np.zeros(mask.shape, dtype=bool)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    edge = np.unique(labels[border & mask])
    touching = np.zeros(n, dtype=bool)
    touching[edge[edge > 0] - 1] = True
    return post, score, touching


def _synful_nms(prob, mask, voxel_size, cfg):
    """compat = synful, method = nms: as ``nms`` but plateaus are 6-connected and sit at their centre of mass.

    The post site is the centre of mass times the voxel size, truncated to int64 nm (it may lie between
    voxel corners); the score's ellipsoid is centred on the voxel that holds it.
    """
    radius = np.asarray(cfg.nms_radius, dtype=float) / np.asarray(voxel_size, dtype=float)
    fp = _ellipsoid(radius)
    maxf = ndimage.maximum_filter(prob, footprint=fp, mode="constant", cval=0.0)
    peaks = mask & (prob == maxf)
    plateaus, n = ndimage.label(peaks)
    if n == 0:
        return None
    centres = np.array(ndimage.center_of_mass(peaks, plateaus, range(1, n + 1)), dtype=np.float64).reshape(n, 3)
    post = (centres * voxel_size).astype(np.int64)
    vox = (post / voxel_size).astype(np.uint32).astype(np.int64)
    r = np.array(fp.shape) // 2
    score = np.empty(n, dtype=np.float64)
    touching = np.zeros(n, dtype=bool)
    for i, p in enumerate(vox):
        lo, hi = p - r, p + r + 1
        clo, chi = np.maximum(lo, 0), np.minimum(hi, prob.shape)
        touching[i] = bool(np.any(lo < 0) or np.any(hi > prob.shape))
        sl = tuple(slice(a, b) for a, b in zip(clo, chi))
        fsl = tuple(slice(a - l, b - l) for a, b, l in zip(clo, chi, lo))
        v = prob[sl][mask[sl] & fp[fsl]].astype(np.float64)
        score[i] = {"sum": v.sum, "mean": v.mean, "max": v.max, "count": lambda: float(len(v))}[cfg.score_type]()
    return post, score, touching


def _synful_partners(prob, vectors, mask, voxel_size, offset, cfg, vectors_scale):
    """compat = synful: (post nm, pre nm, score, touching) of every candidate, or None.

    Sites are computed block-locally as Synful does, then shifted by ``offset``: pre =
    round((post + vector at uint32(post / voxel_size)) / voxel_size) * voxel_size, numpy round (half
    to even).
    """
    if cfg.vector_type != "point":
        raise ExtractionError("[Extraction] vector_type: compat = synful reads the vector at the post site "
                              f"(point), got {cfg.vector_type}")
    found = (_synful_cc if cfg.method == "cc" else _synful_nms)(prob, mask, voxel_size, cfg) if mask.any() else None
    if found is None:
        return None
    post, score, touching = found
    v = (post / voxel_size).astype(np.uint32)
    vec = vectors[:, v[:, 0], v[:, 1], v[:, 2]].T.astype(np.float64) * float(vectors_scale)
    pre = (np.round((post + vec) / voxel_size) * voxel_size).astype(np.int64)
    return offset + post, offset + pre, score, touching
