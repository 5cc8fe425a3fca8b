"""Synapse to skeleton mapping (synful.mapping) on hand-built segmentations and SWC skeletons."""

from __future__ import annotations


import numpy as np
import pytest

from synful.io.partners import NO_ID, empty_partners
from synful.io.volumes import open_volume, write_volume
from synful.io.skeletons import read_swc
from synful.mapping import MappingError, Skeletons, map_partners, map_run, read_skeletons
from synful.store import MongoStore, open_store

VS = (40, 4, 4)  # nm (z, y, x); volume (4, 50, 100) voxels = z [0, 160), y [0, 200), x [0, 400) nm


def _segmentation(tmp_path):
    """Segments by x: 1 = [0, 100), 2 = [100, 200), 3 = [200, 300) (no skeleton), 4 = [300, 400); z >= 120: 0."""
    labels = np.zeros((4, 50, 100), dtype=np.uint64)
    for k in range(4):
        labels[:, :, 25 * k:25 * (k + 1)] = k + 1
    labels[3] = 0
    write_volume(tmp_path / "seg.zarr", "labels", labels, VS)
    return open_volume(tmp_path / "seg.zarr", "labels")


# skeleton id -> nodes (z, y, x) nm
NODES = {
    7: [(60, 50, 20), (60, 50, 60)],            # the only skeleton of segment 1
    11: [(60, 20, 150), (60, 40, 150)],         # segment 2, with 12
    12: [(60, 180, 150), (60, 195, 190)],       # segment 2; (60, 195, 190) is 20 nm from a segment-3 site
    20: [(60, 100, 350), (140, 0, 350)],        # segment 4; the second node lies in background (ignored)
}


def _write_swc(directory, nodes=NODES):
    directory.mkdir(exist_ok=True)
    for skel_id, pts in nodes.items():
        lines = ["# id type x y z radius parent"]
        for i, (z, y, x) in enumerate(pts, 1):
            lines.append(f"{i} 0 {x} {y} {z} 1.0 {i - 1 if i > 1 else -1}")
        (directory / f"{skel_id}.swc").write_text("\n".join(lines) + "\n")
    return directory


# (site (z, y, x) nm, expected skeleton id at distance_upper_bound = 80)
CASES = [
    ((60, 50, 50), 7),          # one skeleton in the segment
    ((60, 60, 150), 11),        # two skeletons: 11 is 20 nm away, 12 120 nm
    ((60, 170, 150), 12),       # two skeletons: 12 is 10 nm away
    ((60, 110, 150), 11),       # tie (70 nm to both): the lowest skeleton id
    ((60, 195, 210), NO_ID),    # segment without skeleton (a segment-2 node 20 nm away does not count)
    ((60, 20, 350), 20),        # nearest node exactly at distance_upper_bound (80 nm): mapped
    ((60, 19, 350), NO_ID),     # nearest node just beyond it (81 nm): not mapped
    ((60, 21, 350), 20),        # just within (79 nm)
    ((140, 0, 350), NO_ID),     # background (0) under the site, although a node lies right there
    ((60, 50, 500), NO_ID),     # outside the segmentation
]


def _partners():
    n = len(CASES)
    p = empty_partners(n)
    p["id"] = np.arange(100, 100 + n)
    p["score"] = np.linspace(0.1, 1.0, n)
    p["pre_seg_id"] = 5  # stale ids of another segmentation: the mapping looks segments up itself
    for i, (site, _) in enumerate(CASES):
        # post site = the case; pre site = the previous case (so both sides are exercised)
        p[i]["post_z"], p[i]["post_y"], p[i]["post_x"] = site
        p[i]["pre_z"], p[i]["pre_y"], p[i]["pre_x"] = CASES[i - 1][0]
    return p


def _expected():
    post = np.array([e for _, e in CASES], dtype=np.int64)
    return np.roll(post, 1), post


def test_read_swc_converts_to_zyx(tmp_path):
    d = _write_swc(tmp_path / "skels")
    np.testing.assert_array_equal(read_swc(d / "12.swc").positions, [[60, 180, 150], [60, 195, 190]])
    sk = read_skeletons(d)
    assert len(sk) == 8 and sorted(set(sk.skeleton_ids.tolist())) == [7, 11, 12, 20]
    (d / "bad.swc").write_text("1 0 1 2 3 1 -1\n")
    with pytest.raises(MappingError, match="bad.swc"):
        read_skeletons(d)
    (d / "bad.swc").unlink()
    (d / "5.swc").write_text("1 0 1 two 3 1 -1\n")
    with pytest.raises(MappingError, match=r"5.swc:1"):
        read_skeletons(d)


