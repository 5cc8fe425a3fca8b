"""Volume I/O (zarr v2 / v3, N5, HDF5), CREMI files, partner files and dataset manifests."""

import json

import h5py
import numpy as np
import pytest
import yaml
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds

from synful.errors import SynfulError
from synful.io.cremi import read_annotations, read_cremi, read_transmitters, write_annotations, write_cremi
from synful.io.manifest import (ManifestError, add_manifest_sample, open_sample, read_manifest, read_sample_partners,
                                write_manifest)
from synful.io.partners import (NO_ID, PARTNER_DTYPE, empty_partners, read_partners, read_partners_csv,
                                read_partners_json, write_partners, write_partners_csv, write_partners_json)
from synful.io.volumes import (DatasetNotFoundError, RoiOutsideError, VolumeError, VoxelSizeMismatchError,
                               lookup_ids, open_volume, prepare_volume, volume_format, write_volume)

BIG = 2 ** 62 + 12345  # > 2**53: not representable as float64
DATA = np.arange(6 * 20 * 24, dtype=np.uint16).reshape(6, 20, 24)


# ---------------------------------------------------------------- volumes

@pytest.mark.parametrize("fmt,name", [("zarr", "v.zarr"), ("zarr3", "v3.zarr"), ("n5", "v.n5"), ("hdf5", "v.h5")])
def test_volume_formats_round_trip(tmp_path, fmt, name):
    path = tmp_path / name
    write_volume(path, "volumes/raw", DATA, (40, 4, 4), (80, 8, 12), chunk_shape=(2, 8, 8), fmt=fmt)
    assert volume_format(path) == fmt
    a = open_volume(path, "volumes/raw")
    assert a.voxel_size == Coordinate(40, 4, 4)
    assert a.roi == Roi((80, 8, 12), (240, 80, 96))
    assert a.dtype == np.uint16
    assert np.array_equal(a[a.roi], DATA)
    sub = Roi((120, 16, 20), (80, 12, 8))
    assert np.array_equal(a[sub], DATA[1:3, 2:5, 2:4])
    with pytest.raises(DatasetNotFoundError) as e:
        open_volume(path, "volumes/missing")
    assert str(path) in str(e.value) and "volumes/missing" in str(e.value)


def test_n5_attributes_are_xyz(tmp_path):
    write_volume(tmp_path / "a.n5", "raw", DATA, (40, 4, 2), (400, 8, 6), fmt="n5")
    attrs = json.loads((tmp_path / "a.n5/raw/attributes.json").read_text())
    assert attrs["resolution"] == [2, 4, 40] and attrs["offset"] == [6, 8, 400]
    assert attrs["dimensions"] == [24, 20, 6]
    a = open_volume(tmp_path / "a.n5", "raw")
    assert a.voxel_size == Coordinate(40, 4, 2) and a.offset == Coordinate(400, 8, 6)
    # the same file read through zarr-python 2's N5 store agrees on the axis order
    import zarr
    from zarr.n5 import N5Store

    assert np.array_equal(zarr.open(N5Store(str(tmp_path / "a.n5")), mode="r")["raw"][:], DATA)


def test_zarr3_and_n5_writable_in_place(tmp_path):
    for fmt, name in (("zarr3", "w.zarr"), ("n5", "w.n5")):
        write_volume(tmp_path / name, "x", DATA, (40, 4, 4), fmt=fmt)
        a = open_volume(tmp_path / name, "x", mode="r+")
        a[Roi((40, 0, 0), (40, 8, 8))] = np.full((1, 2, 2), 7, np.uint16)
        b = open_volume(tmp_path / name, "x")
        assert np.all(b[Roi((40, 0, 0), (40, 8, 8))] == 7)
        assert b[Roi((0, 0, 0), (40, 4, 4))][0, 0, 0] == 0


