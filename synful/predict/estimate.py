"""``synful predict DIR --plan``: what a prediction run would do and cost, without running anything.

Blocks, voxels, output bytes and worker jobs come from the run's plan (and its tissue mask); the
device time from a measured rate: ``--rate`` voxels/s per worker, or the steady rate a benchmark
JSON of ``benchmarks/bench_predict.py`` recorded (default: ``benchmarks/results/bench_predict.json``
of this checkout).  No TensorFlow, no data read except the tissue mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import Worker, read_worker_config
from .plan import HEAD_INDICATOR, PredictionError, PredictionPlan, _fmt_roi, plan_prediction

#: the benchmark results of this checkout (absent in an installed wheel: then give --rate or --benchmark)
DEFAULT_BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "bench_predict.json"

_BYTES = {"uint8": 1, "int8": 1, "float16": 2, "float32": 4}


def _rate_from_benchmark(path: Path, want_gpu: bool, mixed: bool) -> dict:
    """The steady voxels/s per worker a ``bench_predict.json`` recorded, for the device kind wanted:
    a GPU mode (mixed precision or not, as the run) when the run's workers get GPUs, else a CPU mode."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PredictionError(f"{path}: no benchmark results; run `python benchmarks/bench_predict.py` on the "
                              f"prediction hardware, or give --rate VOXELS_PER_SECOND") from None
    except (OSError, ValueError) as e:
        raise PredictionError(f"{path}: cannot read benchmark results: {e}") from None
    modes = {name: m for name, m in (doc.get("modes") or {}).items()
             if isinstance(m, dict) and (m.get("steady") or {}).get("voxels_per_second")}
    if not modes:
        raise PredictionError(f"{path}: no steady prediction rate recorded (modes.*.steady.voxels_per_second)")
    kind = [n for n in modes if n.startswith("gpu") == want_gpu]
    if want_gpu:
        kind = [n for n in kind if ("mixed" in n) == mixed] or kind
    name = sorted(kind or modes)[0]
    mode = modes[name]
    network = doc.get("network_gpu" if name.startswith("gpu") else "network_cpu") or doc.get("network_cpu") or {}
    return {"voxels_per_second": float(mode["steady"]["voxels_per_second"]), "source": str(path),
            "mode": name, "device": mode.get("device", "?"), "commit": doc.get("commit", "?"),
            "date": doc.get("date", "?"), "network_input_shape": network.get("input_shape"),
            "matches_device": bool(kind)}


def describe_plan(predict_dir, *, rate: float | None = None, benchmark=None) -> dict:
    """What ``synful predict PREDICT_DIR`` would do: blocks (all, with tissue), voxels, output bytes
    (uncompressed), worker jobs, and device-hours at ``rate`` voxels/s per worker (or the benchmark's).

    Device-hours = voxels of the blocks with tissue / rate / 3600; wall hours = that / workers.
    """
    plan = plan_prediction(predict_dir)
    worker_ini = plan.predict_dir / "worker_config.ini"
    worker_cfg = read_worker_config(worker_ini) if worker_ini.is_file() else Worker()
    from ..cluster import block_worker_count

    workers = block_worker_count(worker_cfg)
    grid = plan.grid_shape()
    total = int(np.prod(grid, dtype=np.int64))
    skip = plan.skip_mask()
    keep = np.ones(grid, bool) if skip is None else skip == 0
    voxels = _voxels_in_blocks(plan, keep)
    p = plan.prediction
    per_voxel = sum(_BYTES[p.indicator_dtype] if h == HEAD_INDICATOR else 3 * _BYTES[p.vectors_dtype]
                    for h in plan.heads)
    out = {
        "run": plan.name, "roi": _fmt_roi(plan.roi), "voxel_size": list(plan.voxel_size),
        "roi_voxels": int(np.prod(plan.roi.shape / plan.voxel_size, dtype=np.int64)),
        "block_voxels": list(plan.block_write / plan.voxel_size), "grid": list(grid), "blocks": total,
        "blocks_with_tissue": int(keep.sum()), "blocks_without_tissue": total - int(keep.sum()),
        "tissue_mask": plan.tissue_mask.name if plan.tissue_mask is not None else None,
        "voxels": voxels, "output_bytes": voxels * per_voxel, "executor": worker_cfg.executor, "workers": workers,
        "slurm_jobs": workers if worker_cfg.executor == "slurm" else 0, "gpus_per_worker": int(worker_cfg.gpus),
    }
    if rate is not None:
        if not rate > 0:
            raise PredictionError(f"--rate: expected voxels per second > 0, got {rate}")
        measured = {"voxels_per_second": float(rate), "source": "--rate"}
    else:
        measured = _rate_from_benchmark(Path(benchmark) if benchmark else DEFAULT_BENCHMARK,
                                        want_gpu=worker_cfg.gpus > 0, mixed=p.mixed_precision)
    out["rate"] = measured
    device_hours = voxels / measured["voxels_per_second"] / 3600
    out["device_hours"] = device_hours
    out["wall_hours"] = device_hours / max(workers, 1)
    return out


def _voxels_in_blocks(plan: PredictionPlan, keep: np.ndarray) -> int:
    """Voxels of the blocks marked in ``keep`` (the last block of an axis cropped to the ROI)."""
    lengths = []
    for axis in range(3):
        n = keep.shape[axis]
        size = np.full(n, int(plan.block_write[axis] // plan.voxel_size[axis]), dtype=np.int64)
        size[-1] = int(plan.roi.shape[axis] // plan.voxel_size[axis]) - size[0] * (n - 1)
        lengths.append(size)
    per_block = lengths[0][:, None, None] * lengths[1][None, :, None] * lengths[2][None, None, :]
    return int(per_block[keep].sum())


def format_plan(d: dict) -> str:
    """The plan as the lines ``synful predict --plan`` prints."""
    r = d["rate"]
    lines = [
        f"plan of {d['run']} (nothing was run):",
        f"  ROI {d['roi']}, {d['roi_voxels']:,} voxels of {tuple(d['voxel_size'])} nm",
        f"  blocks: {d['blocks']:,} of {tuple(d['block_voxels'])} voxels (grid {tuple(d['grid'])})"
        + (f"; {d['blocks_with_tissue']:,} with tissue, {d['blocks_without_tissue']:,} skipped "
           f"(tissue mask {d['tissue_mask']})" if d["tissue_mask"] else ""),
        f"  voxels to predict: {d['voxels']:,}; outputs {d['output_bytes'] / 1e12:,.3f} TB uncompressed",
        f"  workers: {d['workers']} ({d['executor']}"
        + (f", {d['slurm_jobs']} Slurm job(s) with {d['gpus_per_worker']} GPU(s) each" if d["slurm_jobs"] else "")
        + ")",
    ]
    if r["source"] == "--rate":
        src = "--rate"
    else:
        src = (f"{r['mode']} steady rate on {r['device']}, {r['source']} (commit {r['commit']}, {r['date']}"
               + (f", network input {tuple(r['network_input_shape'])}" if r.get("network_input_shape") else "") + ")")
        if not r["matches_device"]:
            src += "; NOT measured on the kind of device these workers use"
    lines.append(f"  at {r['voxels_per_second']:,.0f} voxels/s per worker ({src}):")
    lines.append(f"  {d['device_hours']:,.1f} device-hours, {d['wall_hours']:,.1f} hours with {d['workers']} "
                 f"worker(s)")
    return "\n".join(lines)
