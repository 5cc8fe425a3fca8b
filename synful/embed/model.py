"""The SimCLR networks (Keras 3): a small 3D ResNet encoder, a two-layer MLP projector, the NT-Xent loss.

Encoder input: ``(batch, z, y, x, channels)`` float32 cubes (channels last: raw, pre mask, post mask
[, cleft]); output: ``(batch, features)`` float32, the embedding that prediction stores: the feature maps of
every stage averaged over each mask region (pre neuron, post neuron, and the cleft when the cube has one;
each mask average-pooled to the stage's resolution), concatenated --
``features = regions * sum(fmaps * fmap_inc ** s for s in 0..levels)``.
Pooling inside the masks rather than over the whole cube keeps what is inside each neuron (vesicles,
density, texture) apart from the surroundings.

By default (``masks_as_input = False``) the convolutions see the raw channel only and the masks only say
where to average.  Fed to the convolutions too, the masks let NT-Xent match two views of a synapse by the
shapes of its neurons, which say nothing about the transmitter; measured with the README's embedding demo
(819 synthetic synapses, 488 for training, 1,000 steps, held-out linear probe on 245 synapses): raw only 0.384,
masks as input too 0.265 (untrained encoders 0.286 and 0.171; chance 0.167).

Layout: a 3x3x3 stem convolution of ``fmaps`` maps, then ``1 + len(downsample_factors)`` stages of
``blocks_per_stage`` residual blocks (conv-BN-ReLU-conv-BN plus the identity, or a strided 1x1x1
projection where shape or width change, then ReLU); stage ``s > 0`` starts with stride
``downsample_factors[s - 1]`` and multiplies the width by ``fmap_inc``.

Projector: Dense(``projection_hidden``, ReLU), Dense(``projection_dim``), float32 output; only training uses it.
"""

from __future__ import annotations

from ..errors import SynfulError

__all__ = ["ModelConfigError", "resnet3d_encoder", "projector", "encoder_from_config", "projector_from_config",
           "nt_xent_loss", "feature_dim"]


class ModelConfigError(SynfulError):
    """The encoder's hyper-parameters do not fit the cube (a stride that does not divide, ...)."""


def feature_dim(fmaps: int, fmap_inc: int, downsample_factors, channels: int = 3) -> int:
    """Width of the encoder output (the embedding dimension) for cubes of ``channels`` channels (3 or 4)."""
    return (channels - 1) * sum(int(fmaps) * int(fmap_inc) ** s for s in range(len(downsample_factors) + 1))


def _masked_mean_layer():
    import keras
    from keras import ops

    class MaskedMean(keras.layers.Layer):
        """``(features (b, z, y, x, f), mask (b, z, y, x, 1))`` -> ``(b, f)``: the mask-weighted mean (0 for an
        empty mask)."""

        def call(self, inputs):
            f, m = inputs
            m = ops.cast(m, f.dtype)
            return ops.sum(f * m, axis=(1, 2, 3)) / (ops.sum(m, axis=(1, 2, 3)) + ops.cast(1e-3, f.dtype))

    return MaskedMean


