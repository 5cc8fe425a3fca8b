"""U-Net shapes, variants, weight transfer to larger inputs, and the raw normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from synful.config import ConfigError, Training
from synful.models import build_unet, normalize_raw, output_shape, valid_input_sizes

TINY = dict(fmap_num=2, fmap_inc_factor=2, downsample_factors=[(1, 2, 2), (1, 2, 2)], kernel_size=(1, 3, 3),
            input_shape=(12, 60, 60))


def tiny(**kw) -> Training:
    return Training(**{**TINY, **kw})


@pytest.mark.parametrize("kw, input_shape, expected", [
    ({}, (42, 430, 430), (6, 218, 218)),  # Synful's defaults: [[1,3,3],[1,3,3],[3,3,3]], 3x3x3, two convs
    ({}, (48, 484, 484), (12, 272, 272)),
    (TINY, (12, 60, 60), (12, 20, 20)),
    (TINY, (12, 76, 76), (12, 36, 36)),
    ({**TINY, "kernel_size": (3, 3, 3)}, (26, 60, 60), (6, 20, 20)),
    ({**TINY, "num_convs": 1}, (8, 30, 30), (8, 10, 10)),
    ({"downsample_factors": [], "kernel_size": (3, 3, 3)}, (10, 10, 10), (6, 6, 6)),
    ({"downsample_factors": [(2, 2, 2)], "num_convs": 3}, (28, 28, 28), (4, 4, 4)),
])
def test_output_shape(kw, input_shape, expected):
    assert output_shape(Training(**kw), input_shape) == expected


def test_output_shape_defaults_to_the_config_input_shape():
    assert output_shape(Training()) == (6, 218, 218)


@pytest.mark.parametrize("kw, fragment", [
    (dict(input_shape=(12, 60, 60)), "along z, the convolutions of level 2 leave no voxels"),
    (dict(input_shape=(20, 100, 100)), "along z, level 2 has 8 voxels, not divisible by its downsample factor 3"),
    (dict(input_shape=(42, 431, 430)), "along y"),
    (dict(**{**TINY, "input_shape": (12, 61, 60)}), "along y, level 0 has 57 voxels"),
])
def test_impossible_shapes_raise_naming_the_keys(kw, fragment):
    with pytest.raises(ConfigError) as e:
        output_shape(Training(**kw))
    msg = str(e.value)
    for key in ("input_shape", "downsample_factors", "kernel_size", "num_convs"):
        assert key in msg
    assert fragment in msg
    assert "nearest valid" in msg


def test_nearest_valid_sizes_are_valid():
    cfg = Training()
    sizes = valid_input_sizes(cfg, 1, 431)
    assert sizes == [430, 457]  # valid y sizes step by the total downsampling, 27
    for s in sizes:
        output_shape(cfg, (42, s, 430))


def test_level_kernel_sizes_give_z_context_at_coarse_levels_only():
    # z shrinks by 2 * 2 per 3D level and side: bottom (4) + level 1 down and up (8)
    cfg = tiny(level_kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)], input_shape=(24, 60, 60))
    assert output_shape(cfg) == (12, 20, 20)
    model = build_unet(cfg)
    kernels = {layer.name: tuple(layer.kernel.shape[:3]) for layer in model.layers if layer.name.endswith("conv0")}
    assert kernels["enc0_conv0"] == (1, 3, 3) and kernels["dec0_conv0"] == (1, 3, 3)
    assert kernels["enc1_conv0"] == (3, 3, 3) and kernels["bottom_conv0"] == (3, 3, 3)
    assert tuple(model(np.zeros((1, 24, 60, 60, 1), np.float32))["syn_indicator"].shape) == (1, 12, 20, 20, 1)
    # the per-level kernels replace kernel_size: the same network whatever kernel_size says
    assert output_shape(tiny(level_kernel_sizes=cfg.level_kernel_sizes, kernel_size=(5, 5, 5),
                             input_shape=(24, 60, 60))) == (12, 20, 20)


@pytest.mark.parametrize("kernels, fragment", [
    ([(1, 3, 3), (3, 3, 3)], "level_kernel_sizes: needs 3 kernel shapes"),
    ([(1, 3, 3), (3, 3, 3), (2, 3, 3)], "level_kernel_sizes: needs 3 odd positive integers (z, y, x), got (2, 3, 3)"),
])
def test_bad_level_kernel_sizes_raise_naming_the_key(kernels, fragment):
    with pytest.raises(ConfigError) as e:
        output_shape(tiny(level_kernel_sizes=kernels))
    assert fragment in str(e.value)


def test_too_thin_input_for_level_kernels_names_them():
    with pytest.raises(ConfigError) as e:
        output_shape(tiny(level_kernel_sizes=[(1, 3, 3), (3, 3, 3), (3, 3, 3)], input_shape=(12, 60, 60)))
    assert "level_kernel_sizes [[1, 3, 3], [3, 3, 3], [3, 3, 3]]" in str(e.value)
    assert "nearest valid z sizes: 13, 14" in str(e.value)


def test_dh_unet_needs_both_tasks():
    with pytest.raises(ConfigError, match="dh_unet needs tasks = both"):
        output_shape(tiny(unet_model="dh_unet", tasks="indicator"))


@pytest.mark.parametrize("unet_model, tasks, upsampling, heads", [
    ("vanilla", "both", "transposed_conv", {"syn_indicator": 1, "partner_vectors": 3}),
    ("vanilla", "indicator", "nearest", {"syn_indicator": 1}),
    ("vanilla", "vectors", "transposed_conv", {"partner_vectors": 3}),
    ("dh_unet", "both", "nearest", {"syn_indicator": 1, "partner_vectors": 3}),
])
def test_variants_have_the_heads_of_their_tasks(unet_model, tasks, upsampling, heads):
    cfg = tiny(unet_model=unet_model, tasks=tasks, upsampling=upsampling)
    model = build_unet(cfg)
    out = model(np.zeros((1, 12, 60, 60, 1), np.float32))
    assert set(out) == set(heads)
    for name, channels in heads.items():
        assert tuple(out[name].shape) == (1, 12, 20, 20, channels)
        assert out[name].dtype == "float32"
    names = [layer.name for layer in model.layers]
    if unet_model == "dh_unet":  # one decoder per task on a shared encoder
        assert any(n.startswith("m_dec") for n in names) and any(n.startswith("d_dec") for n in names)
        assert sum(n.startswith("enc0") for n in names) == cfg.num_convs


def test_dh_unet_has_more_parameters_than_the_shared_decoder():
    shared = build_unet(tiny()).count_params()
    double = build_unet(tiny(unet_model="dh_unet")).count_params()
    assert double > shared


def test_weights_load_into_a_larger_input_and_agree_on_the_overlap(tmp_path):
    cfg = tiny()
    small = build_unet(cfg)
    path = tmp_path / "w.weights.h5"
    small.save_weights(str(path))
    big = build_unet(cfg, (12, 76, 76))
    big.load_weights(str(path))
    x = np.random.default_rng(0).random((1, 12, 76, 76, 1)).astype(np.float32)
    out_big = big(x)
    # the small network on the crop starting at (8, 8) (a multiple of the total downsampling, 4)
    out_small = small(x[:, :, 8:68, 8:68])
    for name in ("syn_indicator", "partner_vectors"):
        np.testing.assert_allclose(np.asarray(out_big[name])[:, :, 8:28, 8:28], np.asarray(out_small[name]),
                                   rtol=1e-5, atol=1e-5)


def test_vector_scale_multiplies_the_vector_head():
    x = np.random.default_rng(1).random((1, 12, 60, 60, 1)).astype(np.float32)
    a, b = build_unet(tiny(vector_scale=1.0)), build_unet(tiny(vector_scale=100.0))
    b.set_weights(a.get_weights())
    np.testing.assert_allclose(np.asarray(b(x)["partner_vectors"]), 100 * np.asarray(a(x)["partner_vectors"]),
                               rtol=1e-4, atol=1e-4)


def test_mixed_precision_without_gpu_builds_float32():
    import tensorflow as tf

    model = build_unet(tiny(mixed_precision=True))
    policies = {layer.dtype_policy.name for layer in model.layers if layer.weights}
    if tf.config.list_physical_devices("GPU"):
        assert "mixed_float16" in policies
    else:
        assert policies == {"float32"}
    out = model(np.zeros((1, 12, 60, 60, 1), np.float32))
    assert all(v.dtype == "float32" for v in out.values())


def test_normalize_raw_maps_uint8_to_minus_one_one():
    raw = np.array([0, 51, 255], np.uint8)
    out = normalize_raw(raw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, -0.6, 1.0], atol=1e-6)
    with pytest.raises(ConfigError, match="uint8"):
        normalize_raw(raw.astype(np.float32))



def test_mixed_precision_switch_sets_the_layer_compute_dtype(monkeypatch, caplog):
    """Where a GPU is visible the switch makes the layers compute in float16 (heads stay float32); where
    none is, it is refused with a warning naming the key, and the layers stay float32."""
    import logging

    from synful.models import precision

    with caplog.at_level(logging.WARNING, logger="synful.models.precision"):
        assert precision.layer_policy(True, "[Training] mixed_precision") == (
            "mixed_float16" if precision.gpu_visible() else "float32")
    if not precision.gpu_visible():
        assert "[Training] mixed_precision = true but no GPU is visible" in caplog.text
    assert precision.layer_policy(False, "k") == "float32"

    monkeypatch.setattr(precision, "gpu_visible", lambda: True)  # the decision as made on a GPU node
    model = build_unet(tiny(mixed_precision=True))
    compute = {layer.compute_dtype for layer in model.layers if layer.weights and "syn_indicator" not in layer.name
               and "partner_vectors" not in layer.name}
    assert compute == {"float16"}
    assert model.get_layer("syn_indicator").compute_dtype == "float32"


def test_vgg3d_mixed_precision_layers(monkeypatch):
    from synful.models import precision
    from synful.transmitters.model import vgg3d

    monkeypatch.setattr(precision, "gpu_visible", lambda: True)
    m = vgg3d((4, 16, 16), 2, fmaps=2, fc_size=4, downsample_factors=[(1, 2, 2)], fmap_inc=[2], n_convolutions=[1],
              dtype=precision.layer_policy(True, "k"))
    assert m.get_layer("l0_conv0").compute_dtype == "float16" and m.get_layer("fc0").compute_dtype == "float16"
    assert m.get_layer("logits").compute_dtype == "float32"