def test_resolution_attribute_and_overrides(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="w")
    ds = root.create_dataset("volumes/raw", data=DATA)
    ds.attrs["resolution"] = [40, 4, 4]
    ds.attrs["offset"] = [40, 0, 0]
    a = open_volume(tmp_path / "old.zarr", "volumes/raw")
    assert a.voxel_size == Coordinate(40, 4, 4) and a.offset == Coordinate(40, 0, 0)
    b = open_volume(tmp_path / "old.zarr", "volumes/raw", voxel_size=(8, 8, 8), offset=(0, 0, 0))
    assert b.voxel_size == Coordinate(8, 8, 8) and b.offset == Coordinate(0, 0, 0)


def test_missing_container_and_group_not_array(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="container not found"):
        open_volume(tmp_path / "nothing.zarr", "volumes/raw")
    write_volume(tmp_path / "g.zarr", "volumes/raw", DATA, (40, 4, 4))
    with pytest.raises(DatasetNotFoundError, match="'volumes'"):
        open_volume(tmp_path / "g.zarr", "volumes")
    with pytest.raises(VolumeError, match="mode"):
        open_volume(tmp_path / "g.zarr", "volumes/raw", mode="w")


def test_prepare_volume_channels_first(tmp_path):
    roi = Roi((40, 8, 0), (400, 400, 400))
    a = prepare_volume(tmp_path / "out.zarr", "pred/vectors", roi, (40, 4, 4), np.float32, num_channels=3,
                       chunk_shape=(5, 50, 50))
    assert a.shape == (3, 10, 100, 100) and a.roi == roi and a._source_data.chunks == (3, 5, 50, 50)
    block = Roi((40, 8, 0), (200, 200, 200))
    a[block] = np.ones((3, 5, 50, 50), np.float32)
    # funlib reads the metadata back; synful too
    b = open_ds(str(tmp_path / "out.zarr/pred/vectors"))
    assert b.voxel_size == Coordinate(40, 4, 4) and b.roi == roi and b.channel_dims == 1
    c = open_volume(tmp_path / "out.zarr", "pred/vectors")
    assert c.roi == roi and c.channel_dims == 1 and float(c[block].sum()) == 3 * 5 * 50 * 50
    # reopening compatibly keeps the data; incompatibly fails
    again = prepare_volume(tmp_path / "out.zarr", "pred/vectors", roi, (40, 4, 4), np.float32, num_channels=3,
                           chunk_shape=(5, 50, 50))
    assert float(again[block].sum()) == 3 * 5 * 50 * 50
    with pytest.raises(VolumeError, match="pred/vectors"):
        prepare_volume(tmp_path / "out.zarr", "pred/vectors", roi, (40, 4, 4), np.uint8, num_channels=3,
                       chunk_shape=(5, 50, 50))
    with pytest.raises(RoiOutsideError, match="not aligned"):
        prepare_volume(tmp_path / "out.zarr", "pred/x", Roi((0, 0, 0), (41, 4, 4)), (40, 4, 4), np.uint8)
    s = prepare_volume(tmp_path / "out.zarr", "pred/indicator", roi, (40, 4, 4), np.float32)
    assert s.shape == (10, 100, 100) and s.channel_dims == 0


def test_lookup_ids(tmp_path):
    labels = (np.arange(4 * 8 * 8, dtype=np.uint64) + BIG).reshape(4, 8, 8)
    write_volume(tmp_path / "l.zarr", "ids", labels, (40, 4, 4), (40, 0, 0))
    a = open_volume(tmp_path / "l.zarr", "ids")
    got = lookup_ids(a, [[40, 0, 0], [40 + 3 * 40 + 39, 31, 30], [0, 0, 0], [40, 32, 0]])
    assert got.tolist() == [BIG, BIG + 3 * 64 + 7 * 8 + 7, NO_ID, NO_ID]
    assert lookup_ids(a, np.zeros((0, 3))).shape == (0,)


# ---------------------------------------------------------------- CREMI

