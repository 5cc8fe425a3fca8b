"""Extraction speed: synful.extract.find_partners against Synful's published detection, one process.

Input: the shipped demo model's (synful/demo_model) predictions of a synthetic volume of ``--shape``
voxels (default 80 x 1000 x 1000 at the demo's 40 x 8 x 8 nm, seed 1000).  The synthetic container and a
prediction run scaffolded as ``synful demo`` does are cached under ``--cache-dir`` (default
benchmarks/data/, git-ignored) and reused; the indicator and vectors are read as ``synful extract``
reads them (stored values times the datasets' ``scale`` attributes).

Extraction settings: those issue 17 measured with, the demo's until its third calibration round
(cc_threshold 0.8: 0.66% of the voxels above it; score sum, loc edt, vector point, min_distance 40 nm,
max_distance 800 nm; nms: nms_radius 80 nm, a 5 x 21 x 21 voxel ellipsoid), no segmentation.

Baselines, timed on the same arrays, interleaved with ours (best and median of ``--repeats``):

- Synful, cc/edt: :func:`synful_detection_cc` here, written from funkelab/synful ``synful/detection.py``
  (``find_locations`` with extract_type cc, then ``find_targets``): scipy.ndimage.label (6-connected),
  skimage regionprops, per region the distance transform of the label boundaries on the doubled grid of its
  bounding box, numpy masked argmax and masked score, pre sites snapped to the voxel grid.  Its partners
  must equal ``find_partners(..., compat = synful)`` (checked, ``compat_identical``).
- Synful, nms: Synful's ``synful/nms.py`` is not at hand here, so the baseline is the project's reproduction
  of it, ``find_partners(..., compat = synful, method = nms)`` (synful.extract.compat._synful_nms: a maximum filter
  over the whole block, 6-connected plateaus at their centre of mass, per-maximum measurements in a loop).
- previous find_partners: synful/extract.py as of git revision ``--previous`` (default 2c82eaf, before the
  sparse candidate finding), loaded from git; skipped when git or the revision is missing.

Identity statistics compare our partners (compat = none) with Synful's: post sites at the same voxel,
partners with the same post and pre sites, and one-to-one matches of post sites (mutual nearest within
``--match-nm``).

    .venv/bin/python benchmarks/bench_extract.py [--shape 80 1000 1000] [--repeats 3] [--quick]

Prints the times and ratios; writes benchmarks/results/bench_extract.json (``--out``), whose ``summary``
rows feed the README performance table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import QUICK_REMARK, RESULTS, machine_info, save_json
from scipy import ndimage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synful.config import Extraction  # noqa: E402
from synful.extract import find_partners  # noqa: E402

QUICK_SHAPE = (16, 160, 160)
PREVIOUS = "2c82eaf"


# --------------------------------------------------------------------------------------
# input: the shipped model's prediction of a synthetic volume (cached)
# --------------------------------------------------------------------------------------

def predicted_volume(shape, cache_dir: Path):
    """(prob float32, vectors as stored, vectors_scale, voxel size, seconds spent preparing) of the cached run."""
    from synful import demo

    base = (cache_dir / f"demo_{'x'.join(map(str, shape))}").resolve()
    run = base / demo.EXPERIMENT / "03_predict" / "setup_t0_p0"
    done = base / "prediction_done.json"
    t0 = time.perf_counter()
    if not done.is_file():
        from synful.io.manifest import Sample, write_manifest
        from synful.predict import predict
        from synful.synthetic import write_synthetic

        data = base / demo.EXPERIMENT / "01_data"
        data.mkdir(parents=True, exist_ok=True)
        print(f"preparing {base}: synthetic volume {shape} and its prediction with the shipped model", flush=True)
        path = write_synthetic(data / "test.zarr", shape, seed=demo.TEST_SEED, voxel_size=demo.DEMO_VOXEL_SIZE)
        write_manifest([Sample(name="test", container=str(path), annotations=str(path), split="test")],
                       data / "manifest.yaml")
        _, it = demo._train_setup(base, train=False, quick=False, iterations=demo.DEMO_ITERATIONS)
        # the demo's protocol: predict the raw-only container that holds the watershed extraction reads
        run = demo._predict_setup(base, it, demo._without_ground_truth(path), 2, gt_container=path)
        predict(run, progress=False)
        done.write_text(json.dumps({"shape": list(shape), "run": str(run)}))
    from synful.extract.run import _Run

    r = _Run(run)  # reads the datasets and their 'scale' attributes as `synful extract` does
    roi = r.indicator.roi
    prob = r.indicator.to_ndarray(roi).astype(np.float32) * np.float32(r.indicator_scale)
    vec = np.asarray(r.vectors.to_ndarray(roi))
    return prob, vec, float(r.vectors_scale), np.asarray(r.indicator.voxel_size, dtype=np.int64), \
        time.perf_counter() - t0


# --------------------------------------------------------------------------------------
# Synful's detection (funkelab/synful synful/detection.py), cc / edt
# --------------------------------------------------------------------------------------

def _doubled_grid_edt(labels, voxel_size):
    """Distances from the label boundaries, computed on the doubled grid (2n - 1 per axis) and read back at
    every second point; float32, the shape of ``labels``."""
    dims = labels.ndim
    shape = tuple(2 * s - 1 for s in labels.shape)
    boundaries = np.zeros(shape, dtype=bool)
    for d in range(dims):
        hi = tuple(slice(1, None) if a == d else slice(None) for a in range(dims))
        lo = tuple(slice(None, -1) if a == d else slice(None) for a in range(dims))
        at = tuple(slice(1, None, 2) if a == d else slice(None, None, 2) for a in range(dims))
        boundaries[at] = (labels[hi] - labels[lo]) != 0
    dist = ndimage.distance_transform_edt(1.0 - boundaries, sampling=tuple(float(v) / 2 for v in voxel_size))
    return dist.astype(np.float32)[(slice(None, None, 2),) * dims]


def synful_detection_cc(prob, vectors, voxel_size, threshold, vectors_scale=1.0):
    """Post sites (nm, int64), pre sites (nm, int64) and sum scores as Synful's detection finds them."""
    import numpy.ma as ma
    from skimage.measure import regionprops

    binary = np.zeros_like(prob)
    binary[prob > threshold] = 1
    labels, _ = ndimage.label(binary)
    posts, scores = [], []
    for reg in regionprops(labels):
        z1, y1, x1, z2, y2, x2 = reg.bbox
        crop = labels[z1:z2, y1:y2, x1:x2]
        outside = crop != reg.label
        dist = ma.masked_array(_doubled_grid_edt(crop, voxel_size), outside)
        local = np.unravel_index(dist.argmax(), crop.shape)
        posts.append((np.array(local) + (z1, y1, x1)) * voxel_size)
        scores.append(ma.masked_array(prob[z1:z2, y1:y2, x1:x2], outside).sum())
    posts = [p.astype(np.int64) for p in posts]
    pres = []
    for p in posts:  # find_targets
        v = (p / voxel_size).astype(np.uint32)
        target = np.round((p + vectors[:, v[0], v[1], v[2]] * vectors_scale) / voxel_size) * voxel_size
        pres.append(target.astype(np.int64))
    return np.array(posts).reshape(-1, 3), np.array(pres).reshape(-1, 3), np.array(scores, dtype=np.float64)


