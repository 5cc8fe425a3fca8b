"""Tissue masks and the whole-brain plan: blocks without tissue are neither predicted nor extracted, and
are not missing; ``synful predict --plan`` on a FAFB-sized ROI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi
from test_predict import ITERATION, TRAINING, VOXEL_SIZE, make_experiment, predict_setup, read_outputs

from synful.io.volumes import open_volume, write_volume
from synful.predict import plan_prediction
from synful.predict.estimate import describe_plan, format_plan
from synful.scaffold import create_predict_setups, create_train_setup
from synful.tissue import TissueMask, blocks_with_tissue, read_tissue_mask, task_skip_mask


def brute_force(mask: TissueMask, begin, block, grid) -> np.ndarray:
    """Per block: any nonzero mask voxel whose ROI intersects the block's write ROI (nm)."""
    out = np.zeros(grid, bool)
    idx = np.argwhere(mask.data)
    lo = np.asarray(mask.roi.begin) + idx * np.asarray(mask.voxel_size)
    hi = lo + np.asarray(mask.voxel_size)
    for b in np.ndindex(*grid):
        b_lo = np.asarray(begin) + np.asarray(b) * np.asarray(block)
        b_hi = b_lo + np.asarray(block)
        out[b] = bool(np.any(np.all((lo < b_hi) & (hi > b_lo), axis=1)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_blocks_with_tissue_equals_brute_force(seed):
    """Mask voxels that do not divide the blocks, a mask offset and a mask smaller than the block grid."""
    rng = np.random.default_rng(seed)
    vs = Coordinate(rng.integers(1, 7, 3) * 10)
    shape = tuple(rng.integers(2, 9, 3))
    data = rng.random(shape) < 0.15
    mask = TissueMask("m.zarr", "mask", data, Roi(tuple(rng.integers(-30, 30, 3) * 10), Coordinate(shape) * vs), vs)
    block = Coordinate(rng.integers(2, 9, 3) * 10)
    grid = tuple(int(g) for g in rng.integers(2, 8, 3))
    begin = Coordinate(rng.integers(-40, 40, 3) * 10)
    got = blocks_with_tissue(mask, begin, block, grid)
    assert got.shape == grid
    assert np.array_equal(got, brute_force(mask, begin, block, grid))


def test_skip_mask_follows_daisys_block_layout(tmp_path):
    """Run a daisy task with the skip mask: exactly the blocks whose write ROI meets tissue are processed."""
    import daisy.v2 as daisy

    vs = Coordinate(40, 40, 40)
    data = np.zeros((5, 6, 7), bool)
    data[1, 2, 3] = data[4, 5, 6] = data[0, 0, 0] = True
    mask = TissueMask("m.zarr", "mask", data, Roi((-40, 0, 20), Coordinate(data.shape) * vs), vs)
    total, read_roi, write_roi = Roi((0, 0, 0), (260, 300, 330)), Roi((0, 0, 0), (70, 70, 70)), Roi((10, 10, 10),
                                                                                                   (50, 50, 50))
    grid = daisy.Task("t", total, read_roi, write_roi, process_function=lambda b: None, read_write_conflict=False,
                      fit="overhang").block_grid_shape
    skip = task_skip_mask(mask, total, read_roi, write_roi, grid)
    seen = []
    task = daisy.Task("t", total, read_roi, write_roi, process_function=lambda b: seen.append(b.write_roi),
                      read_write_conflict=False, fit="overhang", skip_mask=skip)
    state = daisy.run_blockwise(task, multiprocessing=False, return_states=True, summary=False)["t"]
    assert 0 < len(seen) < int(np.prod(grid))
    assert int(state.skipped_count) == int(skip.sum()) and state.completed_count == state.total_block_count
    tissue = [Roi(mask.roi.begin + Coordinate(i) * vs, vs) for i in np.argwhere(data)]
    processed = {(tuple(r.offset), tuple(r.shape)) for r in seen}
    for b in np.ndindex(*grid):  # every block of the grid: processed iff it meets tissue
        w = Roi(total.begin + (write_roi.begin - read_roi.begin) + Coordinate(b) * write_roi.shape, write_roi.shape)
        meets = any(w.intersects(t) for t in tissue)
        assert any(o == tuple(w.offset) for o, _ in processed) == meets, (b, meets)


def test_bad_mask_is_one_line_naming_it(tmp_path):
    with pytest.raises(Exception, match=r"where: .*nowhere\.zarr does not exist"):
        read_tissue_mask(str(tmp_path / "nowhere.zarr"), "mask", where="where")
    write_volume(tmp_path / "m.zarr", "other", np.ones((2, 2, 2), np.uint8), (40, 40, 40))
    with pytest.raises(Exception, match=r"where: .*m\.zarr.*mask"):
        read_tissue_mask(str(tmp_path / "m.zarr"), "mask", where="where")


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return make_experiment(tmp_path_factory.mktemp("tissue"), "exp", TRAINING, (11, 130, 64))


@pytest.mark.slow
def test_masked_blocks_are_neither_predicted_nor_extracted_nor_missing(experiment, tmp_path):
    """Prediction and extraction with a tissue mask: the blocks with tissue equal an unmasked run's, the
    others stay unwritten and hold no partners; both runs are complete; a rerun does nothing."""
    from synful.extract import extract
    from synful.predict import predict
    from synful.store import open_run_store

    prediction = {"block_factor": (2, 2, 2), "indicator_dtype": "uint8", "vectors_dtype": "int8"}
    # extraction blocks = prediction write blocks (4 x 24 x 24 voxels), context less than a block
    extraction = {"cc_threshold": 0.5, "block_shape": (160, 96, 96), "context": (80, 48, 48)}
    full = predict_setup(experiment, prediction, {"num_block_workers": 1})
    _set_extraction(full, extraction)
    predict(full, progress=False)
    extract(full, num_workers=1)

    # tissue: the low-y half of the volume, at 160 x 96 x 96 nm voxels (no divisor of the blocks)
    plan = plan_prediction(full)
    mvs = Coordinate(160, 96, 96)
    mshape = tuple(-(-e // v) for e, v in zip(plan.roi.end, mvs))  # from 0 (an offset on the mask's grid)
    data = np.zeros(mshape, np.uint8)
    data[:, : mshape[1] // 2, :] = 1
    mask_container = experiment["base"] / "mask.zarr"
    write_volume(mask_container, "volumes/mask", data, mvs)
    masked = predict_setup(experiment, {**prediction, "tissue_mask_container": str(mask_container)},
                           {"num_block_workers": 2})
    _set_extraction(masked, extraction)
    meta = predict(masked, progress=False)
    mplan = plan_prediction(masked)
    skip = mplan.skip_mask()
    assert 0 < int(skip.sum()) < skip.size
    assert meta["complete"] and meta["blocks"]["without_tissue"] == int(skip.sum())
    assert meta["blocks"]["processed"] == skip.size - int(skip.sum())

    (ind_full, vec_full), (ind, vec) = read_outputs(full), read_outputs(masked)
    kept = predicted = 0
    for b in np.ndindex(*mplan.grid_shape()):
        roi = Roi(mplan.roi.begin + Coordinate(b) * mplan.block_write, mplan.block_write).intersect(mplan.roi)
        if skip[b]:
            assert not np.any(ind[roi]) and not np.any(vec[roi]), f"block {b} without tissue was written"
        else:
            kept += 1
            assert np.array_equal(ind[roi], ind_full[roi]) and np.array_equal(vec[roi], vec_full[roi])
            predicted += int(np.count_nonzero(ind[roi]))
    assert kept and predicted

    summary = extract(masked, num_workers=2)
    # daisy skipped exactly the blocks without tissue (none was done before)
    assert summary["complete"] and summary["blocks_without_tissue"] == int(skip.sum())
    assert summary["blocks_skipped"] == 0
    got, want = open_run_store(masked).query(), open_run_store(full).query()
    # extraction blocks are the prediction blocks here: a partner lies in a block with tissue, and in a
    # block whose neighbours all have tissue too (all it reads) the partners are the unmasked run's
    begin, shape, grid = _extract_grid(masked)
    assert tuple(grid) == tuple(skip.shape) and tuple(shape) == tuple(mplan.block_write)
    keep = np.pad(skip == 0, 1, constant_values=True)
    interior = np.ones(skip.shape, bool)
    for off in np.ndindex(3, 3, 3):
        interior &= keep[off[0]:off[0] + grid[0], off[1]:off[1] + grid[1], off[2]:off[2] + grid[2]]
    got_blocks = [_block_of(p, (begin, shape)) for p in got]
    assert len(got) and all(skip[b] == 0 for b in got_blocks)
    want_interior = {int(p["id"]) for p in want if interior[_block_of(p, (begin, shape))]}
    got_interior = {int(p["id"]) for p, b in zip(got, got_blocks) if interior[b]}
    assert want_interior and got_interior == want_interior
    assert len(got) < len(want)

    again = predict(masked, progress=False)
    assert again["blocks"]["processed"] == 0 and again["blocks"]["skipped"] == skip.size - int(skip.sum())
    assert extract(masked, num_workers=1)["blocks_skipped"] == summary["blocks_total"] - \
        summary["blocks_without_tissue"]


def _set_extraction(setup, values: dict):
    import configparser

    ini = setup / "predict_config.ini"
    cfg = configparser.ConfigParser()
    cfg.read(ini)
    for k, v in values.items():
        cfg["Extraction"][k] = ", ".join(map(str, v)) if isinstance(v, tuple) else str(v)
    with open(ini, "w") as f:
        cfg.write(f)


def _extract_grid(setup):
    """(first write-block begin, block shape, grid) of the extraction's daisy task (nm)."""
    from synful.extract.run import _run_for

    total, read_roi, write_roi = _run_for(setup).block_geometry()
    begin = total.begin + (write_roi.begin - read_roi.begin)
    grid = tuple(-(-(s - r) // w) + 1 for s, r, w in zip(total.shape, read_roi.shape, write_roi.shape))
    return begin, write_roi.shape, grid


def _block_of(partner, geometry):
    begin, shape = geometry
    post = np.array([partner["post_z"], partner["post_y"], partner["post_x"]])
    return tuple(int(v) for v in (post - np.asarray(begin)) // np.asarray(shape))


# FAFB v14: 7,062 sections of 40 nm, 155,648 x 286,720 pixels of 4 nm (y, x): 0.62 x 1.15 mm
FAFB_VOXELS = (7062, 155648, 286720)


def test_plan_of_a_fafb_sized_roi_with_a_tissue_mask(tmp_path):
    """--plan on FAFB's extent (a raw dataset without chunks: nothing is read) and an ellipsoid tissue mask."""
    train_dir = create_train_setup(tmp_path, "fafb", 0)  # Synful's network: input 42 x 430 x 430
    from synful.train import checkpoint_path

    ckpt = checkpoint_path(train_dir, ITERATION)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"weights")
    raw = tmp_path / "fafb" / "01_data" / "fafb.zarr"
    arr = zarr.open(str(raw), mode="w", path="volumes/raw", shape=FAFB_VOXELS, chunks=(64, 1024, 1024), dtype="u1")
    arr.attrs.update({"voxel_size": list(VOXEL_SIZE), "offset": [0, 0, 0]})
    extent = np.asarray(FAFB_VOXELS) * np.asarray(VOXEL_SIZE)
    mvs = np.array([2560, 2048, 2048])
    mshape = tuple(-(-extent // mvs))
    zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in mshape], indexing="ij")
    ellipsoid = (zz / 0.45) ** 2 + (yy / 0.4) ** 2 + (xx / 0.45) ** 2 <= 1
    write_volume(tmp_path / "mask.zarr", "volumes/mask", ellipsoid.astype(np.uint8), tuple(mvs))
    (setup,) = create_predict_setups(tmp_path, "fafb", 0, [ITERATION], overrides={
        "predict_config.ini": {"Prediction": {"raw_container": str(raw), "block_factor": (10, 5, 5),
                                              "tissue_mask_container": str(tmp_path / "mask.zarr")}},
        "worker_config.ini": {"Worker": {"executor": "slurm", "num_block_workers": 64, "gpus": 1}}})
    d = describe_plan(setup, rate=20e6)
    plan = plan_prediction(setup)
    assert tuple(plan.block_write / plan.voxel_size) == (60, 1080, 1080)  # tile stride 6 x 216 x 216
    grid = tuple(-(-v // b) for v, b in zip(FAFB_VOXELS, (60, 1080, 1080)))
    assert d["grid"] == list(grid) and d["blocks"] == int(np.prod(grid))
    assert d["roi_voxels"] == int(np.prod(FAFB_VOXELS, dtype=np.int64))
    # the ellipsoid holds ~ pi/6 * 0.9 * 0.8 * 0.9 = 34% of the box; blocks at its border add a little
    frac = d["blocks_with_tissue"] / d["blocks"]
    assert 0.33 < frac < 0.40, frac
    assert d["blocks_with_tissue"] + d["blocks_without_tissue"] == d["blocks"]
    # spot checks against the mask itself, block by block
    mask = read_tissue_mask(str(tmp_path / "mask.zarr"), "volumes/mask")
    keep = plan.skip_mask() == 0
    rng = np.random.default_rng(0)
    for b in zip(*[rng.integers(0, g, 300) for g in grid]):
        roi = Roi(plan.roi.begin + Coordinate(b) * plan.block_write, plan.block_write)
        lo = np.maximum((np.asarray(roi.begin) - np.asarray(mask.roi.begin)) // mvs, 0)
        hi = -(-(np.asarray(roi.end) - np.asarray(mask.roi.begin)) // mvs)
        assert keep[b] == bool(mask.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].any()), b
    # voxels: full blocks with tissue, the far-end blocks cropped; 4 bytes per voxel (uint8 + 3 x float16 -> 7)
    assert d["voxels"] <= d["blocks_with_tissue"] * 60 * 1080 * 1080
    assert d["voxels"] > 0.98 * d["blocks_with_tissue"] * 60 * 1080 * 1080
    assert d["output_bytes"] == d["voxels"] * 7
    assert d["slurm_jobs"] == 64 and d["workers"] == 64
    assert d["device_hours"] == pytest.approx(d["voxels"] / 20e6 / 3600)
    text = format_plan(d)
    assert f"{d['blocks']:,} of (60, 1080, 1080) voxels" in text and "64 Slurm job(s)" in text
    assert "device-hours" in text

    res = subprocess.run([sys.executable, "-m", "synful", "predict", str(setup), "--plan", "--rate", "2e7"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{d['blocks_with_tissue']:,} with tissue" in res.stdout
    assert not (setup / "predictions.zarr").exists() and not (setup / "blocks").exists()  # nothing ran


def test_plan_reads_the_rate_of_a_benchmark_json(tmp_path):
    from test_predict import default_network_setup

    setup = default_network_setup(tmp_path)
    bench = tmp_path / "bench_predict.json"
    bench.write_text(json.dumps({"commit": "abc1234", "date": "2026-01-01", "network_cpu": {"input_shape": [42, 430,
                                                                                                         430]},
                                 "modes": {"cpu_float32": {"steady": {"voxels_per_second": 1e6}, "device": "CPU x"}}}))
    d = describe_plan(setup, benchmark=bench)
    assert d["rate"]["voxels_per_second"] == 1e6 and d["rate"]["commit"] == "abc1234"
    assert d["device_hours"] == pytest.approx(d["voxels"] / 1e6 / 3600)
    assert "cpu_float32 steady rate on CPU x" in format_plan(d)
    with pytest.raises(Exception, match=r"nothing\.json: no benchmark results.*--rate"):
        describe_plan(setup, benchmark=tmp_path / "nothing.json")
