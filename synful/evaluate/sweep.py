"""The threshold sweep: filter, match and score predictions at every score threshold, over all partners at
once or per neuron (the FAFB protocol), in one pass shared by all thresholds (:func:`evaluate`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from ..config import EVALUATION_RULES, Evaluation, to_dict, uses_geodesic
from ..io.skeletons import SkeletonError, load_skeleton
from .common import _ID_FIELDS, _MODE_IDS, EvaluationError, _as_partners, check_inputs, logger
from .filters import _geodesic_edges, _redundancy_edges, _redundant_keep, _static_mask
from .matching import _assign, _match_edges


def evaluate(pred: np.ndarray, gt: np.ndarray, settings: Evaluation, skeleton_ids: Optional[Sequence[int]] = None,
             score_thresholds: Optional[Sequence[float]] = None, *, where: str = "matching",
             sources: tuple[str, str] = ("predictions", "ground truth"), skeletons=None,
             match_seg_ids: Optional[tuple[np.ndarray, np.ndarray]] = None) -> list[dict]:
    """Filter, match and score ``pred`` against ``gt`` for every score threshold.

    ``pred``, ``gt``: PARTNER_DTYPE arrays (nm, (z, y, x)), checked by
    :func:`check_inputs` (``where`` and ``sources`` name the setting and the
    two inputs in its errors).  ``settings.matching`` says which ids must be
    equal.  ``skeleton_ids``: neuron ids for the FAFB protocol (module doc;
    needs ``matching = skeleton``), or None to evaluate all partners at once
    (``settings.skeleton_ids``, a path, is not read here; see
    :func:`read_skeleton_ids`).  ``score_thresholds`` (finite numbers)
    defaults to ``settings.score_thresholds``.

    ``filter_redundant_dist_type = geodesic`` (as Synful's FAFB evaluator):
    for each evaluated neuron, the redundancy distances of the predictions
    touching it are path lengths along *that neuron's* skeleton (the one in
    ``skeleton_ids``, whichever side of the partner it is on) between the
    skeleton nodes nearest to the two post sites; linking is ``d <=
    filter_redundant_dist_thr`` for post sites at different locations.
    Skeletons come from ``skeletons`` (a mapping or callable skeleton id ->
    :class:`synful.io.skeletons.Skeleton`) or else from the files
    ``settings.skeletons`` names (:func:`synful.io.skeletons.load_skeleton`).

    ``match_seg_ids`` (``matching = segment`` only): (pre ids, post ids), one
    per prediction, compared with the ground truth's ids *instead of* the
    predictions' own ``pre_seg_id`` / ``post_seg_id`` (e.g. the ground-truth
    neuron ids at the predicted sites, ``matching_seg_container``); the filters
    still use the predictions' own ids.

    Loading, grouping and the candidate pairs (KD-trees) are computed once and
    shared by all thresholds.  Returns one dict per threshold, in the given
    order: ``score_thr, fscore, precision, recall, tpcount, fpcount, fncount,
    predcount, gtcount, num_clustered`` (predictions removed by
    filter_redundant), ``matching``, ``pred_missing_ids`` and
    ``gt_missing_ids`` (partners lacking the matched ids), ``neurons``
    (per-neuron counts, FAFB protocol only) and ``settings`` (the Evaluation keys).
    """
    pred, gt = _as_partners(pred, "pred"), _as_partners(gt, "gt")
    thrs = _check_call(settings, score_thresholds, skeleton_ids, skeletons, where)
    if skeleton_ids is not None:
        skeleton_ids = np.asarray(skeleton_ids, dtype=np.int64).reshape(-1)
    matched = _with_match_seg_ids(pred, settings, match_seg_ids, where)
    missing = check_inputs(matched, gt, settings, where=where, sources=sources)

    # one pass shared by all thresholds and neurons
    static = np.flatnonzero(_static_mask(pred, settings))
    if len(pred) and not len(static):  # predcount 0 would otherwise look like an empty run
        logger.warning("%s: filter_seg_ids / filter_same_id remove all %d predictions", where, len(pred))
    cand = pred[static]
    red_edges = (_redundancy_edges(cand, settings) if settings.filter_redundant and not uses_geodesic(settings)
                 else np.empty((0, 2), np.int64))
    match = _match_edges(matched[static], gt, settings, _MODE_IDS[settings.matching])
    neurons = _neurons(cand, gt, settings, skeleton_ids)
    totals, per_neuron = _sweep(cand, gt, settings, thrs, neurons, red_edges, match, skeletons)
    return _results(settings, thrs, totals, per_neuron, missing, skeleton_ids)


def _check_rules(view: Evaluation, where: str, keys: Optional[tuple] = None) -> None:
    """Raise the :class:`EvaluationError` of the first [Evaluation] rule (of ``keys``; None: all) ``view`` breaks."""
    for rule in EVALUATION_RULES:
        if rule.call is not None and (keys is None or rule.key in keys) and rule.broken(view):
            raise EvaluationError(rule.call_message(view, where))


def _check_call(settings: Evaluation, score_thresholds, skeleton_ids, skeletons, where: str) -> list[float]:
    """The score thresholds of an :func:`evaluate` call, after the [Evaluation] cross-key rules
    (:data:`synful.config.EVALUATION_RULES`) are checked on ``settings`` with the call's arguments in place
    of their keys: thresholds first (none, or not finite), then the other rules in their order."""
    thrs = [float(t) for t in (settings.score_thresholds if score_thresholds is None else score_thresholds)]
    view = dataclasses.replace(settings, score_thresholds=thrs, skeleton_ids=skeleton_ids,
                               skeletons=settings.skeletons if skeletons is None else skeletons)
    _check_rules(view, where, keys=("score_thresholds",))
    bad = [t for t in thrs if not math.isfinite(t)]
    if bad:
        raise EvaluationError(f"score_thresholds: expected finite numbers, got {bad[0]!r}")
    _check_rules(view, where)
    return thrs


def _with_match_seg_ids(pred: np.ndarray, settings: Evaluation, match_seg_ids, where: str) -> np.ndarray:
    """``pred`` with ``match_seg_ids`` (pre ids, post ids) as its segment ids (a copy; ``pred`` when None)."""
    if match_seg_ids is None:
        return pred
    if settings.matching != "segment":
        raise EvaluationError(f"{where}: match_seg_ids (segment ids for matching) need matching = segment, got "
                              f"{settings.matching}")
    matched = pred.copy()
    for f, ids in zip(_ID_FIELDS["seg"], match_seg_ids):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(pred):
            raise EvaluationError(f"{where}: match_seg_ids: {len(ids)} ids for {len(pred)} predictions")
        matched[f] = ids
    return matched


def _neurons(cand: np.ndarray, gt: np.ndarray, settings: Evaluation, skeleton_ids) -> list[tuple]:
    """(skeleton id, predictions mask, ground-truth mask) per evaluated neuron; one (None, all, all) without
    ``skeleton_ids``.  A neuron's partners touch it (only its inputs or outputs when so set)."""
    if skeleton_ids is None:
        return [(None, np.ones(len(cand), bool), np.ones(len(gt), bool))]

    def touching(a, s):
        if settings.only_input_synapses:
            return a["post_skel_id"] == s
        if settings.only_output_synapses:
            return a["pre_skel_id"] == s
        return (a["pre_skel_id"] == s) | (a["post_skel_id"] == s)
    return [(int(s), touching(cand, s), touching(gt, s)) for s in skeleton_ids]


