#!/usr/bin/env python
"""Benchmark: blockwise prediction throughput, zarr in -> zarr out, for the reference network.

The reference network is the default ``[Training]`` U-Net (Synful's architecture: input
42 x 430 x 430 voxels, output 6 x 218 x 218, ~10.7 M parameters) with random weights; the raw
data is a synthetic volume (``synful.synthetic``) of whole write blocks at 40 x 4 x 4 nm.

Measured, per device:

- ``end_to_end``: ``synful.predict.predict`` as a user runs it (daisy scheduler, one worker process,
  worker start-up and model loading included); uint8 indicator, int8 vectors.
- ``steady``: the same code path (:class:`synful.predict.BlockPredictor`: read + pad + normalise,
  network, encode, write) timed in this process over the blocks after one warm-up block: the rate a
  worker sustains on a long run, which is what the whole-brain projection uses.

On CPU always (workers with ``CUDA_VISIBLE_DEVICES`` empty); on each GPU kind when NVML finds one,
with mixed precision off and on, sampling GPU utilisation (NVML) during the runs.  Prints the numbers
and saves them with machine info to ``benchmarks/results/bench_predict.json``, with the projected
device-days for a 50-teravoxel volume (FAFB): ``50e12 / steady voxels/s / 86400``, and the headline
figures as its ``summary``.

    python benchmarks/bench_predict.py [--blocks 2 3 3] [--gpu-blocks 4 6 6] [--batch-size 1] [--skip-cpu] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import cpu_name, gpu_info, machine_info, save_report

FAFB_VOXELS = 50e12
# --quick: a small U-Net (the bench_train "cpu" preset): checks the set-up in seconds, not the speed
QUICK_NETWORK = {"input_shape": (24, 142, 142), "downsample_factors": [(1, 3, 3), (1, 3, 3)]}


def gpu_names() -> list[str]:
    """Names of the GPUs this process may use (NVML, restricted by ``CUDA_VISIBLE_DEVICES``)."""
    from synful.cluster import discover_gpus

    info = gpu_info()
    return [] if info == "none" else [info["devices"][i]["name"] for i in discover_gpus()]


class GpuSampler:
    """Mean / max GPU utilisation (%) and peak memory of the visible GPUs, sampled by NVML in a thread."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples, self.mem = period, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from synful.cluster import _import_nvml, discover_gpus

        nvml = _import_nvml()
        nvml.nvmlInit()
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in discover_gpus()]
            while not self._stop.is_set():
                for h in handles:
                    self.samples.append(nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                    self.mem = max(self.mem, nvml.nvmlDeviceGetMemoryInfo(h).used)
                time.sleep(self.period)
        finally:
            nvml.nvmlShutdown()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def summary(self) -> dict:
        s = np.array(self.samples or [0])
        return {"gpu_util_mean_pct": round(float(s.mean()), 1), "gpu_util_max_pct": int(s.max()),
                "gpu_util_samples": len(self.samples), "gpu_mem_used_max_bytes": int(self.mem)}


def make_experiment(base: Path, blocks, batch_size: int, block_factor, network: dict | None = None
                    ) -> tuple[Path, dict]:
    """A training setup with a random-weight checkpoint of the default network (``network``: [Training]
    overrides), and a synthetic raw volume of ``blocks`` write blocks."""
    from synful.config import read_train_config
    from synful.models import build_unet, output_shape
    from synful.scaffold import create_train_setup
    from synful.synthetic import write_synthetic
    from synful.train import checkpoint_path

    train_dir = create_train_setup(base, "bench", 0,
                                   overrides={"train_config.ini": {"Training": network}} if network else None)
    cfg = read_train_config(train_dir / "train_config.ini")
    model = build_unet(cfg)
    ckpt = checkpoint_path(train_dir, 1)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(ckpt))
    out = np.array(output_shape(cfg)) * np.array(block_factor)
    shape = tuple(int(v) for v in out * np.array(blocks))
    raw = base / "bench" / "01_data" / "raw.zarr"
    write_synthetic(raw, shape, seed=1, voxel_size=cfg.voxel_size)
    info = {"input_shape": list(cfg.input_shape), "output_shape": list(output_shape(cfg)),
            "parameters": int(model.count_params()), "block_factor": list(block_factor), "batch_size": batch_size,
            "volume_voxels": list(shape), "blocks": list(blocks)}
    return train_dir, {"raw": str(raw), **info}


def _public(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "raw"}  # the raw path is a temporary folder


def predict_setup(base: Path, raw: str, *, mixed: bool, gpu: bool, batch_size: int, block_factor) -> Path:
    from synful.scaffold import create_predict_setups

    (setup,) = create_predict_setups(base, "bench", 0, [1], overrides={
        "predict_config.ini": {"Prediction": {
            "raw_container": raw, "raw_dataset": "volumes/raw", "indicator_dtype": "uint8", "vectors_dtype": "int8",
            "vectors_int8_nm": 4.0, "mixed_precision": mixed, "batch_size": batch_size, "block_factor": block_factor}},
        "worker_config.ini": {"Worker": {"executor": "local", "num_block_workers": 0 if gpu else 1,
                                         "gpus": 1 if gpu else 0, "max_retries": 0}}})
    return setup


