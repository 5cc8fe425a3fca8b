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
from .filters import _geodesic_edges, _redundancy_edges, _redundant_keep, _static_masks
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
    defaults to ``settings.score_thresholds``; when both are None the sweep
    is :func:`auto_score_thresholds` of the scores left by filter_seg_ids and
    filter_same_id.

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
    (per-neuron counts, FAFB protocol only), ``settings`` (the Evaluation
    keys), ``score_thresholds_from`` (``settings``, ``call`` or ``scores``:
    where the sweep came from), ``removed`` (predictions each filter removed,
    counted in the order applied: ``filter_seg_ids`` and ``filter_same_id``
    over all predictions, then ``score_thr`` and ``filter_redundant`` summed
    like ``predcount``) and, only where ``predcount`` is 0, ``note`` (why:
    no predictions at all, or what the filters removed; also logged as a
    warning).
    """
    pred, gt = _as_partners(pred, "pred"), _as_partners(gt, "gt")
    thrs = _check_call(settings, score_thresholds, skeleton_ids, skeletons, where)
    origin = "call" if score_thresholds is not None else "settings"
    if skeleton_ids is not None:
        skeleton_ids = np.asarray(skeleton_ids, dtype=np.int64).reshape(-1)
    matched = _with_match_seg_ids(pred, settings, match_seg_ids, where)
    missing = check_inputs(matched, gt, settings, where=where, sources=sources)

    # one pass shared by all thresholds and neurons
    seg_keep, same_keep = _static_masks(pred, settings)
    static = np.flatnonzero(seg_keep & same_keep)
    removed = {"filter_seg_ids": int((~seg_keep).sum()), "filter_same_id": int((seg_keep & ~same_keep).sum())}
    cand = pred[static]
    if thrs is None:
        thrs, origin = auto_score_thresholds(cand["score"]), "scores"
    red_edges = (_redundancy_edges(cand, settings) if settings.filter_redundant and not uses_geodesic(settings)
                 else np.empty((0, 2), np.int64))
    match = _match_edges(matched[static], gt, settings, _MODE_IDS[settings.matching])
    neurons = _neurons(cand, gt, settings, skeleton_ids)
    totals, per_neuron = _sweep(cand, gt, settings, thrs, neurons, red_edges, match, skeletons)
    results = _results(settings, thrs, totals, per_neuron, missing, skeleton_ids, removed, len(pred), origin)
    _warn_empty(results, len(pred), where)
    return results


def auto_score_thresholds(scores: np.ndarray, steps: int = 20) -> list[float]:
    """The default sweep: the distinct 0, 1/steps, ..., 100 % quantiles of ``scores`` (each an actual score),
    rounded down to 3 significant digits, ascending; ``[0.0]`` without scores.

    Quantiles rather than a fixed list because the score scale depends on [Extraction] score_type (a sum of
    probabilities grows with the component's size, a mean stays in [0, 1]).  Rounding down keeps every
    prediction at or above the threshold taken from its score; the lowest threshold keeps them all.
    """
    scores = np.asarray(scores, dtype=float)
    if not len(scores):
        return [0.0]
    qs = np.quantile(scores, np.linspace(0, 1, steps + 1), method="lower")
    return sorted({_floor_significant(float(q)) for q in qs})


def _floor_significant(v: float, digits: int = 3) -> float:
    """``v`` rounded down to ``digits`` significant digits (short thresholds for file names and labels)."""
    if v == 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(abs(v))) - digits + 1)
    r = float(f"{math.floor(v / step) * step:.{digits}g}")
    return r if r <= v else float(f"{(math.floor(v / step) - 1) * step:.{digits}g}")


def _warn_empty(results: list[dict], n_pred: int, where: str) -> None:
    """Log why thresholds evaluate no prediction: none given, or the filters removed them (their notes)."""
    empty = [r for r in results if r["predcount"] == 0]
    if not empty:
        return
    if n_pred == 0:
        logger.warning("%s: no predictions to evaluate", where)
    elif len(empty) == len(results):
        logger.warning("%s: at every threshold %s", where, empty[0]["note"])
    else:
        logger.warning("%s: at %d of %d thresholds (from %g) no prediction is left; at %g %s", where, len(empty),
                       len(results), min(r["score_thr"] for r in empty), empty[0]["score_thr"], empty[0]["note"])


def _check_rules(view: Evaluation, where: str, keys: Optional[tuple] = None) -> None:
    """Raise the :class:`EvaluationError` of the first [Evaluation] rule (of ``keys``; None: all) ``view`` breaks."""
    for rule in EVALUATION_RULES:
        if rule.call is not None and (keys is None or rule.key in keys) and rule.broken(view):
            raise EvaluationError(rule.call_message(view, where))


def _check_call(settings: Evaluation, score_thresholds, skeleton_ids, skeletons,
                where: str) -> Optional[list[float]]:
    """The score thresholds of an :func:`evaluate` call (None: derived from the scores), after the [Evaluation]
    cross-key rules (:data:`synful.config.EVALUATION_RULES`) are checked on ``settings`` with the call's
    arguments in place of their keys: thresholds first (none, or not finite), then the other rules in their
    order."""
    given = settings.score_thresholds if score_thresholds is None else score_thresholds
    thrs = None if given is None else [float(t) for t in given]
    view = dataclasses.replace(settings, score_thresholds=thrs, skeleton_ids=skeleton_ids,
                               skeletons=settings.skeletons if skeletons is None else skeletons)
    _check_rules(view, where, keys=("score_thresholds",))
    bad = [t for t in thrs or () if not math.isfinite(t)]
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
    totals = {thr: dict(tp=0, fp=0, fn=0, pred=0, gt=0, clustered=0, below=0) for thr in thrs}
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
            tot["below"] += len(psel) - n_thr
            if skel is not None:
                per_neuron[thr].append({"skel_id": skel, "tpcount": tp, "fpcount": npred - tp,
                                        "fncount": ngt - tp, "predcount": npred, "gtcount": ngt})
    return totals, per_neuron


def _results(settings: Evaluation, thrs, totals: dict, per_neuron: dict, missing: dict, skeleton_ids,
             removed: dict, n_pred: int, origin: str) -> list[dict]:
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
        res["score_thresholds_from"] = origin
        res["removed"] = {**removed, "score_thr": tot["below"], "filter_redundant": tot["clustered"]}
        if not tot["pred"]:
            res["note"] = _empty_note(n_pred, res["removed"], skeleton_ids is not None)
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


def _empty_note(n_pred: int, removed: dict, per_neuron: bool) -> str:
    """Why a threshold evaluates no prediction."""
    if n_pred == 0:
        return "no predictions: the input holds none"
    counts = ", ".join(f"{k} {v}" for k, v in removed.items())
    text = f"no predictions left: of {n_pred}, the filters removed {counts}"
    return text + ("; score_thr and filter_redundant counted per neuron, predictions touching none of the "
                   "neurons not evaluated" if per_neuron else "")
