"""Self-supervised synapse embeddings (synful.embed): loss, augmentations, training, storage, evaluation.

One module-scoped experiment on synthetic data (six transmitters, 40 x 8 x 8 nm voxels, 819 synapses): import,
skeleton split, an embedding setup scaffolded by prepare_training.py, a short SimCLR training (300 steps), embeddings
of every synapse and their evaluation against an untrained encoder.  The rest are hand-built cases (NT-Xent against a numpy reference,
augmentations, the Hopkins statistic, the store round trip on SQLite and MongoDB).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from synful.cli import main as cli_main
from synful.embed.data import CLEFT, POST, PRE, RAW, Synapse, allowed_rotation_planes, augment, random_crop
from synful.embed.evaluate import hopkins, linear_probe
from synful.embed.predict import embedding_documents, read_embedding_documents

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 300


def _nt_xent_reference(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """SimCLR's NT-Xent written out per row: -log(exp(s_pos / tau) / sum_{k != i} exp(s_ik / tau))."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = [float(z[i] @ z[k]) / tau for k in range(2 * n) if k != i]
        total += -(float(z[i] @ z[pos]) / tau - math.log(sum(math.exp(s) for s in sims)))
    return total / (2 * n)


def test_nt_xent_matches_numpy_reference():
    from synful.embed.model import nt_xent_loss

    rng = np.random.default_rng(3)
    for n, d, tau in ((2, 3, 0.1), (5, 8, 0.07), (7, 4, 0.5)):
        z1, z2 = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
        got = float(nt_xent_loss(z1, z2, tau))
        assert got == pytest.approx(_nt_xent_reference(z1, z2, tau), rel=1e-4, abs=1e-5), (n, d, tau)
    # hand-built: two samples on orthogonal axes, each view equal to its partner (scaled: normalisation)
    z1 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    z2 = 3 * z1
    expected = -math.log(math.exp(10) / (math.exp(10) + 2 * math.exp(0)))  # tau 0.1: cos 1 -> 10, cos 0 -> 0
    assert float(nt_xent_loss(z1, z2, 0.1)) == pytest.approx(expected, abs=1e-6)  # ~9e-5: float32 rounding
    # swapping the partners makes the loss larger: the positive is the other view of the same sample
    assert float(nt_xent_loss(z1, z2[::-1].copy(), 0.1)) > float(nt_xent_loss(z1, z2, 0.1)) + 5


def _cube(rng, shape=(8, 16, 16)):
    c = np.zeros((4, *shape), np.float32)
    c[RAW] = rng.uniform(-1, 1, shape)
    c[PRE, :, :8, :5] = 1
    c[POST, 2:5, 9:, 3:12] = 1
    c[CLEFT, 3, 8, 2:14] = 1
    return c


def test_augment_keeps_shape_binary_masks_and_one_spatial_transform():
    rng = np.random.default_rng(0)
    cube = _cube(rng)
    before = cube.copy()
    for seed in range(40):
        a = augment(cube, np.random.default_rng(seed), rotation_planes=[(1, 2)], noise_sigma=0.2, contrast=0.3,
                    brightness=0.3)
        b = augment(cube, np.random.default_rng(seed), rotation_planes=[(1, 2)], noise_sigma=0.0, contrast=0.0,
                    brightness=0.0)
        assert a.shape == cube.shape and a.dtype == np.float32
        for ch in (PRE, POST, CLEFT):
            assert set(np.unique(a[ch])) <= {0.0, 1.0}, ch  # masks stay binary
            assert a[ch].sum() == cube[ch].sum(), ch
        # the same draws: identical masks, raw differs only by intensity (the spatial transform comes first)
        np.testing.assert_array_equal(a[1:], b[1:])
        assert not np.allclose(a[RAW], b[RAW])
        # raw and masks moved together: the raw values under the pre mask are the original ones (b: no intensity)
        np.testing.assert_array_equal(np.sort(b[RAW][b[PRE] > 0]), np.sort(cube[RAW][cube[PRE] > 0]))
        np.testing.assert_array_equal(np.sort(b[RAW][b[POST] > 0]), np.sort(cube[RAW][cube[POST] > 0]))
    np.testing.assert_array_equal(cube, before)  # the input is not changed