def test_map_partners_cases(tmp_path):
    seg = _segmentation(tmp_path)
    sk = read_skeletons(_write_swc(tmp_path / "skels"))
    p = _partners()
    out = map_partners(p, sk, seg, distance_upper_bound=80)
    pre, post = _expected()
    for i, (site, e) in enumerate(CASES):
        assert out["post_skel_id"][i] == e, (site, int(out["post_skel_id"][i]))
    np.testing.assert_array_equal(out["pre_skel_id"], pre)
    # nothing else changes; the input is not modified
    for f in p.dtype.names:
        if f not in ("pre_skel_id", "post_skel_id"):
            np.testing.assert_array_equal(out[f], p[f])
    assert (p["post_skel_id"] == NO_ID).all()


def test_no_bound_maps_beyond_and_min_nodes(tmp_path):
    seg = _segmentation(tmp_path)
    sk = read_skeletons(_write_swc(tmp_path / "skels"))
    out = map_partners(_partners(), sk, seg, distance_upper_bound=None)
    assert out["post_skel_id"][6] == 20  # 81 nm: mapped without a bound
    assert out["post_skel_id"][4] == NO_ID  # still no skeleton in segment 3
    # skeleton 20 has one node in segment 4 (its other node is in background): ignored at min 2 nodes
    out = map_partners(_partners(), sk, seg, min_skeleton_nodes=2)
    assert (out["post_skel_id"][5:8] == NO_ID).all()
    assert out["post_skel_id"][0] == 7


@pytest.fixture
def store(partner_store):
    return partner_store


def test_map_run_writes_back_idempotently(store, tmp_path):
    seg = _segmentation(tmp_path)
    skels = _write_swc(tmp_path / "skels")
    p = _partners()
    store.write_block(0, p[:5])
    store.write_block(1, p[5:])
    stats = map_run(store, skels, seg, distance_upper_bound=80)
    pre, post = _expected()
    got = store.query()
    np.testing.assert_array_equal(got["id"], p["id"])
    np.testing.assert_array_equal(got["pre_skel_id"], pre)
    np.testing.assert_array_equal(got["post_skel_id"], post)
    for f in ("score", "post_x", "pre_y", "pre_seg_id"):
        np.testing.assert_array_equal(got[f], p[f])
    assert sorted(store.block_ids().tolist()) == [0, 1]
    assert stats["partners"] == len(p) and stats["post_mapped"] == int((post != NO_ID).sum())
    assert stats["changed"] == int(((pre != NO_ID) | (post != NO_ID)).sum())
    # rerun: nothing changes
    assert map_run(store, skels, seg, distance_upper_bound=80)["changed"] == 0
    np.testing.assert_array_equal(store.query(), got)
    # a tighter bound clears ids it set before
    map_run(store, skels, seg, distance_upper_bound=79)
    assert store.query()["post_skel_id"][5] == NO_ID


def test_kimimaro_skeletons_of_ground_truth_labels(tmp_path):
    kimimaro = pytest.importorskip("kimimaro")
    # two neurons: tubes along x at different y; a third segment without skeleton
    labels = np.zeros((8, 40, 60), dtype=np.uint32)
    labels[2:6, 4:12, :] = 1
    labels[2:6, 24:32, :] = 2
    labels[2:6, 14:20, 10:50] = 3
    write_volume(tmp_path / "seg.zarr", "labels", labels, VS)
    seg = open_volume(tmp_path / "seg.zarr", "labels")
    # skeletonize in (x, y, z) order so SWC columns are x, y, z nm
    skels = kimimaro.skeletonize(np.ascontiguousarray(labels.T), anisotropy=VS[::-1], dust_threshold=0,
                                 parallel=1, progress=False, fix_branching=True)
    d = tmp_path / "skels"
    d.mkdir()
    for label, skel in skels.items():
        if label == 3:
            continue
        (d / f"{label + 1000}.swc").write_text(skel.to_swc())
    sk = read_skeletons(d)
    assert set(sk.skeleton_ids.tolist()) == {1001, 1002}
    p = empty_partners(3)
    p["id"] = [1, 2, 3]
    p["pre_z"], p["pre_y"], p["pre_x"] = 160, 8 * 4, 100  # in segment 1
    p["post_z"], p["post_y"], p["post_x"] = 160, 28 * 4, 100  # in segment 2
    p[2]["post_y"], p[2]["post_x"] = 16 * 4, 120  # in segment 3 (no skeleton)
    out = map_partners(p, sk, seg, distance_upper_bound=200)
    assert out["pre_skel_id"].tolist() == [1001, 1001, 1001]
    assert out["post_skel_id"].tolist() == [1002, 1002, NO_ID]
    # the bound against the real nearest-node distance of the segment-2 site: just within / just beyond
    site = np.array([160, 28 * 4, 100], dtype=float)
    d = np.linalg.norm(sk.positions[sk.skeleton_ids == 1002] - site, axis=1).min()
    assert map_partners(p, sk, seg, distance_upper_bound=d)["post_skel_id"][0] == 1002
    assert map_partners(p, sk, seg, distance_upper_bound=d - 0.5)["post_skel_id"][0] == NO_ID


