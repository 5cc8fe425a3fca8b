"""Blockwise prediction: equals one pass over the whole volume, resumes after a killed worker, skips done blocks.

A tiny U-Net (one level, two feature maps) with random weights is saved as the checkpoint of a
training setup; the raw volume has a non-zero offset and a shape that is no multiple of the block.
The reference is the same network built for an input covering the whole volume plus its context,
run once on the volume padded with ``np.pad``.  A second setup has three levels with Synful's
downsampling factors [[1,3,3],[1,3,3],[3,3,3]] and an output (4, 28, 28) that is no multiple of the
total factor (3, 27, 27): blockwise output must equal the single pass exactly, stored value for value.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from synful.cli import main
from synful.config import read_train_config
from synful.io.volumes import open_volume, write_volume
from synful.predict import (PredictionError, encode_indicator, encode_vectors, plan_prediction, predict,
                            read_padded)
from synful.scaffold import create_predict_setups, create_train_setup

VOXEL_SIZE = (40, 4, 4)
RAW_OFFSET = (80, 8, 12)  # nm
RAW_SHAPE = (11, 30, 34)  # voxels: no multiple of the (2, 12, 12)-voxel network output
INPUT_SHAPE = (8, 20, 20)  # -> output (2, 12, 12), context (3, 4, 4) voxels
TRAINING = {
    "voxel_size": VOXEL_SIZE, "input_shape": INPUT_SHAPE, "fmap_num": 2, "fmap_inc_factor": 2,
    "downsample_factors": [(1, 2, 2)], "kernel_size": (3, 3, 3), "num_convs": 1, "tasks": "both",
    "vector_scale": 1.0,  # random weights: vectors of tens of nm, within the int8 range the tests use
}
ITERATION = 1

# Synful's downsampling with tiny feature maps: (1, 3, 3)-kernels at the middle levels keep z small
TRAINING3 = {
    "voxel_size": VOXEL_SIZE, "input_shape": (14, 134, 134), "fmap_num": 2, "fmap_inc_factor": 2,
    "downsample_factors": [(1, 3, 3), (1, 3, 3), (3, 3, 3)],
    "level_kernel_sizes": [(3, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3)], "num_convs": 1, "tasks": "both",
    "vector_scale": 1.0,
}
RAW3_SHAPE = (8, 61, 70)  # voxels: no multiple of any block below (tile stride (3, 27, 27))


def make_experiment(base, name: str, training: dict, raw_shape, weight_std: float = 0.5) -> dict:
    """A training setup with a random-weight checkpoint, and a raw zarr volume at RAW_OFFSET."""
    from synful.models import build_unet
    from synful.train import checkpoint_path

    train_dir = create_train_setup(base, name, 0, overrides={"train_config.ini": {"Training": training}})
    cfg = read_train_config(train_dir / "train_config.ini")
    model = build_unet(cfg)
    rng = np.random.default_rng(0)
    # random weights large enough that the outputs vary across the volume
    model.set_weights([rng.normal(0, weight_std, w.shape).astype(np.float32) for w in model.get_weights()])
    ckpt = checkpoint_path(train_dir, ITERATION)
    os.makedirs(os.path.dirname(ckpt), exist_ok=True)
    model.save_weights(str(ckpt))
    raw = rng.integers(0, 256, raw_shape, dtype=np.uint8)
    raw_container = base / name / "01_data" / "raw.zarr"
    write_volume(raw_container, "volumes/raw", raw, VOXEL_SIZE, offset=RAW_OFFSET)
    return {"base": base, "name": name, "cfg": cfg, "ckpt": ckpt, "raw": raw, "raw_container": str(raw_container)}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """The one-level toy network."""
    return make_experiment(tmp_path_factory.mktemp("experiments"), "exp", TRAINING, RAW_SHAPE)


@pytest.fixture(scope="module")
def experiment3(tmp_path_factory):
    """The three-level network with Synful's downsampling factors."""
    # smaller weights than the toy's: three levels would saturate the sigmoid and clip the int8 vectors
    return make_experiment(tmp_path_factory.mktemp("experiments3"), "exp3", TRAINING3, RAW3_SHAPE, weight_std=0.3)


