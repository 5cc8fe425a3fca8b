"""A newcomer's path: the template defaults train, every setting is read, names and messages are consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from synful.config import ConfigError, read_predict_config, read_train_config
from synful.scaffold import create_predict_setups, create_train_setup, template_text
from synful.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parent.parent

# only what makes the network and its input small enough for a CPU test; everything else is the template's
TINY_NETWORK = {"input_shape": (12, 76, 76), "kernel_size": (1, 3, 3), "fmap_num": 4, "fmap_inc_factor": 2,
                "downsample_factors": [(1, 2, 2), (1, 2, 2)], "elastic_augment": False}
#: the weighted loss terms at initialisation are within this factor of each other
BALANCE = 10.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic volume (24 x 160 x 160 voxels at 40 x 4 x 4 nm, as `synful synthetic`) and its manifest."""
    base = tmp_path_factory.mktemp("data")
    container = write_synthetic(base / "syn.zarr", (24, 160, 160), seed=3)
    manifest = base / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"samples": [{"name": "syn", "container": str(container)}]}))
    return manifest


def _setup(tmp_path, manifest, training=None, worker=None, train_id=0):
    return create_train_setup(tmp_path, "exp", train_id, overrides={
        "train_config.ini": {"Training": {**TINY_NETWORK, "manifest": str(manifest), **(training or {})}},
        "worker_config.ini": {"Worker": worker or {}}})


def _weighted_terms(cfg, model, batches, keys) -> np.ndarray:
    """Mean (m_loss_scale * m_loss, d_loss_scale * d_loss) of ``model`` over ``batches``."""
    from synful.gp.keras_train import to_network
    from synful.train import compute_losses

    out = []
    for b in batches:
        targets = {"gt_syn_indicator": keys.gt_indicator, "indicator_weights": keys.indicator_weights,
                   "gt_partner_vectors": keys.gt_vectors, "vectors_mask": keys.vectors_mask}
        targets = {name: to_network(b[k].data) for name, k in targets.items()}
        losses = compute_losses(cfg, model(to_network(b[keys.raw].data), training=False), targets)
        out.append((cfg.m_loss_scale * float(losses["m_loss"]), cfg.d_loss_scale * float(losses["d_loss"])))
    return np.mean(out, axis=0)


@pytest.mark.slow
def test_template_defaults_balance_the_loss_terms_and_train_both(tmp_path, data):
    """With [Training] vector_scale 1 and d_loss_scale 0.01 the vector term was ~60x the indicator term at the
    start (34 vs 0.58 here) and barely moved; the defaults start them at 0.34 and 0.58 and lower both."""
    import dask
    import gunpowder as gp
    import keras

    from synful.gp import seeded_request
    from synful.models import build_unet
    from synful.train import KerasTrainer, _training_samples, training_pipeline

    cfg = read_train_config(_setup(tmp_path, data) / "train_config.ini")
    keras.utils.set_random_seed(0)
    trainer = KerasTrainer(cfg, build_unet(cfg))
    samples = _training_samples(cfg)
    pipeline, request, keys, _ = training_pipeline(cfg, samples)
    with dask.config.set(scheduler="synchronous"), gp.build(pipeline):
        held_out = [pipeline.request_batch(seeded_request(request, 10 ** 6, i)) for i in range(8)]

    before = _weighted_terms(cfg, trainer.model, held_out, keys)
    assert before.max() / before.min() < BALANCE, f"weighted (indicator, vector) loss at the start: {before}"

    pipeline, request, keys, train_node = training_pipeline(cfg, samples, trainer)
    with dask.config.set(scheduler="synchronous"), gp.build(pipeline):
        for i in range(60):
            pipeline.request_batch(seeded_request(request, cfg.seed, i))
    after = _weighted_terms(cfg, trainer.model, held_out, keys)
    assert (after < before).all(), f"weighted (indicator, vector) loss before {before}, after 60 iterations {after}"


def test_progress_shows_both_weighted_terms():
    from synful.config import Training
    from synful.train import _loss_terms

    cfg = Training()
    terms = _loss_terms(cfg, {"loss": 1.2, "m_loss": 0.7, "d_loss": 5000.0})
    assert terms == {"loss": "1.2", "m": "0.7", "d": f"{cfg.d_loss_scale * 5000:.4g}"}
    assert set(_loss_terms(cfg, {"loss": 0.7, "m_loss": 0.7})) == {"loss", "m"}  # tasks = indicator


