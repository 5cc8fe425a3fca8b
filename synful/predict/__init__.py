"""Blockwise network prediction over whole volumes with daisy 2, one worker per GPU.

``synful predict PREDICT_DIR`` runs :func:`predict`:

1. :func:`plan_prediction` reads ``predict_config.ini`` (and the training setup's
   ``train_config.ini``), checks the checkpoint, the raw dataset (uint8, voxel size, not empty) and the
   ROI, and derives the block geometry -- all without TensorFlow; :func:`synful.preflight.check_prediction_setup`
   adds that the run directory and the output container can be written.  So bad input fails before
   anything is written or any worker starts, and ``synful validate`` runs the same checks.
2. The output datasets are prepared with chunks equal to the write block, so every block writes
   whole chunks and concurrent workers never share one.
3. A daisy task covers the ROI with blocks, each cut into ``block_factor`` tiles (one network input
   each).  A valid U-Net gives the same values as one pass over a larger input only where both
   inputs sit at the same phase of its pooling grid, i.e. where their origins differ by a multiple of
   the total downsampling factor (the per-axis product of ``downsample_factors``; (3, 27, 27) voxels
   for Synful's [[1,3,3],[1,3,3],[3,3,3]]).  So tiles step by the *tile stride*: per axis the largest
   multiple of that factor not above the network output shape (Synful's default output
   (6, 218, 218) -> stride (6, 216, 216)).  Consecutive tiles overlap by output - stride voxels and
   each is cropped to its stride.  Write ROI = tile stride x ``block_factor``; read ROI = write ROI
   grown by the network context on each side plus that overlap at the far end (what the block's last
   tile reads).  Every tile's input origin is therefore ``ROI.begin - context + k x factor x
   voxel_size``, on the one phase grid of a single pass whose input begins at ``ROI.begin -
   context``, and the blockwise result equals that single pass over the whole ROI exactly (for any
   number of levels, anisotropic factors, workers and ROIs that are no multiple of the block).
   Blocks at the far end overhang the ROI (``fit = overhang``): the network always sees its full
   input, and writes are cropped to the ROI.  Context beyond the raw data is zero- or mirror-padded
   (relative to the whole dataset, so a block sees exactly what a single pass over the volume would
   see) before the training normalisation.
4. Workers (:func:`run_worker`, the hidden ``synful predict-worker`` command) take blocks from the
   daisy scheduler over TCP until none are left, loading the model once (with their first block, so
   a rerun of a finished run starts no TensorFlow) and running the network on ``batch_size`` tiles
   at a time.  A worker pipelines its blocks (:func:`~synful.predict.workers.serve_pipelined`): a
   thread reads the next block's raw data while the network runs, normalisation, sigmoid and
   encoding run in the compiled function on the device, and a thread writes the finished block; a
   block is reported done only after its write returned.  :func:`spawn_worker` starts one; locally each holds one GPU
   (``CUDA_VISIBLE_DEVICES``), or runs on CPU threads when there is none.  The scheduler process
   itself only hands out blocks and draws the progress bar.  No worker outlives the scheduler: a
   worker slot whose scheduler ended (even by SIGKILL) cancels its worker (Slurm job or process),
   and a worker that loses the scheduler's connection exits (:func:`synful.cluster.serve_blocks`).
5. daisy's done markers live in ``PREDICT_DIR/blocks/``: a rerun skips finished blocks, and refuses
   to resume when what determines the output changed (:meth:`PredictionPlan.signature`: checkpoint
   content, raw data, geometry, settings -- not where the experiment lives, so a copied or moved
   experiment resumes); ``overwrite=True`` starts over.
   Run metadata (resolved config, checkpoint, versions, times, block counts, throughput) is written
   beside the outputs as ``<run>_prediction.json`` and ``<run>_predict_config.ini``.

Modules, by concern: :mod:`~synful.predict.plan` (configs, geometry, signature; no TensorFlow),
:mod:`~synful.predict.arrays` (padded reads, output encodings and datasets), :mod:`~synful.predict.network`
(:class:`BlockPredictor`, TensorFlow), :mod:`~synful.predict.workers` (worker entry point and launch),
:mod:`~synful.predict.progress` (the progress bar), :mod:`~synful.predict.run` (:func:`predict`).
Import from ``synful.predict``.

Output contract (read by extraction): zarr datasets made by
:func:`synful.io.volumes.prepare_volume` over the ROI, voxel size of the raw data:

- indicator ``(z, y, x)``: stored value x ``attrs["scale"]`` = probability (sigmoid of the logits);
  uint8 has scale 1/255, float16/float32 scale 1.
- vectors ``(3, z, y, x)`` (channels first; channel order z, y, x): stored value x
  ``attrs["scale"]`` = nm; int8 has scale ``vectors_int8_nm`` (clipped to [-127, 127]), floats 1.
"""

from .arrays import encode_indicator, encode_vectors, read_padded
from .network import THREADS_ENV, BlockPredictor, load_model
from .plan import HEAD_INDICATOR, HEAD_VECTORS, PredictionError, PredictionPlan, plan_prediction
from .run import predict
from .workers import _GpuSlot, run_worker, spawn_worker  # noqa: F401  (_GpuSlot: tests)

__all__ = [
    "PredictionError",
    "PredictionPlan",
    "plan_prediction",
    "predict",
    "run_worker",
    "spawn_worker",
    "read_padded",
    "encode_indicator",
    "encode_vectors",
    "BlockPredictor",
    "load_model",
]
