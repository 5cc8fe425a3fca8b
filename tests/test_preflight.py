"""Pre-flight checks: each problem is one line from `synful validate` (exit 2) and is refused by its stage
before anything is written or any worker starts (synful.preflight).

Setups are scaffolded as a user would (create_train_setup / create_predict_setups) around real zarr
volumes; a prediction's checkpoint is an empty file (planning and its checks load no weights).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from synful.cli import main
from synful.config import ConfigError
from synful.errors import SynfulError
from synful.io.volumes import write_volume
from synful.scaffold import create_predict_setups, create_train_setup

VOXEL_SIZE = (40, 4, 4)
# one level: input (8, 20, 20) -> output (2, 12, 12)
TRAINING = {"voxel_size": VOXEL_SIZE, "input_shape": (8, 20, 20), "fmap_num": 2, "fmap_inc_factor": 2,
            "downsample_factors": [(1, 2, 2)], "kernel_size": (3, 3, 3), "num_convs": 1, "tasks": "both",
            "elastic_augment": False, "simple_augment": False}
ITERATION = 1


def validate(capsys, *paths) -> tuple[int, list[str]]:
    """(exit code, stderr lines) of `synful validate PATHS`."""
    capsys.readouterr()
    rc = main(["validate", *map(str, paths)])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A synthetic CREMI container (raw, neuron ids, partners) of 12 x 48 x 48 voxels."""
    from synful.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("data") / "syn.zarr", (12, 48, 48), seed=1)


def write_manifest(path: Path, container, roi_shape=None, split="train") -> Path:
    entry = {"name": "small" if roi_shape else "syn", "container": str(container), "split": split}
    if roi_shape:
        entry["roi"] = {"offset": [0, 0, 0], "shape": list(roi_shape)}
    path.write_text(yaml.safe_dump({"samples": [entry]}))
    return path


def train_setup(base: Path, manifest, train_id=0, **training) -> Path:
    values = {**TRAINING, "manifest": str(manifest), **training}
    return create_train_setup(base, "exp", train_id, overrides={"train_config.ini": {"Training": values}})


def with_checkpoint(train_dir: Path) -> Path:
    from synful.train import checkpoint_path

    ckpt = checkpoint_path(train_dir, ITERATION)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"")
    return train_dir


def predict_setup(base: Path, raw_container, raw_dataset="volumes/raw", extraction=None, **prediction) -> Path:
    (setup,) = create_predict_setups(base, "exp", 0, [ITERATION], overrides={
        "predict_config.ini": {"Prediction": {"raw_container": str(raw_container), "raw_dataset": raw_dataset,
                                              **prediction}, "Extraction": extraction or {}},
        "worker_config.ini": {"Worker": {"executor": "local", "gpus": 0}}})
    return setup


def raw_volume(path: Path, data: np.ndarray) -> Path:
    write_volume(path, "volumes/raw", data, VOXEL_SIZE)
    return path


def nothing_written(setup: Path):
    """No trace of a started run: no logs, done markers, outputs or store."""
    for name in ("log", "blocks", "predictions.zarr", "partners.sqlite", "extract_tracking", "checkpoints"):
        assert not (setup / name).exists(), f"{setup / name} was written"


@pytest.fixture
def experiment(tmp_path, sample):
    """A valid training setup (manifest of the synthetic sample, checkpoint of ITERATION) and uint8 raw."""
    train_dir = with_checkpoint(train_setup(tmp_path, write_manifest(tmp_path / "manifest.yaml", sample)))
    raw = raw_volume(tmp_path / "raw.zarr", np.random.default_rng(0).integers(0, 256, (10, 30, 30), np.uint8))
    return {"base": tmp_path, "train_dir": train_dir, "raw": raw}


def test_valid_setups_pass(experiment, capsys):
    setup = predict_setup(experiment["base"], experiment["raw"])
    rc, err = validate(capsys, experiment["train_dir"], setup)
    assert (rc, err) == (0, [])


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

def test_impossible_training_input_shape(tmp_path, sample, capsys):
    from synful.train import train

    setup = train_setup(tmp_path, write_manifest(tmp_path / "m.yaml", sample), input_shape=(8, 21, 20))
    rc, err = validate(capsys, setup)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {setup / 'train_config.ini'} [Training] input_shape (8, 21, 20) does not fit")
    with pytest.raises(ConfigError, match=r"\[Training\] input_shape \(8, 21, 20\) does not fit"):
        train(setup, 1)
    nothing_written(setup)


