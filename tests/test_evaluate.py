"""Synaptic-partner evaluation: filters, matching, the FAFB per-neuron protocol, configs, CLI, runs.

Expected counts are worked out by hand in the comments next to each case.
Locations are nm (z, y, x).
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from synful.config import ConfigError, Evaluation
from synful.evaluate import (EvaluationError, auto_score_thresholds, check_inputs, evaluate, evaluate_config,
                             evaluate_run, filter_partners, match_partners, read_evaluation_json,
                             read_skeleton_ids, results_filename)
from synful.io.partners import NO_ID, empty_partners, write_partners_json

ROOT = Path(__file__).resolve().parent.parent

# no filters unless a test turns one on; matching = location (the default)
PLAIN = Evaluation(filter_same_id=False, filter_redundant=False, filter_seg_ids=[], matching_threshold=100.0,
                   score_thresholds=[0.0])
MODE = {"seg": "segment", "skel": "skeleton"}  # id type -> the matching mode that compares it


def S(**kw) -> Evaluation:
    return dataclasses.replace(PLAIN, **kw)


def P(*rows) -> np.ndarray:
    """Partners from rows (pre, post, score=1, seg=(pre, post), skel=(pre, post), id)."""
    a = empty_partners(len(rows))
    for k, r in enumerate(rows):
        r = dict(r)
        a[k]["id"] = r.get("id", k)
        a[k]["pre_z"], a[k]["pre_y"], a[k]["pre_x"] = r["pre"]
        a[k]["post_z"], a[k]["post_y"], a[k]["post_x"] = r["post"]
        a[k]["score"] = r.get("score", 1.0)
        seg, skel = r.get("seg", (NO_ID, NO_ID)), r.get("skel", (NO_ID, NO_ID))
        a[k]["pre_seg_id"], a[k]["post_seg_id"] = seg
        a[k]["pre_skel_id"], a[k]["post_skel_id"] = skel
    return a


def L(pre, post, **kw):
    return dict(pre=pre, post=post, **kw)


def counts(res):
    return res["tpcount"], res["fpcount"], res["fncount"]


# ---------------------------------------------------------------------------------------------
# filters
# ---------------------------------------------------------------------------------------------

def test_filter_seg_ids_and_score_threshold():
    pred = P(L((0, 0, 0), (0, 0, 50), seg=(0, 2), score=5),       # background pre -> dropped
             L((0, 0, 0), (0, 0, 50), seg=(1, 0), score=5),       # background post -> dropped
             L((0, 0, 0), (0, 0, 50), seg=(1, 2), score=5),       # kept
             L((0, 0, 0), (0, 0, 50), score=5),                   # missing ids never match a listed id
             L((0, 0, 0), (0, 0, 50), seg=(1, 2), score=2.0),     # score == thr: kept (>=)
             L((0, 0, 0), (0, 0, 50), seg=(1, 2), score=1.999))   # below thr
    out = filter_partners(pred, S(filter_seg_ids=[0]), 2.0)
    assert list(out["id"]) == [2, 3, 4]
    out = filter_partners(pred, S(filter_seg_ids=[0, 1]), 0.0)
    assert list(out["id"]) == [3]


def test_filters_removing_every_prediction_are_reported(caplog):
    pred = P(L((0, 0, 0), (0, 0, 50), seg=(0, 2)), L((0, 0, 0), (0, 0, 90), seg=(3, 0)))
    gt = P(L((0, 0, 0), (0, 0, 50), seg=(1, 2)))
    with caplog.at_level("WARNING", logger="synful.evaluate"):
        (res,) = evaluate(pred, gt, S(filter_seg_ids=[0]), where="case")
    assert res["predcount"] == 0
    assert ("case: at every threshold no predictions left: of 2, the filters removed filter_seg_ids 2, "
            "filter_same_id 0, score_thr 0, filter_redundant 0") in caplog.text
    assert res["note"].startswith("no predictions left: of 2") and res["removed"]["filter_seg_ids"] == 2
    caplog.clear()
    with caplog.at_level("WARNING", logger="synful.evaluate"):
        evaluate(pred, gt, S(filter_seg_ids=[7]), where="case")
    assert "no predictions" not in caplog.text


@pytest.mark.parametrize("kind", ["seg", "skel"])
def test_filter_same_id(kind):
    other = "skel" if kind == "seg" else "seg"
    pred = P(L((0, 0, 0), (0, 0, 50), **{kind: (7, 7), other: (1, 2)}),   # same id of this type: dropped
             L((0, 0, 0), (0, 0, 50), **{kind: (7, 8), other: (3, 3)}),   # same only in the other type: kept
             L((0, 0, 0), (0, 0, 50)))                                    # both missing: not "the same"
    out = filter_partners(pred, S(filter_same_id=True, filter_same_id_type=kind), 0.0)
    assert list(out["id"]) == [1, 2]
    assert len(filter_partners(pred, S(filter_same_id=False), 0.0)) == 3


@pytest.mark.parametrize("kind", ["seg", "skel"])
def test_filter_redundant_clusters(kind):
    other = "skel" if kind == "seg" else "seg"
    g = {kind: (1, 2), other: (9, 9)}
    pred = P(
        # chain in group (1, 2): a-b 80 nm, b-c 80 nm (a-c 160 nm > 100): one cluster by single linkage
        L((0, 0, 0), (0, 0, 0), score=3, **g),        # 0 a
        L((0, 0, 0), (0, 0, 80), score=2, **g),       # 1 b
        L((0, 0, 0), (0, 0, 160), score=4, **g),      # 2 c  <- best of the cluster 0..3
        # exactly 100 nm from c: links (d <= thr)
        L((0, 0, 0), (0, 0, 260), score=1, **g),      # 3
        # 101 nm from 3: a cluster of its own
        L((0, 0, 0), (0, 0, 361), score=1, **g),      # 4
        # same place as b but another pair: never clustered with it
        L((0, 0, 0), (0, 0, 80), score=9, **{kind: (1, 3), other: (9, 9)}),   # 5
    )
    out = filter_partners(pred, S(filter_redundant=True, filter_redundant_dist_thr=100.0,
                                  filter_redundant_id_type=kind), 0.0)
    assert list(out["id"]) == [2, 4, 5]
    # the score threshold comes first: without b (score 2), a and c are no longer linked
    out = filter_partners(pred, S(filter_redundant=True, filter_redundant_dist_thr=100.0,
                                  filter_redundant_id_type=kind), 2.5)
    assert list(out["id"]) == [0, 2, 5]
    # clustering by the other id type: all of 0..5 share (9, 9); 5 (score 9) wins 0..3; 4 stays alone
    out = filter_partners(pred, S(filter_redundant=True, filter_redundant_dist_thr=100.0,
                                  filter_redundant_id_type=other), 0.0)
    assert list(out["id"]) == [4, 5]


def test_filter_redundant_zero_distance_ties_ignore_and_missing_ids():
    pred = P(
        L((0, 0, 0), (0, 0, 0), seg=(1, 2), score=1),      # 0: d == 0 to 1 does not link ...
        L((0, 0, 0), (0, 0, 0), seg=(1, 2), score=1),      # 1
        L((0, 0, 0), (0, 0, 500), seg=(1, 2), score=2),    # 2: ... tie 2 / 3 (d 50): the first in input order
        L((0, 0, 0), (0, 0, 550), seg=(1, 2), score=2),    # 3
        L((0, 0, 0), (0, 0, 900), seg=(-2, 4), score=1),   # 4: ignored id -2: never clustered
        L((0, 0, 0), (0, 0, 910), seg=(-2, 4), score=2),   # 5
        L((0, 0, 0), (0, 0, 1500), seg=(NO_ID, 4), score=1),  # 6: missing id: never clustered
        L((0, 0, 0), (0, 0, 1510), seg=(NO_ID, 4), score=2),  # 7
    )
    s = S(filter_redundant=True, filter_redundant_dist_thr=100.0, filter_redundant_ignore_ids=[-2])
    assert list(filter_partners(pred, s, 0.0)["id"]) == [0, 1, 2, 4, 5, 6, 7]
    # a third partner 60 nm from both 0 and 1 links all three: one survivor (first of the best score)
    pred3 = np.concatenate([pred[:2], P(L((0, 0, 0), (0, 0, 60), seg=(1, 2), score=1, id=8))])
    assert list(filter_partners(pred3, s, 0.0)["id"]) == [0]


def _reference_redundant(pred, thr, kind, ignore):
    """DESIGN's redundancy clustering, literally: per group, dense distances, single linkage, argmax."""
    from scipy.sparse.csgraph import connected_components

    f = {"seg": ("pre_seg_id", "post_seg_id"), "skel": ("pre_skel_id", "post_skel_id")}[kind]
    removed = set()
    groups = {}
    for i, p in enumerate(pred):
        key = (int(p[f[0]]), int(p[f[1]]))
        if NO_ID in key or key[0] in ignore or key[1] in ignore:
            continue
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        pts = np.array([[pred[i][k] for k in ("post_z", "post_y", "post_x")] for i in members], float)
        d = np.linalg.norm(pts[:, None] - pts[None], axis=2)
        _, labels = connected_components((d > 0) & (d <= thr), directed=False)
        for lab in np.unique(labels):
            cl = [members[k] for k in np.flatnonzero(labels == lab)]
            best = cl[int(np.argmax([pred[i]["score"] for i in cl]))]
            removed |= set(cl) - {best}
    return [i for i in range(len(pred)) if i not in removed]


