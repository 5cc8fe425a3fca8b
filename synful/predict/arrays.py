"""Arrays of a prediction run, no TensorFlow: the padded raw input of a block, the encodings of the
outputs, and the output datasets themselves."""

from __future__ import annotations

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..config import ConfigError, Prediction
from .plan import HEAD_INDICATOR, HEAD_VECTORS, PredictionPlan


def read_padded(array, roi: Roi, padding: str = "zero") -> np.ndarray:
    """Read ``array`` (a funlib Array, no channels) over ``roi`` (nm, on the voxel grid), padding outside the data.

    ``padding = "zero"`` fills voxels outside ``array.roi`` with 0; ``"mirror"`` reflects at the
    dataset's own borders (numpy's ``reflect``: the border voxel is not repeated), so any block
    sees exactly the values a single ``np.pad`` of the whole dataset would give.  Returns an
    ndarray of shape ``roi.shape / voxel_size`` and the array's dtype.
    """
    if array.roi.contains(roi):
        return np.asarray(array[roi])
    if padding == "zero":
        return array.to_ndarray(roi, fill_value=0)
    if padding != "mirror":
        raise ConfigError(f"padding: expected zero or mirror, got {padding!r}")
    # funlib has no mirror padding: read the bounding box of the reflected voxels, then gather them
    vs = Coordinate(array.voxel_size)
    shape = roi.shape / vs
    if any(s == 0 for s in shape):
        return np.zeros(tuple(shape), dtype=array.dtype)
    begin = (roi.begin - array.roi.begin) / vs
    index = [_reflect(np.arange(b, b + s), n) for b, s, n in zip(begin, shape, array.roi.shape / vs)]
    lo = [int(j.min()) for j in index]
    hi = [int(j.max()) + 1 for j in index]
    sub = Roi(array.roi.begin + Coordinate(lo) * vs, Coordinate([h - l for l, h in zip(lo, hi)]) * vs)
    data = np.asarray(array[sub])
    return np.ascontiguousarray(data[np.ix_(*[j - l for j, l in zip(index, lo)])])


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices ``i`` (any integers) reflected into ``[0, n)`` as numpy's ``reflect`` padding does."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j >= n, period - j, j)


def encode_indicator(prob: np.ndarray, dtype: str) -> tuple[np.ndarray, float]:
    """Probabilities in [0, 1] -> (stored array, scale) with stored x scale = probability.

    uint8: ``round(p * 255)``, scale 1/255; float16 / float32: p, scale 1.
    """
    if dtype == "uint8":
        return np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8), 1.0 / 255.0
    if dtype in ("float16", "float32"):
        return prob.astype(dtype), 1.0
    raise ConfigError(f"indicator_dtype: expected uint8, float16 or float32, got {dtype!r}")


def encode_vectors(vectors: np.ndarray, dtype: str, scale: float) -> tuple[np.ndarray, float]:
    """Vectors in nm -> (stored array, scale) with stored x scale = nm.

    int8: ``round(v / scale)`` clipped to [-127, 127], scale ``scale``; float16 / float32: v, scale 1.
    """
    if dtype == "int8":
        if not scale > 0:
            raise ConfigError(f"vectors_int8_nm: must be > 0 for int8 vectors, got {scale}")
        return np.clip(np.rint(vectors / scale), -127, 127).astype(np.int8), float(scale)
    if dtype in ("float16", "float32"):
        return vectors.astype(dtype), 1.0
    raise ConfigError(f"vectors_dtype: expected int8, float16 or float32, got {dtype!r}")


def indicator_scale(p: Prediction) -> float:
    """Stored indicator value x this = probability."""
    return 1.0 / 255.0 if p.indicator_dtype == "uint8" else 1.0


def vectors_scale(p: Prediction) -> float:
    """Stored vector value x this = nm."""
    return float(p.vectors_int8_nm) if p.vectors_dtype == "int8" else 1.0


def prepare_outputs(plan: PredictionPlan, overwrite: bool = False) -> dict:
    """Create (``overwrite``: replace; else reopen) the output datasets over the ROI; set ``scale``.

    Chunks are one write block, so concurrent workers never write the same chunk.
    """
    from ..io.volumes import prepare_volume

    p = plan.prediction
    chunk = tuple(plan.block_write / plan.voxel_size)
    spec = {HEAD_INDICATOR: (p.indicator_dtype, None, indicator_scale(p)),
            HEAD_VECTORS: (p.vectors_dtype, 3, vectors_scale(p))}
    out = {}
    for head, dataset in plan.datasets().items():
        dtype, channels, scale = spec[head]
        array = prepare_volume(p.out_container, dataset, plan.roi, plan.voxel_size, dtype, num_channels=channels,
                               chunk_shape=chunk, mode="w" if overwrite else "a")
        array.attrs["scale"] = scale
        out[head] = array
    return out


def open_outputs(plan: PredictionPlan) -> dict:
    """The prepared output datasets, writable in place."""
    from ..io.volumes import open_volume

    return {h: open_volume(plan.prediction.out_container, d, mode="r+") for h, d in plan.datasets().items()}