def _write_cremi_by_hand(path, with_offset=True):
    """A CREMI-style HDF5 file written with h5py only, as the published files are."""
    raw = (np.arange(10 * 50 * 50) % 251).astype(np.uint8).reshape(10, 50, 50)
    ids = np.zeros((10, 50, 50), np.uint64)
    ids[:, :, :25] = 11
    ids[:, :, 25:] = BIG
    with h5py.File(path, "w") as f:
        r = f.create_dataset("volumes/raw", data=raw)
        r.attrs["resolution"] = np.array([40.0, 4.0, 4.0])
        n = f.create_dataset("volumes/labels/neuron_ids", data=ids)
        n.attrs["resolution"] = np.array([40.0, 4.0, 4.0])
        ann = f.create_group("annotations")
        if with_offset:
            ann.attrs["offset"] = np.array([40.0, 20.0, 20.0])
        ann.create_dataset("ids", data=np.array([7, 8, 9, 2 ** 63 + 5], np.uint64))
        # pre in neuron 11 (x < 100 nm), two posts in neuron BIG (x >= 100 nm); locations relative to offset
        ann.create_dataset("locations", data=np.array([[80.0, 60.0, 40.0], [80.0, 60.0, 140.0],
                                                       [120.0, 100.0, 150.5], [0.0, 0.0, 0.0]]))
        ann.create_dataset("types", data=np.array(["presynaptic_site", "postsynaptic_site", "postsynaptic_site",
                                                   "presynaptic_site"], dtype=object),
                           dtype=h5py.string_dtype())
        ann.create_dataset("presynaptic_site/partners", data=np.array([[7, 8], [7, 9]], np.uint64))
    return raw, ids


def test_read_cremi_hdf5_written_with_h5py(tmp_path):
    path = tmp_path / "sample_A.hdf"
    raw, ids = _write_cremi_by_hand(path)
    data = read_cremi(path)
    assert data.raw.voxel_size == Coordinate(40, 4, 4) and data.raw.roi == Roi((0, 0, 0), (400, 200, 200))
    assert np.array_equal(data.raw[data.raw.roi], raw)
    assert np.array_equal(data.labels[data.labels.roi], ids)
    p = data.partners
    assert p.dtype == PARTNER_DTYPE and len(p) == 2
    # the annotations' offset is added; locations rounded to int nm
    assert [p[0]["pre_z"], p[0]["pre_y"], p[0]["pre_x"]] == [120, 80, 60]
    assert [p[0]["post_z"], p[0]["post_y"], p[0]["post_x"]] == [120, 80, 160]
    assert [p[1]["post_z"], p[1]["post_y"], p[1]["post_x"]] == [160, 120, 170]
    assert p["pre_seg_id"].tolist() == [11, 11] and p["post_seg_id"].tolist() == [BIG, BIG]
    assert p["id"].tolist() == [0, 1]
    assert list(data.transmitters) == ["", ""]
    # without labels: NO_ID
    assert read_annotations(path, labels_dataset=None)["pre_seg_id"].tolist() == [NO_ID, NO_ID]


def test_read_cremi_without_offset_or_annotations(tmp_path):
    _write_cremi_by_hand(tmp_path / "a.h5", with_offset=False)
    assert read_annotations(tmp_path / "a.h5")[0]["pre_x"] == 40
    with h5py.File(tmp_path / "test.h5", "w") as f:
        f.create_dataset("volumes/raw", data=np.zeros((2, 8, 8), np.uint8)).attrs["resolution"] = [40, 4, 4]
    data = read_cremi(tmp_path / "test.h5")
    assert data.labels is None and len(data.partners) == 0
    with pytest.raises(DatasetNotFoundError, match="annotations"):
        read_annotations(tmp_path / "test.h5")


def test_bad_partner_ids(tmp_path):
    path = tmp_path / "bad.h5"
    _write_cremi_by_hand(path)
    with h5py.File(path, "a") as f:
        del f["annotations/presynaptic_site/partners"]
        f.create_dataset("annotations/presynaptic_site/partners", data=np.array([[7, 99]], np.uint64))
    with pytest.raises(VolumeError, match="99"):
        read_annotations(path)


