"""The array function :func:`find_partners`: one block's predictions in, partners out."""

from __future__ import annotations

import numpy as np

from ..io.partners import NO_ID, empty_partners
from ..mapping import lookup_segments
from .candidates import _cc_candidates, _nms_candidates
from .common import ExtractionError, partner_id
from .compat import _synful_partners
from .sparse import _sum_per_label

def find_partners(indicator: np.ndarray, vectors: np.ndarray, voxel_size, offset, cfg, *, roi=None,
                  segmentation=None, segments=None, vectors_scale: float = 1.0,
                  stats: dict | None = None) -> np.ndarray:
    """Partners from one block's predictions.

    Args:
        indicator: (z, y, x) float, post-synaptic probability per voxel (0..1).
        vectors: (3, z, y, x) partner vectors, channels (z, y, x); ``vectors * vectors_scale`` is nm.
            Any numeric dtype (int8 / float16 storage is read only where sampled).
        voxel_size: (z, y, x) nm.
        offset: (z, y, x) nm of voxel (0, 0, 0) of both arrays.
        cfg: an :class:`~synful.config.Extraction` section.
        roi: funlib Roi (nm); keep only partners whose post site lies in it (None: all).
        segmentation: a funlib.persistence Array of segment ids for pre/post ids (None: ids stay NO_ID
            unless ``cfg.remove_same_segment`` needs them).
        segments: (z, y, x) segment ids on the grid of ``indicator`` (any integer dtype); with
            ``method = cc``, components are split where the segment changes (``split_by_segment``).
        stats: optional dict, filled with ``candidates`` (components), ``truncated`` (kept partners whose
            component touches the array border: the block context was too small) and ``filtered``.

    Returns:
        PARTNER_DTYPE array sorted by id; locations in nm (int64), scores float64.
    """
    indicator = np.asarray(indicator)
    vectors = np.asarray(vectors)
    if indicator.ndim != 3 or vectors.shape != (3,) + indicator.shape:
        raise ExtractionError(f"indicator must be (z, y, x) and vectors (3, z, y, x) of the same size, "
                              f"got {indicator.shape} and {vectors.shape}")
    voxel_size = np.asarray(voxel_size, dtype=np.int64)
    offset = np.asarray(offset, dtype=np.int64)
    prob = indicator if indicator.dtype.kind == "f" else indicator.astype(np.float32)
    mask = prob > cfg.cc_threshold
    st = {"candidates": 0, "truncated": 0, "filtered": 0}
    if stats is not None:
        stats.update(st)
    if segments is not None and np.shape(segments) != prob.shape:
        raise ExtractionError(f"segments must have the shape of the indicator {prob.shape}, got {np.shape(segments)}")
    synful = cfg.compat == "synful"
    if synful:
        if segments is not None:
            raise ExtractionError("[Extraction] split_by_segment: Synful's detection (compat = synful) "
                                  "does not split components by segment")
        found = _synful_partners(prob, vectors, mask, voxel_size, offset, cfg, vectors_scale)
    else:
        found = _candidate_partners(prob, vectors, mask, voxel_size, offset, cfg, segments, vectors_scale)
    if found is None:
        return empty_partners(0)
    post_nm, pre_nm, score, touching = found
    st["candidates"] = len(score)
    score_ok = score > cfg.score_thr if synful else score >= cfg.score_thr  # Synful keeps score > score_thr
    keep, in_roi = _site_filters(post_nm, pre_nm, score_ok, roi, cfg)
    pre_seg, post_seg = _segment_ids(post_nm, pre_nm, keep, segmentation, cfg)
    st["filtered"] = int(in_roi.sum() - keep.sum())
    st["truncated"] = int((touching & keep).sum())
    if stats is not None:
        stats.update(st)
    return _records(np.flatnonzero(keep), post_nm, pre_nm, score, pre_seg, post_seg, voxel_size, synful)