def test_skeletons_shape_check():
    with pytest.raises(MappingError):
        Skeletons([1, 2], np.zeros((3, 3)))


def test_cli_map_skeletons(tmp_path, capsys):
    from synful.cli import main
    from synful.config import fill_template
    from synful.scaffold import create_predict_setups, create_train_setup
    from synful.store import open_run_store

    _segmentation(tmp_path)
    skels = _write_swc(tmp_path / "skels")
    create_train_setup(tmp_path, "exp", 0)
    pdir = create_predict_setups(tmp_path, "exp", 0, [1000])[0]
    ini = pdir / "predict_config.ini"
    ini.write_text(fill_template(ini.read_text(), {"Extraction": {"seg_container": str(tmp_path / "seg.zarr"),
                                                                  "seg_dataset": "labels"}}))
    p = _partners()
    with open_run_store(pdir) as store:
        store.create()
        store.write_block(0, p)
    assert main(["map-skeletons", str(pdir), "--skeletons", str(skels), "--distance-upper-bound", "80"]) == 0
    assert f"{len(p)} partners" in capsys.readouterr().out
    pre, post = _expected()
    with open_run_store(pdir) as store:
        got = store.query()
    np.testing.assert_array_equal(got["pre_skel_id"], pre)
    np.testing.assert_array_equal(got["post_skel_id"], post)
    assert main(["map-skeletons", str(pdir), "--skeletons", str(tmp_path / "nowhere")]) == 2
    assert "skeleton directory not found" in capsys.readouterr().err


def test_mapped_run_evaluates_with_skeleton_ids(tmp_path):
    """FAFB protocol (matching = skeleton): refused before the mapping (no skel ids), all gt found after."""
    from synful.config import Evaluation
    from synful.evaluate import evaluate

    seg = _segmentation(tmp_path)
    sk = read_skeletons(_write_swc(tmp_path / "skels"))
    pred = _partners()
    pre, post = _expected()
    both = (pre != NO_ID) & (post != NO_ID) & (pre != post)
    gt = pred[both].copy()
    gt["pre_skel_id"], gt["post_skel_id"] = pre[both], post[both]
    settings = Evaluation(matching="skeleton", filter_same_id=False, filter_redundant=False, filter_seg_ids=[])
    from synful.evaluate import EvaluationError

    with pytest.raises(EvaluationError, match="lack pre_skel_id or post_skel_id"):
        evaluate(pred, gt, settings, skeleton_ids=[7, 11, 12, 20])
    after = evaluate(map_partners(pred, sk, seg, distance_upper_bound=80), gt, settings, skeleton_ids=[7, 11, 12, 20])
    assert after[0]["tpcount"] > 0 and after[0]["fncount"] == 0