def single_pass(experiment, padding: str, indicator_dtype: str = "float32", vectors_dtype: str = "float32",
                vectors_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Stored indicator (z, y, x) and vectors (3, z, y, x) of one network pass over the whole volume.

    The input begins at the volume minus the context (as the blockwise run's phase grid does) and has
    the smallest size the network takes that covers the volume plus its context; the output is encoded
    by the workers' own :func:`synful.predict.network.encode_heads` (float32: probabilities and nm) and
    cropped to the volume.
    """
    from synful.config import ConfigError
    from synful.models import build_unet, normalize_raw, output_shape
    from synful.predict.network import encode_heads

    cfg, raw = experiment["cfg"], experiment["raw"]
    input_shape = tuple(cfg.input_shape)
    context = [(i - o) // 2 for i, o in zip(input_shape, output_shape(cfg, input_shape))]
    big = []
    for axis, (s, c) in enumerate(zip(raw.shape, context)):
        size = s + 2 * c
        while True:
            try:
                output_shape(cfg, input_shape[:axis] + (size,) + input_shape[axis + 1:])
                break
            except ConfigError:
                size += 1
        big.append(size)
    out_shape = output_shape(cfg, big)
    assert all(o >= s for o, s in zip(out_shape, raw.shape))
    model = build_unet(cfg, big)
    model.load_weights(str(experiment["ckpt"]))
    pad = [(c, b - s - c) for c, b, s in zip(context, big, raw.shape)]
    raw = np.pad(raw, pad, mode="constant" if padding == "zero" else "reflect")
    out = encode_heads(model(normalize_raw(raw)[None, ..., None], training=False), sigmoid=True,
                       indicator_dtype=indicator_dtype, vectors_dtype=vectors_dtype, vectors_scale=vectors_scale)
    crop = tuple(slice(0, s) for s in experiment["raw"].shape)
    return np.asarray(out["syn_indicator"])[0][crop], np.asarray(out["partner_vectors"])[0][(slice(None),) + crop]


def predict_setup(experiment, prediction: dict, worker: dict):
    prediction = {"raw_container": experiment["raw_container"], "raw_dataset": "volumes/raw", **prediction}
    worker = {"executor": "local", "gpus": 0, **worker}
    (setup,) = create_predict_setups(experiment["base"], experiment["name"], 0, [ITERATION], overrides={
        "predict_config.ini": {"Prediction": prediction}, "worker_config.ini": {"Worker": worker}})
    return setup


def read_outputs(setup):
    plan = plan_prediction(setup)
    ind = open_volume(plan.prediction.out_container, plan.prediction.indicator_dataset)
    vec = open_volume(plan.prediction.out_container, plan.prediction.vectors_dataset)
    return ind, vec


def chunk_mtimes(setup) -> dict:
    plan = plan_prediction(setup)
    root = plan.prediction.out_container
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files if not f.startswith(".")}


@pytest.mark.slow
def test_two_workers_match_single_pass_and_rerun_skips_everything(experiment):
    setup = predict_setup(experiment, {"indicator_dtype": "float32", "vectors_dtype": "float32",
                                       "block_factor": (2, 1, 1), "batch_size": 2},
                          {"num_block_workers": 2, "max_retries": 1})
    meta = predict(setup, progress=False)
    plan = plan_prediction(setup)
    assert meta["complete"] and meta["workers"]["count"] == 2
    assert meta["blocks"]["processed"] == meta["blocks"]["total"] == plan.num_blocks == 3 * 3 * 3
    ind, vec = read_outputs(setup)
    raw_roi = Roi(RAW_OFFSET, Coordinate(RAW_SHAPE) * Coordinate(VOXEL_SIZE))
    assert ind.roi == raw_roi and vec.roi == raw_roi and tuple(ind.voxel_size) == VOXEL_SIZE
    assert ind.attrs["scale"] == 1.0 and vec.attrs["scale"] == 1.0
    assert tuple(ind.data.chunksize) == (4, 12, 12)  # one write block per chunk
    prob, vectors = single_pass(experiment, "zero")
    assert prob.std() > 0.01 and vectors.std() > 0.01
    np.testing.assert_allclose(ind[ind.roi], prob, atol=1e-4)
    np.testing.assert_allclose(vec[vec.roi], vectors, rtol=1e-4, atol=1e-3)

    saved = json.loads(plan.metadata_path.read_text())
    assert saved["checkpoint"] == str(experiment["ckpt"]) and saved["blocks"]["total"] == 27
    for k in ("synful_version", "git_commit", "start", "end", "voxels_per_second", "config"):
        assert k in saved
    assert (plan.out_dir / f"{plan.name}_predict_config.ini").is_file()

    before = chunk_mtimes(setup)
    again = predict(setup, progress=False)
    assert again["complete"]
    assert again["blocks"]["processed"] == 0 and again["blocks"]["skipped"] == 27
    after = chunk_mtimes(setup)
    assert {k: v for k, v in after.items() if "/volumes/" in k} == {k: v for k, v in before.items() if "/volumes/" in k}

    # a changed config does not resume on top of the old outputs; --overwrite starts over
    ini = setup / "predict_config.ini"
    ini.write_text(ini.read_text().replace("padding = zero", "padding = mirror"))
    with pytest.raises(PredictionError, match="configuration changed"):
        predict(setup, progress=False)
    fresh = predict(setup, overwrite=True, progress=False, in_process=True)
    assert fresh["complete"] and fresh["blocks"]["processed"] == 27 and fresh["blocks"]["skipped"] == 0


#: Loaded (as ``sitecustomize``) by every Python process of the killed-worker test: a prediction worker holds
#: block N+1 after N finished blocks, writes its pid to $SYNFUL_TEST_HOLD_FILE and waits to be killed.
HOLD_WORKER = """
import os, time
_after = int(os.environ.get("SYNFUL_TEST_HOLD_AFTER_BLOCKS", "0") or 0)
if _after and b"predict-worker" in open("/proc/self/cmdline", "rb").read():
    import synful.predict

    _read, _reads = synful.predict.BlockPredictor.read_block, []

    # the reader thread reads block N+1 while block N is in the network and its write: the worker holds
    # block N+1 unread (and reports the N blocks before it done) until it is killed
    def _hold_then_read(self, read_roi, write_roi):
        if len(_reads) >= _after:
            path = os.environ["SYNFUL_TEST_HOLD_FILE"]
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
            time.sleep(300)  # the test kills this process long before
        _reads.append(read_roi)
        return _read(self, read_roi, write_roi)

    synful.predict.BlockPredictor.read_block = _hold_then_read
"""


def hold_workers_after(blocks: int, monkeypatch, tmp_path) -> Path:
    """Make prediction workers started from now on hold their block ``blocks + 1``; return the file in which a
    holding worker writes its pid."""
    hook = tmp_path / "hold_worker"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_WORKER)
    root = Path(__file__).resolve().parent.parent
    path = [str(hook), str(root)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    monkeypatch.setenv("SYNFUL_TEST_HOLD_AFTER_BLOCKS", str(blocks))
    monkeypatch.setenv("SYNFUL_TEST_HOLD_FILE", str(tmp_path / "held_by"))
    return tmp_path / "held_by"


def kill_holding_worker(pid_file: Path, killed: list, timeout: float = 240.0):
    """Wait for a worker to hold its block, then SIGKILL it from outside (its pid from ``pid_file``)."""
    deadline = time.monotonic() + timeout
    while not pid_file.is_file():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    if b"predict-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)


@pytest.mark.slow
def test_killed_worker_then_rerun_completes_with_same_outputs(experiment, monkeypatch, tmp_path):
    setup = predict_setup(experiment, {"indicator_dtype": "uint8", "vectors_dtype": "int8", "vectors_int8_nm": 0.05,
                                       "padding": "mirror"},
                          {"num_block_workers": 1, "max_retries": 0})
    pid_file = hold_workers_after(4, monkeypatch, tmp_path)
    killed = []
    killer = threading.Thread(target=kill_holding_worker, args=(pid_file, killed), daemon=True)
    killer.start()
    with pytest.raises(PredictionError, match="did not finish"):
        predict(setup, progress=False)
    killer.join()
    assert killed, "no worker held its fifth block"
    plan = plan_prediction(setup)
    first = json.loads(plan.metadata_path.read_text())
    assert not first["complete"] and first["blocks"]["processed"] == 4

    monkeypatch.delenv("SYNFUL_TEST_HOLD_AFTER_BLOCKS")
    meta = predict(setup, progress=False)
    total = plan.num_blocks
    assert total == 6 * 3 * 3
    assert meta["complete"] and meta["blocks"]["skipped"] == 4 and meta["blocks"]["processed"] == total - 4

    want_ind, want_vec = single_pass(experiment, "mirror", "uint8", "int8", 0.05)
    ind, vec = read_outputs(setup)
    assert ind.dtype == np.uint8 and vec.dtype == np.int8
    assert ind.attrs["scale"] == pytest.approx(1 / 255) and vec.attrs["scale"] == pytest.approx(0.05)
    assert np.array_equal(ind[ind.roi], want_ind) and np.array_equal(vec[vec.roi], want_vec)


@pytest.mark.slow
@pytest.mark.parametrize("workers, block_factor, batch_size, padding, dtypes", [
    (1, (1, 1, 1), 1, "zero", ("uint8", "int8")),
    (2, (2, 2, 1), 3, "mirror", ("float32", "float32")),
])
def test_three_level_synful_network_blockwise_equals_single_pass_exactly(experiment3, workers, block_factor,
                                                                        batch_size, padding, dtypes):
    """Output (4, 28, 28) voxels, total downsampling (3, 27, 27): tiles step by (3, 27, 27) and overlap."""
    setup = predict_setup(experiment3, {"indicator_dtype": dtypes[0], "vectors_dtype": dtypes[1],
                                        "vectors_int8_nm": 0.05, "block_factor": block_factor,
                                        "batch_size": batch_size, "padding": padding},
                          {"num_block_workers": workers, "max_retries": 0})
    plan = plan_prediction(setup)
    assert tuple(plan.output_shape) == (4, 28, 28)
    assert tuple(plan.block_write) == tuple(np.multiply((3, 27, 27), block_factor) * VOXEL_SIZE)
    meta = predict(setup, progress=False)
    assert meta["complete"] and meta["workers"]["count"] == workers
    assert meta["blocks"]["processed"] == plan.num_blocks > workers
    ind, vec = read_outputs(setup)
    assert ind.roi == Roi(RAW_OFFSET, Coordinate(RAW3_SHAPE) * Coordinate(VOXEL_SIZE)) == vec.roi

    prob, vectors = single_pass(experiment3, padding)
    # values away from saturation and clipping: float round-off would show in the encoded values too
    assert ((prob > 0.01) & (prob < 0.99)).mean() > 0.9 and (np.abs(vectors) < 127 * 0.05).mean() > 0.9
    want_ind, want_vec = single_pass(experiment3, padding, dtypes[0], dtypes[1], 0.05)
    # the workers' on-device encoding is numpy's contract (encode_indicator / encode_vectors) up to the last
    # ulp of the sigmoid: at most one unit apart, on values that sit on a rounding boundary
    np_ind, _ = encode_indicator(prob, dtypes[0])
    np_vec, _ = encode_vectors(vectors, dtypes[1], 0.05)
    assert np.abs(np_ind.astype(float) - want_ind).max() <= (1 if dtypes[0] == "uint8" else 1e-6)
    assert np.array_equal(np_vec, want_vec)
    got_ind, got_vec = ind[ind.roi], vec[vec.roi]
    assert got_ind.dtype == want_ind.dtype and got_vec.dtype == want_vec.dtype
    if dtypes[0] == "uint8":  # the encoded values vary: the comparison means something
        assert len(np.unique(got_ind)) > 200 and len(np.unique(got_vec)) > 200
    bad = np.argwhere(got_ind != want_ind)
    assert np.array_equal(got_ind, want_ind), f"{len(bad)} indicator voxels differ, first at {bad[:5].tolist()}"
    assert np.array_equal(got_vec, want_vec), f"{int((got_vec != want_vec).sum())} vector values differ"


def default_network_setup(tmp_path, input_shape=None):
    """A predict setup of Synful's default network (checkpoint file only: planning needs no weights)."""
    from synful.train import checkpoint_path

    train_dir = create_train_setup(tmp_path, "dflt", 0)
    ckpt = checkpoint_path(train_dir, ITERATION)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"")
    raw_container = tmp_path / "dflt" / "01_data" / "raw.zarr"
    write_volume(raw_container, "volumes/raw", np.zeros((20, 500, 700), np.uint8), VOXEL_SIZE, offset=RAW_OFFSET)
    prediction = {"raw_container": str(raw_container), "raw_dataset": "volumes/raw", "block_factor": (1, 2, 1)}
    if input_shape is not None:
        prediction["input_shape"] = input_shape
    (setup,) = create_predict_setups(tmp_path, "dflt", 0, [ITERATION], overrides={
        "predict_config.ini": {"Prediction": prediction}})
    return setup


def test_default_network_tiles_step_by_its_total_downsampling(tmp_path):
    plan = plan_prediction(default_network_setup(tmp_path))
    vs = Coordinate(VOXEL_SIZE)
    assert tuple(plan.input_shape) == (42, 430, 430) and tuple(plan.output_shape) == (6, 218, 218)
    assert tuple(plan.downsample_factor) == (3, 27, 27)
    assert tuple(plan.tile_stride) == (6, 216, 216) and tuple(plan.tile_overlap) == (0, 2, 2)
    assert plan.block_write == Coordinate(6, 432, 216) * vs
    assert plan.block_read == plan.block_write + plan.context * 2 + Coordinate(0, 2, 2) * vs
    # every tile input origin of every block lies on the pooling grid of one pass from roi.begin - context
    origin = plan.roi.begin - plan.context
    grid = plan.downsample_factor * vs
    for idx in np.ndindex(*[-(-s // b) for s, b in zip(plan.roi.shape, plan.block_write)]):
        read_begin = origin + plan.block_write * Coordinate(idx)
        for t in np.ndindex(*plan.prediction.block_factor):
            tile = read_begin + Coordinate(t) * plan.tile_stride * vs
            assert all((b - o) % g == 0 for b, o, g in zip(tile, origin, grid))


def test_output_smaller_than_total_downsampling_is_refused(tmp_path):
    from synful.config import ConfigError

    # y: 214 -> output 2 voxels < 27
    with pytest.raises(ConfigError, match=r"input_shape \(42, 214, 430\).*smaller than the total downsampling "
                                          r"factor \(3, 27, 27\) along y.*\(42, 241, 430\)"):
        plan_prediction(default_network_setup(tmp_path, (42, 214, 430)))


@pytest.mark.slow
def test_roi_outside_raw_fails_before_any_worker(experiment, capsys):
    setup = predict_setup(experiment, {"roi_offset": (0, 0, 0), "roi_shape": (400, 80, 80)}, {})
    with pytest.raises(PredictionError, match="outside the raw data"):
        predict(setup, progress=False)
    assert main(["predict", str(setup)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "roi_offset" in err and "outside the raw data" in err
    assert not (setup / "log").exists() and not (setup / "predictions.zarr").exists()


@pytest.mark.slow
def test_missing_checkpoint_fails_before_any_worker(experiment):
    setup = predict_setup(experiment, {}, {})
    ini = setup / "predict_config.ini"
    ini.write_text(ini.read_text().replace(f"iteration = {ITERATION}", "iteration = 999"))
    with pytest.raises(PredictionError, match="no checkpoint for iteration 999"):
        predict(setup, progress=False)
    assert not (setup / "log").exists() and not (setup / "predictions.zarr").exists()


@pytest.mark.parametrize("padding", ["zero", "mirror"])
def test_read_padded_equals_padding_the_whole_volume(padding):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (5, 6, 7), dtype=np.uint8)
    vs = Coordinate(2, 3, 4)
    array = Array(data, offset=(10, 30, 40), voxel_size=vs)
    pad = (7, 2, 9)  # more than the data along z and x: mirrored more than once
    full = np.pad(data, [(p, p) for p in pad], mode="constant" if padding == "zero" else "reflect")
    begin = Coordinate(10, 30, 40) - Coordinate(pad) * vs
    for offset, shape in (((0, 0, 0), full.shape), ((3, 1, 8), (6, 5, 9)), ((12, 0, 0), (3, 4, 5))):
        roi = Roi(begin + Coordinate(offset) * vs, Coordinate(shape) * vs)
        want = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]
        np.testing.assert_array_equal(read_padded(array, roi, padding), want)


def test_encodings_follow_the_scale_contract():
    prob = np.array([0.0, 0.5, 0.999, 1.0], np.float32)
    stored, scale = encode_indicator(prob, "uint8")
    assert stored.dtype == np.uint8 and scale == pytest.approx(1 / 255)
    np.testing.assert_allclose(stored * scale, prob, atol=0.5 / 255)
    vec = np.array([-1000.0, -3.0, 0.0, 2.9, 1000.0], np.float32)
    stored, scale = encode_vectors(vec, "int8", 4.0)
    assert stored.dtype == np.int8 and scale == 4.0
    assert stored.tolist() == [-127, -1, 0, 1, 127]
    stored, scale = encode_vectors(vec, "float16", 4.0)
    assert stored.dtype == np.float16 and scale == 1.0


def test_gpu_slots_give_each_worker_its_own_gpu(tmp_path):
    from synful.predict import _GpuSlot

    with _GpuSlot(tmp_path, [0, 1]) as a, _GpuSlot(tmp_path, [0, 1]) as b, _GpuSlot(tmp_path, [0, 1]) as c:
        assert {a, b} == {0, 1} and c is None  # a third worker runs on CPU
    with _GpuSlot(tmp_path, [0, 1]) as a:  # released with their holders
        assert a == 0