@pytest.mark.parametrize("kind", ["seg", "skel"])
def test_filter_redundant_equals_dense_reference(kind):
    rng = np.random.default_rng(3)
    for extent in (300, 1000):
        pred = _random_partners(rng, 300, 3, extent)
        pred["score"] = rng.integers(0, 4, len(pred))  # many ties
        s = S(filter_redundant=True, filter_redundant_dist_thr=120.0, filter_redundant_id_type=kind,
              filter_redundant_ignore_ids=[2])
        assert list(filter_partners(pred, s, 0.0)["id"]) == _reference_redundant(pred, 120.0, kind, {2})


# ---------------------------------------------------------------------------------------------
# matching
# ---------------------------------------------------------------------------------------------

def test_matching_pre_post_both_distances():
    # pre sites 60 nm apart, post sites 90 nm apart, threshold 80 nm
    pred = P(L((0, 0, 0), (0, 0, 1000), seg=(1, 2)))
    gt = P(L((0, 0, 60), (0, 0, 1090), seg=(1, 2)))
    assert match_partners(pred, gt, S(matching_threshold=80.0, matching_threshold_only_pre=True))[:3] == (1, 0, 0)
    assert match_partners(pred, gt, S(matching_threshold=80.0, matching_threshold_only_post=True))[:3] == (0, 1, 1)
    assert match_partners(pred, gt, S(matching_threshold=80.0))[:3] == (0, 1, 1)       # both must be <= 80
    m = match_partners(pred, gt, S(matching_threshold=90.0))                         # d == thr matches
    assert m[:3] == (1, 0, 0) and m.matches["cost"][0] == pytest.approx(75.0)        # mean of 60 and 90
    # 3-4-5 triangle: post distance exactly 500 (integer coordinates, no rounding at the boundary)
    gt5 = P(L((0, 0, 0), (0, 300, 1400), seg=(1, 2)))
    assert match_partners(pred, gt5, S(matching_threshold=500.0, matching_threshold_only_post=True)).tp == 1
    assert match_partners(pred, gt5, S(matching_threshold=499.9, matching_threshold_only_post=True)).tp == 0


