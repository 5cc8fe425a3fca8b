"""Result-store speed per backend: inserts/s of fresh blocks, rewrites/s of existing blocks, query rate.

SQLite is a file in a temporary directory; MongoDB is $SYNFUL_TEST_MONGODB_URL
when set, else an nx-27017 wire-protocol server started on 127.0.0.1 for the
run (SQLite underneath, so its numbers are not those of a real mongod).

    .venv/bin/python benchmarks/bench_store.py [--partners 20000] [--block 1000] [--quick]

Prints a table and writes benchmarks/results/bench_store.json, with the headline figures as its
``summary`` (the MongoDB rows say when they were measured against nx-27017).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine_info, save_report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from synful.io.partners import empty_partners  # noqa: E402
from synful.store import open_store  # noqa: E402


def make_partners(n, seed=0):
    rng = np.random.default_rng(seed)
    p = empty_partners(n)
    p["id"] = np.arange(n) * 7919 + 2 ** 40
    for a, hi in zip("zyx", (10000, 100000, 100000)):
        p[f"post_{a}"] = rng.integers(0, hi, n)
        p[f"pre_{a}"] = p[f"post_{a}"] + rng.integers(-400, 400, n)
    p["score"] = rng.uniform(0, 500, n)
    p["pre_seg_id"] = rng.integers(0, 2 ** 62, n)
    p["post_seg_id"] = rng.integers(0, 2 ** 62, n)
    return p


def bench(url, partners, block):
    from funlib.geometry import Roi

    store = open_store(url, database="synful_bench", collection=f"bench_{os.getpid()}")
    store.drop()
    store.create()
    blocks = [partners[i:i + block] for i in range(0, len(partners), block)]
    t0 = time.perf_counter()
    for b, p in enumerate(blocks):
        store.write_block(b, p)
    t_insert = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b, p in enumerate(blocks):  # a rerun: same ids, new scores
        q = p.copy()
        q["score"] += 1
        store.write_block(b, q)
    t_rewrite = time.perf_counter() - t0
    assert store.count() == len(partners)
    t0 = time.perf_counter()
    got = store.query()
    t_query = time.perf_counter() - t0
    assert len(got) == len(partners)
    rois = [Roi((0, y, 0), (10000, 10000, 100000)) for y in range(0, 100000, 10000)]
    t0 = time.perf_counter()
    n_roi = sum(len(store.query(r)) for r in rois)
    t_roi = time.perf_counter() - t0
    assert n_roi == len(partners)
    store.drop()
    store.close()
    n = len(partners)
    return {"inserts_per_s": round(n / t_insert), "rewrites_per_s": round(n / t_rewrite),
            "query_all_per_s": round(n / t_query), "roi_queries_per_s": round(len(rois) / t_roi, 1),
            "seconds": {"insert": round(t_insert, 3), "rewrite": round(t_rewrite, 3), "query_all": round(t_query, 3),
                        "roi_queries": round(t_roi, 3)}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partners", type=int, default=20000)
    ap.add_argument("--block", type=int, default=1000, help="partners per write_block call")
    ap.add_argument("--quick", action="store_true", help="2000 partners in blocks of 500")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_store.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.partners, args.block = 2000, 500
    partners = make_partners(args.partners)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = bench(f"sqlite:///{tmp}/partners.sqlite", partners, args.block)
        url, proc, server = os.environ.get("SYNFUL_TEST_MONGODB_URL"), None, "mongod ($SYNFUL_TEST_MONGODB_URL)"
        if not url:
            from conftest import start_nx27017, stop_process

            proc, url = start_nx27017(Path(tmp) / "mongodb")
            server = "nx-27017 (wire protocol on SQLite)"
        try:
            results["mongodb"] = bench(url, partners, args.block)
            results["mongodb"]["server"] = server
        finally:
            if proc is not None:
                stop_process(proc)
    out = {
        "benchmark": "store", "machine": machine_info(), "quick": args.quick,
        "partners": args.partners, "partners_per_block": args.block,
        "results": results,
    }
    print(f"{args.partners} partners in blocks of {args.block}")
    print(f"{'backend':10s} {'inserts/s':>10s} {'rewrites/s':>11s} {'query/s':>10s} {'roi q/s':>8s}")
    for k, r in results.items():
        print(f"{k:10s} {r['inserts_per_s']:10d} {r['rewrites_per_s']:11d} {r['query_all_per_s']:10d} "
              f"{r['roi_queries_per_s']:8.1f}")
    save_report(args.out, "store", out, stage="store")
    return 0


if __name__ == "__main__":
    sys.exit(main())
