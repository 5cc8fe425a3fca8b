"""One-to-one matching of predicted to ground-truth partners (the CREMI / Synful formulation; module doc of
:mod:`synful.evaluate`): feasible pairs from KD-trees, then the assignment per connected component."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..config import Evaluation
from ..io.partners import NO_ID
from .common import _ID_FIELDS, _MODE_IDS, MATCH_DTYPE, Matching, _as_partners, _sites, check_inputs


def _match_edges(pred: np.ndarray, gt: np.ndarray, s: Evaluation, id_type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feasible (pred index, gt index, cost nm) triples (see the module doc)."""
    t = float(s.matching_threshold)
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
    if len(pred) == 0 or len(gt) == 0:
        return empty
    mode = "pre" if s.matching_threshold_only_pre else "post" if s.matching_threshold_only_post else "both"
    query = "pre" if mode == "pre" else "post"
    ps, gs = _sites(pred, query), _sites(gt, query)
    r = t * (1 + 1e-9) + 1e-9  # candidates; the exact test below is on integer squared distances
    cand = cKDTree(ps).sparse_distance_matrix(cKDTree(gs), r, output_type="ndarray")
    i, j = cand["i"].astype(np.int64), cand["j"].astype(np.int64)
    d2 = ((ps[i] - gs[j]) ** 2).sum(axis=1)
    ok = d2 <= t * t
    if id_type is not None:
        pa, pb = (pred[f] for f in _ID_FIELDS[id_type])
        ga, gb = (gt[f] for f in _ID_FIELDS[id_type])
        ok &= (pa[i] != NO_ID) & (pb[i] != NO_ID) & (pa[i] == ga[j]) & (pb[i] == gb[j])
    i, j, d2 = i[ok], j[ok], d2[ok]
    if mode == "both":
        pre2 = ((_sites(pred[i], "pre") - _sites(gt[j], "pre")) ** 2).sum(axis=1)
        ok = pre2 <= t * t
        i, j, d2, pre2 = i[ok], j[ok], d2[ok], pre2[ok]
        cost = 0.5 * (np.sqrt(pre2) + np.sqrt(d2))
    else:
        cost = np.sqrt(d2).astype(np.float64)
    order = np.lexsort((j, i))
    return i[order], j[order], cost[order]


def _assign(pi: np.ndarray, gj: np.ndarray, cost: np.ndarray, threshold: float,
            n_pred: int, n_gt: int) -> np.ndarray:
    """True-positive matches among feasible edges (pi, gj, cost) as a MATCH_DTYPE array."""
    if len(pi) == 0:
        return np.empty(0, dtype=MATCH_DTYPE)
    infeasible = 2.0 * threshold if threshold > 0 else 1.0
    nodes_g = n_pred + gj
    graph = coo_matrix((np.ones(len(pi), np.int8), (pi, nodes_g)), shape=(n_pred + n_gt,) * 2)
    _, labels = connected_components(graph, directed=False)
    lab = labels[pi]
    npred = np.bincount(labels[np.unique(pi)], minlength=labels.max() + 1)
    ngt = np.bincount(labels[n_pred + np.unique(gj)], minlength=labels.max() + 1)
    star = (npred[lab] == 1) | (ngt[lab] == 1)
    out = []
    # a component with one prediction or one gt partner: its cheapest edge (first on a tie)
    if star.any():
        si, sj, sc, sl = pi[star], gj[star], cost[star], lab[star]
        order = np.lexsort((np.arange(len(sc)), sc, sl))
        first = np.ones(len(order), dtype=bool)
        first[1:] = sl[order[1:]] != sl[order[:-1]]
        o = order[first]
        m = np.empty(len(o), dtype=MATCH_DTYPE)
        m["pred"], m["gt"], m["cost"] = si[o], sj[o], sc[o]
        out.append(m)
    rest = ~star
    if rest.any():
        ri, rj, rc, rl = pi[rest], gj[rest], cost[rest], lab[rest]
        order = np.argsort(rl, kind="stable")
        ri, rj, rc, rl = ri[order], rj[order], rc[order], rl[order]
        bounds = np.flatnonzero(np.diff(rl)) + 1
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(rl)]):
            up, inv_p = np.unique(ri[a:b], return_inverse=True)
            ug, inv_g = np.unique(rj[a:b], return_inverse=True)
            side = max(len(up), len(ug))
            c = np.full((side, side), infeasible)
            feas = np.zeros((side, side), dtype=bool)
            c[inv_p, inv_g] = rc[a:b]
            feas[inv_p, inv_g] = True
            rows, cols = linear_sum_assignment(c)
            hit = feas[rows, cols]
            rows, cols = rows[hit], cols[hit]
            m = np.empty(len(rows), dtype=MATCH_DTYPE)
            m["pred"], m["gt"], m["cost"] = up[rows], ug[cols], c[rows, cols]
            out.append(m)
    matches = np.concatenate(out)
    return matches[np.argsort(matches["pred"], kind="stable")]


def match_partners(pred: np.ndarray, gt: np.ndarray, settings: Evaluation) -> Matching:
    """Match predicted to ground-truth partners one to one (no filters applied here).

    Uses ``matching`` (which ids must be equal), ``matching_threshold`` (nm),
    ``matching_threshold_only_pre`` and ``matching_threshold_only_post`` of
    ``settings``; inputs are checked by :func:`check_inputs`.  Returns
    :class:`Matching` ``(tp, fp, fn, matches)`` with ``fp = len(pred) - tp``,
    ``fn = len(gt) - tp`` and ``matches`` a :data:`MATCH_DTYPE` array of
    indices into ``pred`` and ``gt``.
    """
    pred, gt = _as_partners(pred, "pred"), _as_partners(gt, "gt")
    check_inputs(pred, gt, settings)
    i, j, c = _match_edges(pred, gt, settings, _MODE_IDS[settings.matching])
    m = _assign(i, j, c, float(settings.matching_threshold), len(pred), len(gt))
    return Matching(len(m), len(pred) - len(m), len(gt) - len(m), m)
