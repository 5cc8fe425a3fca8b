"""Extraction speed: synful.extract.find_partners vs a straightforward per-region implementation.

The reference does what Synful's detection does: label the thresholded
indicator, regionprops, then one distance transform per region (on its
bounding box), one vector read per post site.  Both run on the same block
with the same parameters (cc, edt, sum, point); the benchmark checks that
they return the same partners and reports voxels/s and partners/s.

    .venv/bin/python benchmarks/bench_extract.py [--shape 48 320 320] [--blobs 150] [--repeats 3] [--quick]

Prints a table and writes benchmarks/results/bench_extract.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, machine_info, save_json
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synful.config import Extraction  # noqa: E402
from synful.extract import find_partners, partner_id  # noqa: E402
from synful.io.partners import empty_partners  # noqa: E402

VS = np.array((40, 4, 4))


def synthetic_block(shape, n_blobs, seed=0):
    """Indicator (float32 probabilities) with ellipsoidal blobs and constant vectors (float32 nm) per blob."""
    rng = np.random.default_rng(seed)
    ind = np.zeros(shape, np.float32)
    vec = np.zeros((3,) + tuple(shape), np.float32)
    for _ in range(n_blobs):
        r = rng.uniform(1.5, 3.0) * np.array([1, 8, 8])  # 60-120 nm radius at 40 x 4 x 4 nm
        c = rng.uniform(0, 1, 3) * np.array(shape)
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
        g = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        m = sum(((x - cc) / rr) ** 2 for x, cc, rr in zip(g, c, r)) <= 1.0
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        falloff = 1.0 - 0.4 * sum(((x - cc) / rr) ** 2 for x, cc, rr in zip(g, c, r))
        ind[sl] = np.where(m, np.maximum(ind[sl], falloff), ind[sl])
        v = rng.normal(0, 150, 3)
        for k in range(3):
            vec[k][sl][m] = v[k]
    return ind, vec


def reference_partners(ind, vec, voxel_size, offset, cfg):
    """Per region: label, regionprops, EDT of the region's bounding box, argmax; as Synful's detection."""
    from skimage.measure import regionprops

    labels, _ = ndimage.label(ind > cfg.cc_threshold, structure=np.ones((3, 3, 3)))
    posts, scores, vecs = [], [], []
    for region in regionprops(labels):
        z0, y0, x0 = region.bbox[:3]
        crop = np.pad(region.image, 1)
        dt = ndimage.distance_transform_edt(crop, sampling=tuple(float(v) for v in voxel_size))
        p = np.array(np.unravel_index(np.argmax(dt), dt.shape)) - 1 + (z0, y0, x0)
        posts.append(p)
        sl = region.slice
        scores.append(float(np.sum(ind[sl][region.image].astype(np.float64))))
        vecs.append(vec[:, p[0], p[1], p[2]].astype(np.float64))
    post_nm = np.asarray(offset) + np.array(posts).reshape(-1, 3) * voxel_size
    pre_nm = np.floor(post_nm + np.array(vecs).reshape(-1, 3) + 0.5).astype(np.int64)
    out = empty_partners(len(posts))
    out["id"] = partner_id(post_nm, voxel_size)
    for i, a in enumerate("zyx"):
        out[f"post_{a}"], out[f"pre_{a}"] = post_nm[:, i], pre_nm[:, i]
    out["score"] = scores
    return out[np.argsort(out["id"])]


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, min(times), float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 320, 320), metavar=("Z", "Y", "X"))
    ap.add_argument("--blobs", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a 16 x 128 x 128 block with 20 blobs, once")
    ap.add_argument("--out", default=str(RESULTS / "bench_extract.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.shape, args.blobs, args.repeats = (16, 128, 128), 20, 1

    ind, vec = synthetic_block(tuple(args.shape), args.blobs)
    offset = np.array((400, 800, 800))
    cfg = Extraction()
    voxels = int(np.prod(args.shape))
    ours, o_best, o_med = timed(lambda: find_partners(ind, vec, VS, offset, cfg), args.repeats)
    ref, r_best, r_med = timed(lambda: reference_partners(ind, vec, VS, offset, cfg), args.repeats)
    locs = [f for f in ours.dtype.names if f != "score"]
    same = len(ours) == len(ref) and all(np.array_equal(ours[f], ref[f]) for f in locs) \
        and np.allclose(ours["score"], ref["score"], rtol=1e-9, atol=0)
    rows = []
    for name, best, med in (("synful.extract.find_partners", o_best, o_med), ("per-region reference", r_best, r_med)):
        rows.append({"implementation": name, "seconds_best": round(best, 4), "seconds_median": round(med, 4),
                     "mvoxels_per_s": round(voxels / best / 1e6, 3), "partners_per_s": round(len(ours) / best, 1)})
    result = {
        "benchmark": "extract", "machine": machine_info(), "quick": args.quick,
        "block": {"shape": list(args.shape), "voxel_size": VS.tolist(), "voxels": voxels, "blobs": args.blobs,
                  "partners": int(len(ours)), "config": "cc, threshold 0.5, edt, sum, point"},
        "same_output": bool(same),
        "speedup": round(r_best / o_best, 2),
        "results": rows,
    }
    print(f"block {tuple(args.shape)} voxels, {len(ours)} partners, same output as the reference: {same}")
    print(f"{'implementation':32s} {'best s':>8s} {'Mvoxel/s':>9s} {'partners/s':>11s}")
    for r in rows:
        print(f"{r['implementation']:32s} {r['seconds_best']:8.3f} {r['mvoxels_per_s']:9.2f} {r['partners_per_s']:11.0f}")
    print(f"speedup {result['speedup']}x")
    save_json(args.out, result)
    print(f"wrote {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
