#!/usr/bin/env python
"""Benchmark: the prediction data path (read, pad, encode, write, scheduling) next to the network.

For each network (the shipped demo model ``synful/demo_model/``, and Synful's small network: the
template ``[Training]`` U-Net, input 42 x 430 x 430, fmap_num 4, fmap_inc_factor 5, downsampling
[[1,3,3],[1,3,3],[3,3,3]], random weights), over a raw volume of whole write blocks (uint8, smooth
structure plus noise, so it compresses as EM does), measured in voxels/s of one worker:

- ``datapath``: the real worker loop (daisy scheduler, :func:`synful.predict.workers.serve_pipelined`,
  :class:`synful.predict.BlockPredictor`: read + pad, normalise + encode on the device, write) with a
  network-free model of the same input and output shapes and heads (a crop and a 1x1x1 convolution):
  what the worker costs apart from the network.
- ``model_only``: the compiled network function alone (normalise, network, sigmoid, encode) on
  in-memory uint8 batches: the ceiling of the worker.
- ``end_to_end``: the real worker loop with the real network; ``end_to_end_sequential`` the same with
  reading, network and writing one after another (:meth:`BlockPredictor.process`), for comparison
  (not with ``--quick``).

Worker rates are timed inside the worker process from its first block request to its last release,
after the model is built and traced (start-up is not a steady cost).  Prints the numbers and saves
them with machine info to ``benchmarks/results/bench_datapath.json`` (headline figures as ``summary``).

    python benchmarks/bench_datapath.py [--networks demo synful_small] [--blocks Z Y X] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import QUICK_REMARK, _row, cpu_name, gpu_info, machine_info, save_json

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "synful" / "demo_model"
# Synful's small network: the template [Training] U-Net (its defaults)
SYNFUL_SMALL: dict = {}
# --quick: a small U-Net, one block per axis pair: checks the set-up in seconds, not the speed
QUICK_NETWORK = {"input_shape": (24, 142, 142), "downsample_factors": [(1, 3, 3), (1, 3, 3)], "fmap_num": 2}
DEFAULT_BLOCKS = {"demo": (2, 4, 4), "synful_small": (2, 2, 2)}


def raw_volume(shape, seed: int = 1) -> np.ndarray:
    """uint8 (z, y, x): a smooth field (membrane-like structure at a few voxels) plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 220, tuple(-(-s // 4) for s in shape), dtype=np.uint8)
    smooth = coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)[:shape[0], :shape[1], :shape[2]]
    return np.clip(smooth.astype(np.int16) + rng.integers(-12, 13, shape, dtype=np.int16), 0, 255).astype(np.uint8)


def make_experiment(base: Path, name: str, network: str, blocks, quick: bool) -> tuple[Path, dict]:
    """A training setup (the demo model's config and weights, or a random-weight template network) and a
    predict setup over a raw volume of ``blocks`` write blocks; returns (predict dir, network info)."""
    import shutil

    from synful.config import read_train_config
    from synful.io.volumes import write_volume
    from synful.models import build_unet, output_shape
    from synful.predict import plan_prediction
    from synful.scaffold import create_predict_setups, create_train_setup
    from synful.train import checkpoint_path

    if network == "demo" and not quick:
        train_dir = create_train_setup(base, name, 0)
        shutil.copyfile(DEMO_MODEL / "train_config.ini", train_dir / "train_config.ini")
        iteration = 20000
        ckpt = checkpoint_path(train_dir, iteration)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEMO_MODEL / f"model_{iteration}.weights.h5", ckpt)
        cfg = read_train_config(train_dir / "train_config.ini")
        input_shape = (20, 244, 244)  # the demo's prediction input (synful.demo.DEMO_PREDICTION)
        params = int(build_unet(cfg, input_shape).count_params())
    else:
        overrides = QUICK_NETWORK if quick else SYNFUL_SMALL
        train_dir = create_train_setup(base, name, 0, overrides={"train_config.ini": {"Training": overrides}}
                                       if overrides else None)
        cfg = read_train_config(train_dir / "train_config.ini")
        input_shape = tuple(cfg.input_shape)
        model = build_unet(cfg)
        iteration = 1
        ckpt = checkpoint_path(train_dir, iteration)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(str(ckpt))
        params = int(model.count_params())
    out = np.array(output_shape(cfg, input_shape))
    factor = np.prod(np.array(cfg.downsample_factors), axis=0)
    stride = (out // factor) * factor
    shape = tuple(int(v) for v in stride * np.array(blocks))
    raw = base / name / "01_data" / "raw.zarr"
    write_volume(raw, "volumes/raw", raw_volume(shape), cfg.voxel_size)
    (setup,) = create_predict_setups(base, name, 0, [iteration], overrides={
        "predict_config.ini": {"Prediction": {
            "raw_container": str(raw), "raw_dataset": "volumes/raw", "input_shape": input_shape,
            "indicator_dtype": "uint8", "vectors_dtype": "int8", "vectors_int8_nm": 4.0, "batch_size": 1}},
        "worker_config.ini": {"Worker": {"executor": "local", "num_block_workers": 1, "gpus": 0, "max_retries": 0}}})
    plan = plan_prediction(setup)
    info = {"input_shape": list(plan.input_shape), "output_shape": list(plan.output_shape),
            "tile_stride": list(plan.tile_stride), "parameters": params, "volume_voxels": list(shape),
            "blocks": list(blocks), "block_voxels": int(np.prod(plan.block_write / plan.voxel_size))}
    return setup, info


def trivial_model(plan):
    """A Keras model with the network's input and output shapes and heads, and next to no compute: the
    input cropped by the context, then a 1x1x1 convolution per head."""
    import keras
    from keras import layers

    from synful.predict import HEAD_INDICATOR, HEAD_VECTORS

    ctx = [int(c) for c in plan.context / plan.voxel_size]
    raw = keras.Input((*plan.input_shape, 1))
    crop = layers.Cropping3D(tuple((c, c) for c in ctx))(raw)
    outputs = {}
    if HEAD_INDICATOR in plan.heads:
        outputs[HEAD_INDICATOR] = layers.Conv3D(1, 1, name=HEAD_INDICATOR)(crop)
    if HEAD_VECTORS in plan.heads:
        outputs[HEAD_VECTORS] = layers.Conv3D(3, 1, name=HEAD_VECTORS)(crop)
    return keras.Model(raw, outputs)


class _TimedWorker:
    """daisy's process function (in daisy's worker process): build and trace the predictor, then run the
    block loop and write its timing to ``out`` as JSON.  Picklable."""

    def __init__(self, setup: str, trivial: bool, pipelined: bool, out: str):
        self.setup, self.trivial, self.pipelined, self.out = setup, trivial, pipelined, out

    def __call__(self):
        import daisy.v2 as daisy

        from synful.cluster import serve_blocks
        from synful.predict import BlockPredictor, plan_prediction
        from synful.predict.network import configure_tensorflow
        from synful.predict.workers import pipeline_clients, serve_pipelined

        plan = plan_prediction(self.setup)
        configure_tensorflow(plan)
        predictor = BlockPredictor(plan, trivial_model(plan) if self.trivial else None)
        x = np.zeros((predictor.batch_size, *plan.input_shape, 1), np.uint8)
        for _ in range(2):  # trace and warm up outside the timing, as model_only does
            predictor._run(x, predictor._divisors)
        t0 = time.perf_counter()
        if self.pipelined:
            done = serve_pipelined(pipeline_clients(daisy), lambda: predictor)
        else:
            done = serve_blocks(daisy.Client(), predictor.process)
        dt = time.perf_counter() - t0
        Path(self.out).write_text(json.dumps({"blocks": done, "seconds": dt}))


def worker_rate(setup: Path, tmp: Path, *, trivial: bool, pipelined: bool) -> dict:
    """Blocks/s and voxels/s of one worker over every block of the run (outputs prepared afresh)."""
    import daisy.v2 as daisy
    from funlib.geometry import Roi

    from synful.predict import plan_prediction
    from synful.predict.arrays import prepare_outputs

    plan = plan_prediction(setup)
    prepare_outputs(plan, overwrite=True)
    out = tmp / f"timing_{time.monotonic_ns()}.json"
    # the task geometry of synful.predict.run._run_blocks
    total_roi = plan.roi.grow(plan.context, plan.context + plan.tile_overlap * plan.voxel_size)
    task = daisy.Task(f"bench_{out.stem}", total_roi, Roi((0, 0, 0), plan.block_read), Roi(plan.context, plan.block_write),
                      process_function=_TimedWorker(str(setup), trivial, pipelined, str(out)), max_workers=1,
                      read_write_conflict=False, fit="overhang", max_retries=0)
    states = daisy.run_blockwise(task, multiprocessing=True, return_states=True, progress=False, summary=False)
    state = states[task.task_id]
    if int(state.completed_count) != plan.num_blocks or not out.is_file():
        raise RuntimeError(f"benchmark run did not finish: {state.completed_count} of {plan.num_blocks} blocks")
    r = json.loads(out.read_text())
    voxels = float(np.prod(plan.roi.shape / plan.voxel_size))
    return {"blocks": r["blocks"], "seconds": round(r["seconds"], 3),
            "voxels_per_second": round(voxels / r["seconds"], 1)}


def model_only(setup: Path, repeats: int) -> dict:
    """The compiled function (normalise, network, encode) on one in-memory batch, ``repeats`` times."""
    from synful.predict import BlockPredictor, plan_prediction
    from synful.predict.network import configure_tensorflow

    plan = plan_prediction(setup)
    configure_tensorflow(plan)
    predictor = BlockPredictor(plan)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (predictor.batch_size, *plan.input_shape, 1), dtype=np.uint8)
    for _ in range(2):  # trace, warm up
        {k: v.numpy() for k, v in predictor._run(x, predictor._divisors).items()}
    t0 = time.perf_counter()
    for _ in range(repeats):
        {k: v.numpy() for k, v in predictor._run(x, predictor._divisors).items()}
    dt = time.perf_counter() - t0
    voxels = repeats * predictor.batch_size * float(np.prod(plan.tile_stride))
    return {"calls": repeats, "seconds": round(dt, 3), "voxels_per_second": round(voxels / dt, 1)}