@pytest.mark.parametrize("name", ["c.h5", "c.zarr"])
def test_annotations_round_trip(tmp_path, name):
    path = tmp_path / name
    write_volume(path, "volumes/labels/neuron_ids", np.full((4, 16, 16), BIG, np.uint64), (40, 4, 4),
                 fmt="hdf5" if name.endswith(".h5") else "zarr")
    p = empty_partners(3)
    p["id"] = [0, 1, 2]
    p["pre_z"], p["pre_y"], p["pre_x"] = [40, 40, 80], [8, 8, 20], [8, 8, 30]
    p["post_z"], p["post_y"], p["post_x"] = [80, 120, 80], [40, 44, 50], [48, 8, 60]
    p["score"] = 1.0
    write_annotations(path, p, transmitters=["gaba", "gaba", "dopamine"], offset=(40, 0, 4))
    back = read_annotations(path)
    for f in ("pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x", "id"):
        assert back[f].tolist() == p[f].tolist()
    assert back["pre_seg_id"].tolist() == [BIG] * 3
    assert list(read_transmitters(path)) == ["gaba", "gaba", "dopamine"]
    data = read_cremi(path, raw_dataset="volumes/labels/neuron_ids")
    assert len(data.partners) == 3


@pytest.mark.parametrize("name", ["e.h5", "e.zarr"])
def test_empty_annotations(tmp_path, name):
    write_annotations(tmp_path / name, empty_partners(0), transmitters=[])
    assert len(read_annotations(tmp_path / name)) == 0 and len(read_transmitters(tmp_path / name)) == 0


def test_write_cremi_atomic_round_trip(tmp_path):
    raw = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    labels = np.ones((4, 32, 32), np.uint64)
    labels[:, :, 16:] = 2
    p = empty_partners(1)
    p[0]["pre_z"], p[0]["pre_y"], p[0]["pre_x"] = 440, 60, 60
    p[0]["post_z"], p[0]["post_y"], p[0]["post_x"] = 440, 60, 100
    path = write_cremi(tmp_path / "out.hdf", raw, (40, 4, 4), labels=labels, partners=p, offset=(400, 0, 0))
    d = read_cremi(path)
    assert d.raw.roi == Roi((400, 0, 0), (160, 128, 128))
    assert d.partners[0]["pre_seg_id"] == 1 and d.partners[0]["post_seg_id"] == 2
    assert [q.name for q in tmp_path.iterdir()] == ["out.hdf"]


# ---------------------------------------------------------------- partner files

def _partners_with_big_ids():
    p = empty_partners(3)
    p["id"] = [BIG, 1, 2 ** 63 - 1]
    p["pre_z"], p["pre_y"], p["pre_x"] = [1, 2, 3], [4, 5, 6], [7, 8, 9]
    p["post_z"], p["post_y"], p["post_x"] = [10, 20, 30], [40, 50, 60], [70, 80, 90]
    p["score"] = [0.5, 1.0 / 3.0, 0.0]
    p["pre_seg_id"] = [BIG + 1, NO_ID, 3]
    p["post_seg_id"] = [BIG + 2, 5, NO_ID]
    p["pre_skel_id"] = [NO_ID, BIG + 3, 7]
    p["post_skel_id"] = [2 ** 63 - 2, NO_ID, NO_ID]
    return p


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_partner_files_round_trip_exact_int64(tmp_path, suffix):
    p = _partners_with_big_ids()
    path = write_partners(p, tmp_path / f"partners{suffix}")
    back = read_partners(path)
    assert back.dtype == PARTNER_DTYPE
    assert np.array_equal(back, p)
    assert [q.name for q in tmp_path.iterdir()] == [path.name], "no temp file left"


