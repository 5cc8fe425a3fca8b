"""The network on blocks (TensorFlow, imported in workers only): :class:`BlockPredictor` cuts a block
into tiles, runs them through the trained U-Net and writes the encoded outputs."""

from __future__ import annotations

import contextlib
import os

import numpy as np
from funlib.geometry import Coordinate, Roi

from .arrays import encode_indicator, encode_vectors, open_outputs, read_padded
from .plan import HEAD_INDICATOR, HEAD_VECTORS, PredictionError, PredictionPlan, _fmt_roi

#: CPU threads a worker may use (set by the scheduler for local CPU workers and Slurm jobs).
THREADS_ENV = "SYNFUL_NUM_THREADS"


def configure_tensorflow(plan: PredictionPlan):
    """CPU threads (``$SYNFUL_NUM_THREADS``) and GPU memory growth; must run before the model is built."""
    import tensorflow as tf

    threads = int(os.environ.get(THREADS_ENV, "0") or 0)
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)


def load_model(plan: PredictionPlan):
    """The trained network built for ``plan.input_shape`` with the checkpoint's weights.

    ``[Prediction] mixed_precision`` decides the layer policy (mixed_float16 only where a GPU is visible).
    """
    from ..train import load_model_for_prediction

    return load_model_for_prediction(plan.prediction.train_setup, plan.prediction.iteration, tuple(plan.input_shape),
                                     mixed_precision=plan.prediction.mixed_precision)


class BlockPredictor:
    """Runs the network over blocks and writes the encoded outputs.

    ``predict_block(read_roi, write_roi)`` (nm, z, y, x; ``read_roi`` must begin ``plan.context``
    before ``write_roi``; the block reads ``write_roi`` grown by ``plan.context`` on each side and
    ``plan.tile_overlap`` voxels more at the far end, daisy's read ROI) returns float32 arrays over
    ``write_roi``: ``syn_indicator`` probabilities ``(z, y, x)``
    and ``partner_vectors`` nm ``(3, z, y, x)``; ``write_block`` crops them to the run ROI and stores
    them.  The block is cut into ``block_factor`` tiles whose inputs start ``plan.tile_stride`` voxels
    apart (a multiple of the total downsampling factor, so all tiles share the pooling phase of a
    single pass); each tile's output is cropped to its stride.  Tiles go through the network
    ``batch_size`` at a time (the last batch zero-filled so the compiled function keeps one shape).
    """

    def __init__(self, plan: PredictionPlan, model=None):
        import tensorflow as tf

        from ..io.volumes import open_volume

        self.plan = plan
        self.model = model if model is not None else load_model(plan)
        self.raw = open_volume(plan.raw_container, plan.raw_dataset)
        self.outputs = open_outputs(plan)
        self.batch_size = int(plan.prediction.batch_size)
        self.sigmoid = plan.training.m_loss_type == "sigmoid_ce"
        spec = tf.TensorSpec((self.batch_size, *plan.input_shape, 1), tf.float32)
        model_ = self.model

        @tf.function(input_signature=[spec], reduce_retracing=True)
        def run(x):
            out = model_(x, training=False)
            return {k: tf.cast(v, tf.float32) for k, v in out.items()}

        self._run = run

    def predict_block(self, read_roi: Roi, write_roi: Roi) -> dict[str, np.ndarray]:
        raw = self._read_input(read_roi, write_roi)
        result = self._empty_result(write_roi)
        tiles = [Coordinate(t) * self.plan.tile_stride for t in np.ndindex(*self.plan.prediction.block_factor)]
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start:start + self.batch_size]
            y = self._run_batch(raw, batch)
            for i, tile in enumerate(batch):
                self._place_tile(result, y, i, tile)
        return result

    def _read_input(self, read_roi: Roi, write_roi: Roi) -> np.ndarray:
        """The normalised raw data all tiles of the block read (padded beyond the raw data)."""
        from ..models import normalize_raw

        plan = self.plan
        if read_roi.begin != write_roi.begin - plan.context:
            raise PredictionError(f"block read ROI {_fmt_roi(read_roi)} does not begin at write ROI "
                                  f"{_fmt_roi(write_roi)} minus the context {tuple(plan.context)} nm")
        # what the tiles read: up to the last tile's input end, whatever the caller's read ROI says
        read_roi = write_roi.grow(plan.context, plan.context + plan.tile_overlap * plan.voxel_size)
        return normalize_raw(read_padded(self.raw, read_roi, plan.prediction.padding))

    def _empty_result(self, write_roi: Roi) -> dict[str, np.ndarray]:
        wshape = tuple(write_roi.shape / self.plan.voxel_size)
        result = {}
        if HEAD_INDICATOR in self.plan.heads:
            result[HEAD_INDICATOR] = np.empty(wshape, np.float32)
        if HEAD_VECTORS in self.plan.heads:
            result[HEAD_VECTORS] = np.empty((3, *wshape), np.float32)
        return result

    def _run_batch(self, raw: np.ndarray, batch: list[Coordinate]) -> dict[str, np.ndarray]:
        """The network outputs of the tiles starting at ``batch`` (voxels into ``raw``), zero-filled to a batch."""
        in_vox = self.plan.input_shape
        x = np.zeros((self.batch_size, *in_vox, 1), np.float32)
        for i, t in enumerate(batch):
            x[i, ..., 0] = raw[t[0]:t[0] + in_vox[0], t[1]:t[1] + in_vox[1], t[2]:t[2] + in_vox[2]]
        return {k: v.numpy() for k, v in self._run(x).items()}

    def _place_tile(self, result: dict[str, np.ndarray], y: dict[str, np.ndarray], i: int, tile: Coordinate):
        """Put output ``i`` of a batch, cropped to the tile stride, at ``tile`` (voxels into the block)."""
        stride = self.plan.tile_stride
        sl = tuple(slice(tile[d], tile[d] + stride[d]) for d in range(3))
        crop = tuple(slice(0, stride[d]) for d in range(3))  # the overlap is the next tile's
        if HEAD_INDICATOR in result:
            logits = y[HEAD_INDICATOR][i, ..., 0][crop]
            if self.sigmoid:
                prob = 1.0 / (1.0 + np.exp(-logits))
            else:  # mse-trained indicator regresses the probability directly
                prob = np.clip(logits, 0.0, 1.0)
            result[HEAD_INDICATOR][sl] = prob
        if HEAD_VECTORS in result:
            result[HEAD_VECTORS][(slice(None),) + sl] = np.moveaxis(y[HEAD_VECTORS][i][crop], -1, 0)

    def write_block(self, write_roi: Roi, result: dict[str, np.ndarray]):
        plan = self.plan
        p = plan.prediction
        roi = write_roi.intersect(plan.roi)
        if roi.empty:
            return
        rel = (roi.begin - write_roi.begin) / plan.voxel_size
        shape = roi.shape / plan.voxel_size
        sl = tuple(slice(rel[d], rel[d] + shape[d]) for d in range(3))
        if HEAD_INDICATOR in result:
            data, _ = encode_indicator(result[HEAD_INDICATOR][sl], p.indicator_dtype)
            self.outputs[HEAD_INDICATOR][roi] = data
        if HEAD_VECTORS in result:
            data, _ = encode_vectors(result[HEAD_VECTORS][(slice(None),) + sl], p.vectors_dtype, p.vectors_int8_nm)
            self.outputs[HEAD_VECTORS][roi] = data

    def process(self, block):
        """Predict and write one daisy block."""
        self.write_block(block.write_roi, self.predict_block(block.read_roi, block.write_roi))