def test_missing_manifest(tmp_path, capsys):
    from synful.train import train

    setup = train_setup(tmp_path, tmp_path / "missing.yaml")
    rc, err = validate(capsys, setup)
    assert (rc, err) == (2, [f"error: {tmp_path / 'missing.yaml'}: manifest not found"])
    with pytest.raises(SynfulError, match="missing.yaml: manifest not found"):
        train(setup, 1)
    nothing_written(setup)


def test_training_sample_smaller_than_the_input(tmp_path, sample, capsys):
    from synful.train import TrainError, train

    # (3, 10, 10) voxels + context (6, 8, 8) < input (8, 20, 20)
    setup = train_setup(tmp_path, write_manifest(tmp_path / "m.yaml", sample, roi_shape=(120, 40, 40)))
    rc, err = validate(capsys, setup)
    assert rc == 2 and len(err) == 1
    assert "sample small: ROI of (3, 10, 10) voxels" in err[0] and "[Training] input_shape (8, 20, 20)" in err[0]
    with pytest.raises(TrainError, match="sample small"):
        train(setup, 1)
    nothing_written(setup)


def test_training_raw_must_be_uint8(tmp_path, sample, capsys):
    import shutil

    import zarr

    from synful.train import TrainError, train

    container = tmp_path / "u16.zarr"
    shutil.copytree(sample, container)
    g = zarr.open_group(str(container), mode="r+")
    raw = g["volumes/raw"]
    attrs = dict(raw.attrs)
    g.create_dataset("volumes/raw", data=raw[:].astype(np.uint16) * 256, overwrite=True)
    g["volumes/raw"].attrs.update(attrs)
    setup = train_setup(tmp_path, write_manifest(tmp_path / "m.yaml", container))
    rc, err = validate(capsys, setup)
    assert rc == 2 and err == [f"error: {container}/volumes/raw: raw dtype uint16, but the network takes uint8 raw "
                               f"(0..255, as in training); convert the raw to uint8"]
    with pytest.raises(TrainError, match="raw dtype uint16"):
        train(setup, 1)
    nothing_written(setup)


# --------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------

def test_missing_checkpoint(experiment, capsys):
    from synful.predict import PredictionError, predict

    setup = predict_setup(experiment["base"], experiment["raw"])
    ini = setup / "predict_config.ini"
    ini.write_text(ini.read_text().replace(f"iteration = {ITERATION}", "iteration = 999"))
    rc, err = validate(capsys, setup)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {ini} [Prediction] iteration: no checkpoint for iteration 999")
    assert "iterations with checkpoints: 1" in err[0]
    with pytest.raises(PredictionError, match="no checkpoint for iteration 999"):
        predict(setup, progress=False)
    nothing_written(setup)


def test_bad_prediction_input_shape_is_named_under_prediction(experiment, capsys):
    from synful.predict import predict

    setup = predict_setup(experiment["base"], experiment["raw"], input_shape=(8, 21, 20))
    rc, err = validate(capsys, setup)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {setup / 'predict_config.ini'} [Prediction] input_shape (8, 21, 20) does "
                             f"not fit downsample_factors")
    assert "[Training] input_shape" not in err[0] and str(experiment["train_dir"] / "train_config.ini") in err[0]
    with pytest.raises(ConfigError, match=r"\[Prediction\] input_shape \(8, 21, 20\) does not fit"):
        predict(setup, progress=False)
    nothing_written(setup)


def test_bad_training_input_shape_is_named_under_training_in_a_prediction(experiment, capsys):
    ini = experiment["train_dir"] / "train_config.ini"
    ini.write_text(ini.read_text().replace("input_shape = 8, 20, 20", "input_shape = 8, 21, 20"))
    setup = predict_setup(experiment["base"], experiment["raw"])
    rc, err = validate(capsys, setup)
    assert rc == 2
    assert f"error: {ini} [Training] input_shape (8, 21, 20) does not fit" in "\n".join(err)
    assert not any("[Prediction] input_shape" in e for e in err)


@pytest.mark.parametrize("dtype, values", [("uint16", 1000), ("float32", 0.5), ("float32", np.nan),
                                           ("float64", 0.5)])