def _random_case(tmp_path, seed=0, n_partners=300):
    """A segmentation of coarse random segments (some background), 6 skeletons and partners all over it."""
    rng = np.random.default_rng(seed)
    shape = (4, 50, 100)  # z [0, 160), y [0, 200), x [0, 400) nm
    coarse = rng.integers(0, 5, size=(2, 5, 8))  # 0: background
    labels = np.kron(coarse, np.ones((2, 10, 13)))[:, :, :100][:shape[0], :shape[1]].astype(np.uint64)
    write_volume(tmp_path / "rseg.zarr", "labels", labels, VS)
    seg = open_volume(tmp_path / "rseg.zarr", "labels")
    ends = np.array([160, 200, 400])
    ids = np.repeat(np.arange(1, 7), 25)
    pos = rng.uniform(0, 1, size=(len(ids), 3)) * ends
    sk = Skeletons(ids * 10, pos)
    p = empty_partners(n_partners)
    p["id"] = rng.permutation(10 ** 6)[:n_partners]
    p["score"] = 1.0
    # some sites beyond the segmentation (misses, taken by the border blocks)
    for side in ("pre", "post"):
        loc = np.round(rng.uniform(-0.1, 1.1, size=(n_partners, 3)) * ends).astype(np.int64)
        for k, a in enumerate("zyx"):
            p[f"{side}_{a}"] = loc[:, k]
    return seg, sk, p


@pytest.mark.parametrize("min_nodes", [1, 3])
def test_blockwise_equals_one_block(store, tmp_path, min_nodes):
    seg, sk, p = _random_case(tmp_path)
    p["pre_skel_id"] = p["post_skel_id"] = 999  # stale ids of an earlier mapping: every one must be rewritten
    store.write_block(0, p)
    whole = map_partners(p, sk, seg, distance_upper_bound=60, min_skeleton_nodes=min_nodes)
    assert (whole["post_skel_id"] != NO_ID).sum() > 20 and (whole["pre_skel_id"] != NO_ID).sum() > 20
    stats = map_run(store, sk, seg, distance_upper_bound=60, min_skeleton_nodes=min_nodes, block_shape=(80, 64, 64))
    assert stats["blocks"] == 2 * 4 * 7
    got = store.query()
    order = np.argsort(whole["id"])
    np.testing.assert_array_equal(got["post_skel_id"], whole["post_skel_id"][order])
    np.testing.assert_array_equal(got["pre_skel_id"], whole["pre_skel_id"][order])
    assert stats["post_mapped"] == int((whole["post_skel_id"] != NO_ID).sum())
    # idempotent: a rerun (blockwise or as one block) changes nothing
    assert map_run(store, sk, seg, distance_upper_bound=60, min_skeleton_nodes=min_nodes,
                   block_shape=(80, 64, 64))["changed"] == 0
    assert map_run(store, sk, seg, distance_upper_bound=60, min_skeleton_nodes=min_nodes)["changed"] == 0
    np.testing.assert_array_equal(store.query(), got)


def test_block_boundary_nearest_node_in_the_neighbour_block(store, tmp_path):
    """A site 2 nm left of a block border x = 48: its skeleton's nearest node is 14 nm away across the border,
    another skeleton's node 20 nm away on its own side.  Without the context the wrong skeleton would win."""
    seg = _segmentation(tmp_path)
    nodes = {7: [(60, 50, 4), (60, 50, 60)], 8: [(60, 50, 26)], 9: [(60, 150, 20)]}
    sk = read_skeletons(_write_swc(tmp_path / "skels", nodes))
    p = empty_partners(2)
    p["id"] = [1, 2]
    p["post_z"], p["post_y"], p["post_x"] = 60, 50, [46, 50]  # 46: block x [0, 48); 50: block x [48, 96)
    p["pre_z"], p["pre_y"], p["pre_x"] = 60, [150, 50], [20, 28]  # pre of 2 next to skeleton 8's node
    store.write_block(0, p)
    want = map_partners(p, sk, seg, distance_upper_bound=30)
    assert want["post_skel_id"].tolist() == [7, 7] and want["pre_skel_id"].tolist() == [9, 8]
    stats = map_run(store, sk, seg, distance_upper_bound=30, block_shape=(160, 200, 48))
    assert stats["blocks"] == 9
    got = store.query()
    assert got["post_skel_id"].tolist() == [7, 7] and got["pre_skel_id"].tolist() == [9, 8]


