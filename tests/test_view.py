"""``synful view``: neuroglancer layers of runs, containers and training snapshots, read back from the viewer's
own server and from a real headless Chromium (Debian's chromium + chromium-driver, installed by the test set-up).

Without a browser: layer names, types, voxel sizes, offsets and the z, y, x / nm coordinate spaces as the server
gives them to the client, the lazy vector magnitude against numpy, annotation ids and properties.  With the
browser: the quick demo's test run loaded in Chromium, the layers and annotation counts in the state the client
sends back, and screenshots of the requested size that are not blank.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest

from synful.io.cremi import read_annotations, read_transmitters
from synful.io.volumes import open_volume, write_volume
from synful.synthetic import write_synthetic
from synful.view import LazyVolume, ViewError, build_viewer, evaluation_assignment, find_browser, open_browser, \
    screenshot

RUN_LAYERS = {"raw": "image", "indicator": "image", "vector magnitude": "image", "segmentation": "segmentation",
              "ground-truth labels": "segmentation", "predicted partners": "annotation",
              "ground-truth partners": "annotation", "true positives": "annotation", "false positives": "annotation",
              "false negatives": "annotation"}


# ---------------------------------------------------------------------------------------------------------------
# helpers: what the viewer's server hands the client


def _token(viewer, name: str) -> str:
    """The server's key of the volume behind layer ``name`` (its source is ``python://volume/<key>``)."""
    url = viewer.state.layers[name].layer.source[0].url
    assert url.startswith("python://volume/"), url
    return url[len("python://volume/"):]


def _get(viewer, path: str) -> bytes:
    server = viewer.get_viewer_url().split("/v/")[0]
    assert server.startswith("http://127.0.0.1:"), server  # bound to the loopback interface only
    with urllib.request.urlopen(server + path, timeout=30) as r:
        return r.read()


def _info(viewer, name: str) -> dict:
    """The volume info of layer ``name`` as the client fetches it, over HTTP from 127.0.0.1."""
    token = _token(viewer, name)
    return json.loads(_get(viewer, f"/neuroglancer/info/{token}"))


def _chunk(viewer, name: str, start, end) -> np.ndarray:
    """Voxels [start, end) (z, y, x, full resolution) of layer ``name`` as the client fetches them."""
    token = _token(viewer, name)
    body = _get(viewer, f"/neuroglancer/npz/{token}/1,1,1/{','.join(map(str, start))}/{','.join(map(str, end))}")
    return np.load(io.BytesIO(zlib.decompress(body)))


def _space(info: dict) -> tuple[list, list]:
    """(dimension names, scales in nm) of a volume info's coordinate space (neuroglancer stores metres)."""
    cs = info["coordinateSpace"]
    names = list(cs)
    assert [cs[n][1] for n in names] == ["m"] * len(names), cs
    return names, [round(cs[n][0] * 1e9, 6) for n in names]


def _nm(space) -> tuple[list, list]:
    """(names, scales in nm) of a neuroglancer CoordinateSpace."""
    assert list(space.units) == ["m"] * len(space.names), space
    return list(space.names), [round(float(s) * 1e9, 6) for s in space.scales]


# ---------------------------------------------------------------------------------------------------------------
# without a browser