def test_rotations_respect_anisotropy():
    assert allowed_rotation_planes((40, 4, 4), (8, 48, 48)) == [(1, 2)]  # FAFB: in-plane only
    assert allowed_rotation_planes((40, 4, 4), (8, 48, 40)) == []  # a non-square section: no quarter turn
    assert allowed_rotation_planes((8, 8, 8), (16, 16, 16)) == [(1, 2), (0, 1), (0, 2)]
    # with y-x rotations only, every z-section stays a z-section: its set of values is kept (or z-mirrored)
    cube = np.zeros((3, 4, 6, 6), np.float32)
    cube[RAW] = np.arange(4, dtype=np.float32)[:, None, None]
    for seed in range(20):
        a = augment(cube, np.random.default_rng(seed), rotation_planes=allowed_rotation_planes((40, 4, 4), (4, 6, 6)),
                    noise_sigma=0, contrast=0, brightness=0)
        per_section = [set(np.unique(a[RAW, z])) for z in range(4)]
        assert per_section in ([{0.0}, {1.0}, {2.0}, {3.0}], [{3.0}, {2.0}, {1.0}, {0.0}])


def test_random_crop_takes_one_window_for_all_channels():
    rng = np.random.default_rng(1)
    big = rng.uniform(size=(3, 10, 20, 20)).astype(np.float32)
    big[1] = big[0] > 0.5
    for seed in range(10):
        c = random_crop(big, (8, 12, 12), np.random.default_rng(seed))
        assert c.shape == (3, 8, 12, 12)
        np.testing.assert_array_equal(c[1], c[0] > 0.5)
    np.testing.assert_array_equal(random_crop(big, (10, 20, 20), rng), big)


def test_cube_channels_from_raw_and_segmentation(tmp_path):
    from synful.embed.data import CubeReader, EmbedDataError
    from synful.io.volumes import open_volume, write_volume

    vs = (40, 8, 8)
    seg = np.zeros((6, 20, 20), np.uint64)
    seg[:, :, :8] = 5  # the pre neuron, at the site
    seg[:, :, 11:] = 9  # the post neuron, across a membrane (x = 8..10 is background)
    seg[:, :3, 11:] = 12  # farther from the site than 9
    raw = np.full(seg.shape, 255, np.uint8)
    write_volume(tmp_path / "v.zarr", "raw", raw, vs)
    write_volume(tmp_path / "v.zarr", "seg", seg, vs)
    reader = CubeReader(open_volume(tmp_path / "v.zarr", "raw"), open_volume(tmp_path / "v.zarr", "seg"), (4, 8, 8), vs)
    site = (3 * 40 + 20, 10 * 8 + 4, 7 * 8 + 4)  # voxel (3, 10, 7), in neuron 5
    cube = reader.read(Synapse(1, site, pre_site=site))  # one site: the post side is the nearest other segment
    assert cube.shape == (3, 4, 8, 8) and cube.dtype == np.float32
    np.testing.assert_array_equal(cube[RAW], 1.0)  # uint8 255 -> 1.0
    assert set(np.unique(cube[PRE])) == {0.0, 1.0} and set(np.unique(cube[POST])) == {0.0, 1.0}
    roi_seg = seg[2:6, 6:14, 4:12]  # begin (60, 52, 28) nm rounded to the grid as gunpowder does: voxel (2, 6, 4)
    np.testing.assert_array_equal(cube[PRE], roi_seg == 5)
    np.testing.assert_array_equal(cube[POST], roi_seg == 9)
    # partner records name their segments: those masks are used as given
    cube = reader.read(Synapse(2, site, pre_site=site, post_site=site, pre_seg=9, post_seg=5))
    np.testing.assert_array_equal(cube[PRE], roi_seg == 9)
    np.testing.assert_array_equal(cube[POST], roi_seg == 5)
    with pytest.raises(EmbedDataError, match=r"\[EmbeddingTraining\] voxel_size: \(40, 4, 4\) nm, but the raw"):
        CubeReader(open_volume(tmp_path / "v.zarr", "raw"), open_volume(tmp_path / "v.zarr", "seg"), (4, 8, 8),
                   (40, 4, 4))