def end_to_end(setup: Path, sampler: bool) -> dict:
    from synful.predict import predict

    ctx = GpuSampler() if sampler else contextlib.nullcontext()
    with ctx as s:
        meta = predict(setup, progress=False)
    r = {k: meta[k] for k in ("wall_seconds", "voxels_processed", "voxels_per_second", "voxels_per_worker_second",
                              "block_seconds_mean", "peak_rss_bytes")}
    r["workers"] = meta["workers"]["count"]
    if sampler:
        r.update(s.summary())
    return r


def steady(setup: Path, sampler: bool) -> dict:
    """BlockPredictor in this process over every block after a warm-up block."""
    from funlib.geometry import Roi

    from synful.predict import BlockPredictor, plan_prediction

    plan = plan_prediction(setup)
    predictor = BlockPredictor(plan)
    blocks = []
    for idx in np.ndindex(*[-(-s // b) for s, b in zip(plan.roi.shape, plan.block_write)]):
        w = Roi(plan.roi.begin + plan.block_write * type(plan.block_write)(idx), plan.block_write)
        blocks.append((w.grow(plan.context, plan.context), w))
    predictor.write_block(blocks[0][1], predictor.predict_block(*blocks[0]))  # warm-up: tracing, allocation
    ctx = GpuSampler() if sampler else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx as s:
        for read_roi, write_roi in blocks[1:]:
            predictor.write_block(write_roi, predictor.predict_block(read_roi, write_roi))
    dt = time.perf_counter() - t0
    voxels = (len(blocks) - 1) * float(np.prod(plan.block_write / plan.voxel_size))
    r = {"blocks": len(blocks) - 1, "seconds": round(dt, 3), "voxels_per_second": round(voxels / dt, 1),
         "block_seconds_mean": round(dt / max(1, len(blocks) - 1), 4)}
    if sampler:
        r.update(s.summary())
    r["fafb_50tvoxel_device_days"] = round(FAFB_VOXELS / (voxels / dt) / 86400, 1)
    return r


def run_mode(base: Path, raw: str, name: str, *, gpu: bool, mixed: bool, batch_size: int, block_factor) -> dict:
    setup = predict_setup(base, raw, mixed=mixed, gpu=gpu, batch_size=batch_size, block_factor=block_factor)
    print(f"[{name}] end to end ...", flush=True)
    e2e = end_to_end(setup, sampler=gpu)
    print(f"[{name}] steady ...", flush=True)
    import tensorflow as tf

    with contextlib.nullcontext() if gpu else tf.device("/CPU:0"):  # this process may have seen a GPU already
        st = steady(setup, sampler=gpu)
    return {"end_to_end": e2e, "steady": st}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs=3, default=[2, 3, 3], help="write blocks per axis on CPU (z y x)")
    ap.add_argument("--gpu-blocks", type=int, nargs=3, default=[4, 6, 6], help="write blocks per axis on GPU")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--block-factor", type=int, nargs=3, default=[1, 1, 1])
    ap.add_argument("--skip-cpu", action="store_true", help="only the GPU modes")
    ap.add_argument("--quick", action="store_true",
                    help="a small U-Net over 1 x 1 x 2 blocks: checks the set-up, not the speed")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_predict.json)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    network = QUICK_NETWORK if args.quick else None
    if args.quick:
        args.blocks = args.gpu_blocks = [1, 1, 2]

    gpus = gpu_names()
    results = {"benchmark": "predict", "machine": machine_info(), "gpu": gpu_info(), "quick": args.quick,
               "modes": {}}
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        tmp = Path(tmp)
        if gpus:
            _, info = make_experiment(tmp / "gpu", args.gpu_blocks, args.batch_size, args.block_factor, network)
            results["network_gpu"] = _public(info)
            for mixed in (False, True):
                name = f"gpu_{'mixed_float16' if mixed else 'float32'}"
                r = run_mode(tmp / "gpu", info["raw"], name, gpu=True, mixed=mixed, batch_size=args.batch_size,
                             block_factor=args.block_factor)
                r["device"] = gpus[0]
                results["modes"][name] = r
        if not args.skip_cpu:
            # CPU workers: hide GPUs from the worker processes and from this one
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
            _, info = make_experiment(tmp / "cpu", args.blocks, args.batch_size, args.block_factor, network)
            results["network_cpu"] = _public(info)
            r = run_mode(tmp / "cpu", info["raw"], "cpu_float32", gpu=False, mixed=False,
                         batch_size=args.batch_size, block_factor=args.block_factor)
            r["device"] = f"{cpu_name()} ({os.cpu_count()} cores)"
            results["modes"]["cpu_float32"] = r

    for name, r in results["modes"].items():
        e, s = r["end_to_end"], r["steady"]
        util = f", GPU util {s['gpu_util_mean_pct']}% (end to end {e['gpu_util_mean_pct']}%)" \
            if "gpu_util_mean_pct" in s else ""
        print(f"{name:>22} on {r['device']}: end to end {e['voxels_per_second'] / 1e6:.3f} Mvoxel/s "
              f"({e['wall_seconds']:.1f} s), steady {s['voxels_per_second'] / 1e6:.3f} Mvoxel/s{util}; "
              f"50 Tvoxel: {s['fafb_50tvoxel_device_days']} device-days")
    save_report(args.out, "predict", results, stage="prediction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
