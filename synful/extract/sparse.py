"""Sparse building blocks of candidate finding: 26-connected components, the exact EDT, tie rules.

Candidates work on the above-threshold voxels only (np.flatnonzero(mask), sorted flat indices, typically
< 1% of a block): components from runs along x, distance transforms and NMS maxima from gathers at those
voxels; nothing but the threshold itself touches every voxel of the block.
"""

from __future__ import annotations

import numpy as np


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
    sums = np.stack([_sum_per_label(lab, c[:, a], n) for a in range(3)], axis=1)
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


# Per-label sums and maxima: np.bincount and np.maximum.at, not scipy.ndimage.sum_labels / maximum, which give
# the same values but on the demo model's 80 x 1000 x 1000 prediction (525 k voxels above 0.8, 1605 components)
# take 1.7 x (sum_labels also counts and scans the labels) and 45 x (maximum sorts every value) as long.

def _sum_per_label(lab: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per label 0..n: the sum of ``values`` (float64) over the voxels of that label."""
    return np.bincount(lab, weights=values, minlength=n + 1)


def _max_per_label(lab: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per label 0..n: the maximum of ``values`` over the voxels of that label (-inf for a label without any)."""
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, lab, values)
    return out


def _edt_maxima(fg: np.ndarray, lab: np.ndarray, n: int, shape, voxel_size, runs) -> np.ndarray:
    """Per component 1..n: flat index of its distance-transform maximum (:func:`_sparse_sq_edt`); several
    voxels at the maximum: the one nearest the component's centroid (nm), then the first in C order."""
    d2 = _sparse_sq_edt(fg, lab, shape, voxel_size, runs)
    top = _max_per_label(lab, d2, n)
    return _nearest_centroid(lab, fg, d2 == top[lab], n, shape, voxel_size)


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