def _candidate_partners(prob, vectors, mask, voxel_size, offset, cfg, segments, vectors_scale):
    """compat = none: (post nm, pre nm, score, touching) of every candidate (:mod:`.candidates`), or None."""
    find = _cc_candidates if cfg.method == "cc" else _nms_candidates
    found = find(prob, mask, voxel_size, cfg, segments) if mask.any() else None
    if found is None:
        return None
    post_flat, sums, counts, maxima, touching, (m_lab, m_flat, m_counts) = found
    n = len(post_flat)
    post_vox = np.stack(np.unravel_index(post_flat, prob.shape), axis=1)
    post_nm = offset + post_vox * voxel_size

    score = {"sum": sums, "mean": sums / np.maximum(counts, 1), "count": counts,
             "max": maxima}[cfg.score_type]

    if cfg.vector_type == "point":
        vec = np.stack([vectors[c].ravel()[post_flat].astype(np.float64) for c in range(3)], axis=1)
    else:
        vec = np.stack([_sum_per_label(m_lab, vectors[c].ravel()[m_flat].astype(np.float64), n)[1:]
                        for c in range(3)], axis=1) / m_counts[:, None]
    vec = vec * float(vectors_scale)
    # round to whole nm (halves up, the same in every block); snapping to the voxel grid instead would
    # move a pre site that lies at a voxel centre into the next voxel and often into the next neuron
    pre_nm = np.floor(post_nm + vec + 0.5).astype(np.int64)
    return post_nm, pre_nm, score, touching


def _site_filters(post_nm, pre_nm, score_ok, roi, cfg):
    """(keep, in_roi): the candidates whose post site lies in ``roi`` and that pass the score and distance
    filters, and those in ``roi`` alone."""
    keep = np.ones(len(post_nm), dtype=bool)
    if roi is not None:
        b, e = np.asarray(roi.begin, dtype=np.int64), np.asarray(roi.end, dtype=np.int64)
        keep &= np.all((post_nm >= b) & (post_nm < e), axis=1)
    in_roi = keep.copy()
    keep &= score_ok
    dist = np.linalg.norm((pre_nm - post_nm).astype(np.float64), axis=1)
    keep &= dist >= cfg.min_distance
    if cfg.max_distance is not None:
        keep &= dist <= cfg.max_distance
    return keep, in_roi


def _segment_ids(post_nm, pre_nm, keep, segmentation, cfg):
    """(pre, post) segment ids of the kept candidates (NO_ID elsewhere and without ``segmentation``);
    with ``remove_same_segment`` unsets ``keep`` (in place) where both sites lie in one segment."""
    n = len(post_nm)
    pre_seg = np.full(n, NO_ID, dtype=np.int64)
    post_seg = np.full(n, NO_ID, dtype=np.int64)
    if segmentation is not None and keep.any():
        k = np.flatnonzero(keep)
        post_seg[k] = lookup_segments(segmentation, post_nm[k])
        pre_seg[k] = lookup_segments(segmentation, pre_nm[k])
        if cfg.remove_same_segment:
            keep &= ~((pre_seg == post_seg) & (pre_seg != NO_ID))
    return pre_seg, post_seg


def _records(k, post_nm, pre_nm, score, pre_seg, post_seg, voxel_size, synful: bool) -> np.ndarray:
    """The candidates ``k`` as a PARTNER_DTYPE array sorted by id."""
    ids = partner_id(post_nm[k], voxel_size)
    if synful:  # NMS centres of mass can coincide: one partner per id, the first
        _, first = np.unique(ids, return_index=True)
        k, ids = k[np.sort(first)], ids[np.sort(first)]
    out = empty_partners(len(k))
    out["id"] = ids
    for i, a in enumerate("zyx"):
        out[f"post_{a}"] = post_nm[k, i]
        out[f"pre_{a}"] = pre_nm[k, i]
    out["score"] = score[k]
    out["pre_seg_id"] = pre_seg[k]
    out["post_seg_id"] = post_seg[k]
    return out[np.argsort(out["id"], kind="stable")]
