"""Extraction: exact partners from hand-built predictions; blockwise runs with daisy into the store."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi
from funlib.persistence import Array

from synful.cli import main
from synful.config import Extraction, fill_template
from synful.extract import ExtractionError, extract, find_partners, partner_id
from synful.io.partners import NO_ID, read_partners
from synful.io.volumes import prepare_volume
from synful.scaffold import create_predict_setups, create_train_setup
from synful.store import StoreError, open_run_store

VS = (8, 4, 4)
ROOT = Path(__file__).resolve().parent.parent


def cfg(**kw) -> Extraction:
    return dataclasses.replace(Extraction(), **kw)


def ellipsoid(shape, center, radius):
    """Boolean mask of an axis-aligned ellipsoid, center and radii in voxels."""
    g = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((x - c) / r) ** 2 for x, c, r in zip(g, center, radius)) <= 1.0


def test_cc_edt_sum_exact():
    ind = np.zeros((20, 40, 40), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    a = ellipsoid(ind.shape, (6, 12, 12), (3, 6, 6))  # 24 nm radius in every axis at (8, 4, 4)
    b = np.zeros(ind.shape, bool)
    b[12:15, 25:30, 20:23] = True  # a box: EDT ties, the one nearest the box's centroid wins
    ind[a], ind[b] = 0.75, 0.625
    vec[:, a] = np.array([13.4, -41.5, 22.5])[:, None]  # rounded to whole nm: (13, -41, 23)
    vec[:, b] = np.array([-16, 8, 100])[:, None]
    offset = (80, 40, -20)
    p = find_partners(ind, vec, VS, offset, cfg())
    assert len(p) == 2
    pa = p[p["post_z"] == 80 + 6 * 8][0]
    assert (pa["post_z"], pa["post_y"], pa["post_x"]) == (128, 40 + 48, -20 + 48)
    assert (pa["pre_z"], pa["pre_y"], pa["pre_x"]) == (128 + 13, 88 - 41, 28 + 23)
    assert pa["score"] == 0.75 * a.sum()
    pb = p[p["post_z"] != 128][0]
    # box 3 x 5 x 3 voxels: largest distance 8 nm at z=12..14, y=26..28, x=21; the centroid (13, 27, 21)
    # is one of them (the old rule, first in (z, y, x) order, took (12, 26, 21))
    assert (pb["post_z"], pb["post_y"], pb["post_x"]) == (80 + 13 * 8, 40 + 27 * 4, -20 + 21 * 4)
    assert (pb["pre_z"], pb["pre_y"], pb["pre_x"]) == (pb["post_z"] - 16, pb["post_y"] + 8, pb["post_x"] + 100)
    assert pb["score"] == 0.625 * 45
    assert p["id"].tolist() == sorted(partner_id(np.stack([p["post_z"], p["post_y"], p["post_x"]], 1), VS))
    assert (p["pre_seg_id"] == NO_ID).all()


def test_loc_max_score_types_vector_mean():
    ind = np.zeros((10, 30, 30), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    m = ellipsoid(ind.shape, (5, 15, 15), (2, 5, 5))
    ind[m] = 0.6
    ind[4, 13, 17] = 0.9  # the indicator maximum, off centre
    vec[0][m], vec[1][m], vec[2][m] = 8, 40, 0
    vec[1][4, 13, 17] = 0  # the vector at the maximum differs from the mean
    n = int(m.sum())
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(loc_type="max", score_type="max"))
    assert (p[0]["post_z"], p[0]["post_y"], p[0]["post_x"]) == (32, 52, 68)
    assert p[0]["score"] == pytest.approx(0.9)
    assert (p[0]["pre_z"], p[0]["pre_y"], p[0]["pre_x"]) == (40, 52, 68)
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(loc_type="max", score_type="count", vector_type="mean"))
    assert p[0]["score"] == n
    mean_y = 40 * (n - 1) / n
    assert p[0]["pre_y"] == 52 + np.floor(mean_y + 0.5)
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(score_type="mean"))
    assert p[0]["score"] == pytest.approx((0.6 * (n - 1) + 0.9) / n)


def test_filters_threshold_and_roi():
    ind = np.zeros((10, 40, 40), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    near, far, weak = (ellipsoid(ind.shape, c, (1, 3, 3)) for c in ((3, 8, 8), (3, 30, 30), (7, 8, 30)))
    ind[near], ind[far], ind[weak] = 0.9, 0.9, 0.55
    vec[2][near], vec[2][far], vec[2][weak] = 20, 400, 40
    assert len(find_partners(ind, vec, VS, (0, 0, 0), cfg())) == 3
    assert len(find_partners(ind, vec, VS, (0, 0, 0), cfg(cc_threshold=0.6))) == 2
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(min_distance=30, max_distance=100))
    assert p["pre_x"].tolist() == (p["post_x"] + 40).tolist() and len(p) == 1
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(score_thr=0.9 * near.sum() - 1e-6))
    assert len(p) == 2
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(), roi=Roi((0, 0, 0), (80, 80, 100)))
    assert len(p) == 1 and p[0]["post_y"] == 32 and p[0]["post_x"] == 32
    empty = find_partners(np.zeros((4, 4, 4)), np.zeros((3, 4, 4, 4)), VS, (0, 0, 0), cfg())
    assert len(empty) == 0
    with pytest.raises(ExtractionError, match="vectors"):
        find_partners(ind, vec[:2], VS, (0, 0, 0), cfg())


def test_segment_ids_and_same_segment_removal():
    ind = np.zeros((10, 40, 40), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    a, b = ellipsoid(ind.shape, (4, 10, 10), (1, 3, 3)), ellipsoid(ind.shape, (4, 30, 30), (1, 3, 3))
    ind[a | b] = 0.8
    vec[2][a], vec[2][b] = 40, -40  # a: pre at x + 40 nm; b: pre at x - 40 nm
    big = 2 ** 40 + 5
    seg = np.full(ind.shape, 7, np.uint64)
    seg[:, :, :20] = big  # a: post in `big`, pre (x = 80 nm, voxel 20) in 7; b: both in 7
    seg_arr = Array(seg, (0, 0, 0), VS)
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(), segmentation=seg_arr)
    got = {(int(q["post_x"]), int(q["pre_seg_id"]), int(q["post_seg_id"])) for q in p}
    assert got == {(40, 7, big), (120, 7, 7)}
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(remove_same_segment=True), segmentation=seg_arr)
    assert p["post_x"].tolist() == [40]
    # sites outside the segmentation get NO_ID
    small = Array(seg[:, :, :12], (0, 0, 0), VS)
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(), segmentation=small)
    assert p["pre_seg_id"].tolist() == [NO_ID, NO_ID]
    assert sorted(p["post_seg_id"].tolist()) == [NO_ID, big]


def test_split_by_segment_keeps_touching_post_sites_apart():
    # two post sites in touching neurons whose blobs merge into one component
    ind = np.zeros((6, 30, 40), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    ind[2:4, 10:20, 8:32] = 0.9
    seg = np.full(ind.shape, 3, np.uint64)
    seg[:, :, 20:] = 2 ** 40  # the neuron boundary cuts the component in two
    vec[2][:, :, :20], vec[2][:, :, 20:] = -40, 40  # each points away from the boundary
    assert len(find_partners(ind, vec, VS, (0, 0, 0), cfg())) == 1
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(split_by_segment=True), segments=seg)
    assert len(p) == 2
    # the EDT maximum of each half (8 nm, z-limited: x = 9..18 and 21..30 tie) nearest its centroid (x = 13.5
    # and 25.5: x = 13 / 14 and 25 / 26 are equally near, the first in C order wins); the old rule took 9 and 21
    assert sorted(p["post_x"].tolist()) == [4 * 13, 4 * 25]
    assert sorted(p["score"].tolist()) == pytest.approx([0.9 * 2 * 10 * 12] * 2)
    with pytest.raises(ExtractionError, match="shape of the indicator"):
        find_partners(ind, vec, VS, (0, 0, 0), cfg(split_by_segment=True), segments=seg[:, :, :10])


def test_nms_one_site_per_peak():
    ind = np.zeros((12, 40, 40), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    for c in ((4, 10, 10), (6, 28, 28)):
        d = ellipsoid(ind.shape, c, (3, 6, 6))
        ind[d] = np.maximum(ind[d], 0.7)
        ind[c] = 0.95
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(method="nms", nms_radius=(40, 40, 40), score_type="max"))
    assert {(int(q["post_z"]), int(q["post_y"]), int(q["post_x"])) for q in p} == {(32, 40, 40), (48, 112, 112)}
    assert p["score"].tolist() == [pytest.approx(0.95)] * 2


def post_sites(p):
    return sorted(tuple(int(q[f"post_{a}"]) for a in "zyx") for q in p)


def test_ties_go_to_the_voxel_nearest_the_centroid():
    # every case has several voxels with the same EDT value / indicator value / plateau value; the old rule
    # (first in (z, y, x) order) and the new one (nearest the centroid, in nm) differ in each
    vec = np.zeros((3, 6, 20, 30), np.float32)
    # cc / edt: a bar of 7 voxels along x (every voxel 4 nm from the outside): its middle voxel, x = 5 + 3
    ind = np.zeros((6, 20, 30), np.float32)
    ind[2, 4, 5:12] = 0.9
    assert post_sites(find_partners(ind, vec, VS, (0, 0, 0), cfg())) == [(16, 16, 4 * 8)]
    # cc / edt: an L (column y = 10..14 at x = 3, row x = 3..9 at y = 14): all 11 voxels tie (4 nm); the
    # centroid (y, x) = (13.09, 4.91) voxels; nearest (14, 5)
    ind = np.zeros((6, 20, 30), np.float32)
    ind[3, 10:15, 3] = ind[3, 14, 3:10] = 0.9
    assert post_sites(find_partners(ind, vec, VS, (0, 0, 0), cfg())) == [(24, 14 * 4, 5 * 4)]
    # cc / edt: a column of 5 voxels along z (z = 1..5) and 2 more along x at z = 5: all tie (4 nm); centroid
    # (z, x) = (3.57, 12.29) voxels; nearest (4, 12)
    ind = np.zeros((6, 20, 30), np.float32)
    ind[1:6, 8, 12] = ind[5, 8, 13:15] = 0.9
    assert post_sites(find_partners(ind, vec, VS, (0, 0, 0), cfg())) == [(4 * 8, 8 * 4, 12 * 4)]
    # loc_type = max: an indicator maximum shared by 5 voxels (y = 4..8) of a box with centroid (2, 6.5, 11.5):
    # y = 6 and 7 are equally near, the first in C order wins
    ind = np.zeros((6, 20, 30), np.float32)
    ind[1:4, 2:12, 10:14] = 0.6
    ind[2, 4:9, 11] = 0.8
    assert post_sites(find_partners(ind, vec, VS, (0, 0, 0), cfg(loc_type="max"))) == [(16, 6 * 4, 11 * 4)]
    # nms: a plateau of 5 voxels along x: its middle voxel
    ind = np.zeros((6, 20, 30), np.float32)
    ind[2:5, 7:12, 10:19] = 0.6
    ind[3, 9, 12:17] = 0.95
    p = find_partners(ind, vec, VS, (0, 0, 0), cfg(method="nms", nms_radius=(40, 40, 40), score_type="max"))
    assert post_sites(p) == [(24, 36, 14 * 4)]


# --------------------------------------------------------------------------------------
# blockwise runs
# --------------------------------------------------------------------------------------

def random_prediction(shape, n_blobs, seed, grid=False):
    """Indicator and vectors with separated blobs of random size, value and vector."""
    rng = np.random.default_rng(seed)
    ind = np.zeros(shape, np.float32)
    vec = np.zeros((3,) + tuple(shape), np.float32)
    if grid:  # one blob per cell of a grid
        cells = [np.array(c) for c in np.ndindex(*grid)]
        cell = np.array(shape) // np.array(grid)
        centers = [c * cell + cell // 2 + rng.integers(-1, 2, 3) for c in cells]
    else:
        centers = [rng.integers(2, np.array(shape) - 2) for _ in range(n_blobs)]
    for c in centers:
        m = ellipsoid(shape, c, rng.uniform(1, 3, 3) * np.array([1, 2, 2]))
        ind[m] = np.maximum(ind[m], rng.uniform(0.55, 1.0))
        vec[:, m] = rng.normal(0, 60, 3)[:, None]
    return (ind * 255).round().astype(np.uint8), vec


def make_run(base: Path, ind_u8, vec, offset=(0, 0, 0), predict_id=None, **extraction) -> Path:
    """A prediction setup whose outputs are the given arrays (uint8 indicator, float16 vectors)."""
    if not (base / "exp" / "02_train" / "setup_t0").exists():
        create_train_setup(base, "exp", 0)
    pdir = create_predict_setups(base, "exp", 0, [1000])[0]
    text = (pdir / "predict_config.ini").read_text()
    (pdir / "predict_config.ini").write_text(fill_template(text, {"Extraction": extraction}))
    roi = Roi(offset, tuple(s * v for s, v in zip(ind_u8.shape, VS)))
    a = prepare_volume(pdir / "predictions.zarr", "volumes/pred_syn_indicator", roi, VS, np.uint8,
                       chunk_shape=(8, 32, 32))
    a[roi] = ind_u8
    a._source_data.attrs["scale"] = 1 / 255
    v = prepare_volume(pdir / "predictions.zarr", "volumes/pred_partner_vectors", roi, VS, np.float16,
                       num_channels=3, chunk_shape=(8, 32, 32))
    v[roi] = vec.astype(np.float16)
    v._source_data.attrs["scale"] = 1.0
    return pdir


def reference(ind_u8, vec, offset=(0, 0, 0), **kw):
    prob = ind_u8.astype(np.float32) * np.float32(1 / 255)
    return find_partners(prob, vec.astype(np.float16), VS, offset, cfg(**kw))


def set_config(pdir: Path, **extraction):
    text = (pdir / "predict_config.ini").read_text()
    (pdir / "predict_config.ini").write_text(fill_template(text, {"Extraction": extraction}))


def test_blob_across_block_border_yields_one_partner(tmp_path):
    ind = np.zeros((16, 64, 64), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    m = ellipsoid(ind.shape, (7.5, 31.5, 31.5), (3, 6, 6))  # centred on the corner of four blocks
    ind[m] = 0.8
    vec[1][m] = 40
    ind_u8 = (ind * 255).round().astype(np.uint8)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    s = extract(pdir, multiprocessing=False)
    assert s["blocks_total"] == 2 * 2 * 2 and s["partners"] == 1
    with open_run_store(pdir) as store:
        got = store.query()
        assert len(store.block_ids()) == 1
    np.testing.assert_array_equal(got, reference(ind_u8, vec))
    assert (pdir / "extraction_scores.png").stat().st_size > 0
    assert (pdir / "extraction_summary.json").is_file()


def test_one_block_equals_many_blocks_sqlite_and_mongodb(tmp_path, mongodb_url):
    ind_u8, vec = random_prediction((24, 96, 96), 40, seed=3)
    offset = (40, -80, 120)
    ref = reference(ind_u8, vec, offset)
    assert len(ref) > 20
    one = make_run(tmp_path, ind_u8, vec, offset, block_shape=(10000, 10000, 10000), context=(64, 64, 64))
    s1 = extract(one, multiprocessing=False)
    many = make_run(tmp_path, ind_u8, vec, offset, block_shape=(64, 128, 96), context=(64, 64, 64),
                    store_url=mongodb_url, database="synful_test")
    s2 = extract(many, num_workers=2)  # daisy's local worker processes
    assert s1["blocks_total"] == 1 and s2["blocks_total"] == 3 * 3 * 4
    with open_run_store(one) as a, open_run_store(many) as b:
        np.testing.assert_array_equal(a.query(), ref)
        np.testing.assert_array_equal(b.query(), ref)
        assert b.collection == "partners_exp_t0_p1"
        b.drop()


def test_rerun_skips_done_blocks_and_overwrite_starts_over(tmp_path):
    ind_u8, vec = random_prediction((16, 64, 64), 12, seed=5)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    s = extract(pdir, multiprocessing=False)
    assert s["blocks_skipped"] == 0
    s = extract(pdir, multiprocessing=False)
    assert s["blocks_skipped"] == s["blocks_total"] == 8
    s = extract(pdir, overwrite=True, multiprocessing=False)
    assert s["blocks_skipped"] == 0
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_u8, vec))
    set_config(pdir, block_shape=(64, 64, 64))
    with pytest.raises(ExtractionError, match="overwrite"):
        extract(pdir, multiprocessing=False)


def test_failed_blocks_are_not_marked_done(tmp_path):
    ind_u8, vec = random_prediction((16, 64, 128), 20, seed=6)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(32, 32, 32))
    # a corrupt chunk at x = 0: the blocks reading it fail, those at larger x do not
    chunk = pdir / "predictions.zarr" / "volumes" / "pred_syn_indicator" / "0" / "0" / "0"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a compressed chunk")
    with pytest.raises(ExtractionError, match="failed"):
        extract(pdir, num_workers=1)  # the failing block crashes its worker process; the others finish
    chunk.write_bytes(good)
    s = extract(pdir, multiprocessing=False)
    assert 0 < s["blocks_skipped"] < s["blocks_total"]
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_u8, vec))


def test_split_by_segment_blockwise_and_its_errors(tmp_path):
    ind = np.zeros((16, 64, 64), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    ind[6:9, 20:40, 16:48] = 0.8  # one blob over two neurons
    ind_u8 = (ind * 255).round().astype(np.uint8)
    seg = np.ones(ind.shape, np.uint64)
    seg[:, :, 32:] = 2
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(ind.shape, VS)))
    seg_path = tmp_path / "seg.zarr"
    prepare_volume(seg_path, "neuron_ids", roi, VS, np.uint64)[roi] = seg
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    set_config(pdir, split_by_segment=True)
    with pytest.raises(ExtractionError, match=r"\[Extraction\] split_by_segment: needs seg_container"):
        extract(pdir, multiprocessing=False)
    set_config(pdir, split_by_segment=True, seg_container=str(seg_path), seg_dataset="neuron_ids")
    extract(pdir, overwrite=True, multiprocessing=False)
    with open_run_store(pdir) as store:
        got = store.query()
    assert sorted(got["post_seg_id"].tolist()) == [1, 2]
    coarse = tmp_path / "seg_coarse.zarr"
    prepare_volume(coarse, "neuron_ids", roi, (8, 8, 8), np.uint64)[roi] = seg[:, ::2, ::2]
    set_config(pdir, split_by_segment=True, seg_container=str(coarse), seg_dataset="neuron_ids")
    with pytest.raises(ExtractionError, match="has voxel size"):
        extract(pdir, overwrite=True, multiprocessing=False)


def test_unreachable_database_fails_fast_and_marks_nothing(tmp_path):
    from conftest import free_port

    ind_u8, vec = random_prediction((16, 64, 64), 8, seed=7)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(32, 32, 32),
                    store_url=f"mongodb://user:hunter2@127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        extract(pdir, multiprocessing=False)
    assert time.monotonic() - t0 < 60
    assert "cannot reach MongoDB" in str(e.value) and "hunter2" not in str(e.value)
    set_config(pdir, store_url="sqlite:///partners.sqlite")
    s = extract(pdir, multiprocessing=False)
    assert s["blocks_skipped"] == 0 and s["partners"] == len(reference(ind_u8, vec))


def test_killed_run_resumes_to_the_identical_set(tmp_path):
    ind_u8, vec = random_prediction((32, 128, 128), 0, seed=8, grid=(4, 4, 4))
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(32, 64, 64))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "synful", "extract", str(pdir), "--workers", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = pdir / "partners.sqlite"
    done = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                with open_run_store(pdir) as store:
                    done = len(store.block_ids())
                if done >= 3:
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker, mid-way
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    s = extract(pdir, multiprocessing=False)
    assert 0 < s["blocks_skipped"] < s["blocks_total"] == 64
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_u8, vec))


def test_a_missing_segmentation_names_the_keys_not_prediction(tmp_path, capsys):
    ind_u8, vec = random_prediction((16, 64, 64), 10, seed=9)
    pdir = make_run(tmp_path, ind_u8, vec, seg_container=str(pdir_seg := tmp_path / "seg.zarr"),
                    seg_dataset="volumes/segmentation")
    pdir_seg.mkdir()
    assert main(["extract", str(pdir), "--serial"]) == 2
    err = capsys.readouterr().err
    assert "segmentation dataset" in err and "seg_container" in err and "run prediction first" not in err


def test_cli_extract_and_export(tmp_path, capsys):
    ind_u8, vec = random_prediction((16, 64, 64), 10, seed=9)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(32, 32, 32))
    assert main(["extract", str(pdir), "--serial"]) == 0
    out = capsys.readouterr().out
    assert "partners in sqlite:///" in out
    n = int(out.split("blocks: ")[0].rsplit("(", 1)[1])
    assert f"({n} blocks: {n} extracted, 0 already done)" in out
    assert main(["extract", str(pdir), "--serial"]) == 0  # a rerun says it did nothing
    assert f"({n} blocks: 0 extracted, {n} already done)" in capsys.readouterr().out
    ref = reference(ind_u8, vec)
    for name in ("out.json", "out.csv"):
        assert main(["export", str(pdir), str(tmp_path / name)]) == 0
        np.testing.assert_array_equal(read_partners(tmp_path / name), ref)
    assert main(["extract", str(tmp_path / "nowhere")]) == 2
    assert "predict_config.ini" in capsys.readouterr().err


def _set_attr(pdir: Path, dataset: str, key: str, value=None):
    """Set (or with None remove) an attribute of a prediction dataset, as another tool might have written it."""
    import json

    path = pdir / "predictions.zarr" / "volumes" / dataset / ".zattrs"
    attrs = json.loads(path.read_text())
    if value is None:
        attrs.pop(key, None)
    else:
        attrs[key] = value
    path.write_text(json.dumps(attrs))


def test_a_dataset_without_scale_is_refused_unless_the_config_gives_it(tmp_path, capsys):
    ind_u8, vec = random_prediction((16, 64, 64), 10, seed=11)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(32, 32, 32))
    ini = pdir / "predict_config.ini"
    container = pdir / "predictions.zarr"
    # a foreign uint8 indicator without 'scale': the old code read it as probabilities 0..255
    _set_attr(pdir, "pred_syn_indicator", "scale")
    with pytest.raises(ExtractionError, match=rf"^{container}/volumes/pred_syn_indicator: no 'scale' attribute "
                                              rf".*; set {ini} \[Extraction\] indicator_scale, or write the attribute"):
        extract(pdir, multiprocessing=False)
    with open_run_store(pdir) as store:
        assert store.count() == 0  # refused before any block ran
    assert main(["extract", str(pdir), "--serial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {container}/volumes/pred_syn_indicator: no 'scale' attribute")
    # the explicit key gives what the attribute would
    set_config(pdir, indicator_scale=1 / 255)
    extract(pdir, multiprocessing=False)
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_u8, vec))
    # a key that contradicts the attribute, and attributes that are not positive finite numbers
    _set_attr(pdir, "pred_syn_indicator", "scale", 1.0)
    with pytest.raises(ExtractionError, match=r"\[Extraction\] indicator_scale: 0.00392.* disagrees with the 'scale' "
                                              r"attribute 1.0 of .*pred_syn_indicator"):
        extract(pdir, overwrite=True, multiprocessing=False)
    set_config(pdir, indicator_scale=None)
    for bad in ("NaN", 0, "x"):
        _set_attr(pdir, "pred_syn_indicator", "scale", bad)
        with pytest.raises(ExtractionError, match=r"pred_syn_indicator: 'scale' attribute must be a finite number > 0"):
            extract(pdir, overwrite=True, multiprocessing=False)
    _set_attr(pdir, "pred_syn_indicator", "scale", 1 / 255)
    # the vectors the same way
    _set_attr(pdir, "pred_partner_vectors", "scale")
    with pytest.raises(ExtractionError, match=r"pred_partner_vectors: no 'scale' attribute .* \[Extraction\] "
                                              r"partner_vectors_scale"):
        extract(pdir, overwrite=True, multiprocessing=False)
    set_config(pdir, partner_vectors_scale=1.0)
    extract(pdir, overwrite=True, multiprocessing=False)
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_u8, vec))


def test_nan_threshold_never_reaches_extraction(tmp_path, capsys):
    ind_u8, vec = random_prediction((16, 64, 64), 10, seed=12)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(32, 32, 32))
    extract(pdir, multiprocessing=False)
    with open_run_store(pdir) as store:
        n = store.count()
    assert n > 0
    # the old reader accepted nan (nan < 0 and nan > 1 are false): --overwrite then wrote 0 partners
    set_config(pdir, cc_threshold="nan")
    assert main(["extract", str(pdir), "--overwrite", "--serial"]) == 2
    assert "[Extraction] cc_threshold: expected a finite number, got nan" in capsys.readouterr().err
    set_config(pdir, cc_threshold=0.5)
    with open_run_store(pdir) as store:
        assert store.count() == n  # nothing dropped or replaced
