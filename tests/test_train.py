"""Training end to end on synthetic data: tiny networks, a few dozen iterations on CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from synful.cli import main
from synful.config import ConfigError, read_train_config
from synful.scaffold import create_train_setup
from synful.synthetic import write_synthetic
from synful.train import (TrainError, checkpoint_path, latest_checkpoint, list_checkpoints, load_model_for_prediction,
                          optimizer_state_path, train)

pytestmark = pytest.mark.slow

TINY = dict(input_shape=(12, 60, 60), kernel_size=(1, 3, 3), fmap_num=4, fmap_inc_factor=2,
            downsample_factors=[(1, 2, 2), (1, 2, 2)], vector_scale=100.0, num_workers=1, cache_size=2,
            log_every=1, image_every=0, snapshot_every=0, checkpoint_every=1000, learning_rate=1e-3,
            elastic_augment=False, simple_augment=False, intensity_augment=False, reject_probability=0.0,
            max_partner_distance=400.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic CREMI-like container (20 x 120 x 120 voxels at 40 x 4 x 4 nm) and its manifest."""
    base = tmp_path_factory.mktemp("data")
    container = write_synthetic(base / "syn.zarr", (20, 120, 120), seed=3, synapse_density=20.0)
    manifest = base / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"samples": [{"name": "syn", "container": str(container)}]}))
    # one fixed location: an output-sized ROI, padded by the network context to exactly one input
    fixed = base / "fixed.yaml"
    fixed.write_text(yaml.safe_dump({"samples": [{"name": "syn", "container": str(container),
                                                  "roi": {"offset": [160, 200, 200], "shape": [480, 80, 80]}}]}))
    return {"container": container, "manifest": manifest, "fixed": fixed}


def make_setup(tmp_path, manifest, train_id=0, **kw):
    values = {**TINY, "manifest": str(manifest), **kw}
    return create_train_setup(tmp_path, "exp", train_id, overrides={"train_config.ini": {"Training": values}})


def read_scalars(log_dir) -> dict[str, dict[int, float]]:
    import tensorflow as tf

    out: dict[str, dict[int, float]] = {}
    for f in sorted(log_dir.glob("events.out.tfevents.*")):
        for rec in tf.data.TFRecordDataset(str(f)):
            event = tf.compat.v1.Event.FromString(rec.numpy())
            for v in event.summary.value:
                if v.metadata.plugin_data.plugin_name == "scalars":
                    out.setdefault(v.tag, {})[event.step] = float(tf.make_ndarray(v.tensor))
    return out


def test_tiny_network_lowers_its_loss(tmp_path, data):
    setup = make_setup(tmp_path, data["fixed"], snapshot_every=40, image_every=20)
    assert train(setup, 40) == 40
    scalars = read_scalars(setup / "log")
    loss = [scalars["loss/loss"][i] for i in range(1, 41)]
    first, last = np.mean(loss[:5]), np.mean(loss[-5:])
    assert last < 0.6 * first, loss
    for tag in ("loss/m_loss", "loss/d_loss", "learning_rate", "iterations_per_s"):
        assert len(scalars[tag]) == 40
    assert scalars["learning_rate"][40] == pytest.approx(1e-3)

    # snapshot at iteration 40: raw, targets, weights and predictions
    import zarr

    snap = zarr.open(str(setup / "snapshots" / "batch_40.zarr"), "r")
    for ds in ("raw", "gt_syn_indicator", "indicator_weights", "gt_partner_vectors", "vectors_mask",
               "pred_syn_indicator", "pred_partner_vectors", "labels/neuron_ids"):
        assert f"volumes/{ds}" in snap, ds
    assert snap["volumes/raw"].shape == (12, 60, 60)
    assert snap["volumes/pred_partner_vectors"].shape == (3, 12, 20, 20)
    assert snap["volumes/gt_syn_indicator"][:].any(), "the fixed location holds a synapse"
    pred = snap["volumes/pred_syn_indicator"][:]
    assert 0 <= pred.min() and pred.max() <= 1  # stored as probability

    # provenance beside the checkpoints
    info = json.loads((setup / "checkpoints" / "provenance.json").read_text())
    assert info["synful_version"] and "git_commit" in info and info["device"].startswith(("CPU", "1 x", "2 x"))
    resolved = read_train_config(setup / "checkpoints" / "resolved_train_config.ini")
    assert resolved == read_train_config(setup / "train_config.ini")
    assert latest_checkpoint(setup) == (40, checkpoint_path(setup, 40))


