"""Valid-padded 3D U-Nets for synaptic partner detection (Keras 3, channels-last).

A U-Net maps normalised raw ``(batch, z, y, x, 1)`` float32 to one or two heads:

- ``syn_indicator``: ``(batch, z', y', x', 1)`` logits that a voxel lies near a post-synaptic site;
- ``partner_vectors``: ``(batch, z', y', x', 3)`` vector in nm (z, y, x) from the voxel to its
  pre-synaptic partner site.

The architecture follows Synful's: per level ``num_convs`` valid convolutions (ReLU) with
``fmap_num * fmap_inc_factor**level`` feature maps, max-pooling by ``downsample_factors[level]``,
upsampling (transposed convolution, or nearest-neighbour repeat followed by a 1x1x1 convolution),
centre-cropped skip connections and 1x1x1 linear heads (the vector head's output multiplied by
``vector_scale``).  ``unet_model = dh_unet`` shares the encoder
and gives each head its own decoder; ``unet_model = paired`` runs two independent U-Nets on the same
input, one per head (Synful's single-task networks, e.g. p_setup52 + p_setup10, in one model; the
vector U-Net may have its own ``paired_fmap_num`` / ``paired_fmap_inc_factor``).  ``upsampling_relu``
puts a ReLU after the upsampling convolution, as funlib.learn.tensorflow's U-Net does; ``crop_to_factor``
centre-crops each upsampled feature map as later funlib versions do (the part left after the level's
convolutions a multiple of the downsampling below it, for translation equivariance).  Every layer has
a fixed name, so weights trained with one input shape load into the same network built for a larger
input (see :func:`build_unet`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config import ConfigError, Training
from .precision import layer_policy

__all__ = [
    "HEADS",
    "RAW_SCALE",
    "RAW_SHIFT",
    "level_kernels",
    "normalize_raw",
    "output_shape",
    "valid_input_sizes",
    "head_names",
    "build_unet",
    "PAIRED_VECTORS_PREFIX",
]

#: head name -> number of channels
HEADS = {"syn_indicator": 1, "partner_vectors": 3}

#: raw normalisation: ``raw / 255 * RAW_SCALE + RAW_SHIFT`` maps uint8 [0, 255] to [-1, 1]
RAW_SCALE = 2.0
RAW_SHIFT = -1.0

_AXES = "zyx"


def normalize_raw(raw: np.ndarray, *, uint8_only: bool = True) -> np.ndarray:
    """The one raw normalisation of training and prediction: uint8 [0, 255] -> float32 [-1, 1].

    The training pipeline applies the same map in two steps (``/255``, intensity augmentation
    in [0, 1], then ``* RAW_SCALE + RAW_SHIFT``), so un-augmented training input equals this.
    With ``uint8_only`` (the U-Net's raw) other dtypes are a ConfigError; without (the transmitter
    classifier's raw) integer data is divided by its dtype's maximum and float data is taken as
    already in [0, 1].
    """
    raw = np.asarray(raw)
    if uint8_only and raw.dtype != np.uint8:
        raise ConfigError(f"normalize_raw: expected uint8 raw, got {raw.dtype}")
    if np.issubdtype(raw.dtype, np.integer):
        unit = raw.astype(np.float32) / np.float32(np.iinfo(raw.dtype).max)
    else:
        unit = raw.astype(np.float32)
    return unit * np.float32(RAW_SCALE) + np.float32(RAW_SHIFT)


def head_names(cfg: Training) -> tuple[str, ...]:
    """The output heads ``cfg.tasks`` asks for, in the order (syn_indicator, partner_vectors)."""
    return {"both": ("syn_indicator", "partner_vectors"), "indicator": ("syn_indicator",),
            "vectors": ("partner_vectors",)}[cfg.tasks]


def _factor_below(factors, level: int, axis: int) -> int:
    """The product of the downsample factors of ``level`` and every level below it, along ``axis``."""
    return int(np.prod([f[axis] for f in factors[level:]]))


def _crop_to_factor_size(s: int, factor: int, conv_crop: int) -> int:
    """funlib's crop_to_factor: the largest size <= ``s`` whose part after the convolutions (``s - conv_crop``)
    is a multiple of ``factor``."""
    return (s - conv_crop) // factor * factor + conv_crop


def _axis_sizes(size: int, axis: int, factors, kernels, num_convs: int, crop_to_factor: bool = False):
    """Walk one axis through the U-Net; return (output size, None) or (None, reason).

    ``kernels``: one kernel shape (z, y, x) per level, top first, bottom last.
    """
    shrink = [num_convs * (k[axis] - 1) for k in kernels]
    s = size
    for level, f in enumerate(factors):
        s -= shrink[level]
        if s < 1:
            return None, f"the convolutions of level {level} leave no voxels"
        if s % f[axis]:
            return None, (f"level {level} has {s} voxels, not divisible by its downsample factor {f[axis]}")
        s //= f[axis]
    s -= shrink[len(factors)]
    if s < 1:
        return None, "the convolutions of the bottom level leave no voxels"
    for level in reversed(range(len(factors))):
        s = s * factors[level][axis]
        if crop_to_factor:
            s = _crop_to_factor_size(s, _factor_below(factors, level, axis), shrink[level])
            if s <= shrink[level]:
                return None, f"crop_to_factor at level {level} leaves no voxels"
        s -= shrink[level]
        if s < 1:
            return None, f"the upsampling path of level {level} leaves no voxels"
    return s, None


def level_kernels(cfg: Training) -> list[tuple[int, int, int]]:
    """The convolution kernel shape (z, y, x) of every U-Net level, top first, bottom last.

    ``level_kernel_sizes`` when given (one per level: ``len(downsample_factors) + 1``), else
    ``kernel_size`` at every level.  Raises ConfigError naming the key for a wrong count or an even
    or non-positive size.
    """
    n = len(cfg.downsample_factors) + 1
    if cfg.level_kernel_sizes:
        kernels, name = [tuple(int(v) for v in k) for k in cfg.level_kernel_sizes], "level_kernel_sizes"
        if len(kernels) != n:
            raise ConfigError(f"[Training] level_kernel_sizes: needs {n} kernel shapes (one per level: "
                              f"len(downsample_factors) + 1), got {len(kernels)}")
    else:
        kernels, name = [tuple(int(v) for v in cfg.kernel_size)] * n, "kernel_size"
    for k in kernels:
        if len(k) != 3 or min(k) < 1 or any(v % 2 == 0 for v in k):
            # odd kernels keep the output centred on the input (the context is whole voxels on each side)
            raise ConfigError(f"[Training] {name}: needs 3 odd positive integers (z, y, x), got {k}")
    return kernels


def _kernel_desc(cfg: Training) -> str:
    if cfg.level_kernel_sizes:
        return f"level_kernel_sizes {[list(k) for k in cfg.level_kernel_sizes]}"
    return f"kernel_size {tuple(cfg.kernel_size)}"


def _check_architecture(cfg: Training):
    factors = [tuple(int(v) for v in f) for f in cfg.downsample_factors]
    for f in factors:
        if len(f) != 3 or min(f) < 1:
            raise ConfigError(f"[Training] downsample_factors: each factor needs 3 positive integers (z, y, x), "
                              f"got {list(f)}")
    level_kernels(cfg)
    if cfg.unet_model in ("dh_unet", "paired") and cfg.tasks != "both":
        what = "one decoder per task" if cfg.unet_model == "dh_unet" else "one U-Net per task"
        raise ConfigError(f"[Training] unet_model = {cfg.unet_model} needs tasks = both ({what}), "
                          f"got tasks = {cfg.tasks}")
    return factors


def valid_input_sizes(cfg: Training, axis: int, near: int, count: int = 2) -> list[int]:
    """Up to ``count`` input sizes along ``axis`` (0=z, 1=y, 2=x) nearest to ``near`` that the network accepts."""
    factors = _check_architecture(cfg)
    kernels = level_kernels(cfg)
    found = []
    for delta in range(0, 10 * max(near, 100)):
        for s in sorted({near - delta, near + delta}):
            if s >= 1 and _axis_sizes(s, axis, factors, kernels, cfg.num_convs, cfg.crop_to_factor)[0] is not None:
                found.append(s)
        if len(found) >= count:
            break
    return found[:count]


def output_shape(cfg: Training, input_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """Output shape in voxels (z, y, x) of the U-Net of ``cfg`` for ``input_shape`` (default ``cfg.input_shape``).

    Raises :class:`~synful.config.ConfigError` naming ``input_shape``, ``downsample_factors``,
    ``kernel_size`` (or ``level_kernel_sizes``) and ``num_convs`` (with the nearest valid input sizes) when some axis cannot
    pass the network: a level whose size is not divisible by its downsample factor, or
    convolutions that leave no voxels.  Also rejects ``unet_model = dh_unet`` without
    ``tasks = both``.  Runs no TensorFlow.
    """
    factors = _check_architecture(cfg)
    shape = tuple(int(s) for s in (cfg.input_shape if input_shape is None else input_shape))
    if len(shape) != 3:
        raise ConfigError(f"[Training] input_shape: needs 3 sizes (z, y, x), got {shape}")
    kernels = level_kernels(cfg)
    out = []
    for axis, size in enumerate(shape):
        s, reason = _axis_sizes(size, axis, factors, kernels, cfg.num_convs, cfg.crop_to_factor)
        if s is None:
            near = valid_input_sizes(cfg, axis, size)
            hint = f"; nearest valid {_AXES[axis]} sizes: {', '.join(map(str, near))}" if near else ""
            raise ConfigError(
                f"[Training] input_shape {shape} does not fit downsample_factors "
                f"{[list(f) for f in factors]}, {_kernel_desc(cfg)} and num_convs "
                f"{cfg.num_convs}: along {_AXES[axis]}, {reason}{hint}")
        out.append(s)
    return tuple(out)


# --------------------------------------------------------------------------------------
# Keras model
# --------------------------------------------------------------------------------------

def _fmaps(cfg: Training, level: int, vectors_net: bool = False) -> int:
    """Feature maps at ``level``; ``vectors_net``: of the partner_vectors U-Net of ``unet_model = paired``."""
    num, inc = cfg.fmap_num, cfg.fmap_inc_factor
    if vectors_net:
        num, inc = cfg.paired_fmap_num or num, cfg.paired_fmap_inc_factor or inc
    return int(num * inc ** level)


def _conv_pass(x, fmaps: int, cfg: Training, level: int, name: str, dtype):
    from keras import layers

    kernel = level_kernels(cfg)[level]
    for i in range(cfg.num_convs):
        x = layers.Conv3D(fmaps, kernel, padding="valid", activation="relu",
                          name=f"{name}_conv{i}", dtype=dtype)(x)
    return x


def _center_crop(x, shape, name: str):
    from keras import layers

    have = x.shape[1:4]
    crop = []
    for h, s in zip(have, shape):
        d = int(h) - int(s)
        crop.append((d // 2, d - d // 2))
    if not any(lo or hi for lo, hi in crop):
        return x
    return layers.Cropping3D(tuple(crop), name=name)(x)


def _decoder(x, skips, cfg: Training, prefix: str, dtype, vectors_net: bool = False):
    from keras import layers

    factors = [tuple(f) for f in cfg.downsample_factors]
    up_activation = "relu" if cfg.upsampling_relu else None
    for level in reversed(range(len(factors))):
        f, fm = factors[level], _fmaps(cfg, level, vectors_net)
        if cfg.upsampling == "transposed_conv":
            x = layers.Conv3DTranspose(fm, f, strides=f, padding="valid", activation=up_activation,
                                       name=f"{prefix}up{level}", dtype=dtype)(x)
        else:
            x = layers.UpSampling3D(f, name=f"{prefix}up{level}", dtype=dtype)(x)
            x = layers.Conv3D(fm, 1, activation=up_activation, name=f"{prefix}up{level}_conv", dtype=dtype)(x)
        if cfg.crop_to_factor:
            conv_crop = [cfg.num_convs * (k - 1) for k in level_kernels(cfg)[level]]
            target = [_crop_to_factor_size(int(s), _factor_below(factors, level, a), conv_crop[a])
                      for a, s in enumerate(x.shape[1:4])]
            x = _center_crop(x, target, name=f"{prefix}crop_to_factor{level}")
        skip = _center_crop(skips[level], x.shape[1:4], name=f"{prefix}crop{level}")
        x = layers.Concatenate(axis=-1, name=f"{prefix}concat{level}", dtype=dtype)([skip, x])
        x = _conv_pass(x, fm, cfg, level, f"{prefix}dec{level}", dtype)
    return x


def _encoder(raw, cfg: Training, prefix: str, dtype, vectors_net: bool = False):
    """The contracting path: (bottom features, skip features per level, top first)."""
    from keras import layers

    x, skips = raw, []
    for level, f in enumerate(cfg.downsample_factors):
        x = _conv_pass(x, _fmaps(cfg, level, vectors_net), cfg, level, f"{prefix}enc{level}", dtype)
        skips.append(x)
        x = layers.MaxPooling3D(tuple(f), strides=tuple(f), padding="valid", name=f"{prefix}down{level}",
                                dtype=dtype)(x)
    bottom_level = len(cfg.downsample_factors)
    bottom = _conv_pass(x, _fmaps(cfg, bottom_level, vectors_net), cfg, bottom_level, f"{prefix}bottom", dtype)
    return bottom, skips


#: layer-name prefix of the partner_vectors U-Net of ``unet_model = paired`` (the indicator U-Net has none)
PAIRED_VECTORS_PREFIX = "v_"


def build_unet(cfg: Training, input_shape: Sequence[int] | None = None):
    """Build the (uncompiled) Keras U-Net of ``cfg`` for ``input_shape`` voxels (default ``cfg.input_shape``).

    Input ``raw``: ``(batch, z, y, x, 1)`` float32, normalised with :func:`normalize_raw`.
    Outputs, a dict with the heads of ``cfg.tasks`` only: ``syn_indicator`` ``(batch, *out, 1)``
    logits and ``partner_vectors`` ``(batch, *out, 3)`` nm (z, y, x), ``out = output_shape(cfg,
    input_shape)``; heads are float32 even with ``cfg.mixed_precision`` (``mixed_float16`` layers on a
    GPU; float32 without one).
    Layer names do not depend on the input shape, so weights saved from one build load into another
    built with a larger input.  With ``unet_model = paired`` the partner_vectors U-Net's layers carry
    the prefix :data:`PAIRED_VECTORS_PREFIX`.  Raises ConfigError for impossible shapes before building
    anything.
    """
    import keras
    from keras import layers

    shape = tuple(int(s) for s in (cfg.input_shape if input_shape is None else input_shape))
    output_shape(cfg, shape)
    dtype = layer_policy(cfg.mixed_precision, "[Training] mixed_precision")

    raw = keras.Input(shape=(*shape, 1), name="raw", dtype="float32")
    bottom, skips = _encoder(raw, cfg, "", dtype)

    heads = head_names(cfg)
    if cfg.unet_model == "dh_unet":
        features = {"syn_indicator": _decoder(bottom, skips, cfg, "m_", dtype),
                    "partner_vectors": _decoder(bottom, skips, cfg, "d_", dtype)}
    elif cfg.unet_model == "paired":
        p = PAIRED_VECTORS_PREFIX
        v_bottom, v_skips = _encoder(raw, cfg, p, dtype, vectors_net=True)
        features = {"syn_indicator": _decoder(bottom, skips, cfg, "", dtype),
                    "partner_vectors": _decoder(v_bottom, v_skips, cfg, p, dtype, vectors_net=True)}
    else:
        shared = _decoder(bottom, skips, cfg, "", dtype)
        features = {h: shared for h in heads}
    outputs = {}
    if "syn_indicator" in heads:
        outputs["syn_indicator"] = layers.Conv3D(1, 1, activation=None, name="syn_indicator",
                                                 dtype="float32")(features["syn_indicator"])
    if "partner_vectors" in heads:
        v = layers.Conv3D(3, 1, activation=None, name="partner_vectors_conv", dtype="float32")(features["partner_vectors"])
        outputs["partner_vectors"] = layers.Rescaling(float(cfg.vector_scale), name="partner_vectors", dtype="float32")(v)
    name = f"unet_{cfg.unet_model}_{cfg.tasks}"
    return keras.Model(inputs=raw, outputs=outputs, name=name)
