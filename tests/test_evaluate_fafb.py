"""FAFB evaluation configs with every key of Synful's FAFB evaluator, and geodesic redundancy filtering.

The key sets are those of funkelab/synful_fafb ``evaluation/configs/*.json`` and of the keyword
arguments of its ``EvaluateFafb`` (``evaluation/evaluate_fafb.py``) plus ``score_thresholds``
(``run_evaluate.py``); the data are hand-built here.  Locations are nm (z, y, x).

Hand-built neuron 7, a narrow U (SWC, x y z):
    node 1 (z, y, x) = (0, 0, 0)      root
    node 2           = (0, 0, 1000)   parent 1   edge 1000
    node 3           = (0, 200, 1000) parent 2   edge 200
    node 4           = (0, 200, 0)    parent 3   edge 1000
Predictions, all pre skeleton 5 -> post skeleton 7 (one redundancy group), pre = post + (100, 0, 0):
    p0 post (0, 0, 0)   score 0.9  nearest node 1
    p1 post (0, 200, 0) score 0.8  nearest node 4   euclid(p0) 200, geodesic(p0) 2200
    p2 post (0, 0, 1000) score 0.7 nearest node 2   euclid(p0) 1000, geodesic(p0) 1000, geodesic(p1) 1200
    p3 post (0, 210, 0) score 0.5  nearest node 4   euclid(p1) 10, geodesic(p1) 0, euclid(p0) 210
Ground truth: g0 post (0, 0, 0), g1 post (0, 200, 0), pre = post + (100, 0, 0); matching on pre
distance only, threshold 700: p0-g0 0, p1-g1 0, p3-g1 10, p0-g1 200, p1-g0 200, p2 > 700 from both.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synful.config import ConfigError
from synful.evaluate import EvaluationError, evaluate_config, filter_partners, read_evaluation_json
from synful.io.partners import empty_partners, write_partners_json
from synful.io.skeletons import SkeletonError, geodesic_distances, load_skeleton, read_skeleton_json, read_swc

ROOT = Path(__file__).resolve().parent.parent

#: the keys of every published synful_fafb evaluation config (calyx, eb, lh, pb: one key set)
PUBLISHED_KEYS = {
    "pred_synlinks", "gt_synlinks", "skeleton_ids", "score_thresholds", "only_input_synapses",
    "only_output_synapses", "matching_threshold_only_post", "matching_threshold_only_pre", "matching_threshold",
    "filter_redundant_ignore_ids", "filter_seg_ids", "filter_redundant", "filter_redundant_id_type",
    "filter_same_id", "filter_same_id_type", "filter_redundant_dist_thr", "filter_redundant_dist_type",
}
#: the other keyword arguments of EvaluateFafb (file-based version)
OTHER_SYNFUL_KEYS = {"results_dir", "multiprocess", "roi_file", "syn_dir"}

SWC = """# hand-built U, x y z in nm
1 0 0 0 0 1 -1
2 0 1000 0 0 1 1
3 0 1000 200 0 1 2
4 0 0 200 0 1 3
"""
NODES = [  # the same neuron in the synful_fafb gt_skeletons JSON format, plus a node of another neuron
    {"id": 11, "position": [0, 0, 0], "neuron_id": 7, "parent_id": None},
    {"id": 12, "position": [0, 0, 1000], "neuron_id": 7, "parent_id": 11},
    {"id": 13, "position": [0, 200, 1000], "neuron_id": 7, "parent_id": 12},
    {"id": 14, "position": [0, 200, 0], "neuron_id": 7, "parent_id": 13},
    {"id": 99, "position": [0, 0, 5], "neuron_id": 8, "parent_id": 12345},
]
POSTS = [(0, 0, 0), (0, 200, 0), (0, 0, 1000), (0, 210, 0)]
SCORES = [0.9, 0.8, 0.7, 0.5]


def _partners(posts, scores, id0=0):
    a = empty_partners(len(posts))
    for k, (post, score) in enumerate(zip(posts, scores)):
        a[k]["id"] = id0 + k
        a[k]["post_z"], a[k]["post_y"], a[k]["post_x"] = post
        a[k]["pre_z"], a[k]["pre_y"], a[k]["pre_x"] = post[0] + 100, post[1], post[2]
        a[k]["score"] = score
        a[k]["pre_seg_id"], a[k]["post_seg_id"] = 50, 70
        a[k]["pre_skel_id"], a[k]["post_skel_id"] = 5, 7
    return a


def _write(d: Path, **cfg) -> Path:
    """A config with exactly the published key set (values as the calyx config, thresholds scaled to the case)."""
    write_partners_json(_partners(POSTS, SCORES), d / "data" / "pred.json")
    write_partners_json(_partners(POSTS[:2], [1.0, 1.0], id0=100), d / "data" / "gt.json")
    (d / "data" / "ids.txt").write_text("7\n")
    (d / "skel").mkdir(exist_ok=True)
    (d / "skel" / "7.swc").write_text(SWC)
    (d / "data" / "skeletons.json").write_text(json.dumps(NODES))
    config = {"pred_synlinks": "data/pred.json", "gt_synlinks": "data/gt.json", "skeleton_ids": "data/ids.txt",
              "score_thresholds": [0], "only_input_synapses": True, "only_output_synapses": False,
              "matching_threshold_only_post": False, "matching_threshold_only_pre": True,
              "matching_threshold": 700, "filter_redundant_ignore_ids": [-2], "filter_seg_ids": [0],
              "filter_redundant": True, "filter_redundant_id_type": "skel", "filter_same_id": True,
              "filter_same_id_type": "skel", "filter_redundant_dist_thr": 250,
              "filter_redundant_dist_type": "euclidean"}
    config.update(cfg)
    path = d / "eval.json"
    path.write_text(json.dumps(config))
    return path


def _counts(res):
    return res["tpcount"], res["fpcount"], res["fncount"], res["num_clustered"]


# ---------------------------------------------------------------------------------------------
# skeleton files and geodesic distances
# ---------------------------------------------------------------------------------------------

def test_skeleton_formats_and_geodesic_distances(tmp_path):
    (tmp_path / "7.swc").write_text(SWC)
    (tmp_path / "all.json").write_text(json.dumps(NODES))
    swc = read_swc(tmp_path / "7.swc")
    js = read_skeleton_json(tmp_path / "all.json", 7)
    np.testing.assert_array_equal(swc.positions, js.positions)  # SWC x y z reordered to (z, y, x)
    np.testing.assert_array_equal(swc.parents, [-1, 0, 1, 2])
    assert len(read_skeleton_json(tmp_path / "all.json", 8).ids) == 1  # a parent outside the file: a root
    d = geodesic_distances(swc, POSTS)
    # nodes 1, 4, 2, 4: hand-computed path lengths
    np.testing.assert_allclose(d, [[0, 2200, 1000, 2200],
                                   [2200, 0, 1200, 0],
                                   [1000, 1200, 0, 1200],
                                   [2200, 0, 1200, 0]])
    assert load_skeleton(tmp_path, 7).ids.tolist() == [1, 2, 3, 4]  # folder: <id>.swc
    assert load_skeleton(tmp_path / "all.json", 7).ids.tolist() == [11, 12, 13, 14]  # one node-list file
    with pytest.raises(SkeletonError, match=r"9\.swc: skeleton file not found"):
        load_skeleton(tmp_path, 9)
    (tmp_path / "bad.swc").write_text("1 0 0 0\n")
    with pytest.raises(SkeletonError, match=r"bad\.swc:1: expected 'id type x y z radius parent'"):
        read_swc(tmp_path / "bad.swc")


@pytest.mark.parametrize("dist_type, thr, kept", [
    # euclidean 250: p0-p1 200, p0-p3 210, p1-p3 10 link; p2 alone -> keep p0, p2
    ("euclidean", 250, [0, 2]),
    # geodesic 250: only p1-p3 (one node, different locations) -> keep p0, p1, p2
    ("geodesic", 250, [0, 1, 2]),
    # geodesic 1100: p0-p2 1000 and p1-p3 0 link, p2-p1 1200 does not -> keep p0, p1
    ("geodesic", 1100, [0, 1]),
    # geodesic 1200: p2-p1 1200 links the two clusters -> keep p0
    ("geodesic", 1200, [0]),
])
def test_geodesic_redundancy_filter_hand_counts(tmp_path, dist_type, thr, kept):
    settings = read_evaluation_json(_write(tmp_path, filter_redundant_dist_type=dist_type,
                                           filter_redundant_dist_thr=thr, skeletons="skel"))
    skel = load_skeleton(tmp_path / "skel", 7)
    out = filter_partners(_partners(POSTS, SCORES), settings, 0, skeleton=skel)
    assert out["id"].tolist() == kept


# ---------------------------------------------------------------------------------------------
# configs exactly as published
# ---------------------------------------------------------------------------------------------

def test_published_key_set_runs(tmp_path):
    path = _write(tmp_path)
    assert set(json.loads(path.read_text())) == PUBLISHED_KEYS
    settings = read_evaluation_json(path)
    assert settings.matching == "skeleton"  # no `matching` key: Synful's per-neuron protocol, skeleton ids
    assert settings.filter_redundant_dist_type == "euclidean"
    (res,), out = evaluate_config(path)
    # euclidean 250 keeps p0, p2: p0-g0 matched, p2 unmatched, g1 unmatched; p1, p3 clustered away
    assert _counts(res) == (1, 1, 1, 2)
    assert out == tmp_path / "eval_evaluation" and (out / "results_thr0.json").is_file()


@pytest.mark.parametrize("skeletons", ["skel", "data/skeletons.json"])
def test_published_key_set_geodesic(tmp_path, skeletons):
    path = _write(tmp_path, filter_redundant_dist_type="geodesic", skeletons=skeletons)
    (res,), _ = evaluate_config(path, tmp_path / "o")
    # geodesic 250 keeps p0, p1, p2: p0-g0, p1-g1 matched, p2 a false positive; p3 clustered away
    assert _counts(res) == (2, 1, 0, 1)
    assert res["settings"]["filter_redundant_dist_type"] == "geodesic"


def test_every_synful_key_is_accepted(tmp_path, caplog):
    path = _write(tmp_path, results_dir="res", multiprocess=False, roi_file="roi.json", syn_dir="syn")
    assert set(json.loads(path.read_text())) == PUBLISHED_KEYS | OTHER_SYNFUL_KEYS
    (res,), out = evaluate_config(path)
    assert out == tmp_path / "res" and (out / "results_thr0.json").is_file()  # results_dir as in Synful
    assert _counts(res) == (1, 1, 1, 2)
    assert "roi_file: ignored" in caplog.text and "syn_dir: ignored" in caplog.text


def test_geodesic_needs_skeletons_and_skeleton_ids(tmp_path):
    with pytest.raises(ConfigError, match=r"eval\.json skeletons: filter_redundant_dist_type = geodesic needs "
                                          r"skeleton files"):
        read_evaluation_json(_write(tmp_path, filter_redundant_dist_type="geodesic"))
    with pytest.raises(ConfigError, match=r"eval\.json filter_redundant_dist_type: geodesic .* needs skeleton_ids"):
        read_evaluation_json(_write(tmp_path, filter_redundant_dist_type="geodesic", skeletons="skel",
                                    skeleton_ids=None, only_input_synapses=False))
    # not used, so not needed: geodesic with filter_redundant off
    read_evaluation_json(_write(tmp_path, filter_redundant_dist_type="geodesic", filter_redundant=False))
    with pytest.raises(ConfigError, match=r"filter_redundant_dist_type: expected one of euclidean, geodesic"):
        read_evaluation_json(_write(tmp_path, filter_redundant_dist_type="catmaid"))


def test_missing_skeleton_file_is_one_line_error(tmp_path):
    path = _write(tmp_path, filter_redundant_dist_type="geodesic", skeletons="skel")
    (tmp_path / "skel" / "7.swc").unlink()
    with pytest.raises(EvaluationError, match=r"neuron 7: .*7\.swc: skeleton file not found"):
        evaluate_config(path, tmp_path / "o")
    r = subprocess.run([sys.executable, "-m", "synful", "evaluate", str(path), "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "7.swc: skeleton file not found" in last


def test_cli_runs_a_published_config(tmp_path):
    path = _write(tmp_path)
    r = subprocess.run([sys.executable, "-m", "synful", "evaluate", str(path)], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "score_thr 0: fscore 0.5000 precision 0.5000 recall 0.5000" in r.stdout