def test_restart_continues_from_the_checkpoint_iteration(tmp_path, data):
    setup = make_setup(tmp_path, data["manifest"], checkpoint_every=3, keep_checkpoints=2, elastic_augment=True,
                       simple_augment=True, intensity_augment=True, defect_augment=True, reject_probability=0.5)
    assert train(setup, 7) == 7
    assert [it for it, _ in list_checkpoints(setup)] == [6, 7]  # every 3, the last one, keep 2
    assert not optimizer_state_path(setup, 3).exists()

    assert train(setup, 11) == 11
    assert [it for it, _ in list_checkpoints(setup)] == [9, 11]
    with np.load(optimizer_state_path(setup, 11)) as f:
        iteration = int(f["0"])  # Adam's step counter, restored with its moments
    assert iteration == 11
    steps = sorted(read_scalars(setup / "log")["loss/loss"])
    assert steps == list(range(1, 12)), "the second run logs iterations 8..11, not 1..4"

    # already there: nothing to do, nothing built
    assert train(setup, 11) == 11
    assert train(setup, 5) == 11


def test_config_too_small_for_its_downsampling_fails_before_training(tmp_path, data, capsys):
    setup = make_setup(tmp_path, data["manifest"], downsample_factors=[(1, 3, 3), (1, 3, 3), (3, 3, 3)],
                       kernel_size=(3, 3, 3))
    with pytest.raises(ConfigError) as e:
        train(setup, 5)
    for key in ("input_shape", "downsample_factors", "kernel_size", "num_convs"):
        assert key in str(e.value)
    assert main(["train", str(setup), "--iterations", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "input_shape" in err and "downsample_factors" in err
    assert not (setup / "checkpoints").exists() and not (setup / "log").exists()


def test_bad_manifest_fails_before_training(tmp_path, data):
    setup = make_setup(tmp_path, tmp_path / "missing.yaml")
    with pytest.raises(Exception, match="missing.yaml"):
        train(setup, 2)
    assert not (setup / "checkpoints").exists()


def test_cli_and_setup_launcher_train(tmp_path, data, capsys):
    setup = make_setup(tmp_path, data["manifest"], num_workers=0)
    assert main(["train", str(setup), "--iterations", "2"]) == 0
    assert "trained until iteration 2" in capsys.readouterr().out
    proc = subprocess.run([sys.executable, str(setup / "train.py"), "3"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trained until iteration 3" in proc.stdout
    assert latest_checkpoint(setup)[0] == 3


def test_model_for_prediction_loads_weights_into_a_larger_input(tmp_path, data):
    setup = make_setup(tmp_path, data["manifest"], num_workers=0, xla=True)  # the XLA-compiled step, too
    assert train(setup, 2) == 2
    model = load_model_for_prediction(setup, 2, (12, 76, 76))
    assert tuple(model.output["syn_indicator"].shape) == (None, 12, 36, 36, 1)
    trained = load_model_for_prediction(setup, 2)
    np.testing.assert_array_equal(model.get_weights()[0], trained.get_weights()[0])
    with pytest.raises(TrainError, match=r"model_7\.weights\.h5: checkpoint not found .*: 2\)"):
        load_model_for_prediction(setup, 7)
    with pytest.raises(ConfigError, match="input_shape"):
        load_model_for_prediction(setup, 2, (12, 61, 60))


def test_unaugmented_training_raw_equals_normalize_raw(data):
    import dask
    import gunpowder as gp
    import zarr

    from synful.config import Training
    from synful.models import normalize_raw
    from synful.train import _training_samples, training_pipeline

    cfg = Training(**{**TINY, "manifest": str(data["fixed"]), "num_workers": 0})
    pipeline, request, keys, _ = training_pipeline(cfg, _training_samples(cfg))
    with dask.config.set(scheduler="synchronous"), gp.build(pipeline):
        batch = pipeline.request_batch(request)
    # the only location: output ROI = the sample ROI [160:640, 200:280, 200:280] nm, input grown by 80 nm in y, x
    raw = zarr.open(str(data["container"]), "r")["volumes/raw"][4:16, 30:90, 30:90]
    np.testing.assert_allclose(batch[keys.raw].data, normalize_raw(raw), atol=1e-6)
    # targets come on the output ROI, vectors channel-first
    assert batch[keys.gt_vectors].data.shape == (3, 12, 20, 20)
    assert batch[keys.gt_indicator].data.any()
    w = batch[keys.indicator_weights].data
    assert w.dtype == np.float32 and (w > 0).all()
