"""Synthetic volumes: invariants of the generator, the container it writes, the CLI."""

import json

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from scipy import ndimage as ndi

from synful.cli import main
from synful.errors import SynfulError
from synful.io.cremi import read_annotations, read_transmitters
from synful.io.partners import NO_ID, PARTNER_DTYPE
from synful.io.volumes import lookup_ids, open_volume
from synful.synthetic import (STYLES, TRANSMITTERS, generate, read_synthetic_params, show,
                              write_synthetic)

SHAPE = (30, 320, 320)
OFFSET = (400, 80, 120)


@pytest.fixture(scope="module")
def vol():
    return generate(SHAPE, seed=7, offset=OFFSET, synapse_density=6.0)


def _loc(p, prefix):
    return np.stack([p[f"{prefix}_z"], p[f"{prefix}_y"], p[f"{prefix}_x"]], 1)


def _index(vol, loc):
    return tuple(((loc - np.asarray(vol.offset)) // np.asarray(vol.voxel_size)).T)


def test_arrays_and_neurons(vol):
    assert vol.raw.shape == SHAPE and vol.raw.dtype == np.uint8
    assert vol.labels.shape == SHAPE and vol.labels.dtype == np.uint64
    assert vol.voxel_size == Coordinate(40, 4, 4)
    assert vol.roi == Roi(OFFSET, (30 * 40, 320 * 4, 320 * 4))
    ids = np.unique(vol.labels)
    assert ids[0] > 0, "space-filling: no background"
    assert len(ids) >= 8
    # irregular neurites, not boxes: most fill well under their bounding box
    fills = []
    for sl, i in zip(ndi.find_objects(vol.labels.astype(np.int64)), range(1, int(ids.max()) + 1)):
        if sl is None:
            continue
        box = vol.labels[sl]
        fills.append((box == i).mean())
    assert np.median(fills) < 0.8
    # neurite diameters: median in-plane area of a section profile ~ 200 nm .. 1000 nm across
    z = SHAPE[0] // 2
    areas = []
    for i in np.unique(vol.labels[z]):
        cc, k = ndi.label(vol.labels[z] == i)
        areas += list(np.bincount(cc.ravel())[1:] * 16.0)  # nm^2
    diam = 2 * np.sqrt(np.median(areas) / np.pi)
    assert 150 < diam < 1200, diam


def test_membranes_darker_than_cytoplasm(vol):
    lab = vol.labels
    boundary = np.zeros(lab.shape, bool)
    boundary[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    boundary[:, :, 1:] |= lab[:, :, 1:] != lab[:, :, :-1]
    interior = ~ndi.binary_dilation(boundary, iterations=6)
    assert vol.raw[boundary].mean() < vol.raw[interior].mean() - 20


def test_partner_invariants(vol):
    p = vol.partners
    assert p.dtype == PARTNER_DTYPE
    assert len(vol.tbars) >= 3 and len(p) >= len(vol.tbars)
    assert len(np.unique(p["id"])) == len(p)
    # sites inside the right neurons, in different neurons
    assert np.array_equal(vol.labels[_index(vol, _loc(p, "pre"))].astype(np.int64), p["pre_seg_id"])
    assert np.array_equal(vol.labels[_index(vol, _loc(p, "post"))].astype(np.int64), p["post_seg_id"])
    assert np.all(p["pre_seg_id"] != p["post_seg_id"])
    assert np.all(p["pre_skel_id"] == NO_ID)
    # 100 to 400 nm apart
    d = np.linalg.norm(_loc(p, "pre") - _loc(p, "post"), axis=1)
    assert d.min() >= 100 and d.max() <= 400
    # inside the volume
    roi = vol.roi
    for prefix in ("pre", "post"):
        loc = _loc(p, prefix)
        assert np.all(loc >= np.asarray(roi.begin)) and np.all(loc < np.asarray(roi.end))
    # polyadic: 1 to 5 partners per T-bar, each in a different neuron
    pre_keys = [tuple(x) for x in _loc(p, "pre")]
    for t in vol.tbars:
        rows = [i for i, k in enumerate(pre_keys) if k == (t["z"], t["y"], t["x"])]
        assert 1 <= len(rows) <= 5 and len(rows) == t["num_partners"]
        assert len(set(p["post_seg_id"][rows])) == len(rows)
        assert set(vol.transmitters[rows]) == {t["transmitter"]}
        assert t["transmitter"] in TRANSMITTERS
    assert sum(vol.tbars["num_partners"]) == len(p)


def test_synapses_visible(vol):
    """T-bars and PSDs are darker than the cytoplasm around them."""
    cyto = np.median(vol.raw)
    pre_idx = _index(vol, np.stack([vol.tbars["z"], vol.tbars["y"], vol.tbars["x"]], 1))
    smooth = ndi.uniform_filter(vol.raw.astype(np.float32), (1, 5, 5))
    assert np.mean(smooth[pre_idx]) < cyto - 25


def test_deterministic_for_a_seed():
    a = generate((12, 160, 160), seed=3, synapse_density=8)
    b = generate((12, 160, 160), seed=3, synapse_density=8)
    c = generate((12, 160, 160), seed=4, synapse_density=8)
    assert np.array_equal(a.raw, b.raw) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.partners, b.partners) and list(a.transmitters) == list(b.transmitters)
    assert not np.array_equal(a.raw, c.raw)


def test_transmitter_styles_differ():
    assert set(STYLES) == set(TRANSMITTERS)
    looks = {(s.vesicle_radius_nm, s.vesicles, s.dense_core) for s in STYLES.values()}
    assert len(looks) == len(TRANSMITTERS)
    only_gaba = generate((12, 160, 160), seed=1, synapse_density=8,
                         transmitter_probs=[1, 0, 0, 0, 0, 0])
    assert set(only_gaba.transmitters) == {"gaba"}


def test_bad_parameters():
    with pytest.raises(SynfulError, match="too small"):
        generate((4, 8, 8))
    with pytest.raises(SynfulError, match="transmitter_probs"):
        generate((4, 64, 64), transmitter_probs=[1, 2])
    with pytest.raises(SynfulError, match="voxel size"):
        generate((4, 64, 64), voxel_size=(40, 0, 4))


def test_write_synthetic_layout_and_reuse(tmp_path):
    path = tmp_path / "syn.zarr"
    out = write_synthetic(path, (16, 192, 192), seed=2, offset=(80, 40, 40), synapse_density=8)
    assert out == path
    vol = generate((16, 192, 192), seed=2, offset=(80, 40, 40), synapse_density=8)
    raw = open_volume(path, "volumes/raw")
    labels = open_volume(path, "volumes/labels/neuron_ids")
    assert raw.voxel_size == labels.voxel_size == Coordinate(40, 4, 4)
    assert raw.roi == labels.roi == vol.roi
    assert np.array_equal(raw[raw.roi], vol.raw) and np.array_equal(labels[labels.roi], vol.labels)
    attrs = json.loads((path / "volumes/raw/.zattrs").read_text())
    assert attrs["voxel_size"] == [40, 4, 4] and attrs["offset"] == [80, 40, 40]
    ann_attrs = json.loads((path / "annotations/.zattrs").read_text())
    assert ann_attrs["offset"] == [80, 40, 40]
    back = read_annotations(path)
    assert np.array_equal(back, vol.partners)
    assert list(read_transmitters(path)) == list(vol.transmitters)
    # CREMI structure: one presynaptic site per T-bar, one postsynaptic site per partner
    import zarr

    root = zarr.open_group(str(path), mode="r")
    types = [t.decode() for t in root["annotations/types"][:]]
    assert types.count("presynaptic_site") == len(vol.tbars)
    assert types.count("postsynaptic_site") == len(vol.partners)
    assert root["annotations/presynaptic_site/partners"].shape == (len(vol.partners), 2)
    # reused, not rewritten
    stamp = (path / ".zattrs").stat().st_mtime_ns
    assert write_synthetic(path, (16, 192, 192), seed=2, offset=(80, 40, 40), synapse_density=8) == path
    assert (path / ".zattrs").stat().st_mtime_ns == stamp
    assert read_synthetic_params(path)["seed"] == 2
    # other parameters: error unless overwrite
    with pytest.raises(SynfulError, match="other parameters"):
        write_synthetic(path, (16, 192, 192), seed=5)
    write_synthetic(path, (16, 192, 192), seed=5, overwrite=True)
    assert read_synthetic_params(path)["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn.zarr"], "no temporary folders left"


def test_write_synthetic_refuses_foreign_folder(tmp_path):
    (tmp_path / "data.zarr").mkdir()
    with pytest.raises(SynfulError, match="not a synthetic container"):
        write_synthetic(tmp_path / "data.zarr", (8, 64, 64))


def test_lookup_matches_partners(tmp_path):
    path = write_synthetic(tmp_path / "s.zarr", (12, 160, 160), seed=1, synapse_density=8)
    p = read_annotations(path, labels_dataset=None)
    assert np.all(p["pre_seg_id"] == NO_ID)
    labels = open_volume(path, "volumes/labels/neuron_ids")
    ids = lookup_ids(labels, _loc(p, "post"))
    assert np.array_equal(ids, read_annotations(path)["post_seg_id"])


def test_cli_synthetic_and_show(tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    png = tmp_path / "cli.png"
    assert main(["synthetic", "--out", str(out), "--shape", "10", "128", "128", "--seed", "1",
                 "--voxel-size", "40", "4", "4", "--show", str(png)]) == 0
    assert "partners" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png2 = tmp_path / "again.png"
    assert main(["show", str(out), "--out", str(png2), "--slices", "2"]) == 0
    assert png2.stat().st_size > 1000
    assert main(["show", str(tmp_path / "missing.zarr")]) == 2
    assert "missing.zarr" in capsys.readouterr().err


def test_show_default_path(tmp_path):
    path = write_synthetic(tmp_path / "v.zarr", (8, 96, 96), seed=0)
    assert show(path) == tmp_path / "v.png"
    assert (tmp_path / "v.png").is_file()
