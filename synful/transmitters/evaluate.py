"""Accuracy of transmitter predictions: per synapse, per skeleton (majority vote) and per class.

The confusion matrix has true classes as rows and predicted classes as
columns, in class order.  A skeleton's prediction is the class most of its
synapses were predicted as; ties go to the larger summed probability, then
to the earlier class.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import SynfulError
from ..io.files import atomic_write, write_json

__all__ = ["EvaluationError", "evaluate_predictions", "plot_confusion_matrix", "evaluate_run"]


class EvaluationError(SynfulError):
    """Predictions cannot be evaluated (none, or without true labels)."""


def evaluate_predictions(predictions: list[dict], classes: list[str]) -> dict:
    """Metrics of prediction documents (``label``, ``predicted``, ``probabilities``, ``skeleton_id``).

    Returns ``synapse_accuracy``, ``skeleton_accuracy``, ``per_class``
    ({class: {support, correct, accuracy (recall), precision}}),
    ``confusion_matrix`` (synapse counts, rows true), ``skeleton_confusion_matrix``,
    ``num_synapses``, ``num_skeletons``, ``chance`` (1 / number of classes
    present).  Synapses without a known label are skipped.
    """
    index = {c: i for i, c in enumerate(classes)}
    preds = [p for p in predictions if p.get("label") in index]
    if not preds:
        raise EvaluationError("no predictions with a known label to evaluate")
    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    by_skel: dict = defaultdict(list)
    for p in preds:
        cm[index[p["label"]], index[p["predicted"]]] += 1
        by_skel[p["skeleton_id"]].append(p)
    skel_cm = np.zeros((n, n), np.int64)
    for members in by_skel.values():
        votes = np.bincount([index[p["predicted"]] for p in members], minlength=n)
        prob_sum = np.sum([p["probabilities"] for p in members], axis=0)
        best = min(range(n), key=lambda k: (-votes[k], -prob_sum[k], k))
        truth = {p["label"] for p in members}
        # a skeleton has one transmitter; its synapses share the label
        skel_cm[index[truth.pop()], best] += 1
    per_class = {}
    for c, i in index.items():
        support, predicted = int(cm[i].sum()), int(cm[:, i].sum())
        per_class[c] = {"support": support, "correct": int(cm[i, i]),
                        "accuracy": float(cm[i, i] / support) if support else None,
                        "precision": float(cm[i, i] / predicted) if predicted else None}
    present = int((cm.sum(axis=1) > 0).sum())
    return {
        "classes": list(classes),
        "num_synapses": int(cm.sum()),
        "num_skeletons": int(skel_cm.sum()),
        "synapse_accuracy": float(np.trace(cm) / cm.sum()),
        "skeleton_accuracy": float(np.trace(skel_cm) / skel_cm.sum()),
        "mean_class_accuracy": float(np.mean([v["accuracy"] for v in per_class.values() if v["accuracy"] is not None])),
        "chance": 1.0 / present,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "skeleton_confusion_matrix": skel_cm.tolist(),
    }


def confusion_matrix_figure(matrix, classes: list[str], title: str = "synapses", *, run: str | None = None,
                            checkpoint: str | None = None, split: str | None = None):
    """The row-normalised confusion matrix (counts in the cells) as a matplotlib ``Figure``; its title names
    what is counted (``title``), the accuracy and, when given, the run, the checkpoint and the split part."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    m = np.asarray(matrix, float)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    about = [f"{k} {v}" for k, v in (("run", run), ("checkpoint", checkpoint), ("split", split)) if v is not None]
    # one line each and a minimum width, so that long run and checkpoint names fit beside few classes
    fig = Figure(figsize=(max(4.5, 1.2 + 0.9 * len(classes)), 1.0 + 0.2 * len(about) + 0.8 * len(classes)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("\n".join([f"{title}: accuracy {np.trace(m) / max(m.sum(), 1):.3f}", *about]), fontsize=9)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(matrix, classes: list[str], path, title: str = "synapses", *, run: str | None = None,
                          checkpoint: str | None = None, split: str | None = None) -> Path:
    """Write :func:`confusion_matrix_figure` as a PNG at ``path`` (atomic); returns ``path``."""
    fig = confusion_matrix_figure(matrix, classes, title, run=run, checkpoint=checkpoint, split=split)
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def evaluate_run(predict_dir) -> dict:
    """Evaluate the prediction run in ``predict_dir``; write ``evaluation/`` beside it.

    Files: ``evaluation.json`` (all metrics), ``confusion_matrix.json``
    (``classes``, ``synapses``, ``skeletons``), ``confusion_matrix.png`` and
    ``skeleton_confusion_matrix.png``.  Returns the metrics plus ``out_dir``.
    """
    from .predict import read_predictions, run_settings

    predict_dir = Path(predict_dir).resolve()
    predictions, classes = read_predictions(predict_dir)
    metrics = evaluate_predictions(predictions, classes)
    out = predict_dir / "evaluation"
    out.mkdir(exist_ok=True)
    for name, data in (("evaluation.json", metrics),
                       ("confusion_matrix.json", {"classes": classes, "synapses": metrics["confusion_matrix"],
                                                  "skeletons": metrics["skeleton_confusion_matrix"]})):
        write_json(out / name, data)
    rs = run_settings(predict_dir)
    about = dict(run=rs.run_name, checkpoint=rs.checkpoint.name, split=f"{rs.split_name} {rs.split_part}")
    plot_confusion_matrix(metrics["confusion_matrix"], classes, out / "confusion_matrix.png", "synapses", **about)
    plot_confusion_matrix(metrics["skeleton_confusion_matrix"], classes, out / "skeleton_confusion_matrix.png",
                          "skeletons", **about)
    return dict(metrics, out_dir=str(out))
