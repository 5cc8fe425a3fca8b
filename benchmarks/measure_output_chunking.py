"""Write and read-back speed of the prediction outputs for a few zarr chunkings and compressors.

A demo-like output (indicator uint8 (z, y, x) and vectors int8 (3, z, y, x), default 54 x 920 x 920
voxels; synthetic: a sparse indicator of smooth blobs and smooth vectors with quantisation noise) is
written block by block as prediction writes it (write block = the demo's (8, 152, 152) voxels), then
read back block by block as extraction reads it.  Prints one line per option; the choice and the
numbers are recorded beside ``prepare_outputs`` (synful/predict/arrays.py).

    python benchmarks/measure_output_chunking.py [--shape Z Y X] [--block Z Y X]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_outputs(shape, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    small = tuple(max(1, s // 4) for s in shape)
    field = ndimage.zoom(rng.normal(0, 1, small).astype(np.float32), [s / m for s, m in zip(shape, small)], order=1)
    field = field[:shape[0], :shape[1], :shape[2]]
    ind = np.clip(np.rint(255 / (1 + np.exp(-(field * 4 - 6)))), 0, 255).astype(np.uint8)
    vec = np.stack([np.clip(np.rint(np.roll(field, 7 * c, axis=2) * 40 + rng.normal(0, 0.7, shape)), -127, 127)
                    for c in range(3)]).astype(np.int8)
    return ind, vec


def blocks(shape, block):
    for idx in np.ndindex(*[-(-s // b) for s, b in zip(shape, block)]):
        yield tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(idx, block, shape))


def measure(root: Path, name, chunk, compressor, ind, vec, block):
    import zarr

    path = root / f"{name}.zarr"
    kw = {} if compressor == "default" else {"compressor": compressor}
    a = zarr.open(str(path / "ind"), mode="w", shape=ind.shape, chunks=chunk, dtype=ind.dtype, **kw)
    b = zarr.open(str(path / "vec"), mode="w", shape=vec.shape, chunks=(3,) + tuple(chunk), dtype=vec.dtype, **kw)
    t0 = time.perf_counter()
    for sl in blocks(ind.shape, block):
        a[sl] = ind[sl]
        b[(slice(None),) + sl] = vec[(slice(None),) + sl]
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for sl in blocks(ind.shape, block):
        assert np.array_equal(a[sl], ind[sl])
        _ = b[(slice(None),) + sl]
    t_read = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    vox = ind.size
    return vox / t_write / 1e6, vox / t_read / 1e6, size / (ind.nbytes + vec.nbytes)


def main(argv=None):
    from numcodecs import Blosc, Zstd

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=(54, 920, 920))
    ap.add_argument("--block", type=int, nargs=3, default=(8, 152, 152))
    args = ap.parse_args(argv)
    block = tuple(args.block)
    ind, vec = synthetic_outputs(tuple(args.shape))
    options = [
        ("block, default (blosc lz4 5 shuffle)", block, "default"),
        ("block, blosc lz4 1 shuffle", block, Blosc("lz4", 1, Blosc.SHUFFLE)),
        ("block, blosc lz4 5 noshuffle", block, Blosc("lz4", 5, Blosc.NOSHUFFLE)),
        ("block, blosc zstd 1 shuffle", block, Blosc("zstd", 1, Blosc.SHUFFLE)),
        ("block, blosc zstd 3 shuffle", block, Blosc("zstd", 3, Blosc.SHUFFLE)),
        ("block, zstd 1", block, Zstd(1)),
        ("block, none", block, None),
        ("half block, default", tuple(max(1, b // 2) for b in block), "default"),
    ]
    root = Path(tempfile.mkdtemp(prefix="chunking-"))
    try:
        print(f"shape {tuple(args.shape)}, write block {block}; Mvoxel/s (indicator + 3 vector channels per voxel)")
        for name, chunk, comp in options:
            w, r, ratio = measure(root, str(abs(hash(name))), chunk, comp, ind, vec, block)
            print(f"{name:40s} write {w:7.1f}  read {r:7.1f}  size {ratio:6.3f} of raw bytes")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
