"""[Extraction] compat = synful: the sites of Synful's original detection, on hand-built arrays.

Every expected site is worked out here, by hand or by a brute-force formulation of Synful's rule, and every
case also checks that the default (compat = none) gives the other answer, so each test fails without the option.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi

from synful.config import Extraction, fill_template
from synful.extract import ExtractionError, extract, find_partners
from synful.io.volumes import prepare_volume
from synful.scaffold import create_predict_setups, create_train_setup
from synful.store import open_run_store

VS = (40, 4, 4)


def cfg(**kw) -> Extraction:
    return dataclasses.replace(Extraction(), **kw)


def sites(partners):
    """{post (z, y, x): pre (z, y, x)} in nm."""
    return {tuple(int(p[f"post_{a}"]) for a in "zyx"): tuple(int(p[f"pre_{a}"]) for a in "zyx") for p in partners}


def half_even(x: float) -> int:
    """Round half to even, written out (not numpy's round)."""
    lo = int(np.floor(x))
    frac = x - lo
    if frac > 0.5 or (frac == 0.5 and lo % 2 == 1):
        return lo + 1
    return lo


def test_diagonal_blobs_split_by_6_connectivity_merged_by_26():
    ind = np.zeros((3, 8, 8), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    ind[1, 2, 2], ind[1, 3, 3] = 0.9, 0.7  # touch only along an edge (diagonal in y-x)
    ind[0, 6, 5], ind[1, 5, 6] = 0.8, 0.6  # touch only at a corner (differ in z, y and x)
    vec[1] = 40.0  # every pre site 40 nm further in y (10 voxels: on the grid either way)
    offset = np.array((400, 40, 80))
    syn = find_partners(ind, vec, VS, offset, cfg(compat="synful", score_type="sum"))
    ours = find_partners(ind, vec, VS, offset, cfg())
    # 6-connected: four single-voxel components, each its own site, score its own value
    expected = {}
    for (z, y, x), p in [((1, 2, 2), 0.9), ((1, 3, 3), 0.7), ((0, 6, 5), 0.8), ((1, 5, 6), 0.6)]:
        post = tuple(int(o + i * v) for o, i, v in zip(offset, (z, y, x), VS))
        expected[post] = (post[0], post[1] + 40, post[2])
    assert sites(syn) == expected
    assert sorted(np.round(syn["score"], 6)) == sorted([0.6, 0.7, 0.8, 0.9])
    # 26-connected (ours): two components, each at its first voxel in C order (equal EDT values)
    assert len(ours) == 2
    assert set(sites(ours)) == {(440, 48, 88), (400, 64, 100)}


def _brute_force_box_edt_site(labels: np.ndarray, label: int, vs) -> tuple:
    """Synful's rule, written differently: within the region's bounding box, each region voxel's distance
    (nm) to the nearest face shared by two neighbouring voxels of different labels (the box's outer faces
    do not count); the farthest voxel, first in C order on ties."""
    idx = np.argwhere(labels == label)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
    faces = []
    for v in itertools.product(*(range(s) for s in box.shape)):
        for d in range(3):
            w = list(v)
            w[d] += 1
            if w[d] < box.shape[d] and box[v] != box[tuple(w)]:
                faces.append([c + (0.5 if a == d else 0.0) for a, c in enumerate(v)])
    faces = np.array(faces) * np.array(vs, float)
    best, site = -1.0, None
    for v in itertools.product(*(range(s) for s in box.shape)):  # C order
        if box[v] != label:
            continue
        d = np.sqrt(((faces - np.array(v) * np.array(vs, float)) ** 2).sum(axis=1)).min()
        if np.float32(d) > best:
            best, site = np.float32(d), v
    return tuple(int(a + b) for a, b in zip(site, lo))


def test_l_shape_bounding_box_edt_differs_from_padded_edt():
    ind = np.zeros((1, 7, 7), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    ind[0, 1:6, 1] = 0.8  # the L: a column ...
    ind[0, 5, 1:6] = 0.8  # ... and a row, corner at (0, 5, 1)
    syn = find_partners(ind, vec, VS, (0, 0, 0), cfg(compat="synful"))
    ours = find_partners(ind, vec, VS, (0, 0, 0), cfg())
    # by hand: every arm voxel is half a voxel (2 nm) from the L's inner face; the corner is
    # sqrt(4^2 + 2^2) nm from the nearest one, so the bounding-box EDT peaks at the corner
    assert sites(syn) == {(0, 20, 4): (0, 20, 4)}
    labels = (ind > 0.5).astype(int)
    assert _brute_force_box_edt_site(labels, 1, VS) == (0, 5, 1)
    # padded EDT (ours): every voxel is 4 nm from the outside; (0, 4, 1) and (0, 5, 2) are the nearest
    # to the centroid, and the first of them in C order wins
    assert sites(ours) == {(0, 16, 4): (0, 16, 4)}


def test_bounding_box_edt_matches_brute_force_on_a_mixed_box():
    # a U around a second component, so the box holds another label and background
    ind = np.zeros((2, 9, 9), np.float32)
    ind[:, 1:8, 1] = ind[:, 7, 1:8] = ind[:, 1:8, 7] = 0.9
    ind[0:2, 3:5, 3:6] = 0.7
    vec = np.zeros((3,) + ind.shape, np.float32)
    syn = find_partners(ind, vec, (40, 4, 4), (0, 0, 0), cfg(compat="synful"))
    from scipy import ndimage

    labels, n = ndimage.label(ind > 0.5)
    assert n == 2
    u_site = _brute_force_box_edt_site(labels, 1, (40, 4, 4))
    # the inner box fills its bounding box: no boundary at all, and scipy's EDT of an all-foreground
    # array grows from the box's first corner, so Synful places it at its last voxel, (1, 4, 5)
    expected = {tuple(int(i * v) for i, v in zip(site, (40, 4, 4))) for site in (u_site, (1, 4, 5))}
    assert set(sites(syn)) == expected
    ours = find_partners(ind, vec, (40, 4, 4), (0, 0, 0), cfg())
    assert set(sites(ours)) != expected


def test_pre_sites_snap_to_the_voxel_grid_half_to_even():
    ind = np.zeros((3, 12, 12), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    cases = {  # single-voxel components: voxel -> vector (nm)
        (1, 2, 2): (0.0, 0.0, 6.0),    # x: (8 + 6) / 4 = 3.5 -> 4 (even): 16 nm; whole nm: 14
        (1, 2, 8): (0.0, 0.0, 2.0),    # x: (32 + 2) / 4 = 8.5 -> 8 (even): 32 nm; whole nm: 34
        (1, 8, 2): (20.0, -2.0, 0.0),  # z: (40 + 20) / 40 = 1.5 -> 2: 80; y: (32 - 2) / 4 = 7.5 -> 8: 32
        (1, 8, 8): (0.0, 5.0, 1.3),    # y: 37 / 4 = 9.25 -> 9: 36; x: 33.3 / 4 = 8.325 -> 8: 32
    }
    for v, d in cases.items():
        ind[v] = 0.9
        vec[(slice(None),) + v] = d
    offset = np.array((80, -40, 8))
    syn = sites(find_partners(ind, vec, VS, offset, cfg(compat="synful")))
    ours = sites(find_partners(ind, vec, VS, offset, cfg()))
    for v, d in cases.items():
        local = [i * s for i, s in zip(v, VS)]
        post = tuple(int(o + p) for o, p in zip(offset, local))
        snapped = tuple(int(o + half_even((p + dd) / s) * s) for o, p, dd, s in zip(offset, local, d, VS))
        whole_nm = tuple(int(np.floor(p + dd + 0.5)) for p, dd in zip(post, d))
        assert syn[post] == snapped
        assert ours[post] == whole_nm
    post = tuple(int(o + i * s) for o, i, s in zip(offset, (1, 2, 2), VS))
    assert syn[post] == (120, -32, 24) and ours[post] == (120, -32, 22)
    post = tuple(int(o + i * s) for o, i, s in zip(offset, (1, 2, 8), VS))
    assert syn[post] == (120, -32, 40) and ours[post] == (120, -32, 42)


def test_nms_plateau_at_its_centre_of_mass():
    ind = np.zeros((3, 9, 9), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    ind[1, 2:5, 2:6] = 0.6  # all within the NMS radius of the plateau
    ind[1, 3, 3] = ind[1, 3, 4] = 0.9  # a two-voxel plateau along x
    vec[:, 1, 3, 3] = (0.0, 8.0, 0.0)  # read at uint32(post / voxel size) = (1, 3, 3)
    vec[:, 1, 3, 4] = (0.0, -8.0, 0.0)
    kw = dict(method="nms", nms_radius=(40, 8, 8), score_type="max")
    syn = find_partners(ind, vec, VS, (0, 0, 0), cfg(compat="synful", **kw))
    ours = find_partners(ind, vec, VS, (0, 0, 0), cfg(**kw))
    # centre of mass (1, 3, 3.5) voxels -> (40, 12, 14) nm; pre = round((40, 20, 14) / VS) * VS = (40, 20, 16)
    assert sites(syn) == {(40, 12, 14): (40, 20, 16)}
    assert np.allclose(syn["score"], 0.9)
    # two 6-connected plateaus of 0.6 around the peak share its centre of mass: one partner per post site
    ring = np.zeros((3, 9, 9), np.float32)
    ring[0:3, 1:6, 1:7] = 0.6
    ring[1, 3, 3] = ring[1, 3, 4] = 0.9
    st = {}
    got = find_partners(ring, np.zeros((3,) + ring.shape, np.float32), VS, (0, 0, 0), cfg(compat="synful", **kw),
                        stats=st)
    assert st["candidates"] == 2 and sites(got) == {(40, 12, 14): (40, 12, 16)}
    # ours: the plateau's first voxel
    assert sites(ours) == {(40, 12, 12): (40, 20, 12)}


def test_score_threshold_is_strict_and_unsupported_settings_are_refused():
    ind = np.zeros((1, 4, 4), np.float32)
    ind[0, 1, 1] = 0.75
    vec = np.zeros((3,) + ind.shape, np.float32)
    assert len(find_partners(ind, vec, VS, (0, 0, 0), cfg(compat="synful", score_thr=0.75))) == 0
    assert len(find_partners(ind, vec, VS, (0, 0, 0), cfg(score_thr=0.75))) == 1
    with pytest.raises(ExtractionError, match="vector_type"):
        find_partners(ind, vec, VS, (0, 0, 0), cfg(compat="synful", vector_type="mean"))
    with pytest.raises(ExtractionError, match="split_by_segment"):
        find_partners(ind, vec, VS, (0, 0, 0), cfg(compat="synful"), segments=np.ones(ind.shape, np.uint64))


# --------------------------------------------------------------------------------------
# blockwise
# --------------------------------------------------------------------------------------

def make_run(base: Path, ind_u8, vec, **extraction) -> Path:
    if not (base / "exp" / "02_train" / "setup_t0").exists():
        create_train_setup(base, "exp", 0)
    pdir = create_predict_setups(base, "exp", 0, [1000])[0]
    text = (pdir / "predict_config.ini").read_text()
    (pdir / "predict_config.ini").write_text(fill_template(text, {"Extraction": extraction}))
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(ind_u8.shape, VS)))
    a = prepare_volume(pdir / "predictions.zarr", "volumes/pred_syn_indicator", roi, VS, np.uint8,
                       chunk_shape=(8, 32, 32))
    a[roi] = ind_u8
    a._source_data.attrs["scale"] = 1 / 255
    v = prepare_volume(pdir / "predictions.zarr", "volumes/pred_partner_vectors", roi, VS, np.float32,
                       num_channels=3, chunk_shape=(8, 32, 32))
    v[roi] = vec
    v._source_data.attrs["scale"] = 1.0
    return pdir


def test_blockwise_extract_honours_compat(tmp_path):
    ind = np.zeros((8, 64, 64), np.float32)
    vec = np.zeros((3,) + ind.shape, np.float32)
    ind[3:5, 10:14, 10:14] = 0.8  # two boxes touching only along an edge: one 26-, two 6-components
    ind[3:5, 14:18, 14:18] = 0.9
    ind[2:6, 40:50, 20:24] = 0.7  # an L in a second block
    ind[2:6, 46:50, 24:34] = 0.7
    vec[2] = 6.0  # (x + 6) / 4: every pre site half a voxel off the grid
    ind_u8 = (ind * 255).round().astype(np.uint8)
    prob = ind_u8.astype(np.float32) * np.float32(1 / 255)
    ref = find_partners(prob, vec, VS, (0, 0, 0), cfg(compat="synful"))
    assert len(ref) == 3 and len(find_partners(prob, vec, VS, (0, 0, 0), cfg())) == 2
    pdir = make_run(tmp_path, ind_u8, vec, compat="synful", block_shape=(320, 128, 128), context=(80, 64, 64))
    s = extract(pdir, multiprocessing=False)
    assert s["blocks_total"] == 4 and s["partners"] == 3
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), ref)