def _local_edges(cand: np.ndarray, n_gt: int, psel: np.ndarray, gsel: np.ndarray, red_edges: np.ndarray, match,
                 settings: Evaluation, skel, skeletons):
    """One neuron's redundancy edges and feasible match edges (i, j, cost), in indices local to ``psel`` and
    ``gsel``; geodesic redundancy edges are measured along this neuron's skeleton."""
    ploc = np.full(len(cand), -1, np.int64)
    ploc[psel] = np.arange(len(psel))
    gloc = np.full(n_gt, -1, np.int64)
    gloc[gsel] = np.arange(len(gsel))
    if uses_geodesic(settings):
        re = (_geodesic_edges(cand[psel], settings, _skeleton_of(skel, skeletons, settings)) if len(psel) > 1
              else np.empty((0, 2), np.int64))
    elif len(red_edges):
        re = ploc[red_edges]
        re = re[(re >= 0).all(axis=1)]
    else:
        re = red_edges
    mi, mj, mc = match
    me = (ploc[mi] >= 0) & (gloc[mj] >= 0)
    return re, (ploc[mi[me]], gloc[mj[me]], mc[me])


def _count(thr: float, score: np.ndarray, red: np.ndarray, edges, settings: Evaluation, n_gt: int):
    """(tp, kept predictions, predictions scoring >= ``thr``) of one neuron at one threshold."""
    keep = score >= thr
    n_thr = int(keep.sum())
    if settings.filter_redundant:
        keep = _redundant_keep(len(score), keep, score, red)
    ei, ej, ec = edges
    live = keep[ei]
    m = _assign(ei[live], ej[live], ec[live], float(settings.matching_threshold), len(score), n_gt)
    return len(m), int(keep.sum()), n_thr


