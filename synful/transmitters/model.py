"""VGG3D: the 3D VGG classifier of Eckstein et al. (Cell 2024) as a Keras 3 model.

Layout: per level ``n_convolutions[l]`` times (3x3x3 convolution, 'same'
padding, [batch norm], ReLU), then max pooling by ``downsample_factors[l]``;
feature maps start at ``fmaps`` and are multiplied by ``fmap_inc[l]`` after
level ``l``.  The classifier is flatten, two fully connected layers of
``fc_size`` units (ReLU, dropout before each) and a linear output of one logit
per class.

Input: ``(batch, z, y, x, 1)`` float32 raw in [-1, 1]; output: ``(batch,
num_classes)`` float32 logits (softmax gives the class probabilities).
"""

from __future__ import annotations

from ..errors import SynfulError

__all__ = ["ModelConfigError", "vgg3d", "vgg3d_from_config", "output_level_shapes"]


class ModelConfigError(SynfulError):
    """The VGG3D hyper-parameters do not fit together (e.g. input too small for the downsampling)."""


def output_level_shapes(input_shape, downsample_factors) -> list[tuple[int, int, int]]:
    """Spatial shape (z, y, x) after each pooling; ModelConfigError if a shape does not divide."""
    shape = tuple(int(s) for s in input_shape)
    shapes = []
    for level, f in enumerate(downsample_factors):
        if any(s % d for s, d in zip(shape, f)):
            raise ModelConfigError(f"input_shape {tuple(input_shape)}: shape {shape} before level {level} is not "
                                   f"divisible by downsample factor {tuple(f)}")
        shape = tuple(s // d for s, d in zip(shape, f))
        shapes.append(shape)
    return shapes


def vgg3d(input_shape, num_classes: int, *, fmaps: int = 12, fmap_inc=(2, 2, 2, 2), n_convolutions=(2, 2, 2, 2),
          downsample_factors=((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)), fc_size: int = 4096,
          dropout: float = 0.5, batch_norm: bool = True, name: str = "vgg3d", dtype: str = "float32"):
    """Build the (uncompiled) VGG3D Keras model; see the module doc for shapes.

    ``dtype``: the Keras dtype policy of every layer but the float32 logits (``"mixed_float16"``
    computes in float16 with float32 weights; see :func:`synful.models.layer_policy`).
    """
    import keras
    from keras import layers

    levels = len(downsample_factors)
    if len(fmap_inc) != levels or len(n_convolutions) != levels:
        raise ModelConfigError(f"fmap_inc ({len(fmap_inc)}) and n_convolutions ({len(n_convolutions)}) need one "
                               f"entry per downsample factor ({levels})")
    if num_classes < 2:
        raise ModelConfigError(f"num_classes {num_classes}: need at least two classes")
    output_level_shapes(input_shape, downsample_factors)

    x = inputs = keras.Input(shape=(*input_shape, 1), name="raw")
    f = int(fmaps)
    for level in range(levels):
        for c in range(int(n_convolutions[level])):
            x = layers.Conv3D(f, 3, padding="same", use_bias=not batch_norm, name=f"l{level}_conv{c}",
                              dtype=dtype)(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=0.9, name=f"l{level}_bn{c}", dtype=dtype)(x)  # PyTorch-like: settles in short runs
            x = layers.ReLU(name=f"l{level}_relu{c}", dtype=dtype)(x)
        x = layers.MaxPooling3D(tuple(downsample_factors[level]), name=f"l{level}_pool", dtype=dtype)(x)
        f *= int(fmap_inc[level])
    x = layers.Flatten(name="flatten", dtype=dtype)(x)
    for i in range(2):
        x = layers.Dropout(dropout, name=f"fc{i}_dropout", dtype=dtype)(x)
        x = layers.Dense(fc_size, activation="relu", name=f"fc{i}", dtype=dtype)(x)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def vgg3d_from_config(cfg, num_classes: int, dtype: str = "float32"):
    """VGG3D from a :class:`synful.config.TransmitterTraining` section, its layers of policy ``dtype``."""
    return vgg3d(cfg.input_shape, num_classes, fmaps=cfg.fmaps, fmap_inc=cfg.fmap_inc,
                 n_convolutions=cfg.n_convolutions, downsample_factors=cfg.downsample_factors,
                 fc_size=cfg.fc_size, dropout=cfg.dropout, batch_norm=cfg.batch_norm, dtype=dtype)