def _check_shape(input_shape, downsample_factors, source: str):
    shape = tuple(int(s) for s in input_shape)
    for i, f in enumerate(downsample_factors):
        if any(s % d or s // d < 1 for s, d in zip(shape, f)):
            raise ModelConfigError(f"{source}input_shape {tuple(input_shape)}: shape {shape} before stage {i + 1} "
                                   f"is not divisible by downsample factor {tuple(f)}")
        shape = tuple(s // d for s, d in zip(shape, f))


def resnet3d_encoder(input_shape, channels: int, *, fmaps: int = 8, fmap_inc: int = 2,
                     downsample_factors=((1, 2, 2), (1, 2, 2), (2, 2, 2)), blocks_per_stage: int = 1,
                     masks_as_input: bool = False, dtype: str = "float32", name: str = "encoder", source: str = ""):
    """The (uncompiled) encoder; ``dtype`` is the layer dtype policy (``mixed_float16`` computes in float16,
    see :func:`synful.models.layer_policy`); the output is cast to float32.  ``masks_as_input``: the mask
    channels enter the convolutions too (otherwise only the raw channel does)."""
    import keras
    from keras import layers

    _check_shape(input_shape, downsample_factors, source)
    inputs = keras.Input(shape=(*input_shape, channels), name="cube")
    x = inputs if masks_as_input else layers.Cropping3D(0, name="raw", dtype=dtype)(inputs[..., 0:1])
    width = int(fmaps)
    x = layers.Conv3D(width, 3, padding="same", use_bias=False, name="stem_conv", dtype=dtype)(x)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn", dtype=dtype)(x)
    x = layers.ReLU(name="stem_relu", dtype=dtype)(x)
    strides = [(1, 1, 1)] + [tuple(f) for f in downsample_factors]
    MaskedMean = _masked_mean_layer()
    regions = (("pre", 1), ("post", 2), ("cleft", 3))[:channels - 1]
    masks = [layers.Cropping3D(0, name=f"{n}_mask", dtype=dtype)(inputs[..., c:c + 1]) for n, c in regions]
    pooled, total = [], (1, 1, 1)
    for s, stride in enumerate(strides):
        if s:
            width *= int(fmap_inc)
        for b in range(int(blocks_per_stage)):
            st = stride if b == 0 else (1, 1, 1)
            p = f"s{s}b{b}_"
            y = layers.Conv3D(width, 3, strides=st, padding="same", use_bias=False, name=p + "conv0", dtype=dtype)(x)
            y = layers.BatchNormalization(momentum=0.9, name=p + "bn0", dtype=dtype)(y)
            y = layers.ReLU(name=p + "relu0", dtype=dtype)(y)
            y = layers.Conv3D(width, 3, padding="same", use_bias=False, name=p + "conv1", dtype=dtype)(y)
            y = layers.BatchNormalization(momentum=0.9, name=p + "bn1", dtype=dtype)(y)
            if st != (1, 1, 1) or x.shape[-1] != width:
                x = layers.Conv3D(width, 1, strides=st, use_bias=False, name=p + "skip", dtype=dtype)(x)
                x = layers.BatchNormalization(momentum=0.9, name=p + "skip_bn", dtype=dtype)(x)
            x = layers.ReLU(name=p + "relu1", dtype=dtype)(layers.Add(name=p + "add", dtype=dtype)([x, y]))
        total = tuple(t * f for t, f in zip(total, stride))
        for (n, _), m in zip(regions, masks):
            if total != (1, 1, 1):
                m = layers.AveragePooling3D(total, name=f"s{s}_{n}_mask", dtype=dtype)(m)
            pooled.append(MaskedMean(name=f"s{s}_{n}_mean", dtype=dtype)([x, m]))
    x = layers.Concatenate(name="pool", dtype=dtype)(pooled)
    out = layers.Activation("linear", dtype="float32", name="features")(x)
    return keras.Model(inputs, out, name=name)


def projector(features: int, *, hidden: int = 128, dim: int = 128, dtype: str = "float32", name: str = "projector"):
    """The two-layer MLP head: ``(batch, features)`` -> ``(batch, dim)`` float32."""
    import keras
    from keras import layers

    x = inputs = keras.Input(shape=(features,), name="features")
    x = layers.Dense(hidden, activation="relu", name="hidden", dtype=dtype)(x)
    out = layers.Dense(dim, dtype="float32", name="projection")(x)
    return keras.Model(inputs, out, name=name)


def encoder_from_config(cfg, channels: int, dtype: str = "float32", source: str = ""):
    """The encoder of an :class:`synful.config.sections.EmbeddingTraining` section."""
    return resnet3d_encoder(cfg.input_shape, channels, fmaps=cfg.fmaps, fmap_inc=cfg.fmap_inc,
                            downsample_factors=cfg.downsample_factors, blocks_per_stage=cfg.blocks_per_stage,
                            masks_as_input=cfg.masks_as_input, dtype=dtype, source=source)


def projector_from_config(cfg, channels: int, dtype: str = "float32"):
    """The projector of an :class:`synful.config.sections.EmbeddingTraining` section for ``channels``-channel cubes."""
    return projector(feature_dim(cfg.fmaps, cfg.fmap_inc, cfg.downsample_factors, channels), hidden=cfg.projection_hidden,
                     dim=cfg.projection_dim, dtype=dtype)


def nt_xent_loss(z1, z2, temperature: float):
    """NT-Xent (SimCLR's normalised temperature-scaled cross entropy) of two views' projections.

    ``z1``, ``z2``: ``(n, d)``, row ``i`` of both the two views of sample ``i``.  The ``2n`` rows are
    L2-normalised; for each row ``k`` the logits are its cosine similarities with the ``2n - 1`` other rows
    divided by ``temperature``, the positive being the other view of the same sample; the loss is the mean
    over all ``2n`` rows of the cross entropy (``-log softmax`` of the positive).  A float32 scalar.
    """
    from keras import ops

    z = ops.concatenate([ops.cast(z1, "float32"), ops.cast(z2, "float32")], axis=0)
    z = z / ops.maximum(ops.norm(z, axis=1, keepdims=True), 1e-12)
    n2 = ops.shape(z)[0]
    n = n2 // 2
    logits = ops.matmul(z, ops.transpose(z)) / temperature
    logits = logits - 1e9 * ops.eye(n2, dtype="float32")  # a row is never its own candidate
    positives = ops.concatenate([ops.arange(n, n2), ops.arange(0, n)], axis=0)
    log_prob = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    picked = ops.take_along_axis(log_prob, ops.expand_dims(positives, 1), axis=1)
    return -ops.mean(picked)
