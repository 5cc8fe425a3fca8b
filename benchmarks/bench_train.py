#!/usr/bin/env python
"""Benchmark: training iterations/s of the synaptic-partner U-Net (network step and data pipeline).

Two measurements per run, on the device TensorFlow sees:

- **step**: one Adam step of :class:`synful.train.KerasTrainer` on random input of the reference
  config's shape (the network alone), after warm-up; with mixed precision off and, on a GPU, on;
- **pipeline**: batches/s of the gunpowder training pipeline (all augmentations, targets,
  balancing; one process, no PreCache) on a synthetic volume.

Presets: ``cpu`` (default without GPU): downsample [[1,3,3],[1,3,3]], fmaps 4 x 5^l, input
24 x 142 x 142 (~0.3 M parameters); ``synful`` (default with GPU): Synful's network, input
42 x 430 x 430 (~10.6 M parameters).  Prints the numbers and saves them with the device name to
``benchmarks/results/bench_train.json`` (``bench_train_xla.json`` with ``--xla``),
with the headline figures as its ``summary``.

    python benchmarks/bench_train.py [--preset cpu|synful] [--iterations 10] [--warmup 3] [--xla] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import gpu_info, machine_info, save_report

PRESETS = {
    "cpu": dict(downsample_factors=[(1, 3, 3), (1, 3, 3)], input_shape=(24, 142, 142)),
    "synful": dict(),
}


def _step_rate(cfg, iterations: int, warmup: int) -> dict:
    from synful.models import build_unet, output_shape
    from synful.train import KerasTrainer

    import keras

    keras.utils.set_random_seed(0)
    trainer = KerasTrainer(cfg, build_unet(cfg))
    rng = np.random.default_rng(0)
    out = output_shape(cfg)
    raw = rng.uniform(-1, 1, (1, *cfg.input_shape, 1)).astype(np.float32)
    gt = (rng.random((1, *out, 1)) < 0.05).astype(np.float32)
    targets = {"gt_syn_indicator": gt, "indicator_weights": np.ones_like(gt),
               "gt_partner_vectors": rng.normal(0, 200, (1, *out, 3)).astype(np.float32), "vectors_mask": gt}
    for _ in range(warmup):
        trainer.train_step({"raw": raw}, targets)
    t0 = time.perf_counter()
    for _ in range(iterations):
        losses, _ = trainer.train_step({"raw": raw}, targets)
    dt = time.perf_counter() - t0
    return {"iterations": iterations, "seconds": round(dt, 3), "iterations_per_s": round(iterations / dt, 4),
            "mixed_precision_active": trainer.mixed_precision, "final_loss": round(losses["loss"], 4)}


def _pipeline_rate(cfg, iterations: int, warmup: int, workdir: Path) -> dict:
    import dask
    import gunpowder as gp
    import yaml

    from synful.synthetic import write_synthetic
    from synful.train import _training_samples, training_pipeline

    shape = tuple(int(s * 2) for s in cfg.input_shape)
    container = write_synthetic(workdir / "bench.zarr", shape, seed=0, synapse_density=8.0)
    manifest = workdir / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"samples": [{"name": "bench", "container": str(container)}]}))
    cfg = dataclasses.replace(cfg, manifest=str(manifest))  # training_pipeline: no cache workers by default
    pipeline, request, _, _ = training_pipeline(cfg, _training_samples(cfg))
    with dask.config.set(scheduler="synchronous"), gp.build(pipeline):
        for _ in range(warmup):
            pipeline.request_batch(request)
        t0 = time.perf_counter()
        for _ in range(iterations):
            pipeline.request_batch(request)
        dt = time.perf_counter() - t0
    return {"volume_voxels": list(shape), "batches": iterations, "seconds": round(dt, 3),
            "batches_per_s": round(iterations / dt, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--xla", action="store_true", help="XLA-compile the training step")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the data-pipeline measurement")
    ap.add_argument("--quick", action="store_true",
                    help="preset cpu, 2 iterations after 1 warm-up: checks the set-up, not the speed")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_train[_xla].json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.iterations, args.warmup = "cpu", 2, 1

    import tensorflow as tf

    from synful.config import Training
    from synful.models import build_unet, output_shape
    from synful.train import _device_name

    gpus = tf.config.list_physical_devices("GPU")
    preset = args.preset or ("synful" if gpus else "cpu")
    cfg = Training(**PRESETS[preset], xla=args.xla)
    info = {
        "benchmark": "train", "machine": machine_info(), "gpu": gpu_info(), "quick": args.quick,
        "device": _device_name(), "tf_sees_gpu": bool(gpus), "preset": preset, "xla": args.xla, "input_shape": list(cfg.input_shape),
        "output_shape": list(output_shape(cfg)), "downsample_factors": [list(f) for f in cfg.downsample_factors],
        "fmap_num": cfg.fmap_num, "fmap_inc_factor": cfg.fmap_inc_factor,
        "parameters": int(build_unet(cfg).count_params()), "step": {},
    }
    print(f"device: {info['device']}; preset {preset}: input {cfg.input_shape} -> output {info['output_shape']}, "
          f"{info['parameters']:,} parameters", flush=True)
    for mixed in ([False, True] if gpus else [False]):
        r = _step_rate(dataclasses.replace(cfg, mixed_precision=mixed), args.iterations, args.warmup)
        info["step"]["mixed_precision" if mixed else "float32"] = r
        print(f"step ({'mixed_float16' if mixed else 'float32'}): {r['iterations_per_s']:.3f} it/s "
              f"({r['seconds'] / r['iterations']:.3f} s/it)", flush=True)
    if not args.no_pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            r = _pipeline_rate(cfg, args.iterations, args.warmup, Path(tmp))
        info["pipeline"] = r
        print(f"pipeline (one process): {r['batches_per_s']:.3f} batches/s", flush=True)
    save_report(args.out, "train_xla" if args.xla else "train", info, indent=2, stage="training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
