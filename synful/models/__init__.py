"""Networks: valid-padded 3D U-Nets (single-task, multi-task, two-decoder) in Keras 3.

Public API: :func:`build_unet`, :func:`output_shape`, :func:`normalize_raw`.
"""

from .precision import gpu_visible, layer_policy
from .unet import HEADS, PAIRED_VECTORS_PREFIX, RAW_SCALE, RAW_SHIFT, build_unet, head_names, normalize_raw, output_shape, valid_input_sizes

__all__ = ["HEADS", "PAIRED_VECTORS_PREFIX", "RAW_SCALE", "RAW_SHIFT", "build_unet", "head_names", "normalize_raw", "output_shape",
           "valid_input_sizes", "gpu_visible", "layer_policy"]