def test_fafb_json_format(tmp_path):
    path = write_partners_json(_partners_with_big_ids(), tmp_path / "p.json")
    links = json.loads(path.read_text())
    assert set(links[0]) == {"id", "id_skel_pre", "id_skel_post", "id_segm_pre", "id_segm_post",
                             "location_pre", "location_post", "score"}
    assert links[0]["id_segm_pre"] == BIG + 1 and links[0]["id_skel_pre"] is None
    assert links[0]["location_pre"] == [1, 4, 7] and links[0]["location_post"] == [10, 40, 70]
    assert f"{BIG + 1}" in path.read_text(), "ids written as exact integers"
    # FAFB files from elsewhere: null ids and ids, float locations, no score
    (tmp_path / "in.json").write_text(json.dumps([
        {"id": None, "id_skel_pre": None, "id_skel_post": 3, "id_segm_pre": None, "id_segm_post": None,
         "location_pre": [40.0, 4.4, 3.6], "location_post": [80, 8, 8]}]))
    p = read_partners_json(tmp_path / "in.json")
    assert p[0]["id"] == 0 and p[0]["post_skel_id"] == 3 and p[0]["pre_seg_id"] == NO_ID
    assert [p[0]["pre_z"], p[0]["pre_y"], p[0]["pre_x"]] == [40, 4, 4] and p[0]["score"] == 0.0


def test_csv_empty_cells_are_missing_ids(tmp_path):
    path = write_partners_csv(_partners_with_big_ids(), tmp_path / "p.csv")
    lines = path.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["id", "pre_z", "pre_y"]
    assert lines[2].split(",")[-4] == ""  # pre_seg_id of row 1 is missing
    (tmp_path / "min.csv").write_text("pre_z,pre_y,pre_x,post_z,post_y,post_x\n1,2,3,4,5,6\n")
    p = read_partners_csv(tmp_path / "min.csv")
    assert p[0]["id"] == 0 and p[0]["post_x"] == 6 and p[0]["post_seg_id"] == NO_ID


@pytest.mark.parametrize("content,match", [
    ("{}", "list"),
    ("[{\"location_pre\": [1, 2, 3]}]", "location_post: missing"),
    ("[{\"location_pre\": [1, 2], \"location_post\": [1, 2, 3]}]", "location_pre"),
    ("[{\"location_pre\": [1, 2, 3], \"location_post\": [1, 2, 3], \"id_segm_pre\": \"x\"}]", "id_segm_pre"),
    ("[{\"location_pre\": [1, 2, 3], \"location_post\": [1, 2, 3], \"score\": \"high\"}]", "score"),
    ("[{\"location_pre\": [1, 2, 3], \"location_post\": [1, 2, 3], \"id\": 18446744073709551615}]", "int64"),
    ("not json", "not valid JSON"),
])
def test_bad_json_partners(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SynfulError, match=match) as e:
        read_partners_json(path)
    assert "bad.json" in str(e.value)


_LINK = "\"location_pre\": [1, 2, 3], \"location_post\": [4, 5, 6]"


@pytest.mark.parametrize("content,match", [
    # json.loads reads NaN / Infinity; the old reader dropped such partners later, silently
    (f"[{{{_LINK}, \"id\": 0}}, {{{_LINK}, \"id\": 1, \"score\": NaN}}]",
     r"bad.json\[1\] score: expected a finite number, got nan"),
    (f"[{{{_LINK}, \"score\": -Infinity}}]", r"bad.json\[0\] score: expected a finite number, got -inf"),
    ("[{\"location_pre\": [1, NaN, 3], \"location_post\": [4, 5, 6]}]",
     r"bad.json\[0\] location_pre: expected finite"),
    ("[{\"location_pre\": [1, 2, 3], \"location_post\": [Infinity, 5, 6]}]",
     r"bad.json\[0\] location_post: expected finite"),
    ("[{\"location_pre\": [1.5e30, 2, 3], \"location_post\": [4, 5, 6]}]",
     r"bad.json\[0\] location_pre: \d+ nm does not fit in int64"),
    (f"[{{{_LINK}, \"id\": 7}}, {{{_LINK}, \"id\": 8}}, {{{_LINK}, \"id\": 7}}, {{{_LINK}, \"id\": 8}}]",
     r"bad.json\[2\] id: duplicate id 7 \(first at record 0\)$"),
])
def test_json_partners_refuse_non_finite_numbers_and_duplicate_ids(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SynfulError, match=match):
        read_partners(path)


