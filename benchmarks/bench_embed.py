#!/usr/bin/env python
"""Synapse-embedding inference speed on CPU (or whatever TensorFlow sees): synapses/s.

    python benchmarks/bench_embed.py [--synapses 512] [--batch-size 64] [--quick]

Builds the default [EmbeddingTraining] encoder (3D ResNet, cubes of 8 x 48 x 48 voxels, 3 channels) with
random weights and times ``synful.embed.predict.embed_cubes`` (cube reads from a synthetic zarr volume,
the network, float16 conversion of the result) on synapses spread over a synthetic raw + segmentation
volume.  Prints and saves ``benchmarks/results/bench_embed.json`` with machine info and ``summary`` rows:
the steady rate (after one warm-up batch) end to end and for the network alone.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine_info, save_report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synapses", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="64 synapses, batches of 16")
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_embed.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.synapses, args.batch_size = 64, 16

    import keras

    from synful.config.sections import EmbeddingTraining
    from synful.embed.data import CubeReader, Synapse
    from synful.embed.predict import embed_cubes
    from synful.embed.train import build_simclr
    from synful.io.volumes import open_volume, write_volume

    cfg = EmbeddingTraining()
    vs = np.array(cfg.voxel_size)
    shape = (32, 256, 256)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        container = Path(tmp) / "vol.zarr"
        write_volume(container, "raw", rng.integers(0, 256, shape, dtype=np.uint8), tuple(vs))
        write_volume(container, "seg", (np.arange(np.prod(shape)).reshape(shape) // 4096 % 7 + 1).astype(np.uint64),
                     tuple(vs))
        reader = CubeReader(open_volume(container, "raw"), open_volume(container, "seg"), cfg.input_shape, cfg.voxel_size)
        margin = np.array(cfg.input_shape) // 2 + 1
        sites = rng.integers(margin, np.array(shape) - margin, size=(args.synapses, 3)) * vs + vs // 2
        synapses = [Synapse(i, tuple(int(c) for c in s), pre_site=tuple(int(c) for c in s))
                    for i, s in enumerate(sites)]
        keras.utils.set_random_seed(0)
        encoder, _, _ = build_simclr(cfg, reader.channels)
        embed_cubes(encoder, reader, synapses[:args.batch_size], args.batch_size)  # warm-up: tracing, first reads
        t0 = time.perf_counter()
        emb = embed_cubes(encoder, reader, synapses, args.batch_size).astype(np.float16)
        total = time.perf_counter() - t0
        cubes = np.moveaxis(reader.read_many(synapses[:args.batch_size]), 1, -1)
        t0 = time.perf_counter()
        reps = max(1, args.synapses // args.batch_size)
        for _ in range(reps):
            encoder.predict_on_batch(cubes)
        net = (time.perf_counter() - t0) / (reps * args.batch_size)
    out = {
        "benchmark": "embed", "machine": machine_info(), "quick": args.quick,
        "input_shape": list(cfg.input_shape), "voxel_size": list(cfg.voxel_size), "channels": reader.channels,
        "embedding_dim": int(emb.shape[1]), "encoder_parameters": int(encoder.count_params()),
        "synapses": args.synapses, "batch_size": args.batch_size,
        "seconds": round(total, 3),
        "synapses_per_second": round(args.synapses / total, 1),
        "network_synapses_per_second": round(1 / net, 1),
    }
    print(json.dumps(out, indent=2))
    save_report(args.out, "embed", out, indent=2, stage="embed")


if __name__ == "__main__":
    sys.exit(main())
