"""The Keras layer dtype policy a ``mixed_precision`` switch asks for, decided once for every model."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

__all__ = ["gpu_visible", "layer_policy"]


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU in this process."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def layer_policy(mixed_precision: bool, key: str) -> str:
    """``"mixed_float16"`` when ``mixed_precision`` is asked for and a GPU is visible, else ``"float32"``.

    ``key`` names the config switch (e.g. ``"[Training] mixed_precision"``) in the warning logged when
    it is on but no GPU is visible: TensorFlow has no float16 kernels for 3D pooling on CPU, so such a
    config still runs, in float32.  Models take the result as the ``dtype`` of their layers (never the
    global policy, which a model loaded from a file does not follow).
    """
    if not mixed_precision:
        return "float32"
    if gpu_visible():
        return "mixed_float16"
    logger.warning("%s = true but no GPU is visible: using float32", key)
    return "float32"