def test_raw_dtype_is_refused_before_any_worker(experiment, capsys, dtype, values):
    from synful.predict import PredictionError, predict

    raw = raw_volume(experiment["base"] / f"raw_{dtype}.zarr", np.full((10, 30, 30), values, dtype))
    setup = predict_setup(experiment["base"], raw)
    rc, err = validate(capsys, setup)
    line = (f"error: {raw}/volumes/raw: raw dtype {dtype}, but the network takes uint8 raw (0..255, as in "
            f"training); convert the raw to uint8")
    assert (rc, err) == (2, [line])
    with pytest.raises(PredictionError, match=f"raw dtype {dtype}"):
        predict(setup, progress=False)
    assert main(["predict", str(setup), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    nothing_written(setup)


def empty_raw(path: Path) -> Path:
    """A raw dataset of shape (0, 0, 0) (write_volume cannot make one: zarr needs chunks of at least 1)."""
    import zarr

    d = zarr.open_group(str(path), mode="w").create_dataset("volumes/raw", shape=(0, 0, 0), chunks=(1, 1, 1),
                                                            dtype="uint8")
    d.attrs.update(voxel_size=list(VOXEL_SIZE), offset=[0, 0, 0], resolution=list(VOXEL_SIZE))
    return path


def test_empty_raw_and_empty_roi_are_refused(experiment, capsys):
    from synful.predict import predict

    raw = empty_raw(experiment["base"] / "empty.zarr")
    setup = predict_setup(experiment["base"], raw)
    rc, err = validate(capsys, setup)
    assert (rc, err) == (2, [f"error: {raw}/volumes/raw: empty raw dataset (shape (0, 0, 0)), nothing to predict"])
    assert main(["predict", str(setup), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == err
    nothing_written(setup)

    setup = predict_setup(experiment["base"], experiment["raw"], roi_offset=(0, 0, 0), roi_shape=(0, 40, 40))
    rc, err = validate(capsys, setup)
    assert (rc, err) == (2, [f"error: {setup / 'predict_config.ini'} [Prediction] roi_shape: must be positive, "
                             f"got (0, 40, 40)"])
    with pytest.raises(ConfigError, match="roi_shape: must be positive"):
        predict(setup, progress=False)
    nothing_written(setup)


def test_manifest_roi_outside_the_raw_is_an_empty_roi(experiment, sample, capsys):
    """raw_container unset: the manifest's test sample names the raw and its ROI; a ROI beyond the raw is empty."""
    from synful.predict import PredictionError, predict

    manifest = yaml.safe_load(Path(experiment["train_dir"], "train_config.ini").read_text().split("manifest = ")[1]
                              .splitlines()[0])
    doc = yaml.safe_load(Path(manifest).read_text())
    doc["samples"].append({"name": "far", "container": str(experiment["raw"]), "labels_dataset": None,
                           "split": "test", "roi": {"offset": [4000, 4000, 4000], "shape": [400, 40, 40]}})
    Path(manifest).write_text(yaml.safe_dump(doc))
    (setup,) = create_predict_setups(experiment["base"], "exp", 0, [ITERATION])
    rc, err = validate(capsys, setup)
    assert rc == 2 and len(err) == 1 and "[Prediction]: the ROI to predict" in err[0] and "is empty" in err[0]
    with pytest.raises(PredictionError, match="is empty"):
        predict(setup, progress=False)
    nothing_written(setup)


def test_several_problems_one_line_each(experiment, capsys):
    raw = raw_volume(experiment["base"] / "f.zarr", np.zeros((10, 30, 30), np.float32))
    setup = predict_setup(experiment["base"], raw, input_shape=(8, 21, 20),
                          extraction={"seg_container": str(experiment["base"] / "no_such.zarr")})
    ini = setup / "predict_config.ini"
    ini.write_text(ini.read_text().replace(f"iteration = {ITERATION}", "iteration = 7"))
    rc, err = validate(capsys, setup)
    assert rc == 2 and len(err) == 4, err
    assert "[Prediction] iteration: no checkpoint for iteration 7" in err[0]
    assert "raw dtype float32" in err[1]
    assert "[Prediction] input_shape (8, 21, 20)" in err[2]
    assert "no_such.zarr" in err[3] and "segmentation" in err[3]


# --------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------

def test_extraction_checks(experiment, capsys):
    from synful.extract import extract

    # before prediction: validate is fine with the missing outputs; extract refuses them
    setup = predict_setup(experiment["base"], experiment["raw"])
    assert validate(capsys, setup) == (0, [])
    with pytest.raises(SynfulError, match=r"pred_syn_indicator.*run prediction first"):
        extract(setup, multiprocessing=False)
    nothing_written(setup)

    setup = predict_setup(experiment["base"], experiment["raw"],
                          extraction={"method": "nms", "nms_radius": (80, 80, 80), "context": (100, 400, 400)})
    rc, err = validate(capsys, setup)
    assert (rc, err) == (2, [f"error: {setup / 'predict_config.ini'} [Extraction] context: must be at least "
                             f"2 x nms_radius per axis for method = nms, got (100, 400, 400)"])
    with pytest.raises(ConfigError, match="2 x nms_radius"):
        extract(setup, multiprocessing=False)
    nothing_written(setup)

    seg = experiment["base"] / "seg.zarr"
    setup = predict_setup(experiment["base"], experiment["raw"], extraction={"seg_container": str(seg)})
    rc, err = validate(capsys, setup)
    assert rc == 2 and len(err) == 1 and str(seg) in err[0] and "segmentation" in err[0]


# --------------------------------------------------------------------------------------
# read-only outputs
# --------------------------------------------------------------------------------------

@pytest.fixture
def read_only(tmp_path):
    """``(folder, freeze)``: a folder to fill, and ``freeze()`` making it read-only -- a tmpfs remounted
    read-only when running as root (chmod does not stop root), else chmod 0o555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    root = os.geteuid() == 0
    if root and subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without permission to mount a tmpfs: cannot make a read-only folder")

    def freeze():
        if root:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            for d, dirs, _ in os.walk(folder):
                os.chmod(d, 0o555)

    try:
        yield folder, freeze
    finally:
        if root:
            subprocess.run(["umount", "-l", str(folder)], check=True)
        else:
            for d, dirs, _ in os.walk(folder):
                os.chmod(d, 0o755)


def test_prediction_into_a_read_only_run_directory(experiment, read_only, capsys):
    from synful.predict import PredictionError, predict

    folder, freeze = read_only
    # the whole experiment lives on the file system made read-only; raw and manifest outside it
    with_checkpoint(train_setup(folder, experiment["base"] / "manifest.yaml"))
    setup = predict_setup(folder, experiment["raw"])
    freeze()
    rc, err = validate(capsys, setup)
    assert rc == 2 and len(err) == 2, err
    assert err[0].startswith(f"error: {setup}: cannot write the prediction run directory")
    assert err[1].startswith(f"error: {setup / 'predictions.zarr'}: cannot write the output container")
    with pytest.raises(PredictionError, match="cannot write the prediction run directory"):
        predict(setup, progress=False)
    assert main(["predict", str(setup), "--no-progress"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    nothing_written(setup)


def test_synthetic_into_a_read_only_folder(read_only, capsys):
    folder, freeze = read_only
    freeze()
    for out in (folder / "syn.zarr", folder / "sub" / "syn.zarr"):
        capsys.readouterr()
        assert main(["synthetic", "--out", str(out), "--shape", "4", "32", "32"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {out}: cannot write") and "Traceback" not in err[0]
    assert list(folder.iterdir()) == []


def test_synthetic_of_no_voxels(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "s.zarr"), "--shape", "0", "0", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: synthetic: shape (0, 0, 0) too small (need z >= 1, y and x >= 16 voxels)"]
    assert not (tmp_path / "s.zarr").exists()


def test_an_unreadable_config_is_one_line(experiment, capsys):
    """predict_config.ini is read by the prediction and the extraction checks: its error is said once."""
    setup = predict_setup(experiment["base"], experiment["raw"])
    ini = setup / "predict_config.ini"
    ini.write_text(ini.read_text().replace("cc_threshold = 0.5", "cc_threshold = nan"))
    worker = setup / "worker_config.ini"
    worker.write_text(worker.read_text().replace("num_cpus = 5", "num_cpus = 0"))
    rc, err = validate(capsys, setup)
    assert (rc, err) == (2, [f"error: {ini} [Extraction] cc_threshold: expected a finite number, got nan",
                             f"error: {worker} [Worker] num_cpus: must be >= 1, got 0"])
