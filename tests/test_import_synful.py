"""``synful import-synful``: Synful's TF1 networks run in our Keras U-Net with the same outputs.

The reference is funlib.learn.tensorflow's U-Net as Synful's ``generate_network.py`` builds it, written
here in TF1 graph code (``tf.compat.v1``: placeholders, variable scopes, ``get_variable``, a Saver) with
the same scope and variable names, channels-first tensors (funlib's layout; every convolution runs
channels-last inside, as TensorFlow's CPU kernels need), Adam slots and ``training_iteration`` as in a
real checkpoint, and random weights.  Synful's configurations keep their downsampling factors
[[1,3,3],[1,3,3],[3,3,3]] and 3x3x3 kernels, shrunk in feature maps and input so a CPU runs them:
"small" (fmap_num 4, fmap_inc_factor 5 -> 2, 2) and "big" (more feature maps per level -> 3, 3).
Each runs without and with funlib's later ``crop_to_factor`` (which one a checkpoint needs is read from
the output shape its setup's train_net_config.json states).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synful.cli import main
from synful.import_synful import SynfulImportError, import_synful, read_synful_network, training_values
from synful.train import load_model_for_prediction

INPUT = (42, 241, 241)  # voxels (z, y, x) -> output (6, 29, 29)
INPUT_CROP = (48, 295, 295)  # with crop_to_factor -> output (6, 27, 27); without -> (12, 83, 83)
FACTORS = [[1, 3, 3], [1, 3, 3], [3, 3, 3]]
SMALL = {"fmap_num": 2, "fmap_inc_factor": 2}
BIG = {"fmap_num": 3, "fmap_inc_factor": 3}
ITERATION = 300000
TOL = 1e-5


def parameters(size: dict, unet_model: str, m_loss_scale=1.0, d_loss_scale=1.0, input_size=INPUT, **more) -> dict:
    """A Synful parameter.json (the keys of scripts/train/setup01/parameter.json)."""
    return {"input_size": list(input_size), "downsample_factors": FACTORS, **size, "unet_model": unet_model,
            "learning_rate": 0.5e-4, "loss_comb_type": "sum", "m_loss_scale": m_loss_scale,
            "d_loss_scale": d_loss_scale, "reject_probability": 0.95, "blob_radius": 10, "max_iteration": 700000,
            "blob_mode": "ball", "d_scale": 1, "d_blob_radius": 100, "cliprange": [7e-4, 0.9993],
            "voxel_size": [40, 4, 4], **more}


# --------------------------------------------------------------------------------------
# funlib.learn.tensorflow's U-Net and Synful's heads, TF1 graph code
# --------------------------------------------------------------------------------------

def _last(x):
    import tensorflow as tf
    return tf.transpose(x, (0, 2, 3, 4, 1))


def _first(x):
    import tensorflow as tf
    return tf.transpose(x, (0, 4, 1, 2, 3))


def _conv(x, fmaps: int, kernel: int, name: str, relu: bool):
    """tf.layers.conv3d(x, fmaps, kernel, 'valid', channels_first, name=name): variables name/kernel, name/bias."""
    import tensorflow as tf
    tf1 = tf.compat.v1

    cin = int(x.shape[1])
    with tf1.variable_scope(name):
        k = tf1.get_variable("kernel", (kernel,) * 3 + (cin, fmaps),
                             initializer=tf1.random_normal_initializer(0.0, (2.0 / (kernel ** 3 * cin)) ** 0.5))
        b = tf1.get_variable("bias", (fmaps,), initializer=tf1.random_normal_initializer(0.0, 0.1))
    y = tf.nn.conv3d(_last(x), k, (1, 1, 1, 1, 1), "VALID") + b
    return _first(tf.nn.relu(y) if relu else y)


def _conv_pass(x, fmaps: int, name: str, kernels=(3, 3), relu=True):
    for i, kernel in enumerate(kernels):
        x = _conv(x, fmaps, kernel, f"{name}_{i}", relu)
    return x


def _upsample(x, factors, fmaps: int, name: str):
    """tf.layers.conv3d_transpose(kernel = strides = factors, 'valid', relu): kernel (z, y, x, out, in)."""
    import tensorflow as tf
    tf1 = tf.compat.v1

    cin = int(x.shape[1])
    with tf1.variable_scope(name):
        k = tf1.get_variable("kernel", tuple(factors) + (fmaps, cin),
                             initializer=tf1.random_normal_initializer(0.0, (2.0 / cin) ** 0.5))
        b = tf1.get_variable("bias", (fmaps,), initializer=tf1.random_normal_initializer(0.0, 0.1))
    shape = [int(x.shape[0])] + [int(s) * f for s, f in zip(x.shape[2:], factors)] + [fmaps]
    y = tf.nn.conv3d_transpose(_last(x), k, shape, (1, *factors, 1), "VALID") + b
    return _first(tf.nn.relu(y))


def _crop(x, shape):
    import tensorflow as tf
    have = [int(s) for s in x.shape]
    offset = [0, 0] + [(h - s) // 2 for h, s in zip(have[2:], shape[2:])]
    return tf.slice(x, offset, have[:2] + list(shape[2:]))


def _crop_to_factor(x, factors, conv_crop: int = 4):
    """funlib's later crop_to_factor: centre-crop so (size - conv_crop) is a multiple of the factor product."""
    shape = [int(s) for s in x.shape]
    target = shape[:2] + [(s - conv_crop) // int(np.prod(f)) * int(np.prod(f)) + conv_crop
                          for s, f in zip(shape[2:], zip(*factors))]
    assert all(t > conv_crop for t in target[2:])
    return _crop(x, target) if target != shape else x