def filtered(post, pre, score, cfg):
    """The filters find_partners applies after compat = synful detection: score > score_thr, distances."""
    dist = np.linalg.norm((pre - post).astype(np.float64), axis=1)
    keep = (score > cfg.score_thr) & (dist >= cfg.min_distance)
    if cfg.max_distance is not None:
        keep &= dist <= cfg.max_distance
    return post[keep], pre[keep], score[keep]


def as_arrays(partners):
    post = np.stack([partners[f"post_{a}"] for a in "zyx"], axis=1).astype(np.int64)
    pre = np.stack([partners[f"pre_{a}"] for a in "zyx"], axis=1).astype(np.int64)
    return post, pre, np.asarray(partners["score"], dtype=np.float64)


def same_partners(a, b) -> bool:
    """Same sets of (post, pre) and the same scores (to 1e-6 relative)."""
    (pa, qa, sa), (pb, qb, sb) = a, b
    if len(pa) != len(pb):
        return False
    ka, kb = np.lexsort(np.c_[pa, qa].T[::-1]), np.lexsort(np.c_[pb, qb].T[::-1])
    return bool(np.array_equal(pa[ka], pb[kb]) and np.array_equal(qa[ka], qb[kb])
                and np.allclose(sa[ka], sb[kb], rtol=1e-6, atol=0))