def test_partner_synapses_from_a_partner_collection(partner_store):
    from synful.embed.data import EmbedDataError, partner_synapses
    from synful.io.partners import NO_ID, empty_partners

    p = empty_partners(3)
    p["id"] = [2 ** 60 + 1, 5, 9]
    for side, base in (("pre", 1000), ("post", 1200)):
        for k, axis in enumerate("zyx"):
            p[f"{side}_{axis}"] = [base + 40 * k, base + 400 + 40 * k, base + 800]
    p["score"] = [0.9, 0.2, 0.6]
    p["pre_seg_id"], p["post_seg_id"] = [3, NO_ID, 4], [7, 8, NO_ID]
    partner_store.write_block(0, p)
    got = partner_synapses(partner_store, min_score=0.5)
    assert [s.id for s in got] == [9, 2 ** 60 + 1]  # by id, the low score left out
    s = got[1]
    assert s.pre_site == (1000, 1040, 1080) and s.post_site == (1200, 1240, 1280)
    assert s.centre == (1100, 1140, 1180)  # half-way between the sites
    assert (s.pre_seg, s.post_seg) == (3, 7) and got[0].post_seg is None  # NO_ID: looked up at the site
    assert s.labels == {"score": pytest.approx(0.9), "pre_segment": 3, "post_segment": 7}
    with pytest.raises(EmbedDataError, match="no partners with score >= 0.95"):
        partner_synapses(partner_store, min_score=0.95)


def test_mixed_precision_switch(caplog):
    from synful.config.sections import EmbeddingTraining
    from synful.embed.train import build_simclr
    from synful.models.precision import gpu_visible, layer_policy

    cfg = EmbeddingTraining(input_shape=(4, 16, 16), fmaps=4, downsample_factors=[(1, 2, 2)])
    encoder, head, _ = build_simclr(cfg, 3, "mixed_float16")
    assert encoder.get_layer("s1b0_conv0").compute_dtype == "float16"
    assert encoder.output.dtype == "float32" and head.output.dtype == "float32"
    if not gpu_visible():  # float16 3D pooling has no CPU kernels: refused with a warning naming the key
        assert layer_policy(True, "x.ini [EmbeddingTraining] mixed_precision") == "float32"
        assert "[EmbeddingTraining] mixed_precision = true but no GPU is visible" in caplog.text


def test_convolutions_see_raw_only_unless_masks_as_input():
    """The default encoder's feature maps depend on raw alone (the masks only choose where to average); with
    masks_as_input they depend on the masks too.  A cleft channel adds a third averaging region."""
    import keras

    from synful.embed.model import feature_dim, resnet3d_encoder

    rng = np.random.default_rng(0)
    a = _cube(rng, (4, 16, 16))
    b = a.copy()
    b[PRE], b[POST] = b[POST].copy(), b[PRE].copy()  # same raw, other masks
    b[CLEFT] = 0
    b[CLEFT, 1, 4, 4:10] = 1
    x = np.moveaxis(np.stack([a, b]), 1, -1)
    for masks_as_input in (False, True):
        enc = resnet3d_encoder((4, 16, 16), 4, fmaps=4, downsample_factors=[(1, 2, 2)], masks_as_input=masks_as_input)
        assert enc.output_shape[-1] == feature_dim(4, 2, [(1, 2, 2)], channels=4) == 3 * (4 + 8)
        maps = keras.Model(enc.input, enc.get_layer("s1b0_relu1").output)(x).numpy()
        if masks_as_input:
            assert not np.allclose(maps[0], maps[1])
        else:
            np.testing.assert_array_equal(maps[0], maps[1])
            out = enc(x).numpy()
            # swapped masks swap the pre and post averages of every stage; the cleft averages differ
            np.testing.assert_allclose(out[0, [0, 1, 2, 3]], out[1, [4, 5, 6, 7]], rtol=1e-5, atol=1e-6)
            assert not np.allclose(out[0, 8:12], out[1, 8:12])


def test_hopkins_uniform_near_half_clustered_near_one():
    rng = np.random.default_rng(0)
    uniform = rng.uniform(size=(400, 3))
    clusters = np.concatenate([rng.normal(c, 0.01, size=(100, 3)) for c in ((0, 0, 0), (1, 1, 1), (0, 1, 0))])
    assert 0.4 < hopkins(uniform, seed=1) < 0.6
    assert hopkins(clusters, seed=1) > 0.9