def test_matching_is_optimal_not_greedy():
    # p0 is closest to g0 (10) but also near g1 (20); p1 reaches only g0 (30).
    # Greedy: p0-g0 and p1 unmatched (1 tp).  Minimum-sum assignment: p0-g1 + p1-g0 = 50 (2 tp).
    ids = dict(seg=(1, 2))
    pred = P(L((0, 0, 0), (0, 0, 0), **ids), L((0, 0, 0), (0, 0, 40), **ids))
    gt = P(L((0, 0, 0), (0, 0, 10), **ids), L((0, 0, 0), (0, 0, -20), **ids))
    tp, fp, fn, m = match_partners(pred, gt, S(matching_threshold=35.0, matching_threshold_only_post=True))
    assert (tp, fp, fn) == (2, 0, 0)
    assert sorted(zip(m["pred"], m["gt"])) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("kind", ["seg", "skel"])
def test_matching_by_id_pairs(kind):
    other = "skel" if kind == "seg" else "seg"
    pred = P(L((0, 0, 0), (0, 0, 0), **{kind: (1, 2), other: (5, 6)}),   # shares pair (1, 2) with g0: tp
             L((0, 0, 0), (0, 0, 0), **{kind: (1, 3), other: (5, 6)}),   # pair without gt: fp
             L((0, 0, 0), (0, 0, 0), **{other: (5, 6)}))                # id missing: infeasible: fp
    gt = P(L((0, 0, 0), (0, 0, 0), **{kind: (1, 2), other: (7, 8)}),
           L((0, 0, 0), (0, 0, 0), **{kind: (2, 1), other: (5, 6)}))    # reversed pair: fn
    assert match_partners(pred, gt, S(matching=MODE[kind]))[:3] == (1, 2, 1)
    # by the other id type only g1 (5, 6) can be matched (to p0, p1 or p2): 1 tp
    assert match_partners(pred, gt, S(matching=MODE[other]))[:3] == (1, 2, 1)
    # location (the default): ids are not compared, every pair is feasible: 2 tp
    assert match_partners(pred, gt, PLAIN)[:3] == (2, 1, 0)


def test_matching_mode_comes_from_the_settings_not_the_data():
    # both sides carry skeleton and segment ids; the old code picked skeleton ids from the data
    pred = P(L((0, 0, 0), (0, 0, 0), seg=(1, 2), skel=(3, 4)))
    gt = P(L((0, 0, 0), (0, 0, 10), seg=(1, 2), skel=(3, 5)))    # same segments, other post skeleton
    assert counts(evaluate(pred, gt, PLAIN)[0]) == (1, 0, 0)
    assert counts(evaluate(pred, gt, S(matching="segment"))[0]) == (1, 0, 0)
    assert counts(evaluate(pred, gt, S(matching="skeleton"))[0]) == (0, 1, 1)
    for mode in ("location", "segment", "skeleton"):
        r = evaluate(pred, gt, S(matching=mode))[0]
        assert r["matching"] == mode and r["settings"]["matching"] == mode
        assert (r["pred_missing_ids"], r["gt_missing_ids"]) == (0, 0)
    assert Evaluation().matching == "location"


@pytest.mark.parametrize("mode, kind", [("segment", "seg"), ("skeleton", "skel")])
def test_a_requested_id_type_the_inputs_lack_is_an_error(mode, kind):
    bare = P(L((0, 0, 0), (0, 0, 0)), L((0, 0, 0), (0, 0, 500)))
    with_ids = P(L((0, 0, 0), (0, 0, 0), **{kind: (1, 2)}), L((0, 0, 0), (0, 0, 500), **{kind: (1, 2)}))
    s = S(matching=mode)
    # the old code fell back to location matching here (2 tp); now each side is checked
    with pytest.raises(EvaluationError, match=rf"^cfg.json matching = {mode}: all 2 predicted partners "
                                              rf"\(pred.json\) lack pre_{kind}_id or post_{kind}_id"):
        evaluate(bare, with_ids, s, where="cfg.json matching", sources=("pred.json", "gt.json"))
    with pytest.raises(EvaluationError, match=rf"all 2 ground-truth partners \(gt.json\) lack pre_{kind}_id"):
        evaluate(with_ids, bare, s, where="cfg.json matching", sources=("pred.json", "gt.json"))
    with pytest.raises(EvaluationError, match="all 2 predicted partners"):
        match_partners(bare, with_ids, s)
    # some partners without ids: allowed, they cannot match, and the count is recorded
    some = with_ids.copy()
    some[f"post_{kind}_id"][1] = NO_ID
    r = evaluate(some, with_ids, s)[0]
    assert counts(r) == (1, 1, 1) and r["pred_missing_ids"] == 1 and r["gt_missing_ids"] == 0
    assert check_inputs(some, with_ids, s) == {"pred_missing_ids": 1, "gt_missing_ids": 0}
    # location needs no ids
    assert counts(evaluate(bare, with_ids, PLAIN)[0]) == (2, 0, 0)


def test_skeleton_ids_need_skeleton_matching():
    pred, gt = _fafb_case()
    with pytest.raises(EvaluationError, match="skeleton_ids .* needs matching = skeleton, got location"):
        evaluate(pred, gt, PLAIN, skeleton_ids=[1, 2])


def test_nan_scores_and_duplicates_are_refused():
    pred, gt = _fafb_case()
    s = S(matching="skeleton")
    # the old code dropped a NaN-scored prediction at every threshold (nan >= thr is false)
    bad = pred.copy()
    bad["score"][2] = np.nan
    with pytest.raises(EvaluationError, match=r"^pred.json\[2\] score: expected a finite number, got nan"):
        evaluate(bad, gt, s, sources=("pred.json", "gt.json"))
    with pytest.raises(EvaluationError, match=r"score_thresholds: expected finite numbers"):
        evaluate(pred, gt, s, score_thresholds=[0.0, float("inf")])
    # a duplicated prediction: the old code counted the copy as a false positive
    twice = np.concatenate([pred, pred[1:2]])
    with pytest.raises(EvaluationError, match=r"^predictions\[4\] id: duplicate id 1 \(first at record 1\)"):
        evaluate(twice, gt, s)
    twice["id"][4] = 99  # the same partner under another id
    with pytest.raises(EvaluationError, match=r"^predictions\[4\]: duplicate record: the sites and segment/"
                                              r"skeleton ids of record 1 \(ids 1 and 99\)"):
        evaluate(twice, gt, s)
    gt2 = np.concatenate([gt, gt[:1]])
    gt2["id"][-1] = 7
    with pytest.raises(EvaluationError, match=r"^ground truth\[3\]: duplicate record"):
        evaluate(pred, gt2, s)


