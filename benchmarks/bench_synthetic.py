"""Benchmark: synthetic volume generation speed (Mvoxels/s), and N5 / zarr v3 read speed.

    python benchmarks/bench_synthetic.py                 # generation, a few shapes
    python benchmarks/bench_synthetic.py --io            # also: N5 read, tensorstore vs zarr-python 2
    python benchmarks/bench_synthetic.py --quick         # one small shape, once: checks the set-up

Prints a table and saves JSON with machine info and the headline figures (``summary``) to
benchmarks/results/bench_synthetic.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine_info, save_report

SHAPES = [(20, 200, 200), (40, 400, 400), (80, 800, 800)]


def bench_generate(shapes, repeats: int) -> list[dict]:
    from synful.synthetic import generate, write_synthetic

    rows = []
    for shape in shapes:
        times = []
        for r in range(repeats):
            t = time.perf_counter()
            vol = generate(shape, seed=r)
            times.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            write_synthetic(Path(d) / "s.zarr", shape, seed=0)
            t_write = time.perf_counter() - t
        nvox = int(np.prod(shape))
        best = min(times)
        rows.append({"shape": list(shape), "voxels": nvox, "seconds_best": round(best, 3),
                     "seconds_median": round(float(np.median(times)), 3),
                     "mvoxels_per_s": round(nvox / best / 1e6, 2),
                     "write_synthetic_seconds": round(t_write, 3),
                     "tbars": int(len(vol.tbars)), "partners": int(len(vol.partners)),
                     "neurons": int(len(np.unique(vol.labels)))})
        print(f"generate {shape}: {best:.2f} s best of {repeats} = {rows[-1]['mvoxels_per_s']} Mvoxels/s; "
              f"write_synthetic {t_write:.2f} s; {rows[-1]['neurons']} neurons, {rows[-1]['tbars']} T-bars, "
              f"{rows[-1]['partners']} partners")
    return rows


def bench_io(repeats: int) -> list[dict]:
    """Whole-volume and block reads of one N5 / zarr v3 dataset (uint8, gzip / default codecs)."""
    import zarr
    from funlib.geometry import Roi
    from zarr.n5 import N5FSStore

    from synful.io.volumes import open_volume, write_volume
    from synful.synthetic import generate

    raw = generate((64, 512, 512), seed=0).raw
    rows = []
    with tempfile.TemporaryDirectory() as d:
        write_volume(Path(d) / "v.n5", "raw", raw, (40, 4, 4), chunk_shape=(16, 128, 128), fmt="n5")
        write_volume(Path(d) / "v3.zarr", "raw", raw, (40, 4, 4), chunk_shape=(16, 128, 128), fmt="zarr3")
        write_volume(Path(d) / "v2.zarr", "raw", raw, (40, 4, 4), chunk_shape=(16, 128, 128), fmt="zarr")
        block = Roi((400, 400, 400), (1280, 1024, 1024))  # 32 x 256 x 256, not chunk aligned

        def timed(fn):
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                out = fn()
                ts.append(time.perf_counter() - t)
            return min(ts), out

        cases = {
            "n5 tensorstore (synful)": lambda: open_volume(Path(d) / "v.n5", "raw"),
            "zarr3 tensorstore (synful)": lambda: open_volume(Path(d) / "v3.zarr", "raw"),
            "zarr2 zarr-python (synful)": lambda: open_volume(Path(d) / "v2.zarr", "raw"),
        }
        for name, opener in cases.items():
            a = opener()
            t_all, x = timed(lambda: a[a.roi])
            t_blk, _ = timed(lambda: a[block])
            assert np.array_equal(x, raw)
            rows.append({"case": name, "whole_s": round(t_all, 4), "block_s": round(t_blk, 4),
                         "whole_mvoxels_per_s": round(raw.size / t_all / 1e6, 1)})
        store = zarr.open(N5FSStore(str(Path(d) / "v.n5")), mode="r")["raw"]
        t_all, x = timed(lambda: store[:])
        t_blk, _ = timed(lambda: store[10:42, 100:356, 100:356])
        assert np.array_equal(x, raw)
        rows.append({"case": "n5 zarr-python 2 N5FSStore (direct)", "whole_s": round(t_all, 4),
                     "block_s": round(t_blk, 4), "whole_mvoxels_per_s": round(raw.size / t_all / 1e6, 1)})
    for r in rows:
        print(f"read {r['case']:38s} whole 64x512x512: {r['whole_s']:.3f} s ({r['whole_mvoxels_per_s']} Mvox/s), "
              f"block 32x256x256: {r['block_s']:.3f} s")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--io", action="store_true", help="also benchmark N5 / zarr v3 reads")
    parser.add_argument("--quick", action="store_true", help="one 20 x 200 x 200 volume, once")
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_synthetic.json)")
    args = parser.parse_args(argv)
    shapes, repeats = (SHAPES[:1], 1) if args.quick else (SHAPES, args.repeats)
    result = {"benchmark": "synthetic", "machine": machine_info(), "quick": args.quick,
              "generate": bench_generate(shapes, repeats)}
    if args.io:
        result["io"] = bench_io(repeats)
    save_report(args.out, "synthetic", result, stage="generation")


if __name__ == "__main__":
    main()