def test_lazy_vector_magnitude_equals_numpy(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(0, 100, (3, 5, 7, 9)).astype(np.float16)
    write_volume(tmp_path / "p.zarr", "vectors", v, (40, 4, 4), (80, 8, 12), chunk_shape=(2, 3, 4), num_channels=True)
    lazy = LazyVolume(open_volume(tmp_path / "p.zarr", "vectors"), magnitude=True, scale=0.5)
    expected = 0.5 * np.sqrt((v.astype(np.float32) ** 2).sum(axis=0))
    assert lazy.shape == (5, 7, 9) and lazy.dtype == np.float32
    np.testing.assert_allclose(lazy[1:4, 2:7, 3:8], expected[1:4, 2:7, 3:8], rtol=1e-6)
    np.testing.assert_allclose(lazy[:, :, :], expected, rtol=1e-6)

    p = rng.integers(0, 256, (5, 7, 9)).astype(np.uint8)
    write_volume(tmp_path / "p.zarr", "indicator", p, (40, 4, 4), (80, 8, 12))
    ind = LazyVolume(open_volume(tmp_path / "p.zarr", "indicator"), scale=1 / 255)
    np.testing.assert_allclose(ind[0:2, 1:3, 4:9], p[0:2, 1:3, 4:9] / 255, rtol=1e-6)
    with pytest.raises(ViewError, match="vectors: a vector magnitude needs one channel axis"):
        LazyVolume(open_volume(tmp_path / "p.zarr", "indicator"), magnitude=True, name="vectors")


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """A synthetic CREMI-layout container with an offset: raw, labels, annotations with transmitters."""
    return write_synthetic(tmp_path_factory.mktemp("view") / "v.zarr", (12, 256, 240), seed=0, voxel_size=(40, 4, 4),
                           offset=(80, 40, 20))


def test_container_layers_voxel_sizes_offsets_and_spaces(container):
    viewer, infos = build_viewer([container])
    state = viewer.state
    assert {layer.name: layer.type for layer in state.layers} == {
        "raw": "image", "labels/neuron_ids": "segmentation", "ground-truth partners": "annotation"}
    assert _nm(state.dimensions) == (["x", "y", "z"], [4, 4, 40])
    for name in ("raw", "labels/neuron_ids"):
        info = _info(viewer, name)
        assert _space(info) == (["z", "y", "x"], [40, 4, 4]), name
        # int64 travel as JSON strings
        assert [int(v) for v in info["voxelOffset"]] == [2, 10, 5], name     # (80, 40, 20) nm / (40, 4, 4) nm
        assert [int(v) for v in info["shape"]] == [12, 256, 240], name
    assert _info(viewer, "labels/neuron_ids")["volumeType"] == "segmentation"
    raw = np.asarray(open_volume(container, "volumes/raw").data)
    np.testing.assert_array_equal(_chunk(viewer, "raw", (1, 2, 3), (4, 30, 50)), raw[1:4, 2:30, 3:50])
    by_name = {i.name: i for i in infos}
    assert by_name["raw"].voxel_size == (40, 4, 4) and by_name["raw"].offset == (80, 40, 20)


def test_ground_truth_annotations_carry_ids_sites_transmitters(container):
    viewer, infos = build_viewer([container])
    gt = read_annotations(container)
    names = read_transmitters(container)
    layer = viewer.state.layers["ground-truth partners"].layer
    assert len(layer.annotations) == len(gt) > 0
    assert [p.id for p in layer.annotation_properties] == ["score", "transmitter"]
    labels = list(layer.annotation_properties[1].enum_labels)
    assert _nm(layer.source[0].transform.output_dimensions) == (["z", "y", "x"], [1, 1, 1])  # sites in nm
    assert list(layer.annotation_relationships) == ["pre_segment", "post_segment"]
    assert layer.linked_segmentation_layer["pre_segment"] == "labels/neuron_ids"
    for a, p, t in zip(layer.annotations, gt, names):
        assert a.type == "line" and a.id == str(p["id"])
        assert list(a.point_a) == [p["pre_z"], p["pre_y"], p["pre_x"]]
        assert list(a.point_b) == [p["post_z"], p["post_y"], p["post_x"]]
        assert a.props[0] == p["score"] and labels[a.props[1]] == t
        assert [list(s) for s in a.segments] == [[p["pre_seg_id"]], [p["post_seg_id"]]]
    # the PNGs' colours: yellow link, red pre-site, cyan post-site
    assert "setLineColor(vec4(1.000, 1.000, 0.000, 1.0))" in layer.shader
    assert "setEndpointMarkerColor(vec4(1.000, 0.000, 0.000, 1.0), vec4(0.000, 1.000, 1.000, 1.0))" in layer.shader


def test_several_paths_get_prefixed_layer_names(container, tmp_path):
    import shutil

    other = tmp_path / "w.zarr"
    shutil.copytree(container, other)
    viewer, infos = build_viewer([container, other])
    assert [i.name for i in infos] == [f"{n}: {layer}" for n in ("v.zarr", "w.zarr")
                                       for layer in ("labels/neuron_ids", "raw", "ground-truth partners")]
    layer = viewer.state.layers["w.zarr: ground-truth partners"].layer
    assert layer.linked_segmentation_layer["pre_segment"] == "w.zarr: labels/neuron_ids"


def test_training_snapshot_is_shown_with_vector_magnitudes(tmp_path):
    setup = tmp_path / "setup_t0"
    (setup / "snapshots").mkdir(parents=True)
    (setup / "train_config.ini").write_text("[Training]\n")
    rng = np.random.default_rng(1)
    for it in (5, 12):
        snap = setup / "snapshots" / f"batch_{it}.zarr"
        write_volume(snap, "volumes/raw", rng.integers(0, 255, (8, 40, 40)).astype(np.uint8), (40, 4, 4))
        write_volume(snap, "volumes/labels/neuron_ids", np.full((8, 40, 40), it, np.uint64), (40, 4, 4))
        for head in ("gt", "pred"):
            write_volume(snap, f"volumes/{head}_syn_indicator", rng.random((4, 20, 20)).astype(np.float32),
                         (40, 4, 4), (80, 40, 40))
            write_volume(snap, f"volumes/{head}_partner_vectors", rng.normal(0, 50, (3, 4, 20, 20)).astype(np.float32),
                         (40, 4, 4), (80, 40, 40), num_channels=True)
    viewer, infos = build_viewer([setup])
    assert {i.name: i.kind for i in infos} == {
        "gt_partner_vectors magnitude": "image", "gt_syn_indicator": "image", "labels/neuron_ids": "segmentation",
        "pred_partner_vectors magnitude": "image", "pred_syn_indicator": "image", "raw": "image"}
    assert all(i.source.startswith(str(setup / "snapshots" / "batch_12.zarr")) for i in infos)
    assert [int(v) for v in _info(viewer, "pred_partner_vectors magnitude")["voxelOffset"]] == [2, 10, 10]
    v = np.asarray(open_volume(setup / "snapshots" / "batch_12.zarr", "volumes/pred_partner_vectors").data)
    np.testing.assert_allclose(_chunk(viewer, "pred_partner_vectors magnitude", (0, 0, 0), (4, 20, 20)),
                               np.sqrt((v ** 2).sum(axis=0)), rtol=1e-6)
    assert int(_chunk(viewer, "labels/neuron_ids", (0, 0, 0), (1, 1, 1)).ravel()[0]) == 12


def test_bad_paths_and_missing_browser_are_one_line(tmp_path, monkeypatch, capsys):
    from synful.cli import main

    with pytest.raises(ViewError, match=f"^{tmp_path / 'nope'}: not found$"):
        build_viewer([tmp_path / "nope"])
    with pytest.raises(ViewError, match="neither a prediction run"):
        build_viewer([tmp_path])
    with pytest.raises(ViewError, match="no snapshot in"):
        (tmp_path / "t").mkdir()
        (tmp_path / "t" / "train_config.ini").write_text("")
        build_viewer([tmp_path / "t"])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ViewError, match="^chromium and chromedriver not found on PATH"):
        find_browser()
    assert main(["view", str(tmp_path / "t"), "--screenshot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: chromium and chromedriver not found on PATH"), err
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------------------------------
# the quick demo's test run, in a real headless Chromium


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("view_demo")
    r = subprocess.run([sys.executable, "-m", "synful", "demo", "--quick", "--dir", str(base)], capture_output=True,
                       text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return base / "demo" / "03_predict" / "setup_t0_p1"


def _expected_counts(run: Path) -> dict:
    from synful.store import open_run_store

    with open_run_store(run) as store:
        n_pred = store.count()
    summary = json.loads((run / "evaluation" / "summary.json").read_text())["best"]
    gt = read_annotations(run.parents[1] / "01_data" / "test_quick.zarr")
    return {"predicted partners": n_pred, "ground-truth partners": len(gt), "true positives": summary["tpcount"],
            "false positives": summary["fpcount"], "false negatives": summary["fncount"]}


def test_run_annotations_are_the_store_and_the_evaluation(demo_run):
    from synful.store import open_run_store

    viewer, infos = build_viewer([demo_run])
    assert {i.name: i.kind for i in infos} == RUN_LAYERS
    counts = _expected_counts(demo_run)
    assert {i.name: i.count for i in infos if i.kind == "annotation"} == counts
    with open_run_store(demo_run) as store:
        pred = store.query()
    layer = viewer.state.layers["predicted partners"].layer
    assert [a.id for a in layer.annotations] == [str(i) for i in pred["id"]]
    np.testing.assert_allclose([a.props[0] for a in layer.annotations], pred["score"], rtol=1e-7)  # float32 property
    assert [[list(s) for s in a.segments] for a in layer.annotations] == [
        [[] if p["pre_seg_id"] < 0 else [p["pre_seg_id"]], [] if p["post_seg_id"] < 0 else [p["post_seg_id"]]]
        for p in pred]
    assert layer.linked_segmentation_layer["post_segment"] == "segmentation"
    # true positives: predictions scoring at least the calibrated threshold, each with its match cost
    a = evaluation_assignment(demo_run)
    tp = viewer.state.layers["true positives"].layer
    assert all(x.props[0] >= a["score_thr"] for x in tp.annotations)
    assert [p.id for p in tp.annotation_properties] == ["score", "cost"]
    assert all(0 <= x.props[1] <= 400 for x in tp.annotations)
    # the indicator as a probability, the vector magnitude in nm, both as the client gets them
    ind = np.asarray(open_volume(demo_run / "predictions.zarr", "volumes/pred_syn_indicator").data[2:4, 100:140, 60:90])
    np.testing.assert_allclose(_chunk(viewer, "indicator", (2, 100, 60), (4, 140, 90)), ind / 255, rtol=1e-6)
    vec = np.asarray(open_volume(demo_run / "predictions.zarr", "volumes/pred_partner_vectors").data[:, 5:7, 0:64,
                                                                                                      0:64])
    np.testing.assert_allclose(_chunk(viewer, "vector magnitude", (5, 0, 0), (7, 64, 64)),
                               np.sqrt((vec.astype(np.float32) ** 2).sum(axis=0)), rtol=1e-3)
    for name in ("raw", "indicator", "vector magnitude", "segmentation", "ground-truth labels"):
        assert _space(_info(viewer, name)) == (["z", "y", "x"], [40, 8, 8]), name


def test_chromium_loads_the_demo_run_and_screenshots_it(demo_run, chromium, tmp_path):
    from PIL import Image

    viewer, infos = build_viewer([demo_run], size=(800, 600))
    with open_browser(viewer, chromium=chromium[0], chromedriver=chromium[1]) as wd:
        state = wd.sync()  # the state the client sent back once it had loaded the page
        assert {layer.name: layer.type for layer in state.layers} == RUN_LAYERS
        counts = {name: len(state.layers[name].annotations) for name in _expected_counts(demo_run)}
        assert counts == _expected_counts(demo_run)
        assert [layer.name for layer in state.layers if layer.visible is not False] == [
            "raw", "segmentation", "predicted partners", "ground-truth partners"]
        out = screenshot(viewer, tmp_path / "run.png", (640, 480), webdriver=wd)
        # everything the page loaded (client, volume chunks) came from the viewer's server on 127.0.0.1
        fetched = wd.driver.execute_script("return [location.href].concat("
                                           "performance.getEntriesByType('resource').map(e => e.name))")
        assert len(fetched) > 3 and all(u.startswith("http://127.0.0.1:") for u in fetched), fetched
    img = np.asarray(Image.open(out).convert("RGB"), dtype=float)
    assert img.shape == (480, 640, 3)
    assert img.std() > 20, img.std()
    # raw data drawn: more than a few distinct grey levels / colours
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 1000


def test_cli_screenshot_of_a_container(container, chromium, tmp_path):
    from PIL import Image

    out = tmp_path / "c.png"
    r = subprocess.run([sys.executable, "-m", "synful", "view", str(container), "--screenshot", str(out), "--size",
                        "500", "300"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"screenshot: {out} (500 x 300 pixels)" in r.stdout
    assert "ground-truth partners (annotation, " in r.stdout
    img = np.asarray(Image.open(out).convert("L"), dtype=float)
    assert img.shape == (300, 500) and img.std() > 20, img.std()