def _unet(x, fmaps: int, inc: int, factors, num_heads: int, layer: int = 0, crop_to_factor: bool = False):
    import tensorflow as tf
    tf1 = tf.compat.v1

    f_left = _conv_pass(x, fmaps, f"unet_layer_{layer}_left")
    if layer == len(factors):
        return [f_left] * num_heads if num_heads > 1 else f_left
    f = factors[layer]
    g_in = _first(tf.nn.max_pool3d(_last(f_left), (1, *f, 1), (1, *f, 1), "VALID"))
    g_outs = _unet(g_in, fmaps * inc, inc, factors, num_heads, layer + 1, crop_to_factor)
    if num_heads == 1:
        g_outs = [g_outs]
    f_outs = []
    for head, g_out in enumerate(g_outs):
        with tf1.variable_scope(f"decoder_{head}_layer_{layer}"):
            up = _upsample(g_out, f, fmaps, f"unet_up_{layer + 1}_to_{layer}")
            if crop_to_factor:  # the factors of this level and all below it
                up = _crop_to_factor(up, factors[layer:])
            f_right = tf.concat([_crop(f_left, [int(s) for s in up.shape]), up], 1)
            f_outs.append(_conv_pass(f_right, fmaps, f"unet_layer_{layer}_right"))
    return f_outs[0] if num_heads == 1 else f_outs


