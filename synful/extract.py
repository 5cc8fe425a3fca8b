"""Extraction: synaptic partners from the predicted indicator and partner vectors.

Two layers:

- :func:`find_partners` is the pure array function: indicator probabilities
  (z, y, x) and partner vectors in nm (3, z, y, x) of one block in, an array of
  :data:`~synful.io.partners.PARTNER_DTYPE` out.
- :func:`extract` runs it blockwise with daisy over a prediction run's zarr
  outputs and writes each block's partners into the run's result collection
  (:mod:`synful.store`).

Method (``[Extraction]`` of predict_config.ini):

1. candidates: ``cc`` thresholds the indicator (``p > cc_threshold``) and
   takes 26-connected components; ``nms`` takes the local maxima above the
   threshold within an ellipsoid of ``nms_radius`` nm (one per 26-connected
   plateau: the plateau's voxel nearest its centroid), each with the
   above-threshold voxels of that ellipsoid as its "component".
2. post site per component: ``edt`` the voxel farthest from the component's
   outside (Euclidean distance transform in nm, outside the block counts as
   outside) or ``max`` the indicator maximum; when several voxels tie, the one
   nearest the component's centroid (Euclidean, nm), then the first in
   (z, y, x) order.  Locations are voxel corners: ``offset + index * voxel_size``.
   Candidates are computed from the above-threshold voxels alone (no pass over
   the block besides the threshold); the results equal dense formulations (cc3d
   components, scipy's EDT of each padded bounding box, a maximum filter over
   the block; tests/test_extract_speed_rules.py).
3. score: ``sum``, ``mean``, ``max`` or ``count`` of the component's
   probabilities.
4. pre site: post site plus the partner vector at the post site (``point``)
   or the component's mean vector (``mean``), rounded to whole nm.
5. filters: ``score >= score_thr``, ``min_distance <= |pre - post| <=
   max_distance``; segment ids looked up at both sites when a segmentation is
   configured (NO_ID outside it), optionally dropping same-segment pairs.

``compat = synful`` reproduces the partners of Synful's original detection code
instead (6-connected components, the EDT on each component's bounding box,
pre sites snapped to the voxel grid, NMS plateaus at their centre of mass,
``score > score_thr``); README "Differences from Synful" says why the default
differs.

Stored values times the dataset's ``scale`` attribute are probabilities
(indicator) and nm (vectors); prediction writes it.  A dataset without it
needs ``[Extraction] indicator_scale`` / ``partner_vectors_scale``, otherwise
extraction refuses to start (a uint8 indicator would read as 0..255).

Partner ids are deterministic: the post site's voxel index, 21 bits per axis
(see :func:`partner_id`).  A partner belongs to the block whose write ROI
holds its post site; the read ROI adds ``context`` nm on every side so that a
component crossing a block border is seen whole by every block that sees it
(components touching the read ROI border are counted as truncated and
logged: raise ``context`` then).

Resuming, and what a run is (:func:`extract`):

- Done markers (``<predict_dir>/extract_tracking``) are only trusted with the
  *signature* they were made under (``extract_tracking/signature.json``): a hash
  of everything the partners depend on -- the prediction (the id of the
  finished ``synful predict`` run, or for outputs of another tool the shape,
  dtype, ROI and scale of its datasets), the extraction settings, the
  segmentation, the block layout, and the store and collection.  Paths inside
  the experiment count relative to the run directory, so a moved experiment
  resumes.  Any difference refuses to start, naming what changed; ``--overwrite``
  redoes the extraction.  A prediction that has not finished (no completed run
  metadata, or a newer run started since) is refused too.
- A run has an identity, a uuid created by its first extraction and kept in
  ``<predict_dir>/extraction_run.json`` (it survives ``--overwrite`` and moving
  the directory).  The collection records the run that owns it
  (:meth:`synful.store.Store.claim_run`, with the signature); a different run --
  another experiment with the same names writing to the same MongoDB -- is
  refused with both named, even with ``--overwrite``.  Markers whose collection
  lost its record (dropped by hand), and collections holding partners of an
  unknown run, are refused as well.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import SynfulError
from .io.partners import NO_ID, empty_partners

__all__ = [
    "ExtractionError",
    "find_partners",
    "partner_id",
    "extract",
    "process_block",
    "run_worker",
    "summarize",
]

logger = logging.getLogger(__name__)

TASK_ID = "extract"
TRACKING_DIR = "extract_tracking"
#: in TRACKING_DIR: the signature the done markers were made under
SIGNATURE_FILE = "signature.json"
#: in the run directory: the run's identity (uuid), made by its first extraction
RUN_FILE = "extraction_run.json"
SUMMARY_FILE = "extraction_summary.json"
HISTOGRAM_FILE = "extraction_scores.png"
_BITS = 21
_HALF = 1 << (_BITS - 1)


class ExtractionError(SynfulError):
    """Extraction cannot run on these inputs or did not finish."""


# --------------------------------------------------------------------------------------
# the array function
# --------------------------------------------------------------------------------------

def partner_id(post_nm: np.ndarray, voxel_size) -> np.ndarray:
    """Deterministic int64 ids from post sites (n, 3) nm: the voxel index, 21 signed bits per axis.

    Unique for voxel indices in [-2**20, 2**20) per axis (FAFB needs < 2**19).
    """
    idx = np.floor_divide(np.asarray(post_nm, dtype=np.int64), np.asarray(voxel_size, dtype=np.int64))
    if idx.size and (idx.min() < -_HALF or idx.max() >= _HALF):
        raise ExtractionError(f"post site voxel index outside [-{_HALF}, {_HALF}) per axis: "
                              f"cannot form a partner id")
    u = (idx + _HALF).astype(np.int64)
    return (u[:, 0] << (2 * _BITS)) | (u[:, 1] << _BITS) | u[:, 2]


def _ellipsoid(radius_vox) -> np.ndarray:
    r = [int(np.floor(v)) for v in radius_vox]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    d = sum((g / max(rv, 1e-9)) ** 2 for g, rv in zip(grids, radius_vox))
    return d <= 1.0


# Candidates work on the above-threshold voxels only (np.flatnonzero(mask), sorted flat indices, typically
# < 1% of a block): components from runs along x, distance transforms and NMS maxima from gathers at those
# voxels; nothing but the threshold itself touches every voxel of the block.

def _coords(flat: np.ndarray, shape) -> np.ndarray:
    """(n, 3) int64 voxel indices of flat indices into ``shape``."""
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)


def _runs(fg: np.ndarray, shape, keys=None):
    """Runs along x of sorted flat indices ``fg``: (voxel -> run index, first voxel of each run, last voxel).

    A run is a maximal set of consecutive voxels of one row; with ``keys`` (one value per voxel) a run also
    ends where the key changes.
    """
    x_len = shape[2]
    brk = np.empty(len(fg), dtype=bool)
    brk[:1] = True
    brk[1:] = (np.diff(fg) != 1) | (fg[1:] % x_len == 0)
    if keys is not None:
        brk[1:] |= keys[1:] != keys[:-1]
    starts = np.flatnonzero(brk)
    ends = np.r_[starts[1:], len(fg)] - 1
    return np.cumsum(brk) - 1, starts, ends


def _sparse_components(fg: np.ndarray, shape, keys=None):
    """26-connected components of the voxels ``fg`` (sorted flat indices): (labels 1..n per voxel, n, runs).

    With ``keys`` (per voxel), voxels of different keys never join.  Labels are numbered in C order of each
    component's first voxel (as cc3d and scipy.ndimage.label number them).  Runs along x (:func:`_runs`) are
    joined to the overlapping runs (x +- 1) of the four forward neighbour rows (z, y+1), (z+1, y-1..y+1).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    z_len, y_len, x_len = shape
    run_of, rs, re = _runs(fg, shape, keys)
    fs, fe = fg[rs], fg[re]
    row = fs // x_len
    ry, rz = row % y_len, row // y_len
    xs, xe = fs % x_len, fe % x_len
    nr = len(rs)
    src, dst = [], []
    for dz, dy in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ok = (rz + dz < z_len) & (ry + dy >= 0) & (ry + dy < y_len)
        target = (row + dz * y_len + dy) * x_len
        first = np.searchsorted(fe, target + np.maximum(xs - 1, 0), side="left")
        last = np.searchsorted(fs, target + np.minimum(xe + 1, x_len - 1), side="right")
        cnt = np.where(ok, np.maximum(last - first, 0), 0)
        total = int(cnt.sum())
        if not total:
            continue
        s = np.repeat(np.arange(nr), cnt)
        d = first[s] + np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        if keys is not None:
            same = keys[rs[s]] == keys[rs[d]]
            s, d = s[same], d[same]
        src.append(s)
        dst.append(d)
    if src:
        s, d = np.concatenate(src), np.concatenate(dst)
        graph = coo_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(nr, nr))
        n, run_label = connected_components(graph, directed=False)
    else:
        n, run_label = nr, np.arange(nr)
    return run_label[run_of].astype(np.int64) + 1, int(n), (run_of, rs, re, run_label)