@pytest.mark.parametrize("rows,match", [
    ("0,1,2,3,4,5,6,nan\n", r"bad.csv\[0\] score: expected a finite number, got 'nan'"),
    ("0,1,2,3,4,5,6,0.5\n1,1,2,3,4,5,7,inf\n", r"bad.csv\[1\] score: expected a finite number, got 'inf'"),
    ("0,1,2,3,4,5,6,1\n1,1,2,3,4,5,7,1\n0,1,2,3,4,5,8,1\n", r"bad.csv\[2\] id: duplicate id 0 \(first at record 0\)$"),
    ("0,1,2,nan,4,5,6,1\n", r"bad.csv\[0\] pre_x: expected an integer, got 'nan'"),
    ("0,--5,2,3,4,5,6,1\n", r"bad.csv\[0\] pre_z: expected an integer, got '--5'"),
    ("0,1,\u00b2,3,4,5,6,1\n", r"bad.csv\[0\] pre_y: expected an integer, got '\u00b2'"),
])
def test_csv_partners_refuse_non_finite_numbers_and_duplicate_ids(tmp_path, rows, match):
    path = tmp_path / "bad.csv"
    path.write_text("id,pre_z,pre_y,pre_x,post_z,post_y,post_x,score\n" + rows)
    with pytest.raises(SynfulError, match=match):
        read_partners(path)


def test_check_partners_names_the_first_repeat(tmp_path):
    from synful.io.partners import check_partners

    p = _partners_with_big_ids()
    assert check_partners(p, "x") is p
    q = np.concatenate([p, p[1:2]])
    q["id"][-1] = 5  # the same partner under a new id
    with pytest.raises(SynfulError, match=r"^coll\[3\]: duplicate record: .* of record 1 \(ids 1 and 5\)$"):
        check_partners(q, "coll")
    q["post_skel_id"][-1] = 4  # another skeleton pair at the same sites: a different partner
    check_partners(q, "coll")
    q["score"][0] = np.inf
    with pytest.raises(SynfulError, match=r"^coll\[0\] score: expected a finite number, got inf"):
        check_partners(q, "coll")


def test_bad_partner_files(tmp_path):
    with pytest.raises(SynfulError, match="not found"):
        read_partners(tmp_path / "none.json")
    with pytest.raises(SynfulError, match="missing column"):
        (tmp_path / "c.csv").write_text("pre_z,pre_y\n1,2\n")
        read_partners(tmp_path / "c.csv")
    with pytest.raises(SynfulError, match="unknown partner file type"):
        read_partners(tmp_path / "p.txt")


# ---------------------------------------------------------------- manifests

@pytest.fixture
def sample_dir(tmp_path):
    raw = np.zeros((10, 50, 50), np.uint8)
    labels = np.ones((10, 50, 50), np.uint64)
    labels[:, :, 25:] = 2
    write_volume(tmp_path / "data/a.zarr", "volumes/raw", raw, (40, 4, 4))
    write_volume(tmp_path / "data/a.zarr", "volumes/labels/neuron_ids", labels, (40, 4, 4))
    write_volume(tmp_path / "data/a.zarr", "volumes/labels/coarse", labels[:, ::2, ::2], (40, 8, 8))
    p = empty_partners(2)
    p["id"] = [0, 1]
    p["pre_z"], p["pre_y"], p["pre_x"] = [40, 240], [20, 20], [60, 60]
    p["post_z"], p["post_y"], p["post_x"] = [40, 240], [20, 20], [140, 140]
    write_annotations(tmp_path / "data/a.zarr", p)
    write_partners(p, tmp_path / "data/a_partners.json")
    return tmp_path