def tf1_network(params: dict, prefix: Path, raw: np.ndarray, *, drop: str | None = None, seed: int = 0,
                crop_to_factor: bool = False):
    """Build Synful's network of ``params`` in a TF1 graph, save it to the checkpoint ``prefix`` and return
    its outputs on ``raw`` ``(z, y, x)`` as channels-last numpy: ``(syn_indicator (z, y, x, 1),
    partner_vectors (z, y, x, 3))``.  ``drop``: a variable left out of the checkpoint; ``crop_to_factor``:
    funlib's later U-Net; its output shape is then written to train_net_config.json beside the checkpoint,
    as Synful's setups hold it."""
    import tensorflow as tf
    tf1 = tf.compat.v1

    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        shape = tuple(params["input_size"])
        x = tf1.placeholder(tf.float32, shape=shape)
        num_heads = 2 if params["unet_model"] == "dh_unet" else 1
        outputs = _unet(tf.reshape(x, (1, 1) + shape), params["fmap_num"], params["fmap_inc_factor"],
                        params["downsample_factors"], num_heads, crop_to_factor=crop_to_factor)
        if num_heads == 1:
            outputs = (outputs, outputs)
        vectors = _conv_pass(outputs[0], 3, "partner_vector", kernels=(1,), relu=False)
        indicator = _conv_pass(outputs[1], 1, "syn_indicator", kernels=(1,), relu=False)
        loss = tf.reduce_mean(indicator ** 2) + tf.reduce_mean(vectors ** 2)
        iteration = tf1.Variable(1.0, name="training_iteration", trainable=False)
        train_op = tf1.train.AdamOptimizer(0.5e-4, beta1=0.95, beta2=0.999, epsilon=1e-8).minimize(
            loss, global_step=iteration)
        assert train_op is not None
        variables = [v for v in tf1.global_variables() if v.op.name != drop]
        saver = tf1.train.Saver(var_list=variables)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            ind, vec = sess.run([indicator, vectors], {x: raw})
            prefix.parent.mkdir(parents=True, exist_ok=True)
            saver.save(sess, str(prefix), write_meta_graph=False)
        if crop_to_factor:
            (prefix.parent / "train_net_config.json").write_text(json.dumps(
                {"input_shape": list(shape), "output_shape": [int(s) for s in indicator.shape[2:]]}))
    return np.moveaxis(ind[0], 0, -1), np.moveaxis(vec[0], 0, -1)


def synful_setup(root: Path, name: str, params: dict, raw: np.ndarray, **kw):
    """A Synful setup directory (parameter.json, train_net_checkpoint_<ITERATION>) and its TF1 outputs."""
    setup = root / name
    setup.mkdir(parents=True)
    (setup / "parameter.json").write_text(json.dumps(params))
    out = tf1_network(params, setup / f"train_net_checkpoint_{ITERATION}", raw, **kw)
    return setup, out


def random_raw(shape) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)


@pytest.fixture(scope="module")
def raw():
    return random_raw(INPUT)


def keras_outputs(setup_dir: Path, raw: np.ndarray) -> dict:
    model = load_model_for_prediction(setup_dir, ITERATION)
    return {k: np.asarray(v)[0] for k, v in model(raw[None, ..., None], training=False).items()}


