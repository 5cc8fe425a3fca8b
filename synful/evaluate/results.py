"""Evaluation outputs: per-threshold results files, the summary and the precision-recall plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import Evaluation
from ..io.files import atomic_write


def results_filename(score_thr: float) -> str:
    """``results_thr<thr>.json`` with the threshold written exactly and shortest (0, 0.5, 120)."""
    return f"results_thr{np.format_float_positional(float(score_thr), trim='-')}.json"


def _best(results: list[dict]) -> dict:
    """The result with the highest f-score (the first on a tie)."""
    return results[int(np.argmax([r["fscore"] for r in results]))]


def plot_precision_recall(results: list[dict], path, title: str = "") -> Path:
    """Precision-recall curve over the threshold sweep (PNG), the best f-score marked; atomic."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    path = Path(path)
    res = sorted(results, key=lambda r: r["score_thr"])
    rec = [r["recall"] for r in res]
    prec = [r["precision"] for r in res]
    best = _best(results)
    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    grid = np.linspace(0.01, 1, 200)
    for f in (0.2, 0.4, 0.6, 0.8):  # iso-f-score lines
        p = f * grid / (2 * grid - f)
        ok = (p > 0) & (p <= 1)
        ax.plot(grid[ok], p[ok], color="0.85", lw=0.8, zorder=0)
        ax.annotate(f"f={f:g}", (grid[ok][-1], p[ok][-1]), fontsize=7, color="0.6")
    ax.plot(rec, prec, "-o", ms=3, color="tab:blue", label="score threshold sweep")
    ax.plot([best["recall"]], [best["precision"]], "*", ms=14, color="tab:red",
            label=f"best f-score {best['fscore']:.3f} (thr {best['score_thr']:g})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title or 'synaptic partners: precision-recall'} (matching: {best['matching']})")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def write_results(results: list[dict], out_dir, *, inputs: dict | None = None, title: str = "") -> Path:
    """Write ``results_thr<thr>.json`` per threshold, ``summary.json`` and ``precision_recall.png``.

    Every file is written to a temporary name and renamed, so a rerun replaces
    them and an interrupted one leaves no partial file.  ``inputs`` (e.g. the
    partner files) is recorded in each file.  Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = inputs or {}

    def dump(obj):
        return lambda tmp: tmp.write_text(json.dumps(obj, indent=1) + "\n")

    for r in results:
        atomic_write(out_dir / results_filename(r["score_thr"]), dump({**r, "inputs": inputs}))
    best = _best(results)
    keys = ("score_thr", "fscore", "precision", "recall", "tpcount", "fpcount", "fncount", "predcount", "gtcount",
            "num_clustered")
    summary = {"best": {k: best[k] for k in keys}, "sweep": [{k: r[k] for k in keys} for r in results],
               "matching": best["matching"], "settings": best["settings"], "inputs": inputs}
    atomic_write(out_dir / "summary.json", dump(summary))
    plot_precision_recall(results, out_dir / "precision_recall.png", title)
    return out_dir


def _inputs_info(settings: Evaluation, pred, gt, skeleton_ids, seconds: float, **extra) -> dict:
    return {"pred_synlinks": settings.pred_synlinks, "gt_synlinks": settings.gt_synlinks,
            "skeleton_ids": settings.skeleton_ids, "num_pred": int(len(pred)), "num_gt": int(len(gt)),
            "num_skeleton_ids": None if skeleton_ids is None else int(len(skeleton_ids)),
            "eval_seconds": round(seconds, 3), **extra}