def _segment_min_pass(line, t, lab, g, spacing: float):
    """One pass of the separable squared EDT along one axis: the new ``g`` (float64, per voxel).

    ``line`` numbers the lines along the axis (the other two coordinates), ``t`` is the coordinate along it;
    the voxels come in C order, so within a line ``t`` ascends and a stable sort by ``line`` lines them up.
    A segment is a maximal set of voxels of one line with consecutive ``t`` and one label.  Per voxel: min
    over its segment's voxels j of g[j] + (spacing (t - t_j))^2 and over the two positions just outside the
    segment (g = 0 there: another label, background or outside the array).  Voxels j are visited at growing
    distance k, and a voxel stops once (spacing k)^2 reaches its current minimum.
    """
    n = len(line)
    if not n:
        return g
    order = np.argsort(line, kind="stable")
    ks, ts, ls, gs = line[order], t[order], lab[order], g[order]
    brk = np.empty(n, dtype=bool)
    brk[:1] = True
    brk[1:] = (np.diff(ts) != 1) | (ls[1:] != ls[:-1]) | (ks[1:] != ks[:-1])
    starts = np.flatnonzero(brk)
    seg = np.cumsum(brk) - 1
    length = np.diff(np.r_[starts, n])
    pos = np.arange(n) - starts[seg]
    to_end = np.minimum(pos + 1, length[seg] - pos)  # distance (voxels) to the nearest position outside
    best = np.minimum(gs, (spacing * to_end.astype(np.float64)) ** 2)
    active = np.flatnonzero((to_end > 1) & (best > spacing ** 2))
    k = 1
    while len(active):
        step = (spacing * k) ** 2
        best[active] = np.minimum(best[active], np.minimum(gs[active - k], gs[active + k]) + step)
        k += 1
        active = active[(to_end[active] > k) & (best[active] > (spacing * k) ** 2)]
    out = np.empty(n, dtype=np.float64)
    out[order] = best
    return out


def _sparse_sq_edt(fg: np.ndarray, lab: np.ndarray, shape, voxel_size, runs) -> np.ndarray:
    """Squared Euclidean distance (nm^2, float64) of each voxel of ``fg`` to the nearest voxel outside its
    component (another label, background or outside the array): exact, separable (x from the runs, then
    z and y over segments of the voxels themselves); integers in float64, so ties are exact.

    Equals the EDT of the component's bounding box padded by one outside voxel (what compat = none defined):
    the nearest outside voxel beyond the padded box is never nearer than its projection onto the padding.
    """
    z_len, y_len, x_len = shape
    vz, vy, vx = (float(v) for v in voxel_size)
    run_of, rs, re, _ = runs
    x = fg % x_len
    xs, xe = x[rs][run_of], x[re][run_of]
    g = (vx * np.minimum(x - xs + 1, xe + 1 - x).astype(np.float64)) ** 2
    zy = fg // x_len
    y, z = zy % y_len, zy // y_len
    small = np.int32 if max(z_len, y_len) * x_len < 2 ** 31 else np.int64
    # z before y: z segments are short, and their coarse spacing caps most values early, which ends the
    # search along y sooner (the passes commute)
    g = _segment_min_pass((y * x_len + x).astype(small), z, lab, g, vz)  # along z: lines (y, x)
    g = _segment_min_pass((z * x_len + x).astype(small), y, lab, g, vy)  # along y: lines (z, x)
    return g


def _nearest_centroid(lab: np.ndarray, flat: np.ndarray, tied: np.ndarray, n: int, shape, voxel_size,
                      coords: np.ndarray | None = None) -> np.ndarray:
    """Per label 1..n: the flat index, among the voxels marked ``tied``, nearest the centroid of all voxels
    of that label (Euclidean, nm); remaining ties go to the first in C order.

    Exact and the same in every block: the squared distance times count^2 is computed from integer offsets
    count * index - sum(index), which do not depend on the block's origin.
    """
    c = _coords(flat, shape) if coords is None else coords
    cnt = np.bincount(lab, minlength=n + 1).astype(np.int64)
    sums = np.stack([np.bincount(lab, weights=c[:, a], minlength=n + 1) for a in range(3)], axis=1)
    sums = np.rint(sums).astype(np.int64)
    t = np.flatnonzero(tied)
    tl = lab[t]
    off = c[t] * cnt[tl][:, None] - sums[tl]
    d2 = ((off * np.asarray(voxel_size, dtype=np.int64)).astype(np.float64) ** 2).sum(axis=1)
    order = np.lexsort((flat[t], d2, tl))
    tl_sorted = tl[order]
    first = np.flatnonzero(np.r_[True, tl_sorted[1:] != tl_sorted[:-1]])
    out = np.empty(n, dtype=np.int64)
    out[tl_sorted[first] - 1] = flat[t][order[first]]
    return out