def _reference_match(pred, gt, t, mode, kind):
    """DESIGN's formulation, literally: per (pre, post) group a square matrix padded with 2 t."""
    f = {"seg": ("pre_seg_id", "post_seg_id"), "skel": ("pre_skel_id", "post_skel_id")}[kind]
    tp = 0
    keys = {(int(a), int(b)) for a, b in zip(gt[f[0]], gt[f[1]])}
    for key in keys:
        pi = np.flatnonzero((pred[f[0]] == key[0]) & (pred[f[1]] == key[1]))
        gi = np.flatnonzero((gt[f[0]] == key[0]) & (gt[f[1]] == key[1]))
        if len(pi) == 0 or NO_ID in key:
            continue
        n = max(len(pi), len(gi))
        c = np.full((n, n), 2 * t)
        for a, i in enumerate(pi):
            for b, j in enumerate(gi):
                dpre = np.linalg.norm([pred[i][k] - gt[j][k] for k in ("pre_z", "pre_y", "pre_x")])
                dpost = np.linalg.norm([pred[i][k] - gt[j][k] for k in ("post_z", "post_y", "post_x")])
                if mode == "pre":
                    c[a, b] = dpre if dpre <= t else 2 * t
                elif mode == "post":
                    c[a, b] = dpost if dpost <= t else 2 * t
                else:
                    c[a, b] = (dpre + dpost) / 2 if max(dpre, dpost) <= t else 2 * t
        r, cc = linear_sum_assignment(c)
        tp += int((c[r, cc] <= t).sum())
    return tp


def _random_partners(rng, n, n_ids, extent):
    a = empty_partners(n)
    a["id"] = np.arange(n)
    for f in ("pre_z", "pre_y", "pre_x"):
        a[f] = rng.integers(0, extent, n)
    for f, g in zip(("post_z", "post_y", "post_x"), ("pre_z", "pre_y", "pre_x")):
        a[f] = a[g] + rng.integers(-150, 150, n)
    a["score"] = rng.random(n)
    for f in ("pre_seg_id", "post_seg_id", "pre_skel_id", "post_skel_id"):
        a[f] = rng.integers(0, n_ids, n)
    a["pre_seg_id"][rng.random(n) < 0.05] = NO_ID
    return a


@pytest.mark.parametrize("mode", ["pre", "post", "both"])
def test_matching_equals_dense_per_group_reference(mode):
    rng = np.random.default_rng(1)
    for extent in (500, 800, 1500):  # dense to sparse: many components need a real assignment
        pred, gt = _random_partners(rng, 120, 3, extent), _random_partners(rng, 100, 3, extent)
        s = S(matching_threshold=300.0, matching_threshold_only_pre=mode == "pre",
              matching_threshold_only_post=mode == "post")
        for kind in ("seg", "skel"):
            tp, fp, fn, m = match_partners(pred, gt, dataclasses.replace(s, matching=MODE[kind]))
            assert tp == _reference_match(pred, gt, 300.0, mode, kind)
            assert (fp, fn) == (len(pred) - tp, len(gt) - tp)
            assert len(set(m["pred"])) == len(set(m["gt"])) == tp and np.all(m["cost"] <= 300.0)


