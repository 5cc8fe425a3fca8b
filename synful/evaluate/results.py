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


def precision_recall_figure(results: list[dict], title: str = "", max_labels: int = 10):
    """The precision-recall figure of a threshold sweep (a matplotlib ``Figure``, one ``Axes``).

    Thresholds evaluating no prediction (``predcount`` 0) have no precision and
    are left off the curve; when none is left, the axes say so in a text (the
    result's ``note``) instead of drawing a point.  Thresholds are written next
    to their points: all of them up to ``max_labels``, else ``max_labels``
    spread evenly along the curve (first and last included); the best f-score
    (:func:`_best`) is a star with its own label.  Iso-f-score lines are grey.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    res = sorted(results, key=lambda r: r["score_thr"])
    shown = [r for r in res if r["predcount"] > 0]
    fig = Figure(figsize=(5.5, 5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    grid = np.linspace(0.01, 1, 200)
    for f in (0.2, 0.4, 0.6, 0.8):  # iso-f-score lines
        p = f * grid / (2 * grid - f)
        ok = (p > 0) & (p <= 1)
        ax.plot(grid[ok], p[ok], color="0.85", lw=0.8, zorder=0)
        ax.annotate(f"f={f:g}", (grid[ok][-1], p[ok][-1]), fontsize=7, color="0.6")
    if shown:
        best = _best(shown)
        ax.plot([r["recall"] for r in shown], [r["precision"] for r in shown], "-o", ms=3, color="tab:blue",
                label="score threshold sweep")
        ax.plot([best["recall"]], [best["precision"]], "*", ms=14, color="tab:red",
                label=f"best f-score {best['fscore']:.3f} (thr {best['score_thr']:g})")
        for r in _labelled(shown, max_labels):
            if r is not best:
                ax.annotate(f"{r['score_thr']:g}", (r["recall"], r["precision"]), xytext=(4, 4),
                            textcoords="offset points", fontsize=7, color="tab:blue")
        ax.annotate(f"thr {best['score_thr']:g}", (best["recall"], best["precision"]), xytext=(6, -12),
                    textcoords="offset points", fontsize=8, color="tab:red", fontweight="bold")
        if len(shown) < len(res):
            first = min(r["score_thr"] for r in res if r["predcount"] == 0)
            ax.text(0.98, 0.02, f"thresholds >= {first:g}: no predictions left", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="0.4")
        ax.legend(loc="lower left", fontsize=8)
    else:
        note = res[0].get("note") or "no predictions"
        ax.text(0.5, 0.5, _wrap(note), transform=ax.transAxes, ha="center", va="center", fontsize=9,
                color="tab:red", wrap=True)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"{title or 'synaptic partners: precision-recall'} (matching: {res[0]['matching']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _labelled(results: list[dict], n: int) -> list[dict]:
    """All of ``results`` when at most ``n``, else ``n`` of them evenly spaced by index, both ends included."""
    if len(results) <= n:
        return list(results)
    return [results[i] for i in sorted({int(round(i)) for i in np.linspace(0, len(results) - 1, n)})]


def _wrap(text: str, width: int = 48) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def plot_precision_recall(results: list[dict], path, title: str = "") -> Path:
    """Write :func:`precision_recall_figure` as a PNG at ``path`` (atomic); returns ``path``."""
    path = Path(path)
    fig = precision_recall_figure(results, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def write_results(results: list[dict], out_dir, *, inputs: dict | None = None, title: str = "") -> Path:
    """Write ``results_thr<thr>.json`` per threshold, ``summary.json`` and ``precision_recall.png``.

    Every file is written to a temporary name and renamed, so a rerun replaces
    them and an interrupted one leaves no partial file.  ``inputs`` (e.g. the
    partner files) is recorded in each file.  ``summary.json``: the best
    result, the sweep's counts per threshold (with ``removed`` per filter and,
    where no prediction is left, ``note``), where the thresholds came from,
    ``matching``, ``settings`` and ``inputs``.  Returns ``out_dir``.
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
    extra = ("removed", "note")  # why a threshold has no predictions (absent in older results)
    summary = {"best": {k: best[k] for k in keys},
               "sweep": [{**{k: r[k] for k in keys}, **{k: r[k] for k in extra if k in r}} for r in results],
               "score_thresholds_from": best.get("score_thresholds_from"),
               "matching": best["matching"], "settings": best["settings"], "inputs": inputs}
    atomic_write(out_dir / "summary.json", dump(summary))
    plot_precision_recall(results, out_dir / "precision_recall.png", title)
    return out_dir


def _inputs_info(settings: Evaluation, pred, gt, skeleton_ids, seconds: float, **extra) -> dict:
    return {"pred_synlinks": settings.pred_synlinks, "gt_synlinks": settings.gt_synlinks,
            "skeleton_ids": settings.skeleton_ids, "num_pred": int(len(pred)), "num_gt": int(len(gt)),
            "num_skeleton_ids": None if skeleton_ids is None else int(len(skeleton_ids)),
            "eval_seconds": round(seconds, 3), **extra}