def summary(results: dict) -> list[dict]:
    rows = []
    for name, r in results["networks"].items():
        label = f"{name} ({r['network']['parameters']:,} parameters), one CPU worker"
        rows.append(_row("datapath", f"{label}: data path, network-free model", r["datapath"]["voxels_per_second"],
                         "voxels/s"))
        rows.append(_row("datapath", f"{label}: model only", r["model_only"]["voxels_per_second"], "voxels/s"))
        rows.append(_row("datapath", f"{label}: end to end", r["end_to_end"]["voxels_per_second"], "voxels/s"))
        rows.append(_row("datapath", f"{label}: end to end / model only", r["end_to_end_over_model_only"], ""))
    if results.get("quick"):
        for row in rows:
            row["remark"] = QUICK_REMARK
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="+", choices=("demo", "synful_small"), default=["demo", "synful_small"])
    ap.add_argument("--blocks", type=int, nargs=3, default=None, help="write blocks per axis (z y x)")
    ap.add_argument("--repeats", type=int, default=5, help="network calls timed for model_only")
    ap.add_argument("--quick", action="store_true", help="a small U-Net over 1 x 2 x 2 blocks: checks the set-up")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_datapath.json)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU figures: workers and this process
    if args.quick:
        args.networks, args.repeats = ["synful_small"], 2
    results = {"benchmark": "datapath", "machine": machine_info(), "gpu": gpu_info(), "quick": args.quick,
               "device": f"{cpu_name()} ({os.cpu_count()} cores)", "networks": {}}
    with tempfile.TemporaryDirectory(prefix="bench_datapath_") as tmp:
        tmp = Path(tmp)
        for name in args.networks:
            blocks = (1, 2, 2) if args.quick else (args.blocks or DEFAULT_BLOCKS[name])
            print(f"[{name}] set-up ...", flush=True)
            setup, info = make_experiment(tmp, name, name, blocks, args.quick)
            r = {"network": info}
            modes = [("datapath", True, True), ("end_to_end", False, True)]
            if not args.quick:  # each mode starts a worker process: --quick keeps to the headline figures
                modes.append(("end_to_end_sequential", False, False))
            for key, trivial, pipelined in modes:
                print(f"[{name}] {key} ...", flush=True)
                r[key] = worker_rate(setup, tmp, trivial=trivial, pipelined=pipelined)
            print(f"[{name}] model only ...", flush=True)
            r["model_only"] = model_only(setup, args.repeats)
            r["end_to_end_over_model_only"] = round(r["end_to_end"]["voxels_per_second"]
                                                    / r["model_only"]["voxels_per_second"], 3)
            results["networks"][name] = r
            print(f"[{name}] data path {r['datapath']['voxels_per_second'] / 1e6:.1f} Mvoxel/s, model only "
                  f"{r['model_only']['voxels_per_second'] / 1e6:.3f}, end to end "
                  f"{r['end_to_end']['voxels_per_second'] / 1e6:.3f}" + (
                      f" (sequential {r['end_to_end_sequential']['voxels_per_second'] / 1e6:.3f})"
                      if "end_to_end_sequential" in r else "") + " Mvoxel/s per worker", flush=True)
    results["summary"] = summary(results)
    path = save_json(args.out or (Path(__file__).resolve().parent / "results" / "bench_datapath.json"), results)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