def _max_per_label(lab: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, lab, values)
    return out


def _edt_maxima(fg: np.ndarray, lab: np.ndarray, n: int, shape, voxel_size, runs) -> np.ndarray:
    """Per component 1..n: flat index of its distance-transform maximum (:func:`_sparse_sq_edt`); several
    voxels at the maximum: the one nearest the component's centroid (nm), then the first in C order."""
    d2 = _sparse_sq_edt(fg, lab, shape, voxel_size, runs)
    top = _max_per_label(lab, d2, n)
    return _nearest_centroid(lab, fg, d2 == top[lab], n, shape, voxel_size)


def _cc_candidates(prob, mask, voxel_size, cfg, segments=None):
    """Components of the above-threshold voxels (26-connected; split where ``segments`` changes).

    Post site: the distance-transform maximum (``edt``) or the indicator maximum (``max``); on ties the voxel
    nearest the component's centroid (nm), then the first in C order.
    """
    fg = np.flatnonzero(mask)
    if not len(fg):
        return None
    keys = None
    if segments is not None:  # multi-label components: voxels of different segments never join
        keys = np.asarray(segments).ravel()[fg]
    lab, n, runs = _sparse_components(fg, prob.shape, keys)
    vals = prob.ravel()[fg].astype(np.float64)
    counts = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    sums = np.bincount(lab, weights=vals, minlength=n + 1)[1:]
    top = None
    if cfg.loc_type == "edt":
        post_flat = _edt_maxima(fg, lab, n, prob.shape, voxel_size, runs)
    else:
        top = _max_per_label(lab, vals, n)
        post_flat = _nearest_centroid(lab, fg, vals == top[lab], n, prob.shape, voxel_size)
    maxima = None
    if cfg.score_type == "max":
        maxima = (top if top is not None else _max_per_label(lab, vals, n))[1:]
    # components touching the block border: from the runs (first / last voxel of each)
    z_len, y_len, x_len = prob.shape
    run_of, rs, re, run_label = runs
    fs, fe = fg[rs], fg[re]
    row = fs // x_len
    edge = (fs % x_len == 0) | (fe % x_len == x_len - 1) | (row % y_len == 0) | (row % y_len == y_len - 1) \
        | (row // y_len == 0) | (row // y_len == z_len - 1)
    touching = np.zeros(n, dtype=bool)
    touching[run_label[edge]] = True
    members = (lab, fg, counts)
    return post_flat, sums, counts, maxima, touching, members


def _window_gather(flat_c, coords_c, offsets, shape, values_flat, fill=0.0):
    """values at flat_c + offsets (n, k): ``fill`` where the position is outside the array."""
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    idx = flat_c[:, None] + (offsets @ strides)[None, :]
    size = np.asarray(shape)
    border = np.flatnonzero(np.any(coords_c + offsets.min(axis=0) < 0, axis=1)
                            | np.any(coords_c + offsets.max(axis=0) >= size, axis=1))
    if not len(border):  # every window inside the array: a plain gather
        return values_flat[idx], np.ones(idx.shape, dtype=bool), idx
    pos = coords_c[border][:, None, :] + offsets[None, :, :]
    inside = np.ones(idx.shape, dtype=bool)
    inside[border] = np.all((pos >= 0) & (pos < size), axis=2)
    out = values_flat[np.where(inside, idx, 0)]
    return np.where(inside, out, fill), inside, idx


def _nms_peaks(prob: np.ndarray, fg: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Sorted flat indices of the voxels of ``fg`` that equal the maximum filter of ``prob`` with footprint
    ``fp`` (``mode = constant``, ``cval = 0``), i.e. no voxel under the footprint is larger.

    Only the given voxels are tested, against the footprint's offsets nearest first, dropping a voxel as soon
    as one offset holds a larger value: the same peaks as ``maximum_filter`` over the whole block.
    """
    r = np.array(fp.shape) // 2
    offsets = np.argwhere(fp) - r
    offsets = offsets[np.any(offsets != 0, axis=1)]
    offsets = offsets[np.argsort((offsets.astype(np.float64) ** 2).sum(axis=1) * 1e6
                                 + np.abs(offsets) @ np.array([1e4, 1e2, 1.0]), kind="stable")]
    flat_vals = prob.ravel()
    cand = fg
    v = flat_vals[cand]
    coords = _coords(cand, prob.shape)
    # near offsets one at a time (most voxels fall there), the rest in chunks
    i = 0
    while i < len(offsets) and len(cand):
        step = 1 if i < 26 else 256
        off = offsets[i:i + step]
        vals, _, _ = _window_gather(cand, coords, off, prob.shape, flat_vals)
        keep = ~np.any(vals > v[:, None], axis=1)
        cand, v, coords = cand[keep], v[keep], coords[keep]
        i += step
    return cand


def _nms_candidates(prob, mask, voxel_size, cfg, segments=None):
    """Local maxima above the threshold within an ellipsoid of ``nms_radius`` nm (:func:`_nms_peaks`), one per
    26-connected plateau: the plateau's voxel nearest its centroid (nm), then the first in C order.  Each
    maximum's "component" is the above-threshold voxels of the ellipsoid around it."""
    radius = np.asarray(cfg.nms_radius, dtype=float) / np.asarray(voxel_size, dtype=float)
    fp = _ellipsoid(radius)
    fg = np.flatnonzero(mask)
    if not len(fg):
        return None
    peaks = _nms_peaks(prob, fg, fp)
    if not len(peaks):
        return None
    lab, n, _ = _sparse_components(peaks, prob.shape)
    post_flat = _nearest_centroid(lab, peaks, np.ones(len(peaks), dtype=bool), n, prob.shape, voxel_size)
    # the "component" of a maximum: the above-threshold voxels of the ellipsoid around it
    r = np.array(fp.shape) // 2
    pos = _coords(post_flat, prob.shape)
    touching = np.any(pos - r < 0, axis=1) | np.any(pos + r + 1 > np.asarray(prob.shape), axis=1)
    offsets = np.argwhere(fp) - r
    flat_vals = prob.ravel()
    mask_flat = mask.ravel()
    sums, counts, maxima = np.zeros(n), np.zeros(n), np.zeros(n)
    m_lab, m_flat = [], []
    chunk = max(1, 2_000_000 // max(len(offsets), 1))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        vals, inside, idx = _window_gather(post_flat[a:b], pos[a:b], offsets, prob.shape, flat_vals)
        sel = inside & mask_flat[np.where(inside, idx, 0)]
        v = np.where(sel, vals, 0).astype(np.float64)
        sums[a:b] = v.sum(axis=1)
        counts[a:b] = sel.sum(axis=1)
        maxima[a:b] = np.where(sel, vals, -np.inf).max(axis=1)
        rows, cols = np.nonzero(sel)
        m_lab.append(rows + a + 1)
        m_flat.append(idx[rows, cols])
    members = (np.concatenate(m_lab), np.concatenate(m_flat), counts)
    return post_flat, sums, counts, maxima, touching, members

# --------------------------------------------------------------------------------------
# compat = synful: Synful's original detection, reproduced (see README "Differences from Synful")
# --------------------------------------------------------------------------------------

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


def _lookup_segments(segmentation, points_nm: np.ndarray) -> np.ndarray:
    """Segment ids (int64) at points (n, 3) nm; NO_ID outside the segmentation's ROI."""
    from funlib.geometry import Coordinate, Roi

    out = np.full(len(points_nm), NO_ID, dtype=np.int64)
    if not len(points_nm):
        return out
    vs = np.asarray(segmentation.voxel_size, dtype=np.int64)
    roi = segmentation.roi
    begin, end = np.asarray(roi.begin, dtype=np.int64), np.asarray(roi.end, dtype=np.int64)
    inside = np.all((points_nm >= begin) & (points_nm < end), axis=1)
    if not inside.any():
        return out
    idx = (points_nm[inside] - begin) // vs
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    sub = Roi(Coordinate(*(begin + lo * vs)), Coordinate(*((hi - lo) * vs)))
    data = np.asarray(segmentation.to_ndarray(sub, fill_value=0))
    rel = idx - lo
    out[inside] = data[rel[:, 0], rel[:, 1], rel[:, 2]].astype(np.int64)
    return out


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
    if cfg.compat == "synful":
        if segments is not None:
            raise ExtractionError("[Extraction] split_by_segment: Synful's detection (compat = synful) "
                                  "does not split components by segment")
        found = _synful_partners(prob, vectors, mask, voxel_size, offset, cfg, vectors_scale)
        if found is None:
            return empty_partners(0)
        post_nm, pre_nm, score, touching = found
        n = len(score)
        st["candidates"] = n
        score_ok = score > cfg.score_thr  # Synful keeps score > score_thr
    else:
        found = (_cc_candidates if cfg.method == "cc" else _nms_candidates)(prob, mask, voxel_size, cfg, segments) \
            if mask.any() else None
        if found is None:
            return empty_partners(0)
        post_flat, sums, counts, maxima, touching, (m_lab, m_flat, m_counts) = found
        n = len(post_flat)
        st["candidates"] = n
        post_vox = np.stack(np.unravel_index(post_flat, prob.shape), axis=1)
        post_nm = offset + post_vox * voxel_size

        score = {"sum": sums, "mean": sums / np.maximum(counts, 1), "count": counts,
                 "max": maxima}[cfg.score_type]

        if cfg.vector_type == "point":
            vec = np.stack([vectors[c].ravel()[post_flat].astype(np.float64) for c in range(3)], axis=1)
        else:
            vec = np.stack([np.bincount(m_lab, weights=vectors[c].ravel()[m_flat].astype(np.float64),
                                        minlength=n + 1)[1:] for c in range(3)], axis=1) / m_counts[:, None]
        vec = vec * float(vectors_scale)
        # round to whole nm (halves up, the same in every block); snapping to the voxel grid instead would
        # move a pre site that lies at a voxel centre into the next voxel and often into the next neuron
        pre_nm = np.floor(post_nm + vec + 0.5).astype(np.int64)
        score_ok = score >= cfg.score_thr

    keep = np.ones(n, dtype=bool)
    if roi is not None:
        b, e = np.asarray(roi.begin, dtype=np.int64), np.asarray(roi.end, dtype=np.int64)
        keep &= np.all((post_nm >= b) & (post_nm < e), axis=1)
    in_roi = keep.copy()
    keep &= score_ok
    dist = np.linalg.norm((pre_nm - post_nm).astype(np.float64), axis=1)
    keep &= dist >= cfg.min_distance
    if cfg.max_distance is not None:
        keep &= dist <= cfg.max_distance

    pre_seg = np.full(n, NO_ID, dtype=np.int64)
    post_seg = np.full(n, NO_ID, dtype=np.int64)
    if segmentation is not None and keep.any():
        k = np.flatnonzero(keep)
        post_seg[k] = _lookup_segments(segmentation, post_nm[k])
        pre_seg[k] = _lookup_segments(segmentation, pre_nm[k])
        if cfg.remove_same_segment:
            keep &= ~((pre_seg == post_seg) & (pre_seg != NO_ID))

    st["filtered"] = int(in_roi.sum() - keep.sum())
    st["truncated"] = int((touching & keep).sum())
    if stats is not None:
        stats.update(st)

    k = np.flatnonzero(keep)
    ids = partner_id(post_nm[k], voxel_size)
    if cfg.compat == "synful":  # NMS centres of mass can coincide: one partner per id, the first
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


# --------------------------------------------------------------------------------------
# the blockwise driver
# --------------------------------------------------------------------------------------

def _open_array(container, dataset, what: str):
    """A funlib.persistence Array of ``container/dataset``; ExtractionError naming it when it cannot be opened."""
    from .io.volumes import open_volume

    try:
        return open_volume(str(container), dataset)
    except SynfulError as e:
        raise ExtractionError(f"{e} (the {what} dataset; run prediction first?)") from None
    except Exception as e:
        raise ExtractionError(f"{container} [{dataset}]: cannot open {what} dataset: {e}") from None


def _dataset_attrs(array, container, dataset) -> dict:
    """The attributes stored with ``container/dataset`` (zarr v2, HDF5, zarr v3 or N5)."""
    from .io.volumes import volume_format

    fmt = volume_format(Path(container), dataset)
    if fmt in ("zarr3", "n5"):
        meta = Path(container) / str(dataset).strip("/") / ("zarr.json" if fmt == "zarr3" else "attributes.json")
        data = json.loads(meta.read_text())
        return dict(data.get("attributes", {}) if fmt == "zarr3" else data)
    source = getattr(array, "_source_data", None)  # the zarr / h5py dataset behind the funlib Array
    return dict(getattr(source, "attrs", None) or array.attrs)


def _stored_scale(array, container, dataset, override, key: str, where: str) -> float:
    """What one stored unit of ``array`` means (probability, or nm): its ``scale`` attribute, else ``override``.

    Prediction writes ``scale`` on its outputs; a dataset without it (written
    by another tool) needs ``[Extraction] <key>``, since guessing would read
    e.g. a uint8 indicator as 0..255.  A non-numeric, non-finite or
    non-positive attribute, and an attribute that disagrees with ``override``,
    are errors.
    """
    raw = _dataset_attrs(array, container, dataset).get("scale")
    if raw is None:
        if override is None:
            raise ExtractionError(f"{container}/{dataset}: no 'scale' attribute (what one stored unit means); "
                                  f"set {where} {key}, or write the attribute")
        return float(override)
    try:
        scale = float(raw)
    except (TypeError, ValueError):
        scale = float("nan")
    if not (np.isfinite(scale) and scale > 0):
        raise ExtractionError(f"{container}/{dataset}: 'scale' attribute must be a finite number > 0, got {raw!r}")
    if override is not None and not np.isclose(scale, float(override), rtol=1e-6, atol=0):
        raise ExtractionError(f"{where} {key}: {override!r} disagrees with the 'scale' attribute {scale!r} of "
                              f"{container}/{dataset}; remove {key} (it is for datasets without the attribute)")
    return scale


class _Run:
    """Everything a block needs, opened once per process."""

    def __init__(self, predict_dir):
        from .config import read_predict_config
        from .store import store_from_config

        self.predict_dir = Path(predict_dir).resolve()
        ini = self.predict_dir / "predict_config.ini"
        cfg = read_predict_config(ini)
        self.cfg = cfg.extraction
        self.prediction = p = cfg.prediction
        self.indicator = _open_array(p.out_container, p.indicator_dataset, "indicator")
        self.vectors = _open_array(p.out_container, p.vectors_dataset, "partner-vector")
        self.indicator_scale = _stored_scale(self.indicator, p.out_container, p.indicator_dataset,
                                             self.cfg.indicator_scale, "indicator_scale", f"{ini} [Extraction]")
        self.vectors_scale = _stored_scale(self.vectors, p.out_container, p.vectors_dataset,
                                           self.cfg.partner_vectors_scale, "partner_vectors_scale",
                                           f"{ini} [Extraction]")
        if tuple(self.vectors.shape[:1]) != (3,) or self.vectors.roi != self.indicator.roi \
                or self.vectors.voxel_size != self.indicator.voxel_size:
            raise ExtractionError(
                f"{p.out_container}: {p.vectors_dataset} must be (3, z, y, x) over the ROI and voxel size of "
                f"{p.indicator_dataset} (got shape {tuple(self.vectors.shape)}, roi {self.vectors.roi}, "
                f"voxel size {self.vectors.voxel_size} vs {self.indicator.roi}, {self.indicator.voxel_size})")
        self.segmentation = None
        if self.cfg.seg_container is not None:
            self.segmentation = _open_array(self.cfg.seg_container, self.cfg.seg_dataset, "segmentation")
        if self.cfg.split_by_segment:
            where = f"{self.predict_dir / 'predict_config.ini'} [Extraction] split_by_segment"
            if self.segmentation is None:
                raise ExtractionError(f"{where}: needs seg_container")
            if self.segmentation.voxel_size != self.indicator.voxel_size:
                raise ExtractionError(
                    f"{where}: {self.cfg.seg_container}/{self.cfg.seg_dataset} has voxel size "
                    f"{tuple(self.segmentation.voxel_size)}, the predictions {tuple(self.indicator.voxel_size)}")
        self._store_factory = functools.partial(store_from_config, self.cfg, self.predict_dir)
        self._store = None
        self._parts = None  # the signature's parts, computed once per process
        self._signature_checked = False

    def signature_parts(self) -> dict:
        """What the partners depend on (see the module docstring), JSON-normalised; computed once."""
        if self._parts is None:
            self._parts = _canonical(_signature_parts(self))
        return self._parts

    def check_signature(self) -> None:
        """Refuse to process blocks of an extraction started with other inputs (changed since it started)."""
        if self._signature_checked:
            return
        path = self.predict_dir / TRACKING_DIR / SIGNATURE_FILE
        if path.is_file():
            started = _read_json(path, "extraction signature")
            if started.get("signature") != _hash(self.signature_parts()):
                changes = _changes(started.get("parts") or {}, self.signature_parts()) or ["the signature differs"]
                raise ExtractionError(f"{path}: the extraction's inputs changed since it started "
                                      f"({'; '.join(changes)}); rerun `synful extract {self.predict_dir}`")
        self._signature_checked = True

    @property
    def store(self):
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def block_geometry(self):
        """(total_roi, read_roi, write_roi) for daisy: write blocks of block_shape, grown by context."""
        from funlib.geometry import Coordinate, Roi

        vs = self.indicator.voxel_size
        # a block larger than the volume would only read (and allocate) fill values
        block = Coordinate(*(min(-(-int(b) // v) * v, s)
                             for b, v, s in zip(self.cfg.block_shape, vs, self.indicator.roi.shape)))
        ctx = Coordinate(*(-(-int(c) // v) * v for c, v in zip(self.cfg.context, vs)))
        total = self.indicator.roi.grow(ctx, ctx)
        return total, Roi((0, 0, 0), block + ctx * 2), Roi(ctx, block)


# --------------------------------------------------------------------------------------
# the signature of an extraction, and the run's identity
# --------------------------------------------------------------------------------------

#: [Extraction] keys the signature takes from elsewhere (the store, the segmentation, the effective scales)
_NOT_SETTINGS = ("store_url", "database", "collection", "credentials_file", "credentials_env", "seg_container",
                 "seg_dataset", "indicator_scale", "partner_vectors_scale")
_LABELS = {"prediction": "prediction", "inputs": "prediction dataset", "extraction": "[Extraction]",
           "segmentation": "segmentation", "store": "store", "layout": "block layout"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ExtractionError(f"{path}: cannot read the {what}: {e}") from None
    if not isinstance(data, dict):
        raise ExtractionError(f"{path}: the {what} is not a JSON object")
    return data


def _canonical(data):
    """``data`` as it reads back from JSON (tuples become lists), so stored and fresh values compare equal."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def _hash(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _changes(old: dict, new: dict, limit: int = 6) -> list[str]:
    """``label key: old -> new`` for each leaf that differs between two signatures' parts."""
    out: list[str] = []
    missing = object()

    def fmt(v) -> str:
        return "(none)" if v is missing else json.dumps(v)

    def walk(a, b, key):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, missing), b.get(k, missing), key + [k])
        elif a != b:
            label = _LABELS.get(key[0], key[0]) + (" " + ".".join(key[1:]) if len(key) > 1 else "")
            out.append(f"{label}: {fmt(a)} -> {fmt(b)}")

    walk(old, new, [])
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


def _experiment_root(predict_dir: Path) -> Path:
    from .scaffold import run_ids

    try:
        run_ids(predict_dir)
    except SynfulError:  # a run directory outside the experiment layout
        return predict_dir
    return predict_dir.parents[1]


def _portable(path, predict_dir: Path) -> str:
    """``path`` relative to the run directory when it lies inside the run's experiment, else absolute.

    So the signature of a moved (or copied) experiment stays the same, while data outside it keeps its place.
    """
    path = Path(path).resolve()
    try:
        path.relative_to(_experiment_root(predict_dir))
    except ValueError:
        return str(path)
    return os.path.relpath(path, predict_dir)


def _array_description(array) -> dict:
    return {"shape": list(array.shape), "dtype": str(np.dtype(array.dtype)),
            "roi": [list(array.roi.offset), list(array.roi.shape)], "voxel_size": list(array.voxel_size)}


def _run_name(predict_dir: Path) -> str:
    from .scaffold import run_ids

    try:
        return run_ids(predict_dir).name
    except SynfulError:
        return predict_dir.name


def _prediction_identity(predict_dir: Path, out_container) -> dict:
    """The finished ``synful predict`` run that wrote the outputs; ``{"source": "external"}`` for another tool's.

    ``synful predict`` writes ``<predict_dir>/blocks/predict_<run>.signature.json`` (with the run's id) when
    it starts and ``<run>_prediction.json`` beside the output container when it ends (``complete``, the
    same id).  Raises :class:`ExtractionError` when the prediction has not finished: no metadata yet,
    metadata saying incomplete, or a newer run (``--overwrite``, a resumed run) started after it.
    """
    name = _run_name(predict_dir)
    started_path = predict_dir / "blocks" / f"predict_{name}.signature.json"
    meta_path = Path(out_container).parent / f"{name}_prediction.json"
    started = _read_json(started_path, "prediction signature") if started_path.is_file() else None
    meta = _read_json(meta_path, "prediction metadata") if meta_path.is_file() else None
    if started is None and meta is None:
        return {"source": "external"}
    finish = f"finish it with `synful predict {predict_dir}` before extracting"
    if meta is None or not meta.get("complete"):
        if meta is None:
            state = f"has started ({started_path}) but not finished ({meta_path} does not exist)"
        else:
            b = meta.get("blocks") or {}
            done = int(b.get("processed", 0) or 0) + int(b.get("skipped", 0) or 0)
            state = f"did not finish ({meta_path}: complete = false, {done} of {b.get('total', '?')} blocks)"
        raise ExtractionError(f"the prediction of {predict_dir} {state}; {finish} (partners of a partial "
                              f"prediction would later pass for complete ones)")
    run_id = meta.get("run_id")
    if started is not None and started.get("run_id") and started.get("run_id") != run_id:
        raise ExtractionError(f"{started_path}: prediction run {started['run_id']} started after the finished run "
                              f"{run_id or '(without id)'} of {meta_path} and has not finished (a `synful predict "
                              f"--overwrite` running or killed?); {finish}")
    if run_id:
        return {"source": "synful predict", "run_id": run_id, "signature": meta.get("signature")}
    # metadata of an older synful, without run ids: its times identify the run
    return {"source": "synful predict", "start": meta.get("start"), "end": meta.get("end")}


def _signature_parts(run: "_Run") -> dict:
    from .config import to_dict

    cfg, p, d = run.cfg, run.prediction, run.predict_dir
    total, read_roi, write_roi = run.block_geometry()
    store = dict(run.store.identity())
    if store.get("backend") == "sqlite":
        store["path"] = _portable(store["path"], d)
    seg = None
    if run.segmentation is not None:
        seg = {"container": _portable(cfg.seg_container, d), "dataset": cfg.seg_dataset,
               **_array_description(run.segmentation)}
    return {
        "prediction": _prediction_identity(d, p.out_container),
        "inputs": {"container": _portable(p.out_container, d),
                   "indicator": {"dataset": p.indicator_dataset, "scale": run.indicator_scale,
                                 **_array_description(run.indicator)},
                   "vectors": {"dataset": p.vectors_dataset, "scale": run.vectors_scale,
                               **_array_description(run.vectors)}},
        "extraction": {k: v for k, v in to_dict(cfg).items() if k not in _NOT_SETTINGS},
        "segmentation": seg,
        "store": store,
        "layout": {"total_roi": [list(total.offset), list(total.shape)],
                   "read_roi": [list(read_roi.offset), list(read_roi.shape)],
                   "write_roi": [list(write_roi.offset), list(write_roi.shape)]},
    }


def _check_and_claim(run: "_Run", overwrite: bool) -> dict:
    """Refuse what a rerun must not resume (module docstring); then own the collection and write the signature.

    Order matters for a kill at any point: markers go before partners, the record and the signature are
    written before any block runs.  Returns the run record stored with the collection.
    """
    d = run.predict_dir
    store = run.store
    where = f"{_redact(store.name)} [{store.collection}]"
    tracking = d / TRACKING_DIR
    sig_path = tracking / SIGNATURE_FILE
    parts = run.signature_parts()
    sig = _hash(parts)
    run_file = d / RUN_FILE
    mine = _read_json(run_file, "extraction run identity") if run_file.is_file() else \
        {"run_id": uuid.uuid4().hex, "created": _now()}
    rid = str(mine.get("run_id") or "")
    if not rid:
        raise ExtractionError(f"{run_file}: no run_id (delete the file to give this run a new identity)")
    redo = "pass --overwrite to redo the extraction (it drops the collection's partners and the done markers)"

    record = store.run_record()
    if record is not None and record.get("run_id") != rid:
        raise ExtractionError(
            f"{where} belongs to another extraction run: {record.get('run_id')} ({record.get('predict_dir')} on "
            f"{record.get('host')}, since {record.get('created')}); this run is {rid} ({d}). Set [Extraction] "
            f"collection in {d / 'predict_config.ini'} to a name of its own, or drop that collection if its "
            f"partners are not wanted (--overwrite only ever replaces this run's own partners)")
    if record is not None and record.get("predict_dir") not in (None, str(d)) \
            and record.get("host") == socket.gethostname():
        other = Path(record["predict_dir"]) / RUN_FILE
        if other.is_file() and _read_json(other, "extraction run identity").get("run_id") == rid:
            raise ExtractionError(
                f"{d} and {record['predict_dir']} both carry extraction run {rid} (a copied experiment?) and "
                f"{where} holds the partners of the latter; set [Extraction] collection in "
                f"{d / 'predict_config.ini'} to a name of its own")
    tracked = tracking.is_dir() and any(tracking.iterdir())
    if not overwrite:
        if sig_path.is_file():
            old = _read_json(sig_path, "extraction signature")
            if old.get("signature") != sig:
                changes = _changes(old.get("parts") or {}, parts) or ["the signature differs"]
                raise ExtractionError(f"{sig_path}: the done markers of {d} were made from other inputs: "
                                      f"{'; '.join(changes)}; {redo}")
        elif tracked:
            raise ExtractionError(f"{tracking}: done markers without a signature (made by an older synful), so "
                                  f"what they were computed from is unknown; {redo}")
        if record is not None and record.get("signature") != sig:
            changes = _changes(record.get("inputs") or {}, parts) or ["the signature differs"]
            raise ExtractionError(f"{where} holds partners of this run extracted from other inputs: "
                                  f"{'; '.join(changes)}; {redo}")
        if record is None:
            n = store.count()
            if n:
                raise ExtractionError(f"{where} holds {n} partners but no record of the run that wrote them (an "
                                      f"older synful or another tool); pass --overwrite to replace them")
            if tracked:
                raise ExtractionError(f"{tracking}: done markers exist but {where} has no record of this run (the "
                                      f"collection was dropped or emptied since?), so resuming would skip blocks "
                                      f"whose partners are gone; {redo}")
    else:
        shutil.rmtree(tracking, ignore_errors=True)  # markers first: a kill in between leaves nothing marked done
        if tracking.exists():
            raise ExtractionError(f"{tracking}: cannot delete the done markers")
        store.drop()
    if not run_file.is_file():
        _write_json(run_file, mine)
    store.create()
    new = {"run_id": rid, "run": _run_name(d), "predict_dir": str(d), "host": socket.gethostname(),
           "created": (record or {}).get("created") or mine.get("created") or _now(), "updated": _now(),
           "signature": sig, "inputs": parts}
    before = store.claim_run(new)
    if before is not None and before.get("run_id") != rid:  # another run claimed it meanwhile
        raise ExtractionError(f"{where} was just claimed by another extraction run {before.get('run_id')} "
                              f"({before.get('predict_dir')}); this run is {rid} ({d}); set [Extraction] collection")
    tracking.mkdir(parents=True, exist_ok=True)
    _write_json(sig_path, {"signature": sig, "run_id": rid, "parts": parts})
    return new


def _redact(url: str) -> str:
    from .store import redact_url

    return redact_url(url)


_RUNS: dict[str, _Run] = {}


def _run_for(predict_dir) -> _Run:
    key = str(Path(predict_dir).resolve())
    if key not in _RUNS:
        _RUNS[key] = _Run(key)
    return _RUNS[key]


def process_block(predict_dir, block) -> dict:
    """Extract one daisy block of the run in ``predict_dir`` and replace its partners in the store.

    Raises on any error, so daisy never marks a failed block done.  Fails at once, before reading
    anything, when the store is known to be gone (:meth:`synful.store.Store.check_reachable`) or the
    run's inputs changed since the extraction started.  Returns the block's stats.
    """
    run = _run_for(predict_dir)
    run.store.check_reachable()
    run.check_signature()
    read_roi = block.read_roi
    ind = run.indicator.to_ndarray(read_roi, fill_value=0)
    prob = ind.astype(np.float32) * np.float32(run.indicator_scale)
    vec = run.vectors.to_ndarray(read_roi, fill_value=0)
    segments = run.segmentation.to_ndarray(read_roi, fill_value=0) if run.cfg.split_by_segment else None
    write_roi = block.write_roi.intersect(run.indicator.roi)
    stats: dict = {}
    partners = find_partners(prob, vec, run.indicator.voxel_size, read_roi.offset, run.cfg, roi=write_roi,
                             segmentation=run.segmentation, segments=segments, vectors_scale=run.vectors_scale,
                             stats=stats)
    run.store.write_block(int(block.block_id[1]), partners)
    if stats.get("truncated"):
        logger.warning("block %s: %d partner(s) from components cut by the read ROI; raise [Extraction] "
                       "context (now %s nm)", block.block_id[1], stats["truncated"], run.cfg.context)
    stats["partners"] = len(partners)
    return stats


def run_worker(predict_dir) -> None:
    """Worker entry point: take blocks from the daisy server named in $DAISY_CONTEXT until none are left.

    What a cluster job runs (``synful extract-worker PREDICT_DIR``); local runs use daisy's own workers.
    A failed block is reported to the server (not done) and the worker serves the next one; when the
    server is gone the worker exits with :class:`synful.cluster.SchedulerLost` (see
    :func:`synful.cluster.serve_blocks`).
    """
    import daisy

    from .cluster import serve_blocks

    serve_blocks(daisy.Client(), functools.partial(process_block, predict_dir), keep_going=True)


class _ClusterWorker:
    """daisy's worker function for ``executor = slurm``: one ``synful extract-worker`` job through
    :func:`synful.cluster.run` (cancelled if this slot is stopped), connecting back over TCP."""

    def __init__(self, predict_dir: str, worker_cfg):
        self.predict_dir, self.worker_cfg = predict_dir, worker_cfg

    def __call__(self, *, context):
        from .cluster import run, synful_command

        name = f"extract-worker-{context.get('worker_id', '0')}"
        log_dir = Path(self.predict_dir) / "log" / "extract"
        rc = run(self.worker_cfg, synful_command(self.worker_cfg, ["extract-worker", self.predict_dir]), name=name,
                 log_dir=log_dir, env={"DAISY_CONTEXT": context.to_env()})
        if rc != 0:
            raise RuntimeError(f"{name} exited with code {rc} (logs: {log_dir})")


def _worker_config(predict_dir: Path, executor: str | None):
    """The run's [Worker] (profile applied, validated), with ``executor`` overriding the config's."""
    from dataclasses import replace

    from .cluster import check_worker
    from .config import Worker, read_worker_config

    wc = predict_dir / "worker_config.ini"
    worker = read_worker_config(wc) if wc.is_file() else Worker()
    if executor is not None:
        worker = replace(worker, executor=executor)
    return check_worker(worker)


def _num_workers(predict_dir: Path) -> int:
    wc = predict_dir / "worker_config.ini"
    n = 0
    if wc.is_file():
        from .config import read_worker_config

        n = read_worker_config(wc).num_block_workers
    return n if n > 0 else max(1, (os.cpu_count() or 2) // 2)


def extract(predict_dir, overwrite: bool = False, *, num_workers: int | None = None,
            multiprocessing: bool = True, progress: bool = False, executor: str | None = None) -> dict:
    """Extract the partners of the prediction run in ``predict_dir`` blockwise into its result collection.

    Reads predict_config.ini ([Prediction] outputs, [Extraction] method and
    store).  Blocks already done (daisy done markers in
    ``<predict_dir>/extract_tracking``) are skipped, but only when the
    extraction's signature is unchanged (module docstring); otherwise, and for
    an unfinished prediction, a collection owned by another run, markers whose
    collection lost its record or a collection of unknown partners, it raises
    :class:`ExtractionError` before anything is written, naming what differs.
    ``overwrite`` drops this run's partners and the markers first (never
    another run's collection).  ``num_workers`` local worker processes
    (default: worker_config.ini ``num_block_workers``); ``multiprocessing=False``
    runs in-process.  An unreachable store fails before any block runs.
    With ``executor = slurm`` (worker_config.ini, or the ``executor``
    argument) each worker is a Slurm job (:func:`synful.cluster.run`); its
    resources, container and retries (``max_retries``) come from worker_config.ini.

    Returns the summary dict also written to ``extraction_summary.json``
    (with a score histogram ``extraction_scores.png``).  Raises
    :class:`ExtractionError` when blocks failed (they stay not done; rerun); a
    store that stops answering fails the run within about
    :data:`synful.store.OUTAGE_BUDGET_S` + 2 x its timeouts.
    """
    import daisy

    from .config import to_dict
    from .store import redact_url

    predict_dir = Path(predict_dir).resolve()
    if not (predict_dir / "predict_config.ini").is_file():
        raise ExtractionError(f"{predict_dir}: no predict_config.ini (not a prediction setup)")
    _RUNS.pop(str(predict_dir), None)  # reread the config: it may have changed since the last call
    worker_cfg = _worker_config(predict_dir, executor)  # bad partition / container / mounts fail here
    run = _run_for(predict_dir)
    cfg = run.cfg
    if cfg.method == "nms" and any(c < 2 * r for c, r in zip(cfg.context, cfg.nms_radius)):
        raise ExtractionError(f"{predict_dir / 'predict_config.ini'} [Extraction] context: must be at least "
                              f"2 x nms_radius per axis for method = nms, got {cfg.context}")
    # fail fast on the store (opening it reaches the server), before anything is scheduled or marked
    store = run.store
    _check_and_claim(run, overwrite)
    run._signature_checked = True  # serial blocks run in this process: checked just now

    total, read_roi, write_roi = run.block_geometry()
    tracking = predict_dir / TRACKING_DIR
    daisy.logging.set_log_basedir(predict_dir / "log" / "extract")

    workers = int(num_workers or _num_workers(predict_dir))
    if worker_cfg.executor == "slurm" and multiprocessing:
        cluster_opts = dict(process_function=_ClusterWorker(str(predict_dir), worker_cfg),
                            max_worker_restarts=int(worker_cfg.max_retries) * workers)
    else:
        # worker processes run the same loop a cluster job runs; serial runs call blocks directly
        cluster_opts = dict(process_function=functools.partial(run_worker if multiprocessing else process_block,
                                                                str(predict_dir)))
    task = daisy.Task(TASK_ID, total_roi=total, read_roi=read_roi, write_roi=write_roi, **cluster_opts,
                      read_write_conflict=False, fit="overhang", max_workers=workers, max_retries=1,
                      tracking_path=str(tracking / "markers"))
    logger.info("extracting %s blocks of %s nm (context %s nm) with %d worker(s) into %s [%s]",
                task.block_grid_shape, write_roi.shape, write_roi.offset, workers, redact_url(store.name),
                store.collection)
    try:
        states = daisy.run_blockwise([task], multiprocessing=multiprocessing, progress=progress,
                                     return_states=True, summary=False)
    except (SynfulError, KeyboardInterrupt):
        _release(run)
        raise
    except Exception as e:  # serial runs raise the first block error; worker runs report it in the states
        _release(run)
        raise ExtractionError(f"{predict_dir}: extraction stopped at a failed block ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); finished blocks stay done, "
                              f"rerun to continue") from e
    state = states[TASK_ID]
    complete = state.completed_count == state.total_block_count
    # after failed blocks the store may be what failed: no statistics then, which would wait on it again
    summary = summarize(predict_dir, run=run) if complete else {
        "store": redact_url(store.name), "collection": store.collection, "partners": None}
    summary.update({
        "complete": complete,
        "blocks_total": int(state.total_block_count),
        "blocks_skipped": int(state.skipped_count),
        "blocks_failed": int(state.failed_count + state.orphaned_count),
        "workers": workers,
        "config": {k: v for k, v in to_dict(cfg).items()},
    })
    summary["config"]["store_url"] = redact_url(summary["config"]["store_url"])
    _write_json(predict_dir / SUMMARY_FILE, summary)
    _release(run)
    if not complete:
        err = (state.last_worker_error or "").strip().splitlines()
        raise ExtractionError(f"{predict_dir}: extraction finished {state.completed_count} of "
                              f"{state.total_block_count} blocks ({summary['blocks_failed']} failed"
                              + (f"; last error: {err[-1]}" if err else "")
                              + f"); see {predict_dir / 'log' / 'extract'}; rerun to retry the missing blocks")
    logger.info("extracted %d partners (%d blocks, %d skipped as done)", summary["partners"],
                summary["blocks_total"], summary["blocks_skipped"])
    return summary


def _release(run: _Run) -> None:
    """Close the run's store and forget it: an open SQLite writer would keep its -wal file (and lock) around."""
    _RUNS.pop(str(run.predict_dir), None)
    if run._store is not None:
        run._store.close()
        run._store = None


def _write_json(path: Path, data):
    """Write ``data`` to ``path`` atomically (a reader sees the old or the new file, never half of one)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExtractionError(f"{path}: cannot write: {e.strerror or e}") from None


def summarize(predict_dir, *, run: _Run | None = None, bins: int = 50) -> dict:
    """Counts and score statistics of the run's collection; writes the score histogram PNG beside it."""
    from .store import redact_url

    predict_dir = Path(predict_dir).resolve()
    run = run or _run_for(predict_dir)
    partners = run.store.query()
    scores = partners["score"]
    dist = np.linalg.norm(np.stack([partners[f"pre_{a}"] - partners[f"post_{a}"] for a in "zyx"], 1)
                          .astype(float), axis=1) if len(partners) else np.zeros(0)
    summary = {
        "store": redact_url(run.store.name),
        "collection": run.store.collection,
        "partners": int(len(partners)),
        "score": {k: (float(f(scores)) if len(scores) else None)
                  for k, f in (("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max))},
        "distance_nm": {k: (float(f(dist)) if len(dist) else None)
                        for k, f in (("min", np.min), ("median", np.median), ("max", np.max))},
        "with_segment_ids": int(np.sum((partners["pre_seg_id"] != NO_ID) & (partners["post_seg_id"] != NO_ID))),
        "histogram": str(predict_dir / HISTOGRAM_FILE),
    }
    _histogram(scores, predict_dir / HISTOGRAM_FILE, bins, f"{run.store.collection}: {len(scores)} partners")
    return summary


def _histogram(scores: np.ndarray, path: Path, bins: int, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(scores, bins=bins, color="tab:blue")
    ax.set_xlabel("score")
    ax.set_ylabel("partners")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
