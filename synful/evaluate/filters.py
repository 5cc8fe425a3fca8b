"""Filters on predictions: listed segment ids, score, same pre/post id, redundancy clustering (euclidean or
geodesic); the order and rules are in the :mod:`synful.evaluate` doc."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..config import Evaluation, uses_geodesic
from ..io.partners import NO_ID
from ..io.skeletons import geodesic_distances
from .common import _ID_FIELDS, EvaluationError, _as_partners, _sites


def _static_masks(pred: np.ndarray, s: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    """The score-independent filters apart: (kept by filter_seg_ids, kept by filter_same_id), each over all
    of ``pred`` (all True where the filter is off)."""
    seg_keep = np.ones(len(pred), dtype=bool)
    if s.filter_seg_ids:
        listed = np.asarray(s.filter_seg_ids, dtype=np.int64)
        for f in ("pre_seg_id", "post_seg_id"):
            seg_keep &= ~((pred[f] != NO_ID) & np.isin(pred[f], listed))
    same_keep = np.ones(len(pred), dtype=bool)
    if s.filter_same_id:
        pre, post = (pred[f] for f in _ID_FIELDS[s.filter_same_id_type])
        same_keep = ~((pre == post) & (pre != NO_ID))
    return seg_keep, same_keep


def _static_mask(pred: np.ndarray, s: Evaluation) -> np.ndarray:
    """Score-independent filters: filter_seg_ids and filter_same_id."""
    seg_keep, same_keep = _static_masks(pred, s)
    return seg_keep & same_keep


def _redundancy_candidates(pred: np.ndarray, s: Evaluation):
    """``(pre ids, post ids, indices)`` of the predictions redundancy clustering considers: both ids of
    ``filter_redundant_id_type`` present and none in ``filter_redundant_ignore_ids``."""
    pre, post = (pred[f] for f in _ID_FIELDS[s.filter_redundant_id_type])
    ok = (pre != NO_ID) & (post != NO_ID)
    if s.filter_redundant_ignore_ids:
        ignore = np.asarray(s.filter_redundant_ignore_ids, dtype=np.int64)
        ok &= ~np.isin(pre, ignore) & ~np.isin(post, ignore)
    return pre, post, np.flatnonzero(ok)


def _redundancy_edges(pred: np.ndarray, s: Evaluation) -> np.ndarray:
    """(k, 2) index pairs i < j of predictions that link: same group, 0 < d(post) <= dist_thr."""
    pre, post, idx = _redundancy_candidates(pred, s)
    thr = float(s.filter_redundant_dist_thr)
    if len(idx) < 2:
        return np.empty((0, 2), dtype=np.int64)
    sites = _sites(pred[idx], "post")
    pairs = cKDTree(sites).query_pairs(thr * (1 + 1e-9) + 1e-9, output_type="ndarray").astype(np.int64)
    a, b = pairs[:, 0], pairs[:, 1]
    d2 = ((sites[a] - sites[b]) ** 2).sum(axis=1)
    link = (d2 > 0) & (d2 <= thr * thr) & (pre[idx][a] == pre[idx][b]) & (post[idx][a] == post[idx][b])
    e = np.stack([idx[a[link]], idx[b[link]]], axis=1)
    return np.sort(e, axis=1)


def _geodesic_edges(pred: np.ndarray, s: Evaluation, skeleton) -> np.ndarray:
    """Like :func:`_redundancy_edges`, with d the path length along ``skeleton`` between the nodes
    nearest to the two post sites; two sites at the same location (euclidean d = 0) never link."""
    pre, post, idx = _redundancy_candidates(pred, s)
    out = [np.empty((0, 2), np.int64)]
    if len(idx) < 2:
        return out[0]
    thr = float(s.filter_redundant_dist_thr)
    keys = np.stack([pre[idx], post[idx]], axis=1)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    for g in np.unique(group):
        members = idx[group == g]
        if len(members) < 2:
            continue
        sites = _sites(pred[members], "post")
        d = geodesic_distances(skeleton, sites)
        a, b = np.triu_indices(len(members), k=1)
        same = (sites[a] == sites[b]).all(axis=1)
        link = ~same & (d[a, b] <= thr)
        out.append(np.stack([members[a[link]], members[b[link]]], axis=1))
    return np.sort(np.concatenate(out), axis=1)


def _redundant_keep(n: int, keep: np.ndarray, score: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``keep`` minus the non-best members of each cluster (local indices 0..n-1, input order)."""
    if len(edges) == 0:
        return keep
    live = keep[edges[:, 0]] & keep[edges[:, 1]]
    if not live.any():
        return keep
    e = edges[live]
    graph = coo_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    idx = np.flatnonzero(keep)
    # best per cluster: highest score, then lowest index (input order)
    order = idx[np.lexsort((idx, -score[idx], labels[idx]))]
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order[1:]] != labels[order[:-1]]
    out = np.zeros(n, dtype=bool)
    out[order[first]] = True
    return out


def filter_partners(pred: np.ndarray, settings: Evaluation, score_thr: float, skeleton=None) -> np.ndarray:
    """The predictions that survive the filters (module doc, in that order), in input order.

    ``pred``: PARTNER_DTYPE array; ``score_thr``: keep ``score >= score_thr``.
    ``skeleton`` (:class:`synful.io.skeletons.Skeleton`): the neuron along which
    geodesic redundancy distances are measured (needed, and only used, with
    ``filter_redundant_dist_type = geodesic``).  Returns a new PARTNER_DTYPE array.
    """
    pred = _as_partners(pred, "pred")
    geodesic = uses_geodesic(settings)
    if geodesic and skeleton is None:
        raise EvaluationError("filter_redundant_dist_type = geodesic: filter_partners needs the skeleton to "
                              "measure along")
    keep = _static_mask(pred, settings) & (pred["score"] >= float(score_thr))
    idx = np.flatnonzero(keep)
    sub = pred[idx]
    if settings.filter_redundant and len(sub) > 1:
        edges = _geodesic_edges(sub, settings, skeleton) if geodesic else _redundancy_edges(sub, settings)
        sub = sub[_redundant_keep(len(sub), np.ones(len(sub), bool), sub["score"], edges)]
    return sub