@pytest.mark.parametrize("backend", ["sqlite", "mongodb"])
def test_embeddings_round_trip_with_int64_ids(backend, tmp_path, request):
    import uuid

    from synful.transmitters.db import open_store

    url = f"sqlite:///{tmp_path}/e.sqlite" if backend == "sqlite" else request.getfixturevalue("mongodb_url")
    ids = [2 ** 53 + 1, 2 ** 63 - 1, -(2 ** 63), 0, 7]
    synapses = [Synapse(i, (40 * k, 8 * k, 8 * k), labels={"transmitter": "gaba", "skeleton": 2 ** 62 + k})
                for k, i in enumerate(ids)]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    with open_store(url) as store:
        coll = store.collection("embed_test", f"run_{uuid.uuid4().hex[:8]}")
        coll.create_index("synapse_id", unique=True)
        coll.insert_many(embedding_documents(synapses, vectors, "sig"))
        got_ids, got, docs = read_embedding_documents(coll)
        coll.drop()
    order = np.argsort(ids)
    assert got_ids.dtype == np.int64 and got_ids.tolist() == sorted(ids)  # exact beyond 2^53
    assert got.dtype == np.float16 and got.shape == (len(ids), 16)
    np.testing.assert_array_equal(got, vectors[order].astype(np.float16))
    assert [d["labels"]["skeleton"] for d in docs] == [2 ** 62 + k for k in order]


def test_linear_probe_chance_on_noise_and_high_on_separable():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)
    noise = linear_probe(rng.normal(size=(120, 8)), y, seed=0)
    assert noise["chance"] == pytest.approx(1 / 6) and noise["accuracy"] < 0.35
    separable = linear_probe(rng.normal(size=(120, 8)) * 0.1 + np.eye(6, 8)[y], y, seed=0)
    assert separable["accuracy"] > 0.95


# --------------------------------------------------------------------------------------------------------
# one short experiment on synthetic data
# --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    import prepare_prediction
    import prepare_training

    base = tmp_path_factory.mktemp("embed")
    data = base / "data"
    assert cli_main(["transmitter", "synthetic", str(data), "--shape", "40", "1000", "1000", "--voxel-size", "40", "8",
                     "8", "--seed", "2", "--density", "15"]) == 0
    url = f"sqlite:///{base}/store.sqlite"
    assert cli_main(["transmitter", "import", url, "--synapses", str(data / "synapses.json"), "--skeletons",
                     str(data / "skeletons.json"), "--hemilineages", str(data / "hemilineages.json")]) == 0
    assert cli_main(["transmitter", "split", url, "--name", "skeleton", "--kind", "skeleton", "--fractions", "0.6",
                     "0.1", "0.3"]) == 0
    assert prepare_training.main(["-d", str(base / "experiments"), "-e", "emb", "-t", "0", "--kind", "embedding",
                                  "--set", f"store_url={url}", f"raw_container={data / 'raw.zarr'}",
                                  "voxel_size=40, 8, 8", "input_shape=8, 32, 32", "crop_margin=1, 8, 8",
                                  "batch_size=32", f"checkpoint_every={ITERATIONS // 2}", "log_every=50"]) == 0
    setup = base / "experiments" / "emb" / "02_train" / "setup_t0"
    assert cli_main(["embed", "train", str(setup), "--iterations", str(ITERATIONS)]) == 0
    assert prepare_prediction.main(["-d", str(base / "experiments"), "-e", "emb", "-t", "0", "-i",
                                    str(ITERATIONS)]) == 0
    run = base / "experiments" / "emb" / "03_predict" / "setup_t0_p0"
    assert cli_main(["embed", "predict", str(run)]) == 0
    return {"base": base, "setup": setup, "run": run, "url": url}


def test_scaffold_writes_embedding_setup(experiment):
    setup, run = experiment["setup"], experiment["run"]
    assert (setup / "embedding_train_config.ini").is_file() and (setup / "train.py").is_file()
    assert "embed" in (setup / "train.py").read_text()
    text = (run / "embedding_predict_config.ini").read_text()
    assert f"iteration = {ITERATIONS}" in text and "split_part = all" in text  # every synapse, for the probe
    assert sorted(p.name for p in (setup / "checkpoints").glob("model_*.weights.h5")) == \
        [f"model_{ITERATIONS // 2}.weights.h5", f"model_{ITERATIONS}.weights.h5"]
    assert any((setup / "log").glob("events.out.tfevents.*"))


def test_short_training_lowers_the_loss(experiment):
    losses = [json.loads(line)["loss"] for line in (experiment["setup"] / "log" / "train_loss.jsonl").open()]
    assert len(losses) == ITERATIONS
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    # log(2 * 32 - 1) = 4.14 is a constant embedding's loss; the first steps start near it
    assert last < first - 0.5, (first, last)


def test_resume_continues_from_the_checkpoint(experiment):
    from synful.embed.train import train

    result = train(experiment["setup"], ITERATIONS)  # already there: nothing to do
    assert result["iteration"] == ITERATIONS and result["losses"] == []