def _manifest(tmp_path, doc, name="m.yaml"):
    path = tmp_path / "manifests" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_read_manifest_defaults_and_relative_paths(sample_dir):
    path = _manifest(sample_dir, {"samples": [
        {"container": "../data/a.zarr"},
        {"name": "a_val", "container": "../data/a.zarr", "roi": {"offset": [0, 0, 0], "shape": [160, 200, 200]},
         "annotations": "../data/a_partners.json", "split": "validation", "labels_dataset": None},
    ]})
    s0, s1 = read_manifest(path, check_data=True)
    assert s0.name == "a" and s0.container == str(sample_dir / "data/a.zarr")
    assert s0.raw_dataset == "volumes/raw" and s0.labels_dataset == "volumes/labels/neuron_ids"
    assert s0.roi is None and s0.split == "train" and s0.annotations_in_container
    assert s1.roi == Roi((0, 0, 0), (160, 200, 200)) and s1.labels_dataset is None
    assert s1.annotations == str(sample_dir / "data/a_partners.json") and s1.split == "validation"
    with pytest.raises(Exception):
        s0.name = "other"  # frozen
    # partners: whole sample, then restricted to the ROI (post-site inside)
    assert len(read_sample_partners(s0)) == 2
    assert read_sample_partners(s0)["post_seg_id"].tolist() == [2, 2]
    part = read_sample_partners(s1)
    assert len(part) == 1 and part[0]["pre_z"] == 40
    # round trip through write_manifest
    again = read_manifest(write_manifest([s0, s1], sample_dir / "manifests/copy.yaml"))
    assert again == [s0, s1]


def test_manifest_shared_defaults_and_json_seg_ids(sample_dir):
    path = _manifest(sample_dir, {"defaults": {"split": "test", "annotations": "../data/a_partners.json"},
                                  "samples": [{"name": "x", "container": "../data/a.zarr"}]})
    (s,) = read_manifest(path)
    assert s.split == "test"
    p = read_sample_partners(s)
    assert p["pre_seg_id"].tolist() == [1, 1] and p["post_seg_id"].tolist() == [2, 2]


def test_example_manifest_is_valid():
    from pathlib import Path

    samples = read_manifest(Path(__file__).parents[1] / "configs/manifest_example.yaml")
    assert [s.split for s in samples] == ["train", "train", "validation"]


@pytest.mark.parametrize("doc,match", [
    ([], "'samples' list"),
    ({"samples": []}, "non-empty list"),
    ({"samples": [{"name": "a"}]}, r"samples\[0\] \(a\): container: missing"),
    ({"samples": [{"container": "x.zarr", "raw": "r"}]}, r"samples\[0\] \(x\): unknown key\(s\) raw"),
    ({"samples": [{"container": "x.zarr", "split": "training"}]}, "split: expected one of"),
    ({"samples": [{"container": "x.zarr", "roi": {"offset": [0, 0], "shape": [1, 1, 1]}}]}, "roi.offset"),
    ({"samples": [{"container": "x.zarr", "roi": {"offset": [0, 0, 0], "shape": [1, 0, 1]}}]}, "roi.shape"),
    ({"samples": [{"container": "x.zarr", "roi": [0, 0, 0]}]}, "roi"),
    ({"samples": [{"container": "x.zarr", "annotations": "p.txt"}]}, "annotations"),
    ({"samples": [{"container": "x.zarr"}, {"container": "y/x.zarr"}]}, r"samples\[1\] \(x\): name: duplicate"),
    ({"samples": [{"container": "x.zarr"}], "extra": 1}, "top-level"),
    ({"defaults": {"container": "x"}, "samples": [{"container": "x.zarr"}]}, "defaults"),
])
def test_manifest_errors_name_file_sample_key(tmp_path, doc, match):
    path = _manifest(tmp_path, doc)
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(path)
    assert "m.yaml" in str(e.value)


