"""Calibrate on validation, report on test; segment matching through the ground truth's labels; the watershed.

Partners are hand-built; locations are nm (z, y, x).  Expected counts are
worked out in the comments.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synful.config import Evaluation, to_dict
from synful.evaluate import EvaluationError, evaluate, evaluate_config, read_calibration
from synful.io.partners import NO_ID, empty_partners, write_partners_json

ROOT = Path(__file__).resolve().parent.parent
SITES = [(1000 * (k + 1), 10000 * (k + 1), 5000) for k in range(6)]  # far apart: no cross matches


def partners(rows) -> np.ndarray:
    """rows: (site index, score, offset nm added to the sites); pre = site, post = site + 200 nm in x."""
    a = empty_partners(len(rows))
    for k, (i, score, off) in enumerate(rows):
        z, y, x = SITES[i]
        a[k]["id"] = k + 1
        a[k]["pre_z"], a[k]["pre_y"], a[k]["pre_x"] = z, y + off, x
        a[k]["post_z"], a[k]["post_y"], a[k]["post_x"] = z, y + off, x + 200
        a[k]["score"] = score
        a[k]["pre_seg_id"], a[k]["post_seg_id"] = 10 * i + 1, 10 * i + 2
    return a


def write_case(d: Path, pred, gt, **settings) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    write_partners_json(pred, d / "pred.json")
    write_partners_json(gt, d / "gt.json")
    cfg = {"pred_synlinks": "pred.json", "gt_synlinks": "gt.json", "score_thresholds": [0.0, 2.0, 5.0],
           "filter_same_id": False, "filter_redundant": False, "filter_seg_ids": [], **settings}
    (d / "eval.json").write_text(json.dumps(cfg))
    return d / "eval.json"


GT = partners([(i, 1.0, 0) for i in range(4)])
# validation: the 4 ground-truth partners found with scores 1, 2, 3, 4, and two false positives scoring 1
#   thr 0: tp 4, fp 2 -> f 0.8;  thr 2: tp 3, fp 0 -> p 1, r 0.75, f 0.857;  thr 5: nothing -> f 0
VAL = partners([(0, 1.0, 0), (1, 2.0, 0), (2, 3.0, 0), (3, 4.0, 0), (4, 1.0, 0), (5, 1.0, 0)])
# test: all 4 found, three of them scoring 1: thr 0 would give f 1.0, the validation choice (2) gives tp 1, fn 3
TEST = partners([(0, 1.0, 0), (1, 1.0, 0), (2, 1.0, 0), (3, 3.0, 0)])


@pytest.fixture
def val_test(tmp_path):
    val_cfg = write_case(tmp_path / "val", VAL, GT)
    test_cfg = write_case(tmp_path / "test", TEST, GT)
    results, val_dir = evaluate_config(val_cfg)
    assert [round(r["fscore"], 3) for r in results] == [0.8, 0.857, 0.0]
    return val_dir, test_cfg, tmp_path


def test_validation_threshold_is_applied_unchanged_with_provenance(val_test):
    val_dir, test_cfg, _ = val_test
    results, out = evaluate_config(test_cfg, calibration=val_dir)
    (r,) = results  # evaluated at the chosen threshold only
    assert r["score_thr"] == 2.0
    # tp 1 (the one scoring 3), fn 3: f = 2 * 1 * 0.25 / 1.25 = 0.4, though threshold 0 would reach 1.0 here
    assert (r["tpcount"], r["fpcount"], r["fncount"]) == (1, 0, 3)
    assert r["fscore"] == pytest.approx(0.4)
    summary_file = val_dir / "summary.json"
    c = r["calibration"]
    assert c["score_thr"] == 2.0
    assert c["validation_fscore"] == pytest.approx(6 / 7)
    assert c["source"] == str(summary_file.resolve())
    assert c["sha256"] == hashlib.sha256(summary_file.read_bytes()).hexdigest()
    assert c["validation_thresholds"] == [0.0, 2.0, 5.0]
    written = json.loads((out / "results_thr2.json").read_text())
    assert written["calibration"] == c and written["inputs"]["calibration"] == c
    assert json.loads((out / "summary.json").read_text())["inputs"]["calibration"]["sha256"] == c["sha256"]


def test_tie_takes_the_lowest_threshold(tmp_path):
    s = Evaluation(score_thresholds=[0.0])
    summary = {"sweep": [{"score_thr": 5.0, "fscore": 0.5}, {"score_thr": 1.0, "fscore": 0.5},
                         {"score_thr": 3.0, "fscore": 0.25}], "settings": to_dict(s), "inputs": {}}
    f = tmp_path / "summary.json"
    f.write_text(json.dumps(summary))
    assert read_calibration(f, s)["score_thr"] == 1.0


def test_refuses_calibration_without_results_or_with_other_settings(val_test):
    val_dir, test_cfg, tmp = val_test
    with pytest.raises(EvaluationError, match="calibration: no evaluation results"):
        evaluate_config(test_cfg, calibration=tmp / "nowhere")
    empty = tmp / "empty.json"
    empty.write_text(json.dumps({"sweep": [], "settings": {}}))
    with pytest.raises(EvaluationError, match="holds no results sweep"):
        evaluate_config(test_cfg, calibration=empty)
    # a different matching mode (or distance) on validation: the threshold does not carry over
    other = write_case(tmp / "other", TEST, GT, matching="segment")
    with pytest.raises(EvaluationError, match=r"evaluated with matching = \"location\", this evaluation has "
                                              r"matching = \"segment\""):
        evaluate_config(other, calibration=val_dir)
    other = write_case(tmp / "other2", TEST, GT, matching_threshold=100.0)
    with pytest.raises(EvaluationError, match="matching_threshold"):
        evaluate_config(other, calibration=val_dir)
    # a calibrated evaluation is not a sweep to calibrate on
    _, calibrated = evaluate_config(test_cfg, calibration=val_dir)
    with pytest.raises(EvaluationError, match="themselves a calibrated evaluation"):
        evaluate_config(test_cfg, calibration=calibrated)


def test_refuses_other_extraction_settings_and_the_run_itself(val_test):
    val_dir, _, tmp = val_test
    s = Evaluation(score_thresholds=[0.0])
    summary = {"sweep": [{"score_thr": 1.0, "fscore": 0.5}], "settings": to_dict(s),
               "inputs": {"predict_dir": str(tmp / "val_run"),
                          "extraction": {"cc_threshold": 0.8, "seg_container": "a"}}}
    f = tmp / "summary.json"
    f.write_text(json.dumps(summary))
    assert read_calibration(f, s, extraction={"cc_threshold": 0.8, "seg_container": "b"})["score_thr"] == 1.0
    with pytest.raises(EvaluationError, match=r"extracted with cc_threshold = 0.8, this run with cc_threshold = 0.5"):
        read_calibration(f, s, extraction={"cc_threshold": 0.5, "seg_container": "a"})
    with pytest.raises(EvaluationError, match="results of .* itself"):
        read_calibration(f, s, predict_dir=tmp / "val_run")


def test_cli_calibration(val_test):
    val_dir, test_cfg, _ = val_test
    r = subprocess.run([sys.executable, "-m", "synful", "evaluate", str(test_cfg), "--calibration", str(val_dir)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "score_thr 2 chosen on validation" in r.stdout
    assert "at it: fscore 0.4000 precision 1.0000 recall 0.2500" in r.stdout


def test_segment_matching_through_another_segmentation_keeps_the_filters_on_own_ids():
    gt = partners([(0, 1.0, 0), (1, 1.0, 0)])
    # two predictions on gt 0 (one is redundant by the extraction's ids), one on gt 1
    pred = partners([(0, 2.0, 0), (0, 1.0, 50), (1, 1.0, 0)])
    pred["pre_seg_id"] = [7, 7, 9]      # the extraction's own segmentation: ids unrelated to the ground truth's
    pred["post_seg_id"] = [8, 8, 8]
    s = Evaluation(matching="segment", filter_same_id=True, filter_redundant=True, filter_redundant_dist_thr=100.0,
                   filter_seg_ids=[], score_thresholds=[0.0])
    assert evaluate(pred, gt, s)[0]["tpcount"] == 0  # own ids never equal the ground truth's: no match at all
    # the ground truth's ids at the predicted sites: pred 2's post site lies in another neuron (99)
    looked_up = (np.array([1, 1, 11]), np.array([2, 2, 99]))
    (r,) = evaluate(pred, gt, s, match_seg_ids=looked_up)
    # filter_redundant clusters preds 0 and 1 by their own ids (7, 8) and keeps pred 0; pred 0 matches gt 0;
    # pred 2 lies in the wrong post neuron: fp; gt 1: fn
    assert (r["tpcount"], r["fpcount"], r["fncount"], r["num_clustered"]) == (1, 1, 1, 1)
    with pytest.raises(EvaluationError, match="need matching = segment"):
        evaluate(pred, gt, Evaluation(score_thresholds=[0.0]), match_seg_ids=looked_up)


def test_watershed_reads_only_the_raw_and_separates_partners(tmp_path):
    import zarr

    from synful.io.cremi import NEURON_IDS, RAW, read_annotations
    from synful.io.volumes import lookup_ids, open_volume, write_volume
    from synful.segment import SEGMENTATION_DATASET, watershed_segmentation
    from synful.synthetic import write_synthetic

    full = write_synthetic(tmp_path / "vol.zarr", (16, 256, 256), seed=7, voxel_size=(40, 8, 8))
    raw = open_volume(full, RAW)
    only_raw = tmp_path / "raw.zarr"
    zarr.open_group(str(only_raw), mode="w")
    write_volume(only_raw, RAW, raw.to_ndarray(raw.roi), raw.voxel_size, raw.roi.offset)
    out = watershed_segmentation(only_raw, tmp_path / "ws.zarr")  # no labels anywhere it could read
    ws = open_volume(out, SEGMENTATION_DATASET)
    assert ws.voxel_size == raw.voxel_size and ws.roi == raw.roi and ws.dtype == np.uint64
    seg = ws.to_ndarray(ws.roi).astype(np.int64)
    labels = open_volume(full, NEURON_IDS).to_ndarray(raw.roi).astype(np.int64)
    # merges are rare: most voxels lie in a segment whose majority neuron is their own
    pairs, n = np.unique(np.stack([seg.ravel(), labels.ravel()]), axis=1, return_counts=True)
    order = np.lexsort((-n, pairs[0]))
    first = np.r_[True, pairs[0][order][1:] != pairs[0][order][:-1]]
    purity = n[order][first].sum() / labels.size
    assert purity >= 0.9, purity
    # the pre and post sites of almost every ground-truth partner fall into distinct segments
    gt = read_annotations(full, NEURON_IDS)
    assert len(gt) >= 5
    pre = lookup_ids(ws, np.stack([gt["pre_z"], gt["pre_y"], gt["pre_x"]], 1))
    post = lookup_ids(ws, np.stack([gt["post_z"], gt["post_y"], gt["post_x"]], 1))
    assert (pre != NO_ID).all() and np.mean(pre != post) >= 0.9, np.mean(pre != post)
    # reused as is on a second call (here through the CLI); other parameters are refused
    r = subprocess.run([sys.executable, "-m", "synful", "segment", str(only_raw), str(tmp_path / "ws.zarr")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"seg_container = {out}, seg_dataset = {SEGMENTATION_DATASET}" in r.stdout
    assert "reusing" in r.stderr
    with pytest.raises(Exception, match="other parameters"):
        watershed_segmentation(only_raw, tmp_path / "ws.zarr", seed_distance_nm=60.0)