def test_predict_writes_every_synapse_and_refuses_to_overwrite(experiment, capsys):
    from synful.embed.predict import read_embeddings

    run = experiment["run"]
    meta = json.loads((run / "embedding_run.json").read_text())
    ids, emb, docs = read_embeddings(run)
    synapses = json.loads((experiment["base"] / "data" / "synapses.json").read_text())
    assert ids.tolist() == sorted(s["synapse_id"] for s in synapses) and meta["synapses"] == len(ids)
    assert emb.dtype == np.float16 and emb.shape == (len(ids), 240) and np.isfinite(emb).all()
    assert {d["run_signature"] for d in docs} == {meta["run_signature"]}
    capsys.readouterr()
    assert cli_main(["embed", "predict", str(run)]) == 2
    err = capsys.readouterr().err
    assert "synister_embeddings.emb_t0_p0: embedding collection exists" in err and "--overwrite" in err


def test_evaluate_writes_statistics_and_pictures(experiment):
    from synful.embed.evaluate import evaluate_run

    r = evaluate_run(experiment["run"], baseline=True)
    held = r["held_out"]
    assert held["chance"] == pytest.approx(1 / 6) and held["n_test"] >= 200 and held["n_train"] >= 400
    assert r["random_encoder"]["held_out"]["n_test"] == held["n_test"]
    assert 0 < r["hopkins"] < 1 and -1 <= r["silhouette_transmitter"] <= 1
    assert r["probe_cv"]["grouped"] and r["probe_cv"]["folds"] == 5
    out = Path(r["out_dir"])
    for name in ("umap_transmitter.png", "pca_transmitter.png", "umap_skeleton.png", "embedding_evaluation.json"):
        assert (out / name).is_file(), name
    experiment["evaluation"] = r


#: the held-out linear probe of the trained encoder must beat chance (1/6) by this much, and the
#: cross-validated probe of the trained encoder must beat the untrained encoder's (same architecture, same
#: cubes) by BASELINE_MARGIN: training, not the random features alone, must carry the transmitter.
#: Measured on this run (seed 42, 300 steps, 488 train / 245 held-out synapses): held-out 0.318 (untrained
#: encoder 0.286), cross-validated 0.347 (untrained 0.259); with training seed 7: 0.331 (0.290), 0.403 (0.256).
PROBE_MARGIN = 0.10
BASELINE_MARGIN = 0.05


def test_linear_probe_beats_chance_on_held_out_synapses(experiment):
    r = experiment.get("evaluation")
    if r is None:
        from synful.embed.evaluate import evaluate_run

        r = evaluate_run(experiment["run"], baseline=True)
    held = r["held_out"]
    assert held["n_test"] >= 200, held
    assert held["accuracy"] >= held["chance"] + PROBE_MARGIN, held
    untrained = r["random_encoder"]["probe_cv"]
    assert r["probe_cv"]["accuracy"] >= untrained["accuracy"] + BASELINE_MARGIN, (r["probe_cv"], untrained)


def test_a_checkpoint_of_another_architecture_is_refused_by_name(experiment, tmp_path):
    """A checkpoint trained with the masks as convolution input (the first release's network) does not load into
    the default raw-only network: training and prediction both refuse, naming the key that restores it."""
    import dataclasses
    import shutil

    from synful.embed.predict import EmbedPredictError, load_encoder
    from synful.embed.train import EmbedTrainError, checkpoint_path, read_train_setup, train

    setup = tmp_path / "setup"
    shutil.copytree(experiment["setup"], setup)
    ini = setup / "embedding_train_config.ini"
    assert "masks_as_input = false" in ini.read_text()
    ini.write_text(ini.read_text().replace("masks_as_input = false", "masks_as_input = true"))
    with pytest.raises(EmbedTrainError, match=r"model_300.weights.h5: does not fit the network of "
                                              r"embedding_train_config.ini .*masks_as_input = true"):
        train(setup, ITERATIONS + 1)
    assert not checkpoint_path(setup, ITERATIONS + 1).exists()
    cfg = dataclasses.replace(read_train_setup(experiment["setup"]), masks_as_input=True)
    with pytest.raises(EmbedPredictError, match="does not fit the network of its embedding_train_config.ini"):
        load_encoder(cfg, checkpoint_path(experiment["setup"], ITERATIONS), 3)


