#!/usr/bin/env python
"""Transmitter classification on synthetic data: training speed and held-out accuracy.

    python benchmarks/bench_transmitters.py [--iterations 600] [--types acetylcholine glutamate octopamine]
                                            [--workers 2] [--quick]

Generates a synthetic volume (40 x 8 x 8 nm voxels), imports its synapses,
makes a skeleton split (70 % train, 30 % test), trains a small VGG3D (input
4 x 64 x 64), predicts the test part and evaluates.  Prints and saves
``benchmarks/results/bench_transmitters.json`` with machine info and the headline figures
(``summary``).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, save_report

from synful.scaffold import create_predict_setups, create_train_setup
from synful.transmitters.data import import_collections
from synful.transmitters.db import open_store
from synful.transmitters.evaluate import evaluate_run
from synful.transmitters.predict import predict
from synful.transmitters.splits import create_split
from synful.transmitters.synthetic_export import write_synthetic_dataset
from synful.transmitters.train import train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--types", nargs="+", default=["acetylcholine", "glutamate", "octopamine"])
    p.add_argument("--shape", type=int, nargs=3, default=(30, 640, 640))
    p.add_argument("--workers", type=int, default=2, help="PreCache worker processes of the training pipeline")
    p.add_argument("--quick", action="store_true", help="a 12 x 320 x 320 volume, 4 iterations")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_transmitters.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.shape = 4, (12, 320, 320)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        t0 = time.perf_counter()
        paths = write_synthetic_dataset(base / "data", shape=args.shape, voxel_size=(40, 8, 8), seed=1,
                                        synapse_types=args.types, synapse_density=15)
        t_data = time.perf_counter() - t0
        url = "sqlite:///" + str(base / "store.sqlite")
        with open_store(url) as s:
            import_collections(s, "syn", synapses=paths["synapses"], skeletons=paths["skeletons"],
                               hemilineages=paths["hemilineages"])
            split = create_split(s, "syn", "skel", kind="skeleton", fractions=(0.7, 0.0, 0.3), seed=0,
                                 synapse_types=args.types)
        ov = {"transmitter_train_config.ini": {"TransmitterTraining": dict(
            store_url=url, database="syn", split_name="skel", raw_container=str(paths["raw"]),
            synapse_types=args.types, voxel_size=(40, 8, 8), input_shape=(4, 64, 64), fmaps=8, fmap_inc=[2, 2, 2],
            n_convolutions=[1, 1, 1], downsample_factors=[(1, 2, 2), (1, 2, 2), (2, 2, 2)], fc_size=32, dropout=0.2,
            batch_norm=False, batch_size=16, learning_rate=1e-3, elastic_augment=False,
            checkpoint_every=args.iterations, log_every=100, num_workers=args.workers, cache_size=8)}}
        setup = create_train_setup(base, "bench", 0, kind="transmitter", overrides=ov)
        t0 = time.perf_counter()
        train(setup, args.iterations)
        t_train = time.perf_counter() - t0
        (pdir,) = create_predict_setups(base, "bench", 0, [args.iterations])
        meta = predict(pdir)
        result = evaluate_run(pdir)
    out = {
        "benchmark": "transmitters", "machine": machine_info(), "quick": args.quick,
        "classes": args.types,
        "volume_shape": list(args.shape),
        "split_counts": split.counts,
        "iterations": args.iterations,
        "batch_size": 16,
        "pipeline_workers": args.workers,
        "data_seconds": round(t_data, 2),
        "train_seconds": round(t_train, 2),
        "seconds_per_iteration": round(t_train / args.iterations, 4),
        "predict_seconds": round(meta["wall_seconds"], 2),
        "predict_synapses_per_second": round(meta["synapses"] / meta["wall_seconds"], 1),
        "synapse_accuracy": round(result["synapse_accuracy"], 4),
        "skeleton_accuracy": round(result["skeleton_accuracy"], 4),
        "chance": round(result["chance"], 4),
        "confusion_matrix": result["confusion_matrix"],
    }
    print(json.dumps(out, indent=2))
    save_report(args.out, "transmitters", out, indent=2, stage="transmitters")


if __name__ == "__main__":
    sys.exit(main())
