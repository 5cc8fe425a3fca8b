"""Evaluation: the synaptic-partner f-score (CREMI / Synful metric, FAFB benchmark protocol).

Partners are :data:`~synful.io.partners.PARTNER_DTYPE` arrays (locations in nm,
(z, y, x); missing ids are ``NO_ID``).  Settings are one
:class:`synful.config.Evaluation` (the ``[Evaluation]`` section of
predict_config.ini, or the evaluation JSON read by
:func:`read_evaluation_json`; both share that one typed definition).

Filters on predictions, in this order (:func:`filter_partners`):

1. ``filter_seg_ids``: drop partners whose pre or post *segment* id is listed
   (a missing id never matches);
2. keep ``score >= score_thr``;
3. ``filter_same_id``: drop partners whose pre id equals their post id
   (``filter_same_id_type``: seg or skel; two missing ids are not "the same");
4. ``filter_redundant``: within each (pre id, post id) group
   (``filter_redundant_id_type``) single-linkage clusters of post sites with
   ``0 < d <= filter_redundant_dist_thr`` (nm; d exactly 0 does not link) keep
   only their highest-scoring member, the first in input order on a tie.
   ``filter_redundant_dist_type``: d is the euclidean post-site distance
   (default) or, ``geodesic``, the path length along the evaluated neuron's
   skeleton (FAFB protocol only; skeletons read from the files ``skeletons``
   names, see :func:`evaluate`) between the nodes nearest to the post sites.
   Partners with a missing id, or with an id in
   ``filter_redundant_ignore_ids``, are never clustered.

Matching (:func:`match_partners`): a prediction and a ground-truth partner are
a feasible pair only if their (pre id, post id) pairs are equal with no id
missing (when matching by ids) and their distance is within
``matching_threshold`` (nm): the pre-site distance
(``matching_threshold_only_pre``), the post-site distance
(``matching_threshold_only_post``) or both distances (cost: their mean).
Predictions in a pair without ground truth are thus false positives and ground
truth in a pair without predictions false negatives.  Within a shared pair the
one-to-one assignment minimises the summed cost of a square matrix whose
infeasible and padding cells cost ``2 x matching_threshold``
(scipy.optimize.linear_sum_assignment); assigned feasible cells are true
positives.  Because infeasible and padding cells share one cost, that
assignment splits exactly over the connected components of the feasible
graph: a component with one prediction or one ground-truth partner yields one
true positive directly, larger ones are solved as their own padded square
matrix.  (With ``matching_threshold`` 0 infeasible cells cost 1 nm, so that
they still cost more than feasible ones.)

Which ids must match is the ``matching`` setting, never the data:
``location`` (default: no ids, plain Hungarian matching on distances),
``segment`` (``pre_seg_id`` and ``post_seg_id``) or ``skeleton``
(``pre_skel_id`` and ``post_skel_id``; required by ``skeleton_ids``).  Inputs
that lack those ids are an error (:func:`check_inputs`): a side on which no
partner carries both ids.  Partners of which only some lack them cannot match
(false positives, or false negatives on the ground-truth side); their counts
are in the results.  Segment ids are only comparable when both sides come
from one segmentation: :func:`evaluate_run` checks the ground truth's ids
against the run's ``[Extraction] seg_container`` and records where each
side's ids came from.  Every result records ``matching``.

Inputs are refused when a score is not finite, an id repeats or two records
share both sites (:func:`synful.io.partners.check_partners`).

FAFB benchmark protocol (:func:`evaluate` with ``skeleton_ids``): for each
neuron, the predictions and ground truth touching it (pre or post skeleton id;
only its inputs with ``only_input_synapses``: post skeleton id; only its
outputs with ``only_output_synapses``: pre skeleton id) are filtered and
matched on their own; tp, fp, fn, predcount and gtcount are summed over
neurons, so a link between two listed neurons counts under each of them.
Precision, recall and f-score come from the sums (0 where undefined).

Segment matching with a segmentation of one's own: predictions extracted
with a segmentation other than the ground truth's (e.g. the watershed of
:mod:`synful.segment`) carry ids that cannot be compared with the ground
truth's.  ``matching_seg_container`` / ``matching_seg_dataset`` name the
segmentation (the ground truth's neuron labels) in which the predicted pre
and post sites are looked up *for matching only*: a prediction then matches
when its sites lie in the ground-truth partner's neurons, while the filters
keep using the ids the extraction wrote.  Evaluation may read the ground
truth; extraction never needs to.

Calibrate on validation, report on test (:func:`read_calibration`,
``synful evaluate TEST_RUN --calibration VALIDATION``): the score threshold
with the highest f-score in a validation run's sweep (the lowest such
threshold on a tie) is applied unchanged to the test run, which is evaluated
at that one threshold.  The validation results must come from a sweep (not
from a calibrated evaluation) with the same metric settings (every
[Evaluation] key except paths and ``score_thresholds``) and, when both runs
record them, the same extraction settings (every [Extraction] key except
paths, segmentation and store); a calibration from the run itself is
refused.  The test results record the chosen threshold, the validation
f-score there, the validation results file and its SHA-256 under
``calibration``.  This is how Synful's grid searches were reported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import types
import typing
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .config import ConfigError, Evaluation, check_evaluation, read_predict_config, to_dict
from .errors import SynfulError, read_json_file
from .io.partners import NO_ID, PARTNER_DTYPE, check_partners, read_partners
from .io.skeletons import SkeletonError, geodesic_distances, load_skeleton

__all__ = [
    "EvaluationError",
    "Matching",
    "MATCH_DTYPE",
    "read_evaluation_json",
    "read_skeleton_ids",
    "read_ground_truth",
    "check_inputs",
    "filter_partners",
    "match_partners",
    "evaluate",
    "write_results",
    "plot_precision_recall",
    "evaluate_config",
    "evaluate_run",
    "results_filename",
    "read_calibration",
]

logger = logging.getLogger(__name__)

#: one true-positive match: indices into the prediction and ground-truth arrays, cost in nm
MATCH_DTYPE = np.dtype([("pred", np.int64), ("gt", np.int64), ("cost", np.float64)])

#: keys the evaluation JSON must hold (the others default as in :class:`synful.config.Evaluation`)
JSON_REQUIRED = ("pred_synlinks", "gt_synlinks")
_CREMI_SUFFIXES = (".h5", ".hdf", ".hdf5", ".zarr", ".n5")
_ID_FIELDS = {"seg": ("pre_seg_id", "post_seg_id"), "skel": ("pre_skel_id", "post_skel_id")}
#: the id type (key of _ID_FIELDS) each ``matching`` mode compares; None: locations only
_MODE_IDS = {"location": None, "segment": "seg", "skeleton": "skel"}
_SITE_FIELDS = {"pre": ("pre_z", "pre_y", "pre_x"), "post": ("post_z", "post_y", "post_x")}


class EvaluationError(SynfulError):
    """Evaluation input (partners, skeleton ids, run) is missing or invalid; the message names it."""


class Matching(NamedTuple):
    """Result of :func:`match_partners`: counts and the true-positive matches (:data:`MATCH_DTYPE`)."""

    tp: int
    fp: int
    fn: int
    matches: np.ndarray


# --------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------

def _json_value(tp, value, where: str):
    """``value`` (parsed JSON) checked against type hint ``tp``; numbers widen int -> float."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _json_value(inner, value, where)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a JSON list, got {json.dumps(value)}")
        return [_json_value(inner, v, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {json.dumps(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {json.dumps(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {json.dumps(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {json.dumps(value)}")
    raise TypeError(tp)  # a key type this reader does not know: a programming error


def _check_meta(meta: dict, value, where: str):
    if value is None:
        return
    choices, lo, hi = meta.get("choices"), meta.get("minimum"), meta.get("maximum")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: expected one of {', '.join(choices)}, got {json.dumps(value)}")
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if not math.isfinite(v):  # json.loads reads NaN and Infinity
                raise ConfigError(f"{where}: expected a finite number, got {json.dumps(value)}")
            if meta.get("positive") and not v > 0:
                raise ConfigError(f"{where}: must be > 0, got {json.dumps(value)}")
            if lo is not None and v < lo:
                raise ConfigError(f"{where}: must be >= {lo:g}, got {json.dumps(value)}")
            if hi is not None and v > hi:
                raise ConfigError(f"{where}: must be <= {hi:g}, got {json.dumps(value)}")


#: cross-key checks shared by the JSON and ini paths (:func:`synful.config.check_evaluation`)
check_settings = check_evaluation


def read_evaluation_json(path) -> Evaluation:
    """Read and validate an evaluation JSON config into :class:`synful.config.Evaluation`.

    The JSON object holds exactly the [Evaluation] keys; ``pred_synlinks`` and
    ``gt_synlinks`` are required, the others default as in the dataclass.
    Relative paths resolve against the config file's folder.  Unknown keys,
    missing required keys, wrong types or out-of-range values raise
    :class:`~synful.config.ConfigError` naming the file and key.
    """
    path = Path(path)
    source = str(path)
    data = read_json_file(path, "config file", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object of evaluation settings")
    fields = {f.name: f for f in dataclasses.fields(Evaluation)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source} {unknown[0]}: unknown key (known keys: {', '.join(fields)})")
    for k in JSON_REQUIRED:
        if k not in data:
            raise ConfigError(f"{source} {k}: missing required key ({fields[k].metadata['doc']})")
    hints = typing.get_type_hints(Evaluation)
    base = path.parent.resolve()
    values = {}
    for k, v in data.items():
        where = f"{source} {k}"
        value = _json_value(hints[k], v, where)
        _check_meta(fields[k].metadata, value, where)
        if fields[k].metadata.get("path") and value is not None:
            value = str((base / os.path.expanduser(value)).resolve())
        values[k] = value
    for k in JSON_REQUIRED:
        if values[k] is None:
            raise ConfigError(f"{source} {k}: required, got null")
    if "matching" not in data and values.get("skeleton_ids") is not None:
        # Synful's FAFB configs carry no `matching`: their per-neuron protocol matches on skeleton ids
        values["matching"] = "skeleton"
    for k in ("roi_file", "syn_dir"):
        if values.get(k) is not None:
            logger.warning("%s %s: ignored (Synful's evaluator stores this key but never reads it)", source, k)
    return check_settings(Evaluation(**values), source)


def read_skeleton_ids(path) -> np.ndarray:
    """Neuron (skeleton) ids from a text file: one integer per line (first comma/space-separated field).

    Blank lines and ``#`` comments are skipped; a non-numeric first line is
    taken as a header.  Duplicates are dropped (first kept).  Returns int64.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise EvaluationError(f"{path}: skeleton id file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvaluationError(f"{path}: cannot read skeleton ids: {e}") from None
    ids: list[int] = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].replace(",", " ").split()
        if not text:
            continue
        try:
            ids.append(int(text[0]))
        except ValueError:
            if n == 1:
                continue  # header
            raise EvaluationError(f"{path}:{n}: expected a skeleton id (integer), got {text[0]!r}") from None
    unique = list(dict.fromkeys(ids))
    if len(unique) != len(ids):
        logger.warning("%s: %d duplicate skeleton id(s) ignored", path, len(ids) - len(unique))
    if not unique:
        raise EvaluationError(f"{path}: no skeleton ids")
    return np.asarray(unique, dtype=np.int64)


def read_ground_truth(path) -> np.ndarray:
    """Partners from FAFB JSON / CSV, or CREMI annotations (HDF5, zarr, N5) via synful.io.cremi."""
    path = Path(path)
    if path.suffix.lower() in _CREMI_SUFFIXES:
        try:
            from .io.cremi import read_annotations
        except ImportError:
            raise EvaluationError(f"{path}: reading CREMI annotations needs synful.io.cremi") from None
        if not path.exists():
            raise EvaluationError(f"{path}: annotation container not found")
        return np.asarray(read_annotations(path), dtype=PARTNER_DTYPE)
    return read_partners(path)


def check_inputs(pred: np.ndarray, gt: np.ndarray, settings: Evaluation, *, where: str = "matching",
                 sources: tuple[str, str] = ("predictions", "ground truth")) -> dict:
    """Refuse inputs the metric cannot use; return how many partners lack the ids ``matching`` compares.

    Both arrays must pass :func:`synful.io.partners.check_partners` (finite
    scores, unique ids, no two records with the same sites), named by
    ``sources`` (predictions, ground truth).  With ``matching`` segment or
    skeleton, a non-empty side on which no partner carries both ids of that
    type raises :class:`EvaluationError` naming ``where`` (file and key).
    Returns ``{"pred_missing_ids": n, "gt_missing_ids": m}``: partners with one
    of those ids missing, which cannot match (0 for ``location``).
    """
    kind = _MODE_IDS.get(settings.matching, "?")
    if kind == "?":
        raise EvaluationError(f"{where}: expected one of {', '.join(_MODE_IDS)}, got {settings.matching!r}")
    missing = {}
    for a, source, side, key in ((pred, sources[0], "predicted", "pred_missing_ids"),
                                 (gt, sources[1], "ground-truth", "gt_missing_ids")):
        try:
            check_partners(a, source)
        except SynfulError as e:
            raise EvaluationError(str(e)) from None
        if kind is None:
            missing[key] = 0
            continue
        pre, post = _ID_FIELDS[kind]
        lack = int(np.count_nonzero((a[pre] == NO_ID) | (a[post] == NO_ID)))
        if len(a) and lack == len(a):
            raise EvaluationError(f"{where} = {settings.matching}: all {len(a)} {side} partners ({source}) lack "
                                  f"{pre} or {post}; give {side} partners with these ids, or set matching = "
                                  f"location")
        if lack:
            logger.warning("%s = %s: %d of %d %s partners (%s) lack %s or %s: they cannot match", where,
                           settings.matching, lack, len(a), side, source, pre, post)
        missing[key] = lack
    return missing


# --------------------------------------------------------------------------------------
# core: filters and matching on index sets
# --------------------------------------------------------------------------------------

def _as_partners(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != PARTNER_DTYPE:
        raise EvaluationError(f"{name}: expected a PARTNER_DTYPE array, got dtype {a.dtype}")
    return a.reshape(-1)


def _sites(a: np.ndarray, which: str) -> np.ndarray:
    return np.stack([a[f] for f in _SITE_FIELDS[which]], axis=1).astype(np.int64)


def _static_mask(pred: np.ndarray, s: Evaluation) -> np.ndarray:
    """Score-independent filters: filter_seg_ids and filter_same_id."""
    keep = np.ones(len(pred), dtype=bool)
    if s.filter_seg_ids:
        listed = np.asarray(s.filter_seg_ids, dtype=np.int64)
        for f in ("pre_seg_id", "post_seg_id"):
            keep &= ~((pred[f] != NO_ID) & np.isin(pred[f], listed))
    if s.filter_same_id:
        pre, post = (pred[f] for f in _ID_FIELDS[s.filter_same_id_type])
        keep &= ~((pre == post) & (pre != NO_ID))
    return keep


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


def _check_thresholds(score_thresholds) -> list[float]:
    thrs = [float(t) for t in score_thresholds]
    if not thrs:
        raise EvaluationError("score_thresholds: give at least one score threshold")
    bad = [t for t in thrs if not math.isfinite(t)]
    if bad:
        raise EvaluationError(f"score_thresholds: expected finite numbers, got {bad[0]!r}")
    return thrs


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------

def filter_partners(pred: np.ndarray, settings: Evaluation, score_thr: float, skeleton=None) -> np.ndarray:
    """The predictions that survive the filters (module doc, in that order), in input order.

    ``pred``: PARTNER_DTYPE array; ``score_thr``: keep ``score >= score_thr``.
    ``skeleton`` (:class:`synful.io.skeletons.Skeleton`): the neuron along which
    geodesic redundancy distances are measured (needed, and only used, with
    ``filter_redundant_dist_type = geodesic``).  Returns a new PARTNER_DTYPE array.
    """
    pred = _as_partners(pred, "pred")
    geodesic = settings.filter_redundant and settings.filter_redundant_dist_type == "geodesic"
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


def _scores(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return fscore, precision, recall


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
    thrs = _check_thresholds(settings.score_thresholds if score_thresholds is None else score_thresholds)
    if settings.only_input_synapses and settings.only_output_synapses:
        raise EvaluationError("only_input_synapses and only_output_synapses cannot both be true")
    if settings.matching_threshold_only_pre and settings.matching_threshold_only_post:
        raise EvaluationError("matching_threshold_only_pre and matching_threshold_only_post cannot both be true")
    if (settings.only_input_synapses or settings.only_output_synapses) and skeleton_ids is None:
        raise EvaluationError("only_input_synapses / only_output_synapses need skeleton_ids (they are per neuron)")
    if skeleton_ids is not None:
        if settings.matching != "skeleton":
            raise EvaluationError(f"{where}: skeleton_ids (the FAFB per-neuron protocol) needs matching = skeleton, "
                                  f"got {settings.matching}")
        skeleton_ids = np.asarray(skeleton_ids, dtype=np.int64).reshape(-1)
    geodesic = settings.filter_redundant and settings.filter_redundant_dist_type == "geodesic"
    if geodesic:
        if skeleton_ids is None:
            raise EvaluationError("filter_redundant_dist_type = geodesic measures along each evaluated neuron's "
                                  "skeleton and needs skeleton_ids (the FAFB per-neuron protocol)")
        if skeletons is None and settings.skeletons is None:
            raise EvaluationError("skeletons: filter_redundant_dist_type = geodesic needs skeleton files (a folder "
                                  "of <skeleton_id>.swc / .json files, or one JSON node list)")
    matched = pred
    if match_seg_ids is not None:
        if settings.matching != "segment":
            raise EvaluationError(f"{where}: match_seg_ids (segment ids for matching) need matching = segment, got "
                                  f"{settings.matching}")
        matched = pred.copy()
        for f, ids in zip(_ID_FIELDS["seg"], match_seg_ids):
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(ids) != len(pred):
                raise EvaluationError(f"{where}: match_seg_ids: {len(ids)} ids for {len(pred)} predictions")
            matched[f] = ids
    missing = check_inputs(matched, gt, settings, where=where, sources=sources)
    id_type = _MODE_IDS[settings.matching]

    # one pass shared by all thresholds and neurons
    static = _static_mask(pred, settings)
    pidx = np.flatnonzero(static)
    cand = pred[pidx]
    red_edges = (_redundancy_edges(cand, settings) if settings.filter_redundant and not geodesic
                 else np.empty((0, 2), np.int64))
    mi, mj, mc = _match_edges(matched[pidx], gt, settings, id_type)
    score = cand["score"]
    t = float(settings.matching_threshold)

    if skeleton_ids is None:
        neurons = [(None, np.ones(len(cand), bool), np.ones(len(gt), bool))]
    else:
        def touching(a, s):
            if settings.only_input_synapses:
                return a["post_skel_id"] == s
            if settings.only_output_synapses:
                return a["pre_skel_id"] == s
            return (a["pre_skel_id"] == s) | (a["post_skel_id"] == s)
        neurons = [(int(s), touching(cand, s), touching(gt, s)) for s in skeleton_ids]

    totals = {thr: dict(tp=0, fp=0, fn=0, pred=0, gt=0, clustered=0) for thr in thrs}
    per_neuron = {thr: [] for thr in thrs}
    for skel, psel_mask, gsel_mask in neurons:
        psel, gsel = np.flatnonzero(psel_mask), np.flatnonzero(gsel_mask)
        ploc = np.full(len(cand), -1, np.int64)
        ploc[psel] = np.arange(len(psel))
        gloc = np.full(len(gt), -1, np.int64)
        gloc[gsel] = np.arange(len(gsel))
        # this neuron's edges in local indices
        if geodesic:
            re = (_geodesic_edges(cand[psel], settings, _skeleton_of(skel, skeletons, settings)) if len(psel) > 1
                  else np.empty((0, 2), np.int64))
        elif len(red_edges):
            re = ploc[red_edges]
            re = re[(re >= 0).all(axis=1)]
        else:
            re = red_edges
        me = (ploc[mi] >= 0) & (gloc[mj] >= 0)
        ei, ej, ec = ploc[mi[me]], gloc[mj[me]], mc[me]
        sc = score[psel]
        for thr in thrs:
            keep = sc >= thr
            n_thr = int(keep.sum())
            if settings.filter_redundant:
                keep = _redundant_keep(len(psel), keep, sc, re)
            live = keep[ei]
            m = _assign(ei[live], ej[live], ec[live], t, len(psel), len(gsel))
            tp, npred, ngt = len(m), int(keep.sum()), len(gsel)
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


# --------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------

def results_filename(score_thr: float) -> str:
    """``results_thr<thr>.json`` with the threshold written exactly and shortest (0, 0.5, 120)."""
    return f"results_thr{np.format_float_positional(float(score_thr), trim='-')}.json"


def _atomic_write(path: Path, write_fn):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _best(results: list[dict]) -> dict:
    """The result with the highest f-score (the first on a tie)."""
    return results[int(np.argmax([r["fscore"] for r in results]))]


def plot_precision_recall(results: list[dict], path, title: str = "") -> Path:
    """Precision-recall curve over the threshold sweep (PNG), the best f-score marked; atomic."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    path = Path(path)
    res = sorted(results, key=lambda r: r["score_thr"])
    rec = [r["recall"] for r in res]
    prec = [r["precision"] for r in res]
    best = _best(results)
    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    grid = np.linspace(0.01, 1, 200)
    for f in (0.2, 0.4, 0.6, 0.8):  # iso-f-score lines
        p = f * grid / (2 * grid - f)
        ok = (p > 0) & (p <= 1)
        ax.plot(grid[ok], p[ok], color="0.85", lw=0.8, zorder=0)
        ax.annotate(f"f={f:g}", (grid[ok][-1], p[ok][-1]), fontsize=7, color="0.6")
    ax.plot(rec, prec, "-o", ms=3, color="tab:blue", label="score threshold sweep")
    ax.plot([best["recall"]], [best["precision"]], "*", ms=14, color="tab:red",
            label=f"best f-score {best['fscore']:.3f} (thr {best['score_thr']:g})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title or 'synaptic partners: precision-recall'} (matching: {best['matching']})")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def write_results(results: list[dict], out_dir, *, inputs: dict | None = None, title: str = "") -> Path:
    """Write ``results_thr<thr>.json`` per threshold, ``summary.json`` and ``precision_recall.png``.

    Every file is written to a temporary name and renamed, so a rerun replaces
    them and an interrupted one leaves no partial file.  ``inputs`` (e.g. the
    partner files) is recorded in each file.  Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = inputs or {}

    def dump(obj):
        return lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n")

    for r in results:
        _atomic_write(out_dir / results_filename(r["score_thr"]), dump({**r, "inputs": inputs}))
    best = _best(results)
    keys = ("score_thr", "fscore", "precision", "recall", "tpcount", "fpcount", "fncount", "predcount", "gtcount",
            "num_clustered")
    summary = {"best": {k: best[k] for k in keys}, "sweep": [{k: r[k] for k in keys} for r in results],
               "matching": best["matching"], "settings": best["settings"], "inputs": inputs}
    _atomic_write(out_dir / "summary.json", dump(summary))
    plot_precision_recall(results, out_dir / "precision_recall.png", title)
    return out_dir


def _inputs_info(settings: Evaluation, pred, gt, skeleton_ids, seconds: float, **extra) -> dict:
    return {"pred_synlinks": settings.pred_synlinks, "gt_synlinks": settings.gt_synlinks,
            "skeleton_ids": settings.skeleton_ids, "num_pred": int(len(pred)), "num_gt": int(len(gt)),
            "num_skeleton_ids": None if skeleton_ids is None else int(len(skeleton_ids)),
            "eval_seconds": round(seconds, 3), **extra}


def _file_ids(path) -> str:
    """Where the segment ids of a partner file or CREMI container come from, in words."""
    path = Path(path)
    if path.suffix.lower() in _CREMI_SUFFIXES:
        from .io.cremi import NEURON_IDS

        return f"{path}/{NEURON_IDS} (looked up at the annotated sites)"
    return f"{path} (as written in the file; its segmentation is not recorded)"


def _log_matching(settings: Evaluation, ids: dict) -> None:
    if settings.matching == "location":
        logger.info("matching = location: partners match by distance only, ids are not compared")
    elif settings.matching == "skeleton":
        logger.info("matching = skeleton: partners match only with equal (pre_skel_id, post_skel_id)")
    else:
        logger.info("matching = segment: partners match only with equal (pre_seg_id, post_seg_id); predictions' "
                    "ids from %s, ground truth's from %s", ids["predictions"], ids["ground_truth"])


def evaluate_config(path, out_dir=None, calibration=None) -> tuple[list[dict], Path]:
    """Evaluate what an evaluation JSON config names; write the results into ``out_dir``.

    ``out_dir`` defaults to ``<config folder>/<config stem>_evaluation``.
    Every results file records ``matching`` and, under
    ``inputs.segment_ids``, where each side's segment ids came from.
    ``calibration``: validation results (:func:`read_calibration`) whose
    chosen score threshold replaces ``score_thresholds``.
    Returns (per-threshold results, out_dir).
    """
    path = Path(path)
    settings = read_evaluation_json(path)
    calib = None
    if calibration is not None:
        calib = read_calibration(calibration, settings)
        settings = dataclasses.replace(settings, score_thresholds=[calib["score_thr"]])
    pred = read_partners(settings.pred_synlinks)
    gt = read_ground_truth(settings.gt_synlinks)
    skel = read_skeleton_ids(settings.skeleton_ids) if settings.skeleton_ids else None
    ids = {"predictions": _file_ids(settings.pred_synlinks), "ground_truth": _file_ids(settings.gt_synlinks)}
    match_ids = _matching_seg_ids(settings, pred, gt, ids["ground_truth"], f"{path} matching", ids)
    _log_matching(settings, ids)
    start = time.perf_counter()
    results = evaluate(pred, gt, settings, skel, where=f"{path} matching",
                       sources=(settings.pred_synlinks, settings.gt_synlinks), match_seg_ids=match_ids)
    seconds = time.perf_counter() - start
    extra = {}
    if calib is not None:
        results = [{**r, "calibration": calib} for r in results]
        extra["calibration"] = calib
    if out_dir is None and settings.results_dir is not None:
        out_dir = settings.results_dir
    out_dir = Path(out_dir) if out_dir is not None else path.parent / f"{path.stem}_evaluation"
    write_results(results, out_dir, inputs=_inputs_info(settings, pred, gt, skel, seconds, config=str(path.resolve()),
                                                        segment_ids=ids, **extra),
                  title=path.stem)
    return results, out_dir


def _run_ground_truth(prediction, where: str) -> tuple[np.ndarray, str, str]:
    """Ground truth of the manifest sample a run predicted, restricted to its [Prediction] ROI when set.

    Returns (partners, their source, where their segment ids came from).
    """
    from .config import read_train_config
    from .io.manifest import read_manifest, read_sample_partners

    ini = Path(prediction.train_setup) / "train_config.ini"
    if not ini.is_file():
        raise EvaluationError(f"{where}: not set, and the training setup {prediction.train_setup} has no "
                              f"train_config.ini naming a manifest; set gt_synlinks")
    manifest = read_train_config(ini).manifest
    samples = read_manifest(manifest)
    if prediction.raw_container is None:
        chosen = [s for s in samples if s.split == prediction.split_part][:1]
    else:
        raw = Path(prediction.raw_container).resolve()
        chosen = [s for s in samples if Path(s.container).resolve() == raw][:1]
    if not chosen:
        what = (f"{prediction.split_part} sample" if prediction.raw_container is None
                else f"sample with container {prediction.raw_container}")
        raise EvaluationError(f"{where}: not set, and the manifest {manifest} has no {what}; set gt_synlinks")
    sample = chosen[0]
    gt = read_sample_partners(sample)
    if prediction.roi_offset is not None and prediction.roi_shape is not None and len(gt):
        begin = np.asarray(prediction.roi_offset)
        end = begin + np.asarray(prediction.roi_shape)
        post = _sites(gt, "post")
        gt = gt[np.all((post >= begin) & (post < end), axis=1)]
    labels = f"{sample.container}/{sample.labels_dataset}" if sample.labels_dataset else None
    if sample.annotations_in_container:
        ids = f"{labels} (looked up at the annotated sites)" if labels else "none (the sample has no labels)"
    else:
        ids = f"{sample.annotations}" + (f" (ids missing there looked up in {labels})" if labels else "")
    return gt, f"manifest {manifest} sample {sample.name}", ids


def _run_segmentation(predict_dir: Path, extraction) -> tuple[str, str] | None:
    """(container, dataset) the run's partners took their segment ids from, or None.

    The run's extraction summary records the [Extraction] it ran with; without
    one, the current [Extraction] is taken.
    """
    container, dataset = extraction.seg_container, extraction.seg_dataset
    summary = predict_dir / "extraction_summary.json"
    if summary.is_file():
        try:
            used = json.loads(summary.read_text()).get("config", {})
            container, dataset = used.get("seg_container", container), used.get("seg_dataset", dataset)
        except (OSError, ValueError, AttributeError) as e:  # an unreadable summary: fall back to the config's
            logger.warning("%s: cannot read the segmentation the extraction used (%s); taking [Extraction] "
                           "seg_container / seg_dataset", summary, e)
    return None if container is None else (str(container), str(dataset))


def _check_same_segmentation(gt: np.ndarray, seg: tuple[str, str], gt_ids: str, where: str) -> str:
    """Refuse ground-truth segment ids that disagree with ``seg`` (the predictions' segmentation) at the gt sites.

    Returns a one-line account of the check for the results file.
    """
    from .io.volumes import lookup_ids, open_volume

    try:
        labels = open_volume(seg[0], seg[1])
    except SynfulError as e:
        raise EvaluationError(f"{where} = segment: cannot open the predictions' segmentation: {e}") from None
    checked = 0
    for prefix in ("pre", "post"):
        ids = gt[f"{prefix}_seg_id"]
        known = np.flatnonzero(ids != NO_ID)
        found = lookup_ids(labels, _sites(gt[known], prefix))
        inside = found != NO_ID
        checked += int(inside.sum())
        bad = np.flatnonzero(inside & (found != ids[known]))
        if len(bad):
            i = int(known[bad[0]])
            raise EvaluationError(
                f"{where} = segment: the ground truth's segment ids ({gt_ids}) differ from the predictions' "
                f"segmentation {seg[0]}/{seg[1]} ([Extraction] seg_container, seg_dataset) at {len(bad)} "
                f"{prefix} site(s), first ground-truth record {i}: {prefix}_seg_id {int(ids[i])} vs "
                f"{int(found[bad[0]])}; ids of two segmentations cannot be compared: extract with the ground "
                f"truth's segmentation, or set matching = location")
    if not checked:
        return f"not checked: no ground-truth site with a segment id lies inside {seg[0]}/{seg[1]}"
    return f"ground-truth ids equal {seg[0]}/{seg[1]} at all {checked} ground-truth sites inside it"


def evaluate_run(predict_dir, out_dir=None, calibration=None, overrides: dict | None = None) -> tuple[list[dict], Path]:
    """Evaluate a prediction run (``03_predict/setup_t<T>_p<P>``) with its [Evaluation] section.

    Predictions: ``pred_synlinks`` if set, else the run's result collection
    (:func:`synful.store.open_run_store`).  Ground truth: ``gt_synlinks`` if
    set, else the partners of the manifest sample the run predicted (the
    first ``split_part`` sample of the training manifest, or the sample whose
    container is ``raw_container``; post sites restricted to the [Prediction]
    ROI when one is set).  With ``matching = segment`` and predictions from
    the store, the ground truth's segment ids must equal the run's
    segmentation ([Extraction] seg_container / seg_dataset) at every
    ground-truth site inside it, else :class:`EvaluationError`.  Results go to
    ``out_dir`` (default ``<predict_dir>/evaluation``); each file records
    ``matching`` and, under ``inputs.segment_ids``, where each side's ids came
    from.  ``matching_seg_container`` set: the predictions' sites are looked up
    there for matching, and the ground truth's ids are checked against it
    instead (module doc).  ``calibration``: validation results
    (:func:`read_calibration`: a prediction run, its evaluation folder or its
    ``summary.json``) whose chosen score threshold replaces
    ``score_thresholds``; the results record it under ``calibration``.
    ``overrides``: [Evaluation] keys replaced for this evaluation only (e.g.
    ``{"matching": "location"}``), checked like the ini's.
    Returns (results, out_dir).
    """
    predict_dir = Path(predict_dir).resolve()
    ini = predict_dir / "predict_config.ini"
    if not ini.is_file():
        raise EvaluationError(f"{predict_dir}: not a prediction setup (no predict_config.ini)")
    cfg = read_predict_config(ini)  # includes the [Evaluation] cross-key checks
    settings = cfg.evaluation
    if overrides:
        try:
            settings = check_settings(dataclasses.replace(settings, **overrides), f"{ini} [Evaluation] (overridden)")
        except TypeError as e:
            raise EvaluationError(f"evaluate_run overrides: {e}") from None
    calib = None
    if calibration is not None:
        calib = read_calibration(calibration, settings, predict_dir=predict_dir,
                                 extraction=_run_extraction_config(predict_dir, cfg.extraction))
        settings = dataclasses.replace(settings, score_thresholds=[calib["score_thr"]])
    seg = None
    if settings.pred_synlinks is not None:
        pred = read_partners(settings.pred_synlinks)
        pred_source = settings.pred_synlinks
        pred_ids = _file_ids(settings.pred_synlinks)
    else:
        from .store import open_run_store

        with open_run_store(predict_dir) as store:
            pred = store.query()
            pred_source = f"{store!r}"
        seg = _run_segmentation(predict_dir, cfg.extraction)
        pred_ids = (f"{seg[0]}/{seg[1]} ([Extraction] seg_container, seg_dataset)" if seg
                    else "none ([Extraction] seg_container = None)")
    if settings.gt_synlinks is not None:
        gt = read_ground_truth(settings.gt_synlinks)
        gt_source = settings.gt_synlinks
        gt_ids = _file_ids(settings.gt_synlinks)
    else:
        gt, gt_source, gt_ids = _run_ground_truth(cfg.prediction, f"{ini} [Evaluation] gt_synlinks")
    ids = {"predictions": pred_ids, "ground_truth": gt_ids}
    where = f"{ini} [Evaluation] matching"
    match_ids = _matching_seg_ids(settings, pred, gt, gt_ids, where, ids)
    if match_ids is None and settings.matching == "segment" and seg is not None and len(gt):
        ids["check"] = _check_same_segmentation(gt, seg, gt_ids, where)
    _log_matching(settings, ids)
    skel = read_skeleton_ids(settings.skeleton_ids) if settings.skeleton_ids else None
    start = time.perf_counter()
    results = evaluate(pred, gt, settings, skel, where=where, sources=(pred_source, gt_source),
                       match_seg_ids=match_ids)
    seconds = time.perf_counter() - start
    extra = {}
    if calib is not None:
        results = [{**r, "calibration": calib} for r in results]
        extra["calibration"] = calib
    try:
        from .scaffold import run_ids

        title = run_ids(predict_dir).name
    except SynfulError:
        title = predict_dir.name
    if out_dir is None and settings.results_dir is not None:
        out_dir = settings.results_dir
    out_dir = Path(out_dir) if out_dir is not None else predict_dir / "evaluation"
    write_results(results, out_dir, title=title,
                  inputs=_inputs_info(settings, pred, gt, skel, seconds, predictions=pred_source,
                                      ground_truth=gt_source, run=title, predict_dir=str(predict_dir),
                                      extraction=_run_extraction_config(predict_dir, cfg.extraction),
                                      segment_ids=ids, **extra))
    return results, out_dir


def _matching_seg_ids(settings: Evaluation, pred: np.ndarray, gt: np.ndarray, gt_ids: str, where: str,
                      ids: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The predictions' (pre, post) ids in ``matching_seg_container`` (None when unset); checks the ground truth's
    ids against it and records both in ``ids``."""
    if settings.matching != "segment" or settings.matching_seg_container is None:
        return None
    from .io.volumes import lookup_ids, open_volume

    seg = (str(settings.matching_seg_container), settings.matching_seg_dataset)
    try:
        labels = open_volume(*seg)
    except SynfulError as e:
        raise EvaluationError(f"{where.rsplit(' ', 1)[0]} matching_seg_container: cannot open it: {e}") from None
    found = tuple(lookup_ids(labels, _sites(pred, prefix)) for prefix in ("pre", "post"))
    ids["matching"] = (f"{seg[0]}/{seg[1]} (matching_seg_container: the predictions' ids for matching, looked up "
                       f"at their sites; filters use {ids['predictions']})")
    if len(gt):
        ids["check"] = _check_same_segmentation(gt, seg, gt_ids, where)
    return found


#: [Evaluation] keys a calibration run may differ in (per-volume paths, the sweep itself, no-op keys)
_CALIBRATION_FREE = frozenset({f.name for f in dataclasses.fields(Evaluation) if f.metadata.get("path")}
                              | {"score_thresholds", "matching_seg_dataset", "multiprocess", "roi_file", "syn_dir"})
#: [Extraction] keys a calibration run may differ in (its segmentation, store and input scales)
_CALIBRATION_FREE_EXTRACTION = frozenset({"seg_container", "seg_dataset", "store_url", "database", "collection",
                                          "credentials_file", "credentials_env"})


def _run_extraction_config(predict_dir: Path, extraction) -> dict:
    """The [Extraction] a run's partners came from: its extraction summary's, else the config's."""
    summary = predict_dir / "extraction_summary.json"
    if summary.is_file():
        try:
            used = json.loads(summary.read_text()).get("config")
            if isinstance(used, dict):
                return used
        except (OSError, ValueError, AttributeError):
            pass
    return json.loads(json.dumps(to_dict(extraction)))


def _calibration_file(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / "predict_config.ini").is_file():
        try:
            results_dir = read_predict_config(path / "predict_config.ini").evaluation.results_dir
        except ConfigError:
            results_dir = None
        return Path(results_dir) / "summary.json" if results_dir else path / "evaluation" / "summary.json"
    return path / "summary.json"


def read_calibration(path, settings: Evaluation, *, predict_dir=None, extraction: dict | None = None) -> dict:
    """The score threshold chosen on validation results, checked against the run it will be applied to.

    ``path``: a validation prediction run (its ``evaluation/summary.json``),
    an evaluation folder, or a ``summary.json`` written by
    :func:`write_results`.  The choice: the highest f-score of its sweep, the
    lowest threshold on a tie.  Refused (:class:`EvaluationError`) when the
    file is missing, holds no sweep, is itself a calibrated evaluation, was
    evaluated with other metric settings than ``settings`` (any [Evaluation]
    key but paths and ``score_thresholds``), was extracted with other
    settings than ``extraction`` (the target run's [Extraction], when both are
    known; paths, segmentation and store aside), or is ``predict_dir``'s own.

    Returns ``{"score_thr", "validation_fscore", "validation_precision",
    "validation_recall", "rule", "source", "sha256", "validation_run"}``.
    """
    import hashlib

    path = Path(path)
    file = _calibration_file(path)
    if not file.is_file():
        raise EvaluationError(f"{path}: calibration: no evaluation results ({file} not found); run `synful evaluate` "
                              f"on the validation run first")
    raw = file.read_bytes()
    try:
        summary = json.loads(raw)
    except ValueError as e:
        raise EvaluationError(f"{file}: calibration: not a JSON results summary ({e})") from None
    sweep = summary.get("sweep") if isinstance(summary, dict) else None
    if not isinstance(sweep, list) or not sweep or not all(
            isinstance(r, dict) and isinstance(r.get("fscore"), (int, float))
            and isinstance(r.get("score_thr"), (int, float)) for r in sweep):
        raise EvaluationError(f"{file}: calibration: holds no results sweep (a summary.json of `synful evaluate`)")
    inputs = summary.get("inputs") or {}
    if summary.get("calibration") is not None or inputs.get("calibration") is not None:
        raise EvaluationError(f"{file}: calibration: these results are themselves a calibrated evaluation at one "
                              f"threshold; calibrate on a validation sweep")
    theirs = summary.get("settings")
    if not isinstance(theirs, dict):
        raise EvaluationError(f"{file}: calibration: records no evaluation settings")
    ours = to_dict(settings)
    for k in sorted(ours):
        if k in _CALIBRATION_FREE:
            continue
        a, b = json.loads(json.dumps(ours[k])), theirs.get(k)
        if a != b:
            raise EvaluationError(f"{file}: calibration: evaluated with {k} = {json.dumps(b)}, this evaluation has "
                                  f"{k} = {json.dumps(a)}; a threshold only carries over under the same metric")
    val_run = inputs.get("predict_dir")
    if predict_dir is not None and val_run is not None and Path(val_run).resolve() == Path(predict_dir).resolve():
        raise EvaluationError(f"{file}: calibration: these are the results of {predict_dir} itself; calibrate on a "
                              f"validation run")
    their_ex = inputs.get("extraction")
    if extraction is not None and isinstance(their_ex, dict):
        for k in sorted(extraction):
            if k in _CALIBRATION_FREE_EXTRACTION:
                continue
            if json.loads(json.dumps(extraction[k])) != their_ex.get(k):
                raise EvaluationError(f"{file}: calibration: the validation run was extracted with {k} = "
                                      f"{json.dumps(their_ex.get(k))}, this run with {k} = "
                                      f"{json.dumps(extraction[k])}; extract both with the same settings")
    best = max(sweep, key=lambda r: (r["fscore"], -r["score_thr"]))
    return {"score_thr": float(best["score_thr"]), "validation_fscore": best["fscore"],
            "validation_precision": best.get("precision"), "validation_recall": best.get("recall"),
            "rule": "highest validation f-score, lowest threshold on a tie",
            "source": str(file.resolve()), "sha256": hashlib.sha256(raw).hexdigest(), "validation_run": val_run,
            "validation_thresholds": [r["score_thr"] for r in sweep]}
