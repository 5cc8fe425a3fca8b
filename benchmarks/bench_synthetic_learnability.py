"""Offline check: a tiny 3D conv net learns to find post-sites in synthetic volumes.

Trains a ~140 k-parameter 3D U-Net (Keras) for a few hundred iterations on one
synthetic volume to predict a ball (radius 100 nm) around every post-site,
then detects post-sites on a volume of another seed (threshold 0.5,
connected components, centroid) and matches them to the ground truth within
200 nm.  Prints precision / recall and saves JSON with machine info and the headline
figures (``summary``: training iterations/s, recall, precision) to
benchmarks/results/bench_synthetic_learnability.json.

    python benchmarks/bench_synthetic_learnability.py [--iterations 300] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import machine_info, save_report

PATCH = (8, 96, 96)


def targets(vol, radius_nm=100.0):
    vs = np.asarray(vol.voxel_size, float)
    off = np.asarray(vol.offset, float)
    t = np.zeros(vol.raw.shape, np.float32)
    r = np.ceil(radius_nm / vs).astype(int)
    for p in vol.partners:
        c = (np.array([p["post_z"], p["post_y"], p["post_x"]]) - off) / vs
        ci = np.floor(c).astype(int)
        lo = np.maximum(ci - r, 0)
        hi = np.minimum(ci + r + 1, vol.raw.shape)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d2 = ((zz + 0.5 - c[0]) * vs[0]) ** 2 + ((yy + 0.5 - c[1]) * vs[1]) ** 2 + ((xx + 0.5 - c[2]) * vs[2]) ** 2
        t[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = np.maximum(t[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]],
                                                               (d2 <= radius_nm ** 2).astype(np.float32))
    return t


def model():
    import keras
    from keras import layers

    def block(x, n):
        x = layers.Conv3D(n, 3, padding="same", activation="relu")(x)
        return layers.Conv3D(n, 3, padding="same", activation="relu")(x)

    inp = keras.Input((None, None, None, 1))
    a = block(inp, 12)
    b = block(layers.MaxPool3D((1, 2, 2))(a), 24)
    c = block(layers.MaxPool3D((1, 2, 2))(b), 32)
    u = layers.Concatenate()([layers.UpSampling3D((1, 2, 2))(c), b])
    u = block(u, 24)
    u = layers.Concatenate()([layers.UpSampling3D((1, 2, 2))(u), a])
    u = block(u, 12)
    out = layers.Conv3D(1, 1, activation="sigmoid")(u)
    return keras.Model(inp, out)


def batches(raw, tgt, rng, batch=4):
    posts = np.argwhere(tgt > 0)
    while True:
        xs, ys = [], []
        for k in range(batch):
            if k % 2 == 0 and len(posts):  # half the patches contain a post-site
                c = posts[rng.integers(len(posts))] - np.array(PATCH) // 2 + rng.integers(-20, 21, 3) * [0, 1, 1]
            else:
                c = rng.integers(0, np.array(raw.shape) - PATCH + 1)
            c = np.clip(c, 0, np.array(raw.shape) - PATCH)
            sl = tuple(slice(int(a), int(a) + s) for a, s in zip(c, PATCH))
            xs.append(raw[sl])
            ys.append(tgt[sl])
        x = (np.stack(xs)[..., None].astype(np.float32) - 128) / 64
        yield x, np.stack(ys)[..., None]


def detect(pred, vol, threshold=0.5):
    from scipy import ndimage as ndi

    cc, n = ndi.label(pred > threshold)
    if n == 0:
        return np.zeros((0, 3))
    cents = np.asarray(ndi.center_of_mass(pred, cc, range(1, n + 1)))
    return cents * np.asarray(vol.voxel_size) + np.asarray(vol.offset)


def match(found, vol, dist=200.0):
    from scipy.optimize import linear_sum_assignment

    gt = np.unique(np.stack([vol.partners["post_z"], vol.partners["post_y"], vol.partners["post_x"]], 1), axis=0)
    if len(found) == 0 or len(gt) == 0:
        return 0, len(found), len(gt)
    d = np.linalg.norm(found[:, None] - gt[None], axis=2)
    r, c = linear_sum_assignment(np.where(d <= dist, d, 1e6))
    tp = int(np.sum(d[r, c] <= dist))
    return tp, len(found), len(gt)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--shape", type=int, nargs=3, default=(40, 400, 400))
    parser.add_argument("--quick", action="store_true", help="4 iterations on 16 x 128 x 128: checks the set-up only")
    parser.add_argument("--out", default=None,
                        help="result JSON (default benchmarks/results/bench_synthetic_learnability.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.shape = 4, (16, 128, 128)
    import keras

    from synful.synthetic import generate

    train = generate(args.shape, seed=0)
    test = generate(args.shape, seed=1)
    tgt = targets(train)
    net = model()
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    gen = batches(train.raw, tgt, np.random.default_rng(0))
    t0 = time.perf_counter()
    losses = []
    for i in range(args.iterations):
        x, y = next(gen)
        losses.append(float(net.train_on_batch(x, y)))
        if (i + 1) % 50 == 0:
            print(f"iteration {i + 1}: loss {np.mean(losses[-50:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    t_train = time.perf_counter() - t0
    pred = net.predict((test.raw[None, ..., None].astype(np.float32) - 128) / 64, verbose=0)[0, ..., 0]
    tp, n_found, n_gt = match(detect(pred, test), test)
    precision = tp / n_found if n_found else 0.0
    recall = tp / n_gt if n_gt else 0.0
    result = {"benchmark": "learnability", "machine": machine_info(), "quick": args.quick,
              "iterations": args.iterations, "shape": list(args.shape), "train_seconds": round(t_train, 1),
              "params": int(net.count_params()), "final_loss": round(float(np.mean(losses[-50:])), 4),
              "test_post_sites": n_gt, "detections": n_found, "true_positives": tp,
              "precision": round(precision, 3), "recall": round(recall, 3)}
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}))
    save_report(args.out, "synthetic_learnability", result, stage="learnability")
    return 0


if __name__ == "__main__":
    sys.exit(main())
