#!/usr/bin/env python
"""Benchmark: synaptic-partner evaluation on a synthetic FAFB-like benchmark.

Builds ~15,000 ground-truth links and ~15,000 predictions around 30 listed
neurons (plus unlisted partner neurons), writes them as FAFB benchmark JSON
with a skeleton-id file and an evaluation config, then times ``synful
evaluate``'s stages: reading the files, the evaluation over a score-threshold
sweep (FAFB per-neuron protocol, all filters on), and writing results + plot.
Prints the numbers and saves them with machine info to
``benchmarks/results/bench_evaluate.json``, with the headline figures as its ``summary``.

    python benchmarks/bench_evaluate.py [--gt 15000] [--neurons 30] [--thresholds 10] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine_info, save_report

from synful.evaluate import evaluate, read_evaluation_json, read_ground_truth, read_skeleton_ids, write_results
from synful.io.partners import NO_ID, empty_partners, read_partners, write_partners_json


def synthetic_benchmark(n_gt: int, n_neurons: int, seed: int = 0):
    """(pred, gt, listed skeleton ids): FAFB-like links in a 40 x 40 x 40 um volume (nm, z/y/x)."""
    rng = np.random.default_rng(seed)
    listed = np.arange(1, n_neurons + 1, dtype=np.int64) * 1000 + 7
    others = np.arange(1, 10 * n_neurons + 1, dtype=np.int64) * 1000 + 3
    # each neuron occupies a home region; a link lies near its pre neuron's region
    home = {int(s): rng.uniform(2000, 38000, 3) for s in np.r_[listed, others]}
    gt = empty_partners(n_gt)
    gt["id"] = np.arange(n_gt)
    pre_skel = rng.choice(listed, n_gt)
    post_skel = np.where(rng.random(n_gt) < 0.3, rng.choice(listed, n_gt), rng.choice(others, n_gt))
    flip = rng.random(n_gt) < 0.5  # half the links are inputs of a listed neuron
    pre_skel, post_skel = np.where(flip, post_skel, pre_skel), np.where(flip, pre_skel, post_skel)
    same = pre_skel == post_skel
    post_skel[same] = rng.choice(others, same.sum())
    centre = np.array([home[int(s)] for s in pre_skel]) + rng.normal(0, 2500, (n_gt, 3))
    pre = np.round(centre).astype(np.int64)
    post = pre + np.round(rng.normal(0, 250, (n_gt, 3))).astype(np.int64)
    for k, ax in enumerate("zyx"):
        gt[f"pre_{ax}"], gt[f"post_{ax}"] = pre[:, k], post[:, k]
    gt["pre_skel_id"], gt["post_skel_id"] = pre_skel, post_skel
    # a segmentation: each skeleton split into 3 segments (by link index), background 0 sometimes
    gt["pre_seg_id"] = pre_skel * 10 + rng.integers(0, 3, n_gt)
    gt["post_seg_id"] = post_skel * 10 + rng.integers(0, 3, n_gt)

    # predictions: 75 % of links found (20 % of those twice, near by), plus false positives
    found = np.flatnonzero(rng.random(n_gt) < 0.75)
    dup = found[rng.random(len(found)) < 0.2]
    src = np.r_[found, dup]
    n_fp = max(0, n_gt - len(src))
    fp_src = rng.integers(0, n_gt, n_fp)
    n = len(src) + n_fp
    pred = empty_partners(n)
    pred["id"] = np.arange(n) + 10 ** 9
    base = np.r_[src, fp_src]
    jitter = np.r_[np.full(len(src), 60.0), np.full(n_fp, 900.0)]
    for ax in "zyx":
        for site in ("pre", "post"):
            pred[f"{site}_{ax}"] = gt[f"{site}_{ax}"][base] + np.round(rng.normal(0, 1, n) * jitter)
    for f in ("pre_seg_id", "post_seg_id", "pre_skel_id", "post_skel_id"):
        pred[f] = gt[f][base]
    # false positives connect the right pre neuron to a wrong partner; some ids missing or background
    wrong = np.arange(len(src), n)
    pred["post_skel_id"][wrong] = rng.choice(np.r_[listed, others], n_fp)
    pred["post_seg_id"][wrong] = pred["post_skel_id"][wrong] * 10
    pred["post_skel_id"][rng.random(n) < 0.05] = NO_ID
    pred["post_seg_id"][rng.random(n) < 0.03] = 0
    pred["score"] = np.r_[rng.gamma(4.0, 60.0, len(src)), rng.gamma(2.0, 40.0, n_fp)]
    order = rng.permutation(n)
    return pred[order], gt, listed


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gt", type=int, default=15000, help="ground-truth links")
    ap.add_argument("--neurons", type=int, default=30, help="listed neurons")
    ap.add_argument("--thresholds", type=int, default=10, help="score thresholds in the sweep")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (the minimum is reported)")
    ap.add_argument("--quick", action="store_true", help="1000 links, 5 neurons, 3 thresholds, once")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_evaluate.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.gt, args.neurons, args.thresholds, args.repeat = 1000, 5, 3, 1

    pred, gt, listed = synthetic_benchmark(args.gt, args.neurons)
    thresholds = [float(t) for t in np.linspace(0, 400, args.thresholds)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_partners_json(pred, tmp / "pred.json")
        write_partners_json(gt, tmp / "gt.json")
        (tmp / "skel.txt").write_text("\n".join(str(s) for s in listed) + "\n")
        config = {"pred_synlinks": "pred.json", "gt_synlinks": "gt.json", "skeleton_ids": "skel.txt",
                  "matching": "skeleton", "score_thresholds": thresholds, "matching_threshold": 400, "matching_threshold_only_pre": False,
                  "matching_threshold_only_post": False, "only_input_synapses": False,
                  "only_output_synapses": False, "filter_same_id": True, "filter_same_id_type": "skel",
                  "filter_redundant": True, "filter_redundant_dist_thr": 100, "filter_redundant_id_type": "skel",
                  "filter_redundant_ignore_ids": [], "filter_seg_ids": [0]}
        (tmp / "eval.json").write_text(json.dumps(config))

        t0 = time.perf_counter()
        settings = read_evaluation_json(tmp / "eval.json")
        p = read_partners(settings.pred_synlinks)
        g = read_ground_truth(settings.gt_synlinks)
        skel = read_skeleton_ids(settings.skeleton_ids)
        t_load = time.perf_counter() - t0

        t_eval, t_eval_all, t_one = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            results = evaluate(p, g, settings, skel)
            t_eval.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            evaluate(p, g, settings, None)  # all partners at once
            t_eval_all.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            evaluate(p, g, settings, skel, score_thresholds=[0.0])
            t_one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        write_results(results, tmp / "out", title="benchmark")
        t_write = time.perf_counter() - t0

    best = max(results, key=lambda r: r["fscore"])
    report = {
        "benchmark": "evaluate",
        "machine": machine_info(), "quick": args.quick,
        "inputs": {"predictions": int(len(pred)), "ground_truth": int(len(gt)), "neurons": int(len(listed)),
                   "score_thresholds": len(thresholds), "matching_threshold_nm": 400,
                   "protocol": "FAFB per neuron, both directions, all filters on"},
        "seconds": {"load_json": round(t_load, 3),
                    "evaluate_sweep_per_neuron": round(min(t_eval), 3),
                    "evaluate_one_threshold_per_neuron": round(min(t_one), 3),
                    "evaluate_sweep_all_at_once": round(min(t_eval_all), 3),
                    "write_results_and_plot": round(t_write, 3)},
        "best": {k: best[k] for k in ("score_thr", "fscore", "precision", "recall", "tpcount", "fpcount",
                                      "fncount", "predcount", "gtcount")},
    }
    print(f"evaluate: {report['inputs']['predictions']} predictions, {report['inputs']['ground_truth']} gt links, "
          f"{report['inputs']['neurons']} neurons, {len(thresholds)} thresholds")
    for k, v in report["seconds"].items():
        print(f"  {k:36s} {v:8.3f} s")
    print(f"  best fscore {best['fscore']:.4f} at score_thr {best['score_thr']:g} "
          f"(precision {best['precision']:.4f}, recall {best['recall']:.4f})")
    save_report(args.out, "evaluate", report, stage="evaluation")
    return report


if __name__ == "__main__":
    main()