def test_empty_inputs():
    pred = P(L((0, 0, 0), (0, 0, 0), seg=(1, 2)))
    none = empty_partners(0)
    assert match_partners(pred, none, PLAIN)[:3] == (0, 1, 0)
    assert match_partners(none, pred, PLAIN)[:3] == (0, 0, 1)
    r = evaluate(none, none, PLAIN)[0]
    assert (r["fscore"], r["precision"], r["recall"]) == (0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------------------------
# the FAFB per-neuron protocol
# ---------------------------------------------------------------------------------------------

def _fafb_case():
    # neurons 1 and 2 are listed; 3 and 4 are not
    pred = P(L((0, 0, 0), (0, 0, 100), skel=(1, 2), score=5),     # p0: 1->2, matches g0
             L((0, 0, 0), (0, 0, 300), skel=(3, 1), score=5),     # p1: 3->1 (input of 1), matches g1
             L((0, 0, 0), (0, 0, 500), skel=(1, 4), score=1),     # p2: 1->4 (output of 1), no gt: fp
             L((0, 0, 0), (0, 0, 700), skel=(3, 4), score=5))     # p3: touches no listed neuron
    gt = P(L((0, 0, 0), (0, 0, 110), skel=(1, 2)),                # g0
           L((0, 0, 0), (0, 0, 310), skel=(3, 1)),                # g1
           L((0, 0, 0), (0, 0, 900), skel=(2, 4)))                # g2: output of 2, no prediction: fn
    return pred, gt


def test_fafb_protocol_counts_links_between_listed_neurons_twice():
    pred, gt = _fafb_case()
    s = S(score_thresholds=[0.0, 2.0], matching="skeleton")
    r0, r2 = evaluate(pred, gt, s, skeleton_ids=[1, 2])
    # neuron 1: pred p0 p1 p2, gt g0 g1 -> tp 2, fp 1, fn 0
    # neuron 2: pred p0,       gt g0 g2 -> tp 1, fp 0, fn 1      (p0/g0 counted again)
    assert counts(r0) == (3, 1, 1) and (r0["predcount"], r0["gtcount"]) == (4, 4)
    assert r0["precision"] == pytest.approx(0.75) and r0["recall"] == pytest.approx(0.75)
    assert r0["fscore"] == pytest.approx(0.75) and r0["matching"] == "skeleton"
    assert [n["skel_id"] for n in r0["neurons"]] == [1, 2]
    assert counts(r2) == (3, 0, 1)                         # p2 (score 1) is below 2
    # all at once (no neuron list): each link once; p3 is an fp, matched by skel ids
    r = evaluate(pred, gt, s)[0]
    assert counts(r) == (2, 2, 1)


def test_fafb_protocol_only_inputs_and_only_outputs():
    pred, gt = _fafb_case()
    # inputs (post skel id): neuron 1: p1 / g1 -> tp 1; neuron 2: p0 / g0 -> tp 1
    r = evaluate(pred, gt, S(only_input_synapses=True, matching="skeleton"), skeleton_ids=[1, 2])[0]
    assert counts(r) == (2, 0, 0)
    # outputs (pre skel id): neuron 1: p0 p2 / g0 -> tp 1 fp 1; neuron 2: none / g2 -> fn 1
    r = evaluate(pred, gt, S(only_output_synapses=True, matching="skeleton"), skeleton_ids=[1, 2])[0]
    assert counts(r) == (1, 1, 1)
    with pytest.raises(EvaluationError, match="only_input_synapses and only_output_synapses"):
        evaluate(pred, gt, S(only_input_synapses=True, only_output_synapses=True), skeleton_ids=[1])
    with pytest.raises(EvaluationError, match="need skeleton_ids"):
        evaluate(pred, gt, S(only_input_synapses=True))


def test_fafb_protocol_filters_apply_per_neuron():
    # redundancy clustering by segment ids sees only the predictions touching the neuron:
    # p0 (neuron 1) and p1 (neuron 2) share seg pair (5, 6), 50 nm apart.
    pred = P(L((0, 0, 0), (0, 0, 0), skel=(1, 9), seg=(5, 6), score=1),
             L((0, 0, 0), (0, 0, 50), skel=(2, 9), seg=(5, 6), score=2))
    gt = P(L((0, 0, 0), (0, 0, 0), skel=(1, 9)))
    s = S(filter_redundant=True, filter_redundant_dist_thr=100.0, filter_redundant_id_type="seg",
          matching="skeleton")
    # per neuron nothing is clustered: neuron 1 tp 1; neuron 2 fp 1
    r = evaluate(pred, gt, s, skeleton_ids=[1, 2])[0]
    assert counts(r) == (1, 1, 0) and r["num_clustered"] == 0
    # all at once, p1 (higher score) absorbs p0; p1's skeleton pair (2, 9) has no gt: tp 0, fp 1, fn 1
    r = evaluate(pred, gt, s)[0]
    assert counts(r) == (0, 1, 1) and r["num_clustered"] == 1


def test_sweep_equals_filter_then_match_per_threshold():
    rng = np.random.default_rng(7)
    pred, gt = _random_partners(rng, 400, 6, 3000), _random_partners(rng, 300, 6, 3000)
    s = Evaluation(matching_threshold=250.0, filter_seg_ids=[0], filter_same_id=True, filter_same_id_type="skel",
                   filter_redundant=True, filter_redundant_dist_thr=120.0, filter_redundant_id_type="skel",
                   filter_redundant_ignore_ids=[3], score_thresholds=[0.0, 0.3, 0.6, 0.9], matching="skeleton")
    neurons = [1, 2, 4]
    results = evaluate(pred, gt, s, skeleton_ids=neurons)
    for res in results:
        tp = fp = fn = 0
        for n in neurons:
            ps = pred[(pred["pre_skel_id"] == n) | (pred["post_skel_id"] == n)]
            gs = gt[(gt["pre_skel_id"] == n) | (gt["post_skel_id"] == n)]
            m = match_partners(filter_partners(ps, s, res["score_thr"]), gs, s)
            tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        assert counts(res) == (tp, fp, fn)
    assert [r["score_thr"] for r in results] == [0.0, 0.3, 0.6, 0.9]
    assert results[0]["predcount"] >= results[-1]["predcount"]


# ---------------------------------------------------------------------------------------------
# configs, files, CLI, runs
# ---------------------------------------------------------------------------------------------

def _write_case(d: Path, **cfg) -> Path:
    pred, gt = _fafb_case()
    write_partners_json(pred, d / "data" / "pred.json")
    write_partners_json(gt, d / "data" / "gt.json")
    (d / "data" / "skel.txt").write_text("1\n2\n")
    config = {"pred_synlinks": "data/pred.json", "gt_synlinks": "data/gt.json", "skeleton_ids": "data/skel.txt",
              "matching": "skeleton", "score_thresholds": [0, 2], "matching_threshold": 100,
              "matching_threshold_only_pre": False,
              "matching_threshold_only_post": False, "only_input_synapses": False, "only_output_synapses": False,
              "filter_same_id": True, "filter_same_id_type": "skel", "filter_redundant": True,
              "filter_redundant_dist_thr": 50, "filter_redundant_id_type": "skel",
              "filter_redundant_ignore_ids": [-2], "filter_seg_ids": [0]}
    config.update(cfg)
    path = d / "eval.json"
    path.write_text(json.dumps(config))
    return path


def test_read_evaluation_json_types_and_paths(tmp_path):
    path = _write_case(tmp_path)
    s = read_evaluation_json(path)
    assert s.pred_synlinks == str((tmp_path / "data" / "pred.json").resolve())
    assert s.score_thresholds == [0.0, 2.0] and isinstance(s.matching_threshold, float)
    # only the two files are required; the rest default as in [Evaluation]
    minimal = tmp_path / "min.json"
    minimal.write_text(json.dumps({"pred_synlinks": "a.json", "gt_synlinks": "b.json"}))
    assert read_evaluation_json(minimal).matching_threshold == Evaluation().matching_threshold


@pytest.mark.parametrize("cfg, message", [
    ({"filter_redundant_dist_typ": "euclidean"}, "filter_redundant_dist_typ: unknown key"),
    ({"matching_threshold": "400"}, "matching_threshold: expected a number"),
    ({"filter_same_id": 1}, "filter_same_id: expected true or false"),
    ({"filter_seg_ids": [0.5]}, "filter_seg_ids: expected an integer"),
    ({"score_thresholds": 0}, "score_thresholds: expected a JSON list"),
    ({"score_thresholds": []}, "score_thresholds: give at least one"),
    ({"filter_same_id_type": "segment"}, "filter_same_id_type: expected one of seg, skel"),
    ({"matching_threshold": -1}, "matching_threshold: must be >= 0"),
    ({"pred_synlinks": None}, "pred_synlinks: required"),
    ({"only_input_synapses": True, "only_output_synapses": True}, "cannot both be true"),
    ({"matching_threshold_only_pre": True, "matching_threshold_only_post": True}, "cannot both be true"),
    ({"skeleton_ids": None, "only_input_synapses": True}, "only_input_synapses: needs skeleton_ids"),
    ({"matching": "segments"}, "matching: expected one of location, segment, skeleton"),
    ({"matching": "location"}, "matching: skeleton_ids (the FAFB per-neuron protocol) needs matching = skeleton"),
    ({"matching_threshold": float("nan")}, "matching_threshold: expected a finite number, got NaN"),
    ({"filter_redundant_dist_thr": float("inf")}, "filter_redundant_dist_thr: expected a finite number"),
    ({"score_thresholds": [0, float("-inf")]}, "score_thresholds: expected a finite number"),
])
def test_read_evaluation_json_errors(tmp_path, cfg, message):
    path = _write_case(tmp_path, **cfg)
    with pytest.raises(ConfigError) as e:
        read_evaluation_json(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_read_evaluation_json_missing_key_and_bad_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"pred_synlinks": "a.json"}))
    with pytest.raises(ConfigError, match=r"c\.json gt_synlinks: missing required key"):
        read_evaluation_json(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_evaluation_json(path)
    with pytest.raises(ConfigError, match="config file not found"):
        read_evaluation_json(tmp_path / "none.json")


def test_read_skeleton_ids(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text("skeleton_id\n23829\n\n53631, extra\n# comment\n23829\n")
    assert list(read_skeleton_ids(p)) == [23829, 53631]
    p.write_text("1\nx\n")
    with pytest.raises(EvaluationError, match=r"ids\.txt:2: expected a skeleton id"):
        read_skeleton_ids(p)


def test_evaluate_config_writes_results_and_plot(tmp_path):
    path = _write_case(tmp_path)
    results, out = evaluate_config(path, tmp_path / "out")
    assert [counts(r) for r in results] == [(3, 1, 1), (3, 0, 1)]
    for thr in (0.0, 2.0):
        data = json.loads((out / results_filename(thr)).read_text())
        for k in ("fscore", "precision", "recall", "tpcount", "fpcount", "fncount", "predcount", "gtcount",
                  "score_thr", "settings"):
            assert k in data
        assert data["settings"]["matching_threshold"] == 100.0 and data["inputs"]["num_pred"] == 4
        assert data["matching"] == "skeleton" and "segment_ids" in data["inputs"]
    assert results_filename(2.0) == "results_thr2.json" and results_filename(0.05) == "results_thr0.05.json"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["score_thr"] == 2.0 and len(summary["sweep"]) == 2 and summary["matching"] == "skeleton"
    png = (out / "precision_recall.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    # rerun: same files, same numbers
    results2, _ = evaluate_config(path, tmp_path / "out")
    assert results2 == results


def test_cli_evaluate(tmp_path):
    path = _write_case(tmp_path)
    r = subprocess.run([sys.executable, "-m", "synful", "evaluate", str(path), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "score_thr 0: fscore 0.7500 precision 0.7500 recall 0.7500" in r.stdout
    assert "best fscore" in r.stdout and (tmp_path / "o" / "results_thr2.json").is_file()
    # default output folder beside the config
    r = subprocess.run([sys.executable, "-m", "synful", "evaluate", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "eval_evaluation" / "summary.json").is_file()
    bad = _write_case(tmp_path, matching_treshold=3)
    r = subprocess.run([sys.executable, "-m", "synful", "evaluate", str(bad), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "matching_treshold: unknown key" in r.stderr
    assert not (tmp_path / "x").exists()


def test_evaluate_run_reads_the_run_store(tmp_path):
    from synful.scaffold import create_predict_setups, create_train_setup
    from synful.store import open_run_store

    pred, gt = _fafb_case()
    write_partners_json(gt, tmp_path / "gt.json")
    (tmp_path / "skel.txt").write_text("1\n2\n")
    create_train_setup(tmp_path, "exp", 0)
    evaluation = {"gt_synlinks": str(tmp_path / "gt.json"), "skeleton_ids": str(tmp_path / "skel.txt"),
                  "matching": "skeleton", "score_thresholds": [0.0, 2.0], "matching_threshold": 100.0,
                  "filter_same_id_type": "skel",
                  "filter_redundant_id_type": "skel"}
    (setup,) = create_predict_setups(tmp_path, "exp", 0, [1000],
                                     overrides={"predict_config.ini": {"Evaluation": evaluation}})
    with open_run_store(setup) as store:
        store.create()
        store.write_block(0, pred[:2])
        store.write_block(1, pred[2:])
    results, out = evaluate_run(setup)
    assert out == setup / "evaluation"
    assert [counts(r) for r in results] == [(3, 1, 1), (3, 0, 1)]
    data = json.loads((out / "results_thr0.json").read_text())
    assert data["inputs"]["run"] == "exp_t0_p0" and data["inputs"]["num_pred"] == 4
    assert all(json.loads(f.read_text())["matching"] == "skeleton" for f in out.glob("results_thr*.json"))
    assert (out / "precision_recall.png").is_file()
    with pytest.raises(EvaluationError, match="not a prediction setup"):
        evaluate_run(tmp_path)
    # predictions read from the store are checked like files: the same partners again under other ids
    copy = pred[:1].copy()
    copy["id"] = 1000
    with open_run_store(setup) as store:
        store.write_block(2, copy)
    with pytest.raises(EvaluationError, match=r"^SQLiteStore\(.*\)\[4\]: duplicate record: .* of record 0"):
        evaluate_run(setup)


def _cremi_case(d: Path) -> tuple[Path, np.ndarray]:
    """A CREMI HDF5 file (40 x 4 x 4 nm voxels, x < 80 nm is neuron 1, else 2) with two gt links."""
    from synful.io.cremi import write_cremi

    labels = np.ones((4, 40, 40), np.uint64)
    labels[:, :, 20:] = 2
    gt = P(L((40, 40, 20), (40, 40, 120)), L((120, 100, 40), (120, 100, 140)))
    path = write_cremi(d / "sample.hdf", np.zeros((4, 40, 40), np.uint8), (40, 4, 4), labels=labels, partners=gt)
    # p0 matches g0 (same segment pair (1, 2), 4 nm away); p1 is at g1 but connects (1, 3): fp, and g1 a fn
    pred = P(L((40, 40, 24), (40, 40, 116), seg=(1, 2)), L((120, 100, 40), (120, 100, 140), seg=(1, 3)))
    return path, pred


def test_cremi_ground_truth_matched_by_segment_ids(tmp_path):
    path, pred = _cremi_case(tmp_path)
    write_partners_json(pred, tmp_path / "pred.json")
    cfg = tmp_path / "cremi_eval.json"
    cfg.write_text(json.dumps({"pred_synlinks": "pred.json", "gt_synlinks": "sample.hdf", "matching_threshold": 50,
                               "matching": "segment", "score_thresholds": [0]}))
    results, out = evaluate_config(cfg)
    assert out == tmp_path / "cremi_eval_evaluation"
    (r,) = results
    assert counts(r) == (1, 1, 1) and r["matching"] == "segment"
    ids = json.loads((out / "results_thr0.json").read_text())["inputs"]["segment_ids"]
    assert ids["ground_truth"].startswith(f"{tmp_path / 'sample.hdf'}/volumes/labels/neuron_ids")
    assert "not recorded" in ids["predictions"]
    # location matching (the default) on the same files: p1 sits on g1
    cfg.write_text(json.dumps({"pred_synlinks": "pred.json", "gt_synlinks": "sample.hdf", "matching_threshold": 50,
                               "score_thresholds": [0]}))
    (r,) = evaluate_config(cfg)[0]
    assert counts(r) == (2, 0, 0) and r["matching"] == "location"


def test_evaluate_run_ground_truth_from_the_manifest(tmp_path):
    from synful.scaffold import create_predict_setups, create_train_setup
    from synful.store import open_run_store

    data = tmp_path / "exp" / "01_data"
    data.mkdir(parents=True)
    _, pred = _cremi_case(data)
    (data / "manifest.yaml").write_text("samples:\n  - name: s0\n    container: sample.hdf\n    split: test\n")
    create_train_setup(tmp_path, "exp", 0)
    (setup,) = create_predict_setups(tmp_path, "exp", 0, [10], overrides={
        "predict_config.ini": {"Evaluation": {"matching_threshold": 50.0, "score_thresholds": [0.0, 5.0],
                                              "matching": "segment"}}})
    with open_run_store(setup) as store:
        store.create()
        store.write_block(0, pred)
    results, out = evaluate_run(setup, tmp_path / "res")
    assert [counts(r) for r in results] == [(1, 1, 1), (0, 0, 2)]
    assert "sample s0" in json.loads((out / "summary.json").read_text())["inputs"]["ground_truth"]


def test_evaluate_run_segment_matching_checks_one_segmentation(tmp_path):
    from synful.config import fill_template
    from synful.io.volumes import write_volume
    from synful.scaffold import create_predict_setups, create_train_setup
    from synful.store import open_run_store

    data = tmp_path / "exp" / "01_data"
    data.mkdir(parents=True)
    sample, pred = _cremi_case(data)
    (data / "manifest.yaml").write_text("samples:\n  - name: s0\n    container: sample.hdf\n    split: test\n")
    create_train_setup(tmp_path, "exp", 0)
    (setup,) = create_predict_setups(tmp_path, "exp", 0, [10], overrides={"predict_config.ini": {
        "Extraction": {"seg_container": str(sample)},
        "Evaluation": {"matching_threshold": 50.0, "matching": "segment", "score_thresholds": [0.0]}}})
    with open_run_store(setup) as store:
        store.create()
        store.write_block(0, pred)
    (r,) = evaluate_run(setup, tmp_path / "res")[0]
    assert counts(r) == (1, 1, 1) and r["matching"] == "segment"
    ids = json.loads((tmp_path / "res" / "results_thr0.json").read_text())["inputs"]["segment_ids"]
    assert ids["predictions"] == f"{sample}/volumes/labels/neuron_ids ([Extraction] seg_container, seg_dataset)"
    assert ids["ground_truth"].startswith(f"{sample}/volumes/labels/neuron_ids")
    assert ids["check"].endswith("at all 4 ground-truth sites inside it")

    # predictions from another segmentation: the same two neurons under other ids (7, 8)
    other = tmp_path / "other.zarr"
    labels = np.full((4, 40, 40), 7, np.uint64)
    labels[:, :, 20:] = 8
    write_volume(other, "neuron_ids", labels, (40, 4, 4))
    ini = setup / "predict_config.ini"
    ini.write_text(fill_template(ini.read_text(), {"Extraction": {"seg_container": str(other),
                                                                  "seg_dataset": "neuron_ids"}}))
    with pytest.raises(EvaluationError, match=rf"^{ini} \[Evaluation\] matching = segment: the ground truth's "
                                              rf"segment ids .* differ from the predictions' segmentation "
                                              rf"{other}/neuron_ids .* at 2 pre site\(s\), first ground-truth "
                                              rf"record 0: pre_seg_id 1 vs 7"):
        evaluate_run(setup, tmp_path / "res")
    # location matching compares no ids, so there is nothing to check
    ini.write_text(fill_template(ini.read_text(), {"Evaluation": {"matching": "location"}}))
    (r,) = evaluate_run(setup, tmp_path / "res")[0]
    assert counts(r) == (2, 0, 0) and r["matching"] == "location"


def test_cli_evaluate_prints_the_matching_mode_and_refuses_bad_inputs(tmp_path):
    path = _write_case(tmp_path)
    r = subprocess.run([sys.executable, "-m", "synful", "evaluate", str(path), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "matching = skeleton" in r.stderr
    pred = json.loads((tmp_path / "data" / "pred.json").read_text())
    (tmp_path / "data" / "pred.json").write_text(json.dumps(pred + pred[:1]))
    r = subprocess.run([sys.executable, "-m", "synful", "evaluate", str(path), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"error: {tmp_path / 'data' / 'pred.json'}[4] id: duplicate id 0 "
                                                 f"(first at record 0)")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------
# default thresholds, predictions the filters remove
# ---------------------------------------------------------------------------------------------

def test_default_thresholds_sweep_the_scores():
    assert Evaluation().score_thresholds is None  # default: derived from the data, not one point
    assert auto_score_thresholds(np.array([])) == [0.0]
    assert auto_score_thresholds(np.array([7.0, 7.0])) == [7.0]
    # 3 significant digits, rounded down: each threshold still keeps the score it came from
    thrs = auto_score_thresholds(np.array([0.12345, 3.0, 1234.5, 99.99]))
    assert thrs == [0.123, 3.0, 99.9, 1230.0]
    scores = np.arange(1.0, 101.0) * 1.7  # a sum-type scale, far beyond [0, 1]
    thrs = auto_score_thresholds(scores)
    assert 15 <= len(thrs) <= 21 and thrs == sorted(thrs) and thrs[0] <= scores.min() and thrs[-1] <= scores.max()
    assert thrs[-1] > scores.max() * 0.99
    pred = P(*[L((0, 0, 10 * k), (0, 0, 10 * k + 50), score=float(s)) for k, s in enumerate(scores)])
    res = evaluate(pred, pred, S(score_thresholds=None))
    assert [r["score_thr"] for r in res] == thrs and {r["score_thresholds_from"] for r in res} == {"scores"}
    assert res[0]["predcount"] == 100 and res[-1]["predcount"] == 1
    # thresholds given (settings or call) are kept as given
    assert [r["score_thresholds_from"] for r in evaluate(pred, pred, S(score_thresholds=[1.0]))] == ["settings"]
    assert [r["score_thresholds_from"] for r in evaluate(pred, pred, S(), score_thresholds=[2.0])] == ["call"]


def test_default_thresholds_from_ini_and_json_and_calibration(tmp_path):
    gt = P(L((0, 0, 0), (0, 0, 50)), L((0, 0, 500), (0, 0, 550)), L((0, 0, 1000), (0, 0, 1050)))
    pred = P(L((0, 0, 0), (0, 0, 50), score=9.0), L((0, 0, 500), (0, 0, 550), score=4.0),
             L((0, 0, 3000), (0, 0, 3050), score=1.0))
    write_partners_json(pred, tmp_path / "pred.json")
    write_partners_json(gt, tmp_path / "gt.json")
    cfg = tmp_path / "val.json"
    cfg.write_text(json.dumps({"pred_synlinks": "pred.json", "gt_synlinks": "gt.json"}))
    results, out = evaluate_config(cfg)
    assert [r["score_thr"] for r in results] == [1.0, 4.0, 9.0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score_thresholds_from"] == "scores" and summary["settings"]["score_thresholds"] is None
    assert summary["best"]["score_thr"] == 4.0  # tp 2 of 2 predictions, 3 ground truth
    # calibration replaces the derived sweep with the chosen threshold
    test_cfg = tmp_path / "test.json"
    test_cfg.write_text(cfg.read_text())
    (r,), _ = evaluate_config(test_cfg, calibration=out)
    assert r["score_thr"] == 4.0 and r["calibration"]["score_thr"] == 4.0 and r["score_thresholds_from"] == "settings"
    # `None` in the ini reads as the derived default; an explicit list stays a list
    from synful.config.keys import section_values

    assert section_values(Evaluation, {"score_thresholds": "None"}, "x", None)["score_thresholds"] is None
    assert section_values(Evaluation, {"score_thresholds": "0, 5"}, "x", None)["score_thresholds"] == [0.0, 5.0]


def test_no_predictions_are_noted_with_the_counts_each_filter_removed(tmp_path, caplog):
    gt = P(L((0, 0, 0), (0, 0, 50), seg=(1, 2)))
    with caplog.at_level("WARNING", logger="synful.evaluate"):
        (r,) = evaluate(empty_partners(0), gt, S(), where="none")
    assert r["predcount"] == 0 and r["note"] == "no predictions: the input holds none"
    assert "none: no predictions to evaluate" in caplog.text
    # seg ids 0 (1 removed), same id (1), score (1 below 5 at thr 5), redundancy (1 of 2 close post sites)
    pred = P(L((0, 0, 0), (0, 0, 50), seg=(0, 2), score=9), L((0, 0, 0), (0, 0, 60), seg=(3, 3), score=9),
             L((0, 0, 0), (0, 0, 70), seg=(1, 2), score=1), L((0, 0, 0), (0, 0, 80), seg=(1, 2), score=8),
             L((0, 0, 0), (0, 0, 90), seg=(1, 2), score=7))
    s = S(filter_seg_ids=[0], filter_same_id=True, filter_redundant=True, filter_redundant_dist_thr=50.0,
          score_thresholds=[5.0, 100.0])
    caplog.clear()
    with caplog.at_level("WARNING", logger="synful.evaluate"):
        low, high = evaluate(pred, gt, s, where="case")
    assert low["predcount"] == 1 and "note" not in low
    assert low["removed"] == {"filter_seg_ids": 1, "filter_same_id": 1, "score_thr": 1, "filter_redundant": 1}
    assert high["predcount"] == 0 and high["removed"]["score_thr"] == 3
    assert high["note"] == ("no predictions left: of 5, the filters removed filter_seg_ids 1, filter_same_id 1, "
                            "score_thr 3, filter_redundant 0")
    assert "case: at 1 of 2 thresholds (from 100) no prediction is left" in caplog.text
    out = tmp_path / "out"
    from synful.evaluate import write_results

    write_results([low, high], out)
    sweep = json.loads((out / "summary.json").read_text())["sweep"]
    assert "note" not in sweep[0] and sweep[1]["note"] == high["note"] and sweep[1]["removed"] == high["removed"]