CASES = {
    "small_vanilla": parameters(SMALL, "vanilla"),
    "small_dh_unet_mse": parameters(SMALL, "dh_unet", m_loss_type="mean_squared_error", activation=None),
    "big_vanilla": parameters(BIG, "vanilla"),
    "big_dh_unet": parameters(BIG, "dh_unet", m_loss_type="cross_entropy"),
    "small_vanilla_crop_to_factor": parameters(SMALL, "vanilla", input_size=INPUT_CROP),
    "big_dh_unet_crop_to_factor": parameters(BIG, "dh_unet", input_size=INPUT_CROP),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_imported_network_equals_the_tf1_graph(case, tmp_path, capsys):
    params = CASES[case]
    crop = case.endswith("crop_to_factor")
    raw = random_raw(params["input_size"])
    src, (want_ind, want_vec) = synful_setup(tmp_path / "synful", case, params, raw, crop_to_factor=crop)
    assert main(["import-synful", str(src), str(src / f"train_net_checkpoint_{ITERATION}.index"), "-e", "imp",
                 "-t", "0", "-d", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"iteration {ITERATION}" in out and f"{'with' if crop else 'without'} crop_to_factor" in out
    got = keras_outputs(tmp_path / "imp" / "02_train" / "setup_t0", raw)
    d_ind = float(np.abs(got["syn_indicator"] - want_ind).max())
    d_vec = float(np.abs(got["partner_vectors"] - want_vec).max())
    print(f"{case}: max abs difference indicator {d_ind:.3g}, vectors {d_vec:.3g}")
    assert got["syn_indicator"].shape == want_ind.shape == ((6, 27, 27, 1) if crop else (6, 29, 29, 1))
    assert np.std(want_ind) > 1e-3 and np.std(want_vec) > 1e-3  # the comparison is not of constants
    assert d_ind <= TOL and d_vec <= TOL


def pair(tmp_path: Path, raw: np.ndarray):
    """p_setup52 + p_setup10 shrunk: a big indicator-only and a small vectors-only network."""
    ind_src, (ind, _) = synful_setup(tmp_path / "synful", "p_setup52", parameters(BIG, "vanilla", 1.0, 0.0), raw,
                                     seed=1)
    vec_src, (_, vec) = synful_setup(tmp_path / "synful", "p_setup10", parameters(SMALL, "vanilla", 0.0, 1.0), raw,
                                     seed=2)
    return ind_src, vec_src, ind, vec


@pytest.mark.slow
def test_single_task_pair_predicts_and_extracts_end_to_end(raw, tmp_path):
    from funlib.geometry import Coordinate

    from synful.config import read_train_config
    from synful.extract import extract
    from synful.io.volumes import open_volume, write_volume
    from synful.models import normalize_raw, output_shape
    from synful.predict import predict
    from synful.scaffold import create_predict_setups

    # the raw the network sees is normalised uint8
    raw_u8 = np.random.default_rng(3).integers(0, 256, INPUT, dtype=np.uint8)
    ind_src, vec_src, want_ind, want_vec = pair(tmp_path, normalize_raw(raw_u8))
    # vectors network first: the pair is told apart by the loss scales, not the order
    r = import_synful(vec_src, vec_src / f"train_net_checkpoint_{ITERATION}", tmp_path, "imp", 0,
                      pair=(ind_src, ind_src / f"train_net_checkpoint_{ITERATION}"))
    cfg = read_train_config(r["setup"] / "train_config.ini")
    assert (cfg.unet_model, cfg.tasks, cfg.fmap_num, cfg.paired_fmap_num, cfg.upsampling_relu) == \
        ("paired", "both", 3, 2, True)

    vs = Coordinate(cfg.voxel_size)
    out = Coordinate(output_shape(cfg))
    context = (Coordinate(INPUT) - out) / 2
    container = tmp_path / "imp" / "01_data" / "raw.zarr"
    write_volume(container, "volumes/raw", raw_u8, vs)
    (setup,) = create_predict_setups(tmp_path, "imp", 0, [r["iteration"]], overrides={
        "predict_config.ini": {
            "Prediction": {"raw_container": str(container), "raw_dataset": "volumes/raw",
                           "roi_offset": tuple(context * vs), "roi_shape": tuple(out * vs),
                           "indicator_dtype": "float32", "vectors_dtype": "float32"},
            "Extraction": {"cc_threshold": 0.5, "context": (40, 40, 40), "block_shape": tuple(out * vs)}},
        "worker_config.ini": {"Worker": {"executor": "local", "gpus": 0}}})
    predict(setup, progress=False, in_process=True)
    pred = setup / "predictions.zarr"
    ind = np.asarray(open_volume(pred, "volumes/pred_syn_indicator").data[:], np.float32)
    vec = np.asarray(open_volume(pred, "volumes/pred_partner_vectors").data[:], np.float32)
    # the run stores probabilities (sigmoid of the TF1 logits) and vectors (3, z, y, x) in nm
    d_ind = float(np.abs(ind - 1.0 / (1.0 + np.exp(-want_ind[..., 0]))).max())
    d_vec = float(np.abs(vec - np.moveaxis(want_vec, -1, 0)).max())
    print(f"pair end to end: max abs difference probability {d_ind:.3g}, vectors {d_vec:.3g}")
    assert d_ind <= TOL and d_vec <= TOL

    summary = extract(setup, multiprocessing=False)
    assert summary["complete"] and summary["partners"] == int(summary["partners"])
    assert summary["partners"] > 0  # random weights: some indicator components pass 0.5


@pytest.mark.slow
def test_pair_outputs_equal_each_tf1_network(raw, tmp_path):
    ind_src, vec_src, want_ind, want_vec = pair(tmp_path, raw)
    import_synful(ind_src, ind_src, tmp_path, "imp", 0, pair=(vec_src, vec_src), iteration=ITERATION)
    got = keras_outputs(tmp_path / "imp" / "02_train" / "setup_t0", raw)
    d_ind = float(np.abs(got["syn_indicator"] - want_ind).max())
    d_vec = float(np.abs(got["partner_vectors"] - want_vec).max())
    print(f"pair: max abs difference indicator {d_ind:.3g}, vectors {d_vec:.3g}")
    assert d_ind <= TOL and d_vec <= TOL


# --------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_setup(tmp_path_factory, raw):
    src, _ = synful_setup(tmp_path_factory.mktemp("synful"), "small", CASES["small_vanilla"], raw)
    return src


def test_wrong_fmap_num_is_refused_naming_the_variable_and_shapes(small_setup, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "parameter.json").write_text(json.dumps(dict(CASES["small_vanilla"], fmap_num=3)))
    code = main(["import-synful", str(wrong / "parameter.json"), str(small_setup / f"train_net_checkpoint_{ITERATION}"),
                 "-e", "imp", "-t", "0", "-d", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert ("variable unet_layer_0_left_0/kernel has shape (3, 3, 3, 1, 2)" in err
            and "expects (3, 3, 3, 1, 3)" in err and "fmap_num 3" in err), err
    assert not (tmp_path / "imp" / "02_train" / "setup_t0").exists()


def test_missing_variable_is_refused_naming_it_and_its_shape(raw, tmp_path):
    name = "decoder_0_layer_1/unet_up_2_to_1/kernel"
    src, _ = synful_setup(tmp_path / "synful", "holey", CASES["small_vanilla"], raw, drop=name)
    with pytest.raises(SynfulImportError, match=rf"variable {name} missing \(expected shape \(1, 3, 3, 4, 8\)"):
        import_synful(src, src / f"train_net_checkpoint_{ITERATION}", tmp_path, "imp", 0)
    assert not (tmp_path / "imp" / "02_train" / "setup_t0").exists()


def test_a_deeper_checkpoint_is_refused_naming_its_extra_variable(small_setup, tmp_path):
    shallow = tmp_path / "shallow"
    shallow.mkdir()
    # two levels: the checkpoint's third level is left over (and the second one's upsampling has other shapes)
    (shallow / "parameter.json").write_text(json.dumps(dict(CASES["small_vanilla"], downsample_factors=FACTORS[:2],
                                                            input_size=[42, 214, 214])))
    with pytest.raises(SynfulImportError, match=r"variable decoder_0_layer_2/unet_layer_2_right_0/bias \(shape "
                                                r"\(8,\)\) is not part of the network of .*shallow/parameter.json"):
        import_synful(shallow, small_setup / f"train_net_checkpoint_{ITERATION}", tmp_path, "imp", 0)
    # an output_size that is not the network's
    (shallow / "parameter.json").write_text(json.dumps(dict(CASES["small_vanilla"], output_size=[6, 30, 30])))
    with pytest.raises(SynfulImportError, match=r"output_size: \[6, 30, 30\] for input \[42, 241, 241\], but the "
                                                r"network of the parameter file gives \[6, 29, 29\] without "
                                                r"crop_to_factor, none \(input does not fit\) with crop_to_factor"):
        import_synful(shallow, small_setup, tmp_path, "imp", 0)
    # told to crop to factor: input 42 z does not fit
    with pytest.raises(SynfulImportError, match=r"input_size \[42, 241, 241\] gives no output: none \(input does "
                                                r"not fit\) with crop_to_factor"):
        import_synful(small_setup, small_setup, tmp_path, "imp", 0, crop_to_factor=True)


def test_an_existing_setup_is_refused_before_reading_the_checkpoint(small_setup, tmp_path):
    (tmp_path / "imp" / "02_train" / "setup_t0").mkdir(parents=True)
    with pytest.raises(SynfulImportError, match=r"setup_t0: setup already exists"):
        import_synful(small_setup, small_setup / "no_such_checkpoint", tmp_path, "imp", 0)


def test_bad_checkpoint_paths_and_pairs_are_refused(small_setup, tmp_path):
    with pytest.raises(SynfulImportError, match=r"no TF1 checkpoint \(expected .*nothing.index"):
        read_synful_network(small_setup, small_setup / "nothing")
    with pytest.raises(SynfulImportError, match=r"parameter.json: Synful parameter file not found"):
        read_synful_network(tmp_path, small_setup)
    net = read_synful_network(small_setup, small_setup)  # a directory: its latest checkpoint
    assert (net.task, net.iteration) == ("both", ITERATION)
    with pytest.raises(SynfulImportError, match=r"a pair needs an indicator-only network"):
        training_values(net, net)


# --------------------------------------------------------------------------------------
# the parameter mapping
# --------------------------------------------------------------------------------------

def test_parameter_mapping_and_one_warning_line_for_keys_without_equivalent(small_setup, tmp_path, caplog):
    params = dict(CASES["small_vanilla"], d_scale=2, m_loss_type="mean_squared_error", activation="sigmoid",
                  blob_mode="ball", loss_comb_type="product", clip_gradients=True, d_transition=False,
                  downsample_xy=1, fancy_new_key=7)
    src = tmp_path / "mapped"
    src.mkdir()
    (src / "parameter.json").write_text(json.dumps(params))
    with caplog.at_level("WARNING", logger="synful.import_synful"):
        r = import_synful(src, small_setup / f"train_net_checkpoint_{ITERATION}", tmp_path, "imp", 3)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    for k in ("loss_comb_type=\"product\"", "clip_gradients=true", "fancy_new_key=7", "activation=sigmoid"):
        assert k in warnings[0], warnings[0]
    for k in ("blob_mode", "d_transition", "downsample_xy", "d_scale"):
        assert k not in warnings[0], warnings[0]

    from synful.config import read_train_config
    cfg = read_train_config(r["setup"] / "train_config.ini")
    assert cfg.input_shape == INPUT and cfg.voxel_size == (40, 4, 4)
    assert [tuple(f) for f in cfg.downsample_factors] == [tuple(f) for f in FACTORS]
    assert (cfg.fmap_num, cfg.fmap_inc_factor, cfg.unet_model, cfg.tasks) == (2, 2, "vanilla", "both")
    assert (cfg.kernel_size, cfg.num_convs, cfg.upsampling, cfg.upsampling_relu) == ((3, 3, 3), 2,
                                                                                     "transposed_conv", True)
    assert cfg.vector_scale == 0.5 and cfg.d_loss_scale == 4.0 and cfg.m_loss_type == "sigmoid_ce"
    assert (cfg.blob_radius, cfg.d_blob_radius, cfg.balance_clip) == (10.0, 100.0, (7e-4, 0.9993))
    assert (cfg.reject_probability, cfg.learning_rate, cfg.iterations) == (0.95, 0.5e-4, 700000)
    assert r["checkpoint"].name == f"model_{ITERATION}.weights.h5" and r["checkpoint"].is_file()


def test_mse_indicator_and_single_task_map_to_tasks_and_loss():
    def net(**kw):
        from synful.import_synful import SynfulNetwork, _task
        params = parameters(SMALL, "vanilla", **kw)
        return SynfulNetwork(Path("p.json"), params, "ckpt_1", _task(params, Path("p.json")), 1)

    values, _ = training_values(net(m_loss_type="mean_squared_error", activation=None, d_loss_scale=0.0))
    assert (values["tasks"], values["m_loss_type"]) == ("indicator", "mse")
    values, _ = training_values(net(m_loss_scale=0.0))
    assert values["tasks"] == "vectors"
    with pytest.raises(SynfulImportError, match="activation 'tanh'"):
        training_values(net(m_loss_type="mean_squared_error", activation="tanh"))