def test_probe_compared_with_the_supervised_classifier_on_the_same_synapses(experiment):
    """[EmbeddingPrediction] transmitter_run: a VGG3D trained (briefly) on the same store and split; the
    evaluation reports its accuracy on its run's synapses (the split's test part) next to the linear probe's
    on exactly those synapses, the probe fitted on the split's train part -- i.e. the held-out probe."""
    import prepare_prediction
    import prepare_training

    from synful.embed.evaluate import evaluate_run

    base, url = experiment["base"], experiment["url"]
    experiments = base / "experiments"
    assert prepare_training.main(["-d", str(experiments), "-e", "emb", "-t", "1", "--kind", "transmitter", "--set",
                                  f"store_url={url}", f"raw_container={base / 'data' / 'raw.zarr'}",
                                  "voxel_size=40, 8, 8", "input_shape=4, 64, 64", "fmaps=8", "fmap_inc=2, 2, 2",
                                  "n_convolutions=1, 1, 1", "downsample_factors=[[1, 2, 2], [1, 2, 2], [2, 2, 2]]",
                                  "fc_size=32", "batch_norm=false", "batch_size=16", "learning_rate=0.001",
                                  "elastic_augment=false", "num_workers=0", "checkpoint_every=60"]) == 0
    assert cli_main(["transmitter", "train", str(experiments / "emb" / "02_train" / "setup_t1"),
                     "--iterations", "60"]) == 0
    assert prepare_prediction.main(["-d", str(experiments), "-e", "emb", "-t", "1", "-i", "60"]) == 0
    nt_run = experiments / "emb" / "03_predict" / "setup_t1_p0"
    assert cli_main(["transmitter", "predict", str(nt_run)]) == 0
    assert cli_main(["transmitter", "evaluate", str(nt_run)]) == 0
    supervised = json.loads((nt_run / "evaluation" / "evaluation.json").read_text())

    ini = experiment["run"] / "embedding_predict_config.ini"
    original = ini.read_text()
    assert "transmitter_run = None" in original
    ini.write_text(original.replace("transmitter_run = None", f"transmitter_run = {nt_run}"))
    try:
        r = evaluate_run(experiment["run"])
    finally:
        ini.write_text(original)
    comparison = r["supervised"]
    assert comparison["synapses"] == r["held_out"]["n_test"] == 245  # the split's test part, every one labelled
    assert comparison["supervised_accuracy"] == pytest.approx(supervised["synapse_accuracy"])
    assert comparison["probe_accuracy"] == pytest.approx(r["held_out"]["accuracy"])
    assert comparison["chance"] == pytest.approx(1 / 6)


def test_a_killed_run_resumes_with_each_step_logged_once(experiment, tmp_path):
    """Killed after its last checkpoint: the steps after it are lost and run again; the loss log keeps one line
    per iteration (the killed run's extra lines and a line cut short are dropped, not duplicated)."""
    import shutil

    from synful.embed.train import train

    setup = tmp_path / "setup"
    shutil.copytree(experiment["setup"], setup)
    log = setup / "log" / "train_loss.jsonl"
    with log.open("a") as f:  # what a run killed at step 302 (checkpoint 300) left behind
        f.write(json.dumps({"iteration": ITERATIONS + 1, "loss": 9.0, "top1": 0.0}) + "\n")
        f.write(json.dumps({"iteration": ITERATIONS + 2, "loss": 9.0, "top1": 0.0}) + "\n")
        f.write('{"iteration": 30')
    result = train(setup, ITERATIONS + 2)
    assert [it for it, _ in result["losses"]] == [ITERATIONS + 1, ITERATIONS + 2]
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 3))
    assert all(r["loss"] != 9.0 for r in rows)


def test_a_second_concurrent_embedding_training_is_refused(experiment, tmp_path):
    import shutil

    from synful.embed.train import TRAIN_LOCK, checkpoint_path, train
    from synful.io.files import LockedError, exclusive_lock

    setup = tmp_path / "setup"
    shutil.copytree(experiment["setup"], setup)
    before = (setup / "log" / "train_loss.jsonl").read_text()
    with exclusive_lock(setup / TRAIN_LOCK, "the first run"):
        with pytest.raises(LockedError, match=rf"embedding training of {setup}: already running \(pid "):
            train(setup, ITERATIONS + 1)
    assert not checkpoint_path(setup, ITERATIONS + 1).exists()
    assert (setup / "log" / "train_loss.jsonl").read_text() == before