@pytest.mark.slow
def test_local_training_writes_a_log_that_status_tails(tmp_path, data, capsys):
    from synful.cli import main
    from synful.cluster import status

    setup = _setup(tmp_path, data, {"log_every": 1, "image_every": 0, "snapshot_every": 0},
                   {"num_cache_workers": 0})
    assert main(["train", str(setup), "--iterations", "2"]) == 0
    log = setup / "log" / "train.log"
    text = log.read_text()
    assert "iteration 2: loss " in text and ", m " in text and ", d " in text, text
    st = status(setup, tail=50)
    assert st["log"]["path"] == str(log) and any("iteration 2:" in line for line in st["log"]["lines"])
    capsys.readouterr()
    assert main(["status", str(setup)]) == 0
    out = capsys.readouterr().out
    assert "last checkpoint: iteration 2" in out and f"--- {log}" in out and "iteration 2: loss" in out


def test_num_cache_workers_sets_the_precache_workers(tmp_path, data):
    from synful.gp import SeededPreCache
    from synful.train import _training_samples, cache_workers, training_pipeline

    setup = _setup(tmp_path, data, worker={"num_cache_workers": 3})
    assert cache_workers(setup) == 3
    cfg = read_train_config(setup / "train_config.ini")
    pipeline, *_ = training_pipeline(cfg, _training_samples(cfg), num_cache_workers=cache_workers(setup))
    assert isinstance(pipeline.output, SeededPreCache) and pipeline.output.num_workers == 3
    # 0: no PreCache, batches load in the training process
    setup0 = _setup(tmp_path, data, worker={"num_cache_workers": 0}, train_id=1)
    pipeline, *_ = training_pipeline(cfg, _training_samples(cfg), num_cache_workers=cache_workers(setup0))
    assert not isinstance(pipeline.output, SeededPreCache)
    # a cluster profile's value applies while the key is at its built-in default (local.yaml: 1)
    assert cache_workers(_setup(tmp_path, data, worker={"cluster_profile": "local"}, train_id=2)) == 1


def test_old_keys_are_one_line_errors_naming_the_new_key(tmp_path):
    train_ini = tmp_path / "train_config.ini"
    train_ini.write_text(template_text("train_config.ini").replace("seed = 42", "seed = 42\nnum_workers = 2"))
    with pytest.raises(ConfigError) as e:
        read_train_config(train_ini)
    msg = str(e.value)
    assert msg == (f"{train_ini} [Training] num_workers: no longer read, use [Worker] num_cache_workers of "
                   f"worker_config.ini instead (got 2)")
    predict_ini = tmp_path / "predict_config.ini"
    text = template_text("predict_config.ini")
    assert "vectors_int8_nm = 4.0" in text and "\nvectors_scale" not in text
    predict_ini.write_text(text.replace("vectors_int8_nm = 4.0", "vectors_scale = 4.0")
                           .replace("# iteration =\n", "iteration = 10\n"))
    with pytest.raises(ConfigError) as e:
        read_predict_config(predict_ini)
    assert str(e.value) == (f"{predict_ini} [Prediction] vectors_scale: no longer read, use vectors_int8_nm "
                            f"instead (got 4.0)")
    assert "\n" not in str(e.value)


def test_transmitter_checkpoints_are_model_iteration_and_old_names_still_found(tmp_path):
    from synful.transmitters.train import checkpoint_path, latest_checkpoint, list_checkpoints

    d = tmp_path / "checkpoints"
    d.mkdir()
    assert checkpoint_path(tmp_path, 5) == d / "model_5.keras"
    (d / "model_checkpoint_5.keras").write_bytes(b"")  # a setup trained before the rename
    (d / "model_checkpoint_10.keras").write_bytes(b"")
    assert checkpoint_path(tmp_path, 5) == d / "model_checkpoint_5.keras"
    assert latest_checkpoint(tmp_path) == (10, d / "model_checkpoint_10.keras")
    (d / "model_20.keras").write_bytes(b"")  # resumed and saved under the new name
    (d / "model_10.keras").write_bytes(b"")
    assert list_checkpoints(tmp_path) == [(5, d / "model_checkpoint_5.keras"), (10, d / "model_10.keras"),
                                          (20, d / "model_20.keras")]
    assert checkpoint_path(tmp_path, 10) == d / "model_10.keras"