def _sweep(cand, gt, settings: Evaluation, thrs, neurons, red_edges, match, skeletons) -> tuple[dict, dict]:
    """Counts summed over ``neurons`` per threshold, and per neuron (FAFB protocol)."""
    totals = {thr: dict(tp=0, fp=0, fn=0, pred=0, gt=0, clustered=0) for thr in thrs}
    per_neuron = {thr: [] for thr in thrs}
    for skel, psel_mask, gsel_mask in neurons:
        psel, gsel = np.flatnonzero(psel_mask), np.flatnonzero(gsel_mask)
        red, edges = _local_edges(cand, len(gt), psel, gsel, red_edges, match, settings, skel, skeletons)
        score = cand["score"][psel]
        ngt = len(gsel)
        for thr in thrs:
            tp, npred, n_thr = _count(thr, score, red, edges, settings, ngt)
            tot = totals[thr]
            tot["tp"] += tp
            tot["fp"] += npred - tp
            tot["fn"] += ngt - tp
            tot["pred"] += npred
            tot["gt"] += ngt
            tot["clustered"] += n_thr - npred
            if skel is not None:
                per_neuron[thr].append({"skel_id": skel, "tpcount": tp, "fpcount": npred - tp,
                                        "fncount": ngt - tp, "predcount": npred, "gtcount": ngt})
    return totals, per_neuron


def _results(settings: Evaluation, thrs, totals: dict, per_neuron: dict, missing: dict, skeleton_ids) -> list[dict]:
    """One result dict per threshold (keys in :func:`evaluate`'s doc)."""
    results = []
    settings_dict = to_dict(settings)
    for thr in thrs:
        tot = totals[thr]
        f, p, r = _scores(tot["tp"], tot["fp"], tot["fn"])
        res = {"score_thr": thr, "fscore": f, "precision": p, "recall": r,
               "tpcount": tot["tp"], "fpcount": tot["fp"], "fncount": tot["fn"],
               "predcount": tot["pred"], "gtcount": tot["gt"], "num_clustered": tot["clustered"],
               "matching": settings.matching, **missing,
               "num_neurons": None if skeleton_ids is None else len(skeleton_ids)}
        if skeleton_ids is not None:
            res["neurons"] = per_neuron[thr]
        res["settings"] = settings_dict
        results.append(res)
    return results


def _scores(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return fscore, precision, recall


def _skeleton_of(skel_id: int, skeletons, settings: Evaluation):
    """The skeleton of ``skel_id``: from ``skeletons`` (mapping or callable) or the files of ``settings.skeletons``."""
    if skeletons is None:
        try:
            return load_skeleton(settings.skeletons, skel_id, key="skeletons")
        except SkeletonError as e:
            raise EvaluationError(f"filter_redundant_dist_type = geodesic, neuron {skel_id}: {e}") from None
    try:
        return skeletons(skel_id) if callable(skeletons) else skeletons[skel_id]
    except KeyError:
        raise EvaluationError(f"filter_redundant_dist_type = geodesic: no skeleton for neuron {skel_id}") from None