def identity(ours, reference, voxel_size, match_nm: float) -> dict:
    """How our partners relate to the reference's (Synful's, or the previous find_partners'): same post voxel,
    same post and pre site, one-to-one matches of post sites (mutual nearest within ``match_nm``)."""
    from scipy.spatial import cKDTree

    (po, qo, _), (ps, qs, _) = ours, reference
    vs = np.asarray(voxel_size)
    vox_o = {tuple(v) for v in (po // vs).tolist()}
    same_voxel = sum(tuple(v) in vox_o for v in (ps // vs).tolist())
    pairs_o = {tuple(v) for v in np.c_[po, qo].tolist()}
    same_pair = sum(tuple(v) in pairs_o for v in np.c_[ps, qs].tolist())
    out = {"reference": int(len(ps)), "ours": int(len(po)), "same_post_voxel": int(same_voxel),
           "same_post_and_pre": int(same_pair), "match_nm": match_nm}
    if len(po) and len(ps):
        d_os, i_os = cKDTree(ps).query(po)
        d_so, i_so = cKDTree(po).query(ps)
        mutual = (i_so[i_os] == np.arange(len(po))) & (d_os <= match_nm)
        out["matched"] = int(mutual.sum())
        out["matched_post_distance_nm_median"] = float(np.median(d_os[mutual])) if mutual.any() else None
        pre_d = np.linalg.norm((qo[mutual] - qs[i_os[mutual]]).astype(float), axis=1)
        out["matched_pre_distance_nm_median"] = float(np.median(pre_d)) if mutual.any() else None
        out["matched_fraction_of_reference"] = round(float(mutual.sum()) / len(ps), 4)
    return out


# --------------------------------------------------------------------------------------
# the previous find_partners, from git
# --------------------------------------------------------------------------------------

def previous_find_partners(rev: str):
    """find_partners of synful/extract.py at git revision ``rev`` (None when git or the revision is missing)."""
    if not rev:
        return None
    try:
        src = subprocess.run(["git", "show", f"{rev}:synful/extract.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    name = "synful._extract_previous"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "synful"
    sys.modules[name] = mod
    exec(compile(src, f"{rev}:synful/extract.py", "exec"), mod.__dict__)
    return mod.find_partners


def timed_interleaved(fns: dict, repeats: int):
    """{name: (result, best s, median s)}, the functions called in turn ``repeats`` times."""
    times = {k: [] for k in fns}
    results = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return {k: (results[k], min(times[k]), float(np.median(times[k]))) for k in fns}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(80, 1000, 1000), metavar=("Z", "Y", "X"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-dir", default=str(Path(__file__).resolve().parent / "data"),
                    help="where the synthetic volume and its prediction are kept (reused when present)")
    ap.add_argument("--previous", default=PREVIOUS, help="git revision of the previous find_partners ('' skips)")
    ap.add_argument("--match-nm", type=float, default=200.0, help="identity statistics: match distance (nm)")
    ap.add_argument("--quick", action="store_true", help=f"a {QUICK_SHAPE} volume, once, no previous version")
    ap.add_argument("--out", default=str(RESULTS / "bench_extract.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.shape, args.repeats, args.previous = QUICK_SHAPE, 1, ""
    shape = tuple(args.shape)
    prob, vec, vscale, vs, prep_s = predicted_volume(shape, Path(args.cache_dir))
    voxels = int(prob.size)
    offset = np.zeros(3, dtype=np.int64)
    base = dataclasses.replace(Extraction(), cc_threshold=0.8, score_type="sum", loc_type="edt",
                               vector_type="point", min_distance=40.0, max_distance=800.0, nms_radius=(80, 80, 80))
    prev = previous_find_partners(args.previous)
    import scipy.sparse.csgraph  # noqa: F401  (imported before timing: no import inside a timed call)
    import skimage.measure  # noqa: F401
    label = "x".join(map(str, shape)).replace("x", " x ")
    print(f"volume {shape} voxels at {tuple(vs.tolist())} nm, above threshold {np.mean(prob > base.cc_threshold):.4%}"
          f" (input ready in {prep_s:.1f} s)", flush=True)

    methods = {}
    for method in ("cc", "nms"):
        cfg = dataclasses.replace(base, method=method)
        syn_cfg = dataclasses.replace(cfg, compat="synful")
        fns = {"ours": lambda cfg=cfg: find_partners(prob, vec, vs, offset, cfg, vectors_scale=vscale)}
        if method == "cc":
            fns["synful"] = lambda: filtered(*synful_detection_cc(prob, vec, vs, cfg.cc_threshold, vscale), cfg)
        else:
            fns["synful"] = lambda c=syn_cfg: as_arrays(find_partners(prob, vec, vs, offset, c, vectors_scale=vscale))
        if prev is not None:
            fns["previous"] = lambda cfg=cfg: prev(prob, vec, vs, offset, cfg, vectors_scale=vscale)
        got = timed_interleaved(fns, args.repeats)
        ours, o_best, o_med = got["ours"]
        syn, s_best, s_med = got["synful"]
        entry = {
            "ours": {"seconds_best": round(o_best, 4), "seconds_median": round(o_med, 4),
                     "mvoxels_per_s": round(voxels / o_best / 1e6, 2), "partners": int(len(ours))},
            "synful": {"seconds_best": round(s_best, 4), "seconds_median": round(s_med, 4),
                       "mvoxels_per_s": round(voxels / s_best / 1e6, 2), "partners": int(len(syn[0])),
                       "implementation": "synful_detection_cc (this file, from Synful's detection.py)"
                       if method == "cc" else "find_partners compat = synful (synful.extract.compat._synful_nms)"},
            "speedup_vs_synful": round(s_best / o_best, 2),
            "identity_vs_synful": identity(as_arrays(ours), syn, vs, args.match_nm),
        }
        if method == "cc":
            compat = as_arrays(find_partners(prob, vec, vs, offset, syn_cfg, vectors_scale=vscale))
            entry["compat_identical"] = same_partners(compat, syn)
        if "previous" in got:
            p, p_best, p_med = got["previous"]
            entry["previous"] = {"revision": args.previous, "seconds_best": round(p_best, 4),
                                 "seconds_median": round(p_med, 4), "mvoxels_per_s": round(voxels / p_best / 1e6, 2),
                                 "partners": int(len(p))}
            entry["speedup_vs_previous"] = round(p_best / o_best, 2)
            entry["identity_vs_previous"] = identity(as_arrays(ours), as_arrays(p), vs, args.match_nm)
        methods[method] = entry
        name = "cc/edt" if method == "cc" else "nms"
        print(f"\n{name}: Synful {s_best:.3f} s (median {s_med:.3f}), ours {o_best:.3f} s (median {o_med:.3f}): "
              f"{entry['speedup_vs_synful']}x faster; {voxels / o_best / 1e6:.1f} Mvoxel/s")
        if "previous" in entry:
            print(f"  previous find_partners ({args.previous}) {entry['previous']['seconds_best']:.3f} s: "
                  f"ours {entry['speedup_vs_previous']}x faster")
        if "compat_identical" in entry:
            print(f"  find_partners compat = synful gives Synful's partners: {entry['compat_identical']}")
        i = entry["identity_vs_synful"]
        print(f"  identity vs Synful: {i['reference']} Synful partners, {i['ours']} ours; same post voxel "
              f"{i['same_post_voxel']}, same post and pre {i['same_post_and_pre']}, matched within "
              f"{args.match_nm:g} nm {i.get('matched', 0)} (median post distance "
              f"{i.get('matched_post_distance_nm_median')} nm)")

    remark = QUICK_REMARK if args.quick else None
    summary = []
    for method, name in (("cc", "cc/edt"), ("nms", "nms")):
        m = methods[method]
        summary.append(_row(f"find_partners {name}, {label}, vs Synful's detection", m["speedup_vs_synful"],
                            "x faster", remark))
        summary.append(_row(f"find_partners {name}, {label}", m["ours"]["mvoxels_per_s"], "Mvoxel/s", remark))
        summary.append(_row(f"Synful's detection {name}, {label}", m["synful"]["mvoxels_per_s"], "Mvoxel/s", remark))
    result = {
        "benchmark": "extract", "machine": machine_info(), "quick": args.quick,
        "summary": summary,
        "volume": {"shape": list(shape), "voxel_size": vs.tolist(), "voxels": voxels,
                   "source": "synful/demo_model prediction of synful.synthetic seed 1000",
                   "above_threshold": round(float(np.mean(prob > base.cc_threshold)), 6)},
        "config": {k: v for k, v in dataclasses.asdict(base).items() if k in (
            "cc_threshold", "score_type", "loc_type", "vector_type", "min_distance", "max_distance", "nms_radius")},
        "repeats": args.repeats,
        "methods": methods,
        # the older layout, for readers of earlier results
        "speedup": methods["cc"]["speedup_vs_synful"],
        "results": [{"implementation": f"find_partners {n}", "mvoxels_per_s": methods[m]["ours"]["mvoxels_per_s"]}
                    for m, n in (("cc", "cc/edt"), ("nms", "nms"))]
        + [{"implementation": f"Synful's detection {n}", "mvoxels_per_s": methods[m]["synful"]["mvoxels_per_s"]}
           for m, n in (("cc", "cc/edt"), ("nms", "nms"))],
    }
    save_json(args.out, result)
    print(f"\nwrote {args.out}")
    return 0 if methods["cc"].get("compat_identical", True) else 1


def _row(measure, value, unit, remark=None) -> dict:
    row = {"stage": "extraction", "measure": measure, "value": value, "unit": unit}
    if remark:
        row["remark"] = remark
    return row


if __name__ == "__main__":
    sys.exit(main())
