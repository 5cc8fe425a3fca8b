"""Fault injection: a copied or moved experiment is not 'changed' (issue 5).

The prediction signature (what a resumed run must match) hashes what determines the output -- the
checkpoint's content, the raw dataset, the geometry and settings, paths relative to the experiment --
not where the experiment lives.  After copying or moving the experiment elsewhere, ``synful predict``
resumes with nothing redone and identical outputs; a genuinely changed setting or checkpoint is still
refused.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from synful.config import fill_template, read_train_config
from synful.io.volumes import open_volume, write_volume
from synful.predict import PredictionError, plan_prediction, predict
from synful.scaffold import create_predict_setups, create_train_setup

TINY_UNET = {"voxel_size": (40, 4, 4), "input_shape": (8, 20, 20), "fmap_num": 2, "fmap_inc_factor": 2,
             "downsample_factors": [(1, 2, 2)], "kernel_size": (3, 3, 3), "num_convs": 1, "tasks": "both"}


def save_random_weights(train_dir, seed: int):
    from synful.models import build_unet
    from synful.train import checkpoint_path

    model = build_unet(read_train_config(train_dir / "train_config.ini"))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    ckpt = checkpoint_path(train_dir, 1)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(ckpt))
    return ckpt


def make_experiment(base):
    """exp/ with a training setup (random-weight checkpoint), raw data in 01_data, one prediction setup."""
    train_dir = create_train_setup(base, "exp", 0, overrides={"train_config.ini": {"Training": TINY_UNET}})
    save_random_weights(train_dir, 0)
    rng = np.random.default_rng(0)
    write_volume(base / "exp" / "01_data" / "raw.zarr", "volumes/raw", rng.integers(0, 256, (6, 40, 40), np.uint8),
                 (40, 4, 4), offset=(0, 0, 0))
    prediction = {"raw_container": "../../01_data/raw.zarr", "raw_dataset": "volumes/raw",
                  "indicator_dtype": "float32", "vectors_dtype": "float32"}
    (pdir,) = create_predict_setups(base, "exp", 0, [1], overrides={
        "predict_config.ini": {"Prediction": prediction},
        "worker_config.ini": {"Worker": {"executor": "local", "gpus": 0}}})
    return pdir


def outputs(pdir):
    p = plan_prediction(pdir).prediction
    ind, vec = open_volume(p.out_container, p.indicator_dataset), open_volume(p.out_container, p.vectors_dataset)
    return ind[ind.roi], vec[vec.roi]


def chunk_mtimes(pdir) -> dict:
    root = pdir / "predictions.zarr"
    return {os.path.relpath(os.path.join(d, f), root): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(root) for f in files if not f.startswith(".")}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_moved_or_copied_experiment_resumes_with_nothing_redone(tmp_path, how):
    pdir = make_experiment(tmp_path / "disk1")
    first = predict(pdir, progress=False, in_process=True)
    assert first["complete"] and first["blocks"]["processed"] == first["blocks"]["total"] > 1
    before = outputs(pdir)

    # another disk: copied (preserving nothing but the bytes) or moved; the old tree may still exist
    target = tmp_path / "disk2" / "projects"
    target.mkdir(parents=True)
    if how == "move":
        shutil.move(str(tmp_path / "disk1" / "exp"), str(target / "exp"))
    else:
        shutil.copytree(tmp_path / "disk1" / "exp", target / "exp", copy_function=shutil.copy)
    moved = target / "exp" / pdir.relative_to(tmp_path / "disk1" / "exp")
    mtimes = chunk_mtimes(moved)

    again = predict(moved, progress=False, in_process=True)  # before the fix: 'the configuration changed'
    assert again["complete"] and again["blocks"]["processed"] == 0
    assert again["blocks"]["skipped"] == again["blocks"]["total"] == first["blocks"]["total"]
    assert chunk_mtimes(moved) == mtimes  # nothing rewritten
    for a, b in zip(outputs(moved), before):
        np.testing.assert_array_equal(a, b)

    # what determines the output still counts: a changed setting ...
    ini = moved / "predict_config.ini"
    text = ini.read_text()
    ini.write_text(fill_template(text, {"Prediction": {"padding": "mirror"}}))
    with pytest.raises(PredictionError, match="configuration changed"):
        predict(moved, progress=False, in_process=True)
    ini.write_text(text)
    # ... and a checkpoint with other weights at the same path
    save_random_weights(target / "exp" / "02_train" / "setup_t0", 1)
    with pytest.raises(PredictionError, match="configuration changed"):
        predict(moved, progress=False, in_process=True)


def test_signature_ignores_where_the_experiment_lives(tmp_path):
    pdir = make_experiment(tmp_path / "a")
    sig = plan_prediction(pdir).signature()
    shutil.copytree(tmp_path / "a", tmp_path / "b" / "deeper")
    assert plan_prediction(tmp_path / "b" / "deeper" / pdir.relative_to(tmp_path / "a")).signature() == sig
    # runs started by an earlier synful (absolute-path or host-encoding "v2-" signatures) are refused
    plan = plan_prediction(pdir)
    assert sig.startswith("v3-") and plan.matches(sig)
    assert plan.from_older_version("v2-0123456789abcdef") and plan.from_older_version("0123456789abcdef")
    assert not plan.from_older_version(sig)