def test_status_of_a_prediction_setup(tmp_path, capsys):
    from synful.cli import main
    from synful.cluster import status

    create_train_setup(tmp_path, "exp", 0)
    (pdir,) = create_predict_setups(tmp_path, "exp", 0, [300])
    assert main(["status", str(pdir)]) == 0
    out = capsys.readouterr().out
    ckpt = tmp_path / "exp" / "02_train" / "setup_t0" / "checkpoints" / "model_300.weights.h5"
    assert f"checkpoint: iteration 300 ({ckpt}, MISSING)" in out
    assert "predict: not run yet" in out and "extract: not run yet" in out and "last checkpoint" not in out

    (pdir / "exp_t0_p0_prediction.json").write_text(json.dumps(
        {"blocks": {"total": 8, "processed": 5, "skipped": 3, "failed": 0}, "complete": True}))
    (pdir / "extraction_summary.json").write_text(json.dumps(
        {"complete": False, "blocks_total": 4, "blocks_skipped": 0, "blocks_failed": 1}))
    (pdir / "log" / "extract").mkdir(parents=True)
    (pdir / "log" / "extract" / "worker_0.err").write_text("block 3 failed\n")
    st = status(pdir)
    assert st["prediction"]["predict"] == {"done": 8, "total": 8, "complete": True}
    assert st["prediction"]["extract"] == {"done": 3, "total": 4, "complete": False}
    assert main(["status", str(pdir)]) == 0
    out = capsys.readouterr().out
    assert "predict: 8/8 blocks done\n" in out and "extract: 3/4 blocks done (INCOMPLETE" in out
    assert "block 3 failed" in out


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def test_clean_removes_prediction_setups_with_their_training_setup(tmp_path):
    d = str(tmp_path)
    assert _run("prepare_training.py", "-e", "exp", "-t", "1", "-d", d).returncode == 0
    assert _run("prepare_training.py", "-e", "exp", "-t", "2", "-d", d).returncode == 0
    for t in ("1", "2"):
        r = _run("prepare_prediction.py", "-e", "exp", "-t", t, "-i", "10", "20", "-d", d,
                 "--allow-missing-checkpoints")
        assert r.returncode == 0, r.stderr
    pred = tmp_path / "exp" / "03_predict"
    assert sorted(p.name for p in pred.iterdir()) == ["setup_t1_p0", "setup_t1_p1", "setup_t2_p0", "setup_t2_p1"]

    # without confirmation nothing goes
    r = _run("prepare_training.py", "-e", "exp", "-t", "1", "-d", d, "-c")
    assert r.returncode == 1 and "and 2 prediction setup(s)" in r.stderr and (pred / "setup_t1_p0").is_dir()
    r = _run("prepare_training.py", "-e", "exp", "-t", "1", "-d", d, "-c", "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"removed {pred / 'setup_t1_p0'}", f"removed {pred / 'setup_t1_p1'}",
                                     f"removed {tmp_path / 'exp' / '02_train' / 'setup_t1'}"]
    assert sorted(p.name for p in pred.iterdir()) == ["setup_t2_p0", "setup_t2_p1"]

    # one prediction setup
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "2", "-p", "1", "-d", d, "-c")
    assert r.returncode == 1 and (pred / "setup_t2_p1").is_dir()
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "2", "-p", "1", "-d", d, "-c", "--yes")
    assert r.returncode == 0 and r.stdout.strip() == f"removed {pred / 'setup_t2_p1'}"
    assert sorted(p.name for p in pred.iterdir()) == ["setup_t2_p0"]
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "2", "-p", "7", "-d", d, "-c", "--yes")
    assert r.returncode == 1 and "setup_t2_p7: no such setup" in r.stderr
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "2", "-d", d, "-c")
    assert r.returncode == 2 and "-p P" in r.stderr