def test_json_node_list_skeletons_map_like_swc(tmp_path):
    """synful_fafb's gt_skeletons format: one file of several neurons (neuron_id = skeleton id), or <id>.json
    files in a folder (also beside .swc files); the mapping is the same as from the SWC files."""
    import json

    seg = _segmentation(tmp_path)
    nodes, k = [], 0
    for skel_id, pts in NODES.items():
        for i, pt in enumerate(pts):
            k += 1
            nodes.append({"id": k, "position": list(pt), "neuron_id": skel_id, "parent_id": k - 1 if i else None})
    (tmp_path / "gt_skeletons.json").write_text(json.dumps(nodes))
    want = map_partners(_partners(), read_skeletons(_write_swc(tmp_path / "swc")), seg, distance_upper_bound=80)
    one_file = read_skeletons(tmp_path / "gt_skeletons.json")
    np.testing.assert_array_equal(map_partners(_partners(), one_file, seg, distance_upper_bound=80), want)
    mixed = tmp_path / "mixed"
    _write_swc(mixed, {7: NODES[7], 11: NODES[11]})
    for skel_id in (12, 20):
        (mixed / f"{skel_id}.json").write_text(json.dumps([n for n in nodes if n["neuron_id"] == skel_id]))
    np.testing.assert_array_equal(map_partners(_partners(), read_skeletons(mixed), seg, distance_upper_bound=80), want)
    (mixed / "7.json").write_text(json.dumps([n for n in nodes if n["neuron_id"] == 7]))
    with pytest.raises(MappingError, match=r"7\.(swc|json): skeleton 7 is also in 7\.(json|swc)"):
        read_skeletons(mixed)
    del nodes[0]["neuron_id"]
    (tmp_path / "bad.json").write_text(json.dumps(nodes))
    with pytest.raises(MappingError, match=r"bad.json: node 0: needs an integer neuron_id"):
        read_skeletons(tmp_path / "bad.json")


def test_dense_and_kdtree_distances_agree_exactly(monkeypatch):
    """The two ways map_sites finds each candidate's nearest node (dense numpy for small segments, one KD-tree
    per skeleton for large ones) give the same ids, exact ties and sites at exactly the bound included."""
    import synful.mapping as mapping

    rng = np.random.default_rng(7)
    mapped = 0
    for trial in range(60):
        n_nodes, n_sites = rng.integers(1, 200, 2)
        grid = float(rng.choice([1, 10, 40]))  # integer grids: many exact ties and distances equal to the bound
        pos = rng.integers(0, 20, (n_nodes, 3)) * grid + (rng.random((n_nodes, 3)) * 3 if trial % 3 == 0 else 0)
        sites = rng.integers(0, 20, (n_sites, 3)) * grid
        sk = Skeletons(rng.integers(1, rng.integers(2, 40), n_nodes), pos)
        node_segs, site_segs = rng.integers(0, 5, n_nodes), rng.integers(-1, 6, n_sites)
        kw = dict(distance_upper_bound=[None, 50.0, 7 * grid][trial % 3], min_skeleton_nodes=1 + trial % 3)
        got = []
        for pairs in (1 << 30, 0):
            monkeypatch.setattr(mapping, "DENSE_PAIRS", pairs)
            got.append(mapping.map_sites(sites, site_segs, sk, node_segs, **kw))
        np.testing.assert_array_equal(got[0], got[1])
        mapped += int((got[0] != NO_ID).sum())
    assert mapped > 500  # the cases map sites, not only misses


def test_blockwise_in_worker_processes(store, tmp_path):
    """Two daisy worker processes, each with its own store connection and segmentation: the same ids."""
    import functools

    seg, sk, p = _random_case(tmp_path, seed=5)
    p["pre_skel_id"] = p["post_skel_id"] = 999
    store.write_block(0, p)
    whole = map_partners(p, sk, seg, distance_upper_bound=60, min_skeleton_nodes=2)
    if isinstance(store, MongoStore):
        factory = functools.partial(open_store, store._url, database=store.database, collection=store.collection)
    else:
        factory = functools.partial(open_store, f"sqlite:///{store.path}", collection=store.collection)
    with pytest.raises(MappingError, match="needs store_factory"):
        map_run(store, sk, seg, distance_upper_bound=60, block_shape=(80, 64, 64), num_workers=2)
    stats = map_run(store, sk, seg, distance_upper_bound=60, min_skeleton_nodes=2, block_shape=(80, 64, 64),
                    num_workers=2, store_factory=factory, segmentation_spec=(tmp_path / "rseg.zarr", "labels"))
    assert stats["blocks"] == 2 * 4 * 7 and stats["changed"] is None
    got = store.query()
    order = np.argsort(whole["id"])
    np.testing.assert_array_equal(got["post_skel_id"], whole["post_skel_id"][order])
    np.testing.assert_array_equal(got["pre_skel_id"], whole["pre_skel_id"][order])