def test_manifest_data_errors(sample_dir):
    # missing dataset
    path = _manifest(sample_dir, {"samples": [{"name": "s", "container": "../data/a.zarr",
                                               "raw_dataset": "volumes/nope"}]})
    read_manifest(path)  # structure is fine
    with pytest.raises(ManifestError, match=r"samples\[0\] \(s\): .*a.zarr: dataset 'volumes/nope' not found"):
        read_manifest(path, check_data=True)
    with pytest.raises(DatasetNotFoundError):
        open_sample(read_manifest(path)[0])
    # voxel-size mismatch between raw and labels
    path = _manifest(sample_dir, {"samples": [{"name": "s", "container": "../data/a.zarr",
                                               "labels_dataset": "volumes/labels/coarse"}]}, "v.yaml")
    with pytest.raises(VoxelSizeMismatchError, match=r"\(40, 4, 4\).*\(40, 8, 8\)"):
        open_sample(read_manifest(path)[0])
    # ROI outside the data, and not aligned with the voxels
    path = _manifest(sample_dir, {"samples": [{"name": "s", "container": "../data/a.zarr",
                                               "roi": {"offset": [0, 0, 0], "shape": [800, 200, 200]}}]}, "r.yaml")
    with pytest.raises(RoiOutsideError, match="outside the data"):
        open_sample(read_manifest(path)[0])
    path = _manifest(sample_dir, {"samples": [{"name": "s", "container": "../data/a.zarr",
                                               "roi": {"offset": [0, 2, 0], "shape": [40, 40, 40]}}]}, "a.yaml")
    with pytest.raises(RoiOutsideError, match="not aligned"):
        open_sample(read_manifest(path)[0])
    # missing container
    path = _manifest(sample_dir, {"samples": [{"container": "../data/none.zarr"}]}, "c.yaml")
    with pytest.raises(ManifestError, match="none.zarr: container not found"):
        read_manifest(path, check_data=True)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(sample_dir / "missing.yaml")


def test_package_exports():
    import synful.io as sio

    assert sio.open_volume is open_volume and sio.read_manifest is read_manifest
    assert sio.PARTNER_DTYPE == PARTNER_DTYPE
    with pytest.raises(AttributeError):
        sio.nothing_here


def test_add_manifest_sample_creates_appends_and_refuses_a_name_clash(tmp_path):
    """`synful synthetic --manifest`: the manifest is created, samples are added once, clashes refused."""
    manifest = tmp_path / "exp" / "01_data" / "manifest.yaml"
    a, b = tmp_path / "exp" / "01_data" / "a.zarr", tmp_path / "elsewhere" / "b.zarr"
    assert add_manifest_sample(manifest, a, "train") == (manifest, "added")
    assert add_manifest_sample(manifest, b, "test") == (manifest, "added")
    assert add_manifest_sample(manifest, a, "train") == (manifest, "already listed")
    doc = yaml.safe_load(manifest.read_text())
    assert doc["samples"] == [{"name": "a", "container": "a.zarr", "split": "train"},
                              {"name": "b", "container": str(b), "split": "test"}]
    samples = read_manifest(manifest)
    assert [(s.name, s.container, s.split) for s in samples] == [("a", str(a), "train"), ("b", str(b), "test")]
    before = manifest.read_text()
    with pytest.raises(ManifestError, match=r"samples\[0\] \(a\): already lists .*a\.zarr \(split train\)"):
        add_manifest_sample(manifest, a, "validation")
    with pytest.raises(ManifestError, match=r"samples\[0\] \(a\): already lists"):
        add_manifest_sample(manifest, tmp_path / "other" / "a.zarr", "train")
    with pytest.raises(ManifestError, match="split: expected one of"):
        add_manifest_sample(manifest, tmp_path / "c.zarr", "training")
    assert manifest.read_text() == before
    assert sorted(p.name for p in manifest.parent.iterdir()) == ["manifest.yaml"]  # no check file left behind
