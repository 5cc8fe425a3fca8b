"""The network on blocks (TensorFlow, imported in workers only): :class:`BlockPredictor` cuts a block
into tiles, runs them through the trained U-Net and writes the encoded outputs.

One compiled function per worker takes uint8 tiles and returns the stored values: it normalises the
raw data, runs the network, applies the indicator's sigmoid (``m_loss_type = sigmoid_ce``; the clip
to [0, 1] for ``mse``) and encodes both heads (:func:`encode_heads`), all on the device, so only
uint8 goes to the device and only stored values (1 byte a value for uint8 / int8) come back.
:func:`encode_heads` is also what a reference computation (one pass over a whole volume) applies, so
blockwise and single-pass outputs are the same stored values.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
from funlib.geometry import Coordinate, Roi

from ..config import ConfigError
from .arrays import open_outputs, read_padded
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


def normalize_tf(raw, unit=255.0):
    """:func:`synful.models.normalize_raw` as TensorFlow ops: uint8 tensor -> float32 in [-1, 1].

    The same float32 operations in the same order (``x / 255 * RAW_SCALE + RAW_SHIFT``), so the values
    equal numpy's bit for bit (a test checks all 256).  Inside a compiled function pass ``unit`` (255)
    as a tensor argument of that function: TensorFlow's graph optimiser turns a division by a constant
    into a multiplication by its reciprocal, which differs in the last bit.
    """
    import tensorflow as tf

    from ..models import RAW_SCALE, RAW_SHIFT

    unit = tf.cast(raw, tf.float32) / tf.cast(unit, tf.float32)
    return unit * tf.constant(RAW_SCALE, tf.float32) + tf.constant(RAW_SHIFT, tf.float32)


def encode_heads(outputs: dict, *, sigmoid: bool, indicator_dtype: str, vectors_dtype: str,
                 vectors_scale: float) -> dict:
    """Network outputs -> stored values, as TensorFlow ops (eager or inside a compiled function).

    ``outputs``: ``syn_indicator`` logits ``(b, z, y, x, 1)`` and/or ``partner_vectors`` nm
    ``(b, z, y, x, 3)`` (any float dtype).  Returns ``syn_indicator`` ``(b, z, y, x)`` and
    ``partner_vectors`` ``(b, 3, z, y, x)`` (channels first, as stored) in the stored dtype, with the
    contract of :func:`~synful.predict.arrays.encode_indicator` / ``encode_vectors``: the probability
    is ``sigmoid(logits)`` when ``sigmoid`` (else the logits clipped to [0, 1]); uint8 stores
    ``rint(p x 255)``, int8 ``rint(v / vectors_scale)`` clipped to [-127, 127] (``rint``: halves to
    even, as numpy), float16 / float32 the value.  Inside a compiled function pass ``vectors_scale`` as a
    tensor argument of that function (see :func:`normalize_tf`: a constant divisor becomes a reciprocal).
    """
    import tensorflow as tf

    out = {}
    if HEAD_INDICATOR in outputs:
        logits = tf.cast(outputs[HEAD_INDICATOR], tf.float32)[..., 0]
        prob = _sigmoid(logits) if sigmoid else tf.clip_by_value(logits, 0.0, 1.0)
        if indicator_dtype == "uint8":
            out[HEAD_INDICATOR] = tf.cast(tf.clip_by_value(tf.round(prob * 255.0), 0.0, 255.0), tf.uint8)
        elif indicator_dtype in ("float16", "float32"):
            out[HEAD_INDICATOR] = tf.cast(prob, indicator_dtype)
        else:
            raise ConfigError(f"indicator_dtype: expected uint8, float16 or float32, got {indicator_dtype!r}")
    if HEAD_VECTORS in outputs:
        vectors = tf.cast(outputs[HEAD_VECTORS], tf.float32)
        if vectors_dtype == "int8":
            if isinstance(vectors_scale, (int, float)) and not vectors_scale > 0:
                raise ConfigError(f"vectors_int8_nm: must be > 0 for int8 vectors, got {vectors_scale}")
            scaled = tf.round(vectors / tf.cast(vectors_scale, tf.float32))
            stored = tf.cast(tf.clip_by_value(scaled, -127.0, 127.0), tf.int8)
        elif vectors_dtype in ("float16", "float32"):
            stored = tf.cast(vectors, vectors_dtype)
        else:
            raise ConfigError(f"vectors_dtype: expected int8, float16 or float32, got {vectors_dtype!r}")
        out[HEAD_VECTORS] = tf.transpose(stored, (0, 4, 1, 2, 3))  # channels first, on the smallest dtype
    return out


def _sigmoid(x):
    """``tf.math.sigmoid`` with a value that depends on the input value only, not on where it sits.

    On CPU, TensorFlow (Eigen) evaluates an elementwise op in SIMD packets and the elements past the last
    whole packet one at a time, by another code path that can differ in the last bit: the last voxels of
    a tile would not equal the same voxels of a larger input.  Padding the flattened tensor to a multiple
    of 64 elements (four packets of the widest SIMD unit) keeps every element in a packet.
    """
    import tensorflow as tf

    flat = tf.reshape(x, [-1])
    n = tf.size(flat)
    flat = tf.pad(flat, [[0, (-n) % 64]])
    return tf.reshape(tf.math.sigmoid(flat)[:n], tf.shape(x))


def plan_encoding(plan: PredictionPlan) -> dict:
    """The keyword arguments of :func:`encode_heads` for a run."""
    p = plan.prediction
    return dict(sigmoid=plan.training.m_loss_type == "sigmoid_ce", indicator_dtype=p.indicator_dtype,
                vectors_dtype=p.vectors_dtype, vectors_scale=float(p.vectors_int8_nm))


class BlockPredictor:
    """Runs the network over blocks and writes the encoded outputs.

    A block is three steps, which a pipelined worker (:func:`synful.predict.workers.serve_pipelined`)
    runs in three threads, each on another block:

    - :meth:`read_block` ``(read_roi, write_roi)`` (nm, z, y, x; ``read_roi`` must begin ``plan.context``
      before ``write_roi``) -> the raw uint8 data all tiles of the block read: ``write_roi`` grown by
      ``plan.context`` on each side and ``plan.tile_overlap`` voxels more at the far end (daisy's read
      ROI), zero- or mirror-padded beyond the raw data.  No TensorFlow.
    - :meth:`predict_raw` ``(raw, write_roi)`` -> the stored values over ``write_roi``:
      ``syn_indicator`` ``(z, y, x)`` and ``partner_vectors`` ``(3, z, y, x)`` in the output dtypes
      (:func:`encode_heads`).  The block is cut into ``block_factor`` tiles whose inputs start
      ``plan.tile_stride`` voxels apart (a multiple of the total downsampling factor, so all tiles
      share the pooling phase of a single pass); each tile's output is cropped to its stride on the
      device.  Tiles go through the compiled function ``batch_size`` at a time (the last batch
      zero-filled so it keeps one shape).
    - :meth:`write_block` ``(write_roi, result)`` crops to the run ROI and stores.

    :meth:`process` runs the three in turn (daisy's in-process mode).  ``model``: a Keras model with
    the trained network's input and output shapes (default: :func:`load_model`); ``jit_compile``
    compiles the function with XLA (for GPUs; XLA may fuse operations differently, so its stored values are
    not guaranteed to equal the default path's bit for bit).
    """

    def __init__(self, plan: PredictionPlan, model=None, *, jit_compile: bool = False):
        import tensorflow as tf

        from ..io.volumes import open_volume

        self.plan = plan
        self.model = model if model is not None else load_model(plan)
        self.raw = open_volume(plan.raw_container, plan.raw_dataset)
        if np.dtype(self.raw.dtype) != np.uint8:  # normalize_raw's contract, checked before any block
            raise ConfigError(f"{plan.raw_container}/{plan.raw_dataset}: expected uint8 raw, got {self.raw.dtype}")
        self.outputs = open_outputs(plan)
        self.batch_size = int(plan.prediction.batch_size)
        spec = tf.TensorSpec((self.batch_size, *plan.input_shape, 1), tf.uint8)
        stride = tuple(int(s) for s in plan.tile_stride)
        encoding = plan_encoding(plan)
        # the divisors go in as arguments, not constants: the graph optimiser would make them reciprocals
        self._divisors = tf.constant([255.0, encoding.pop("vectors_scale")], tf.float32)
        model_ = self.model

        @tf.function(input_signature=[spec, tf.TensorSpec((2,), tf.float32)], reduce_retracing=True,
                     jit_compile=jit_compile or None)
        def run(x, divisors):
            out = model_(normalize_tf(x, divisors[0]), training=False)
            # crop to the stride before encoding: the overlap is the next tile's, and never leaves the device
            out = {k: v[:, :stride[0], :stride[1], :stride[2]] for k, v in out.items()}
            return encode_heads(out, vectors_scale=divisors[1], **encoding)

        self._run = run

    def read_block(self, read_roi: Roi, write_roi: Roi) -> np.ndarray:
        """The raw uint8 data all tiles of the block read (padded beyond the raw data)."""
        plan = self.plan
        if read_roi.begin != write_roi.begin - plan.context:
            raise PredictionError(f"block read ROI {_fmt_roi(read_roi)} does not begin at write ROI "
                                  f"{_fmt_roi(write_roi)} minus the context {tuple(plan.context)} nm")
        # what the tiles read: up to the last tile's input end, whatever the caller's read ROI says
        read_roi = write_roi.grow(plan.context, plan.context + plan.tile_overlap * plan.voxel_size)
        return read_padded(self.raw, read_roi, plan.prediction.padding)

    def predict_raw(self, raw: np.ndarray, write_roi: Roi) -> dict[str, np.ndarray]:
        """The stored values over ``write_roi`` from the block's raw data (:meth:`read_block`)."""
        plan = self.plan
        wshape = tuple(write_roi.shape / plan.voxel_size)
        result = {}
        if HEAD_INDICATOR in plan.heads:
            result[HEAD_INDICATOR] = np.empty(wshape, plan.prediction.indicator_dtype)
        if HEAD_VECTORS in plan.heads:
            result[HEAD_VECTORS] = np.empty((3, *wshape), plan.prediction.vectors_dtype)
        tiles = [Coordinate(t) * plan.tile_stride for t in np.ndindex(*plan.prediction.block_factor)]
        in_vox = plan.input_shape
        stride = plan.tile_stride
        x = np.zeros((self.batch_size, *in_vox, 1), np.uint8)
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start:start + self.batch_size]
            for i, t in enumerate(batch):
                x[i, ..., 0] = raw[t[0]:t[0] + in_vox[0], t[1]:t[1] + in_vox[1], t[2]:t[2] + in_vox[2]]
            if len(batch) < self.batch_size:
                x[len(batch):] = 0
            y = {k: v.numpy() for k, v in self._run(x, self._divisors).items()}
            for i, t in enumerate(batch):
                sl = tuple(slice(t[d], t[d] + stride[d]) for d in range(3))
                if HEAD_INDICATOR in result:
                    result[HEAD_INDICATOR][sl] = y[HEAD_INDICATOR][i]
                if HEAD_VECTORS in result:
                    result[HEAD_VECTORS][(slice(None),) + sl] = y[HEAD_VECTORS][i]
        return result

    def predict_block(self, read_roi: Roi, write_roi: Roi) -> dict[str, np.ndarray]:
        """:meth:`read_block` then :meth:`predict_raw`."""
        return self.predict_raw(self.read_block(read_roi, write_roi), write_roi)

    def write_block(self, write_roi: Roi, result: dict[str, np.ndarray]):
        """Store ``result`` (stored values over ``write_roi``) cropped to the run ROI.

        Returns only once the data is in the output datasets; raises if it could not be written.
        """
        plan = self.plan
        roi = write_roi.intersect(plan.roi)
        if roi.empty:
            return
        rel = (roi.begin - write_roi.begin) / plan.voxel_size
        shape = roi.shape / plan.voxel_size
        sl = tuple(slice(rel[d], rel[d] + shape[d]) for d in range(3))
        if HEAD_INDICATOR in result:
            self.outputs[HEAD_INDICATOR][roi] = result[HEAD_INDICATOR][sl]
        if HEAD_VECTORS in result:
            self.outputs[HEAD_VECTORS][roi] = result[HEAD_VECTORS][(slice(None),) + sl]

    def process(self, block):
        """Predict and write one daisy block, one step after the other."""
        raw = self.read_block(block.read_roi, block.write_roi)
        self.write_block(block.write_roi, self.predict_raw(raw, block.write_roi))
