"""How good are the embeddings: cluster statistics, a linear probe, UMAP and PCA pictures.

- **Linear probe**: a scikit-learn LogisticRegression (after standardising each feature) on the frozen
  embeddings, predicting the transmitter.  Cross-validated in ``probe_folds`` stratified folds; when the
  synapses carry skeletons, folds are grouped by skeleton (StratifiedGroupKFold), so no skeleton is in a
  fold's training and test synapses at once.  With a split (the training setup's ``split_name``) the probe is
  also fitted on the split's train part and scored on its test part (``held_out``), the synapses the encoder
  never trained on; chance is ``1 / number of classes`` (and the majority-class rate is reported too).
- **Supervised comparison**: with ``transmitter_run``, the VGG3D's accuracy on that run's synapses next to the
  probe's on exactly the same synapses (probe fitted on the split's train part).
- **Silhouette** (scikit-learn, cosine distance) of the transmitter classes in embedding space: -1 to 1,
  higher means tighter, better separated classes.
- **Hopkins statistic** of the embeddings, implemented here: the embeddings are projected on their first
  ``min(8, dim, n - 1)`` principal components; ``m = max(5, n // 10)`` points ``u`` drawn uniformly in the
  bounding box of the projected data and ``m`` data points ``p`` drawn without replacement; with ``U_i`` the
  distance from ``u_i`` to its nearest data point and ``W_i`` the distance from ``p_i`` to its nearest *other*
  data point, ``H = sum U / (sum U + sum W)``, averaged over 20 draws.  About 0.5 for uniformly scattered
  points, towards 1 for clustered ones (towards 0 for a regular grid).  Distances are plain (not raised to
  the dimension); in few dimensions this is the usual form.
- **Pictures**: 2-D UMAP (umap-learn, cosine metric) and PCA of the embeddings, one PNG each per label
  (transmitter, skeleton, score, segments, whichever the synapses have).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import SynfulError
from ..io.files import atomic_write, write_json

logger = logging.getLogger(__name__)

__all__ = ["EmbedEvaluationError", "hopkins", "silhouette", "linear_probe", "held_out_probe", "plot_embedding",
           "evaluate_embeddings", "evaluate_run"]


class EmbedEvaluationError(SynfulError):
    """Embeddings cannot be evaluated (too few synapses or classes)."""


def hopkins(x: np.ndarray, *, seed: int = 0, repeats: int = 20, components: int = 8) -> float:
    """The Hopkins statistic of the rows of ``x`` (see the module doc for the definition)."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 3:
        raise EmbedEvaluationError(f"Hopkins statistic: {n} points, need at least 3")
    k = max(1, min(components, x.shape[1], n - 1))
    y = PCA(k, random_state=seed).fit_transform(x) if x.shape[1] > k else x
    m = min(n - 1, max(5, n // 10))
    nn = NearestNeighbors(n_neighbors=2).fit(y)
    lo, hi = y.min(axis=0), y.max(axis=0)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(repeats):
        u = rng.uniform(lo, hi, size=(m, k))
        u_dist = nn.kneighbors(u, n_neighbors=1)[0][:, 0]
        picks = rng.choice(n, size=m, replace=False)
        w_dist = nn.kneighbors(y[picks], n_neighbors=2)[0][:, 1]  # the first neighbour is the point itself
        values.append(u_dist.sum() / (u_dist.sum() + w_dist.sum()))
    return float(np.mean(values))


def silhouette(x: np.ndarray, labels) -> float:
    """The mean silhouette coefficient of ``labels`` in ``x`` (cosine distance)."""
    from sklearn.metrics import silhouette_score

    if len(set(labels)) < 2:
        raise EmbedEvaluationError("silhouette: need at least two classes")
    return float(silhouette_score(np.asarray(x, np.float64), np.asarray(labels), metric="cosine"))


def _probe():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))


def linear_probe(x: np.ndarray, labels, *, groups=None, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated accuracy of a linear probe: ``{accuracy, std, folds, chance, majority, n}``.

    ``groups`` (e.g. skeleton ids) keeps each group inside one fold.  The number of folds is lowered to the
    size of the smallest class (at least 2) when that is smaller.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score

    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise EmbedEvaluationError("linear probe: need at least two classes")
    k = int(max(2, min(folds, counts.min())))
    if groups is not None:
        cv = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        scores = cross_val_score(_probe(), x, y, groups=np.asarray(groups), cv=cv)
    else:
        scores = cross_val_score(_probe(), x, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    return {"accuracy": float(np.mean(scores)), "std": float(np.std(scores)), "folds": k,
            "chance": 1.0 / len(classes), "majority": float(counts.max() / counts.sum()), "n": int(len(y)),
            "grouped": groups is not None}


def held_out_probe(x_train, y_train, x_test, y_test) -> dict:
    """A linear probe fitted on one part and scored on another: ``{accuracy, chance, majority, n_train, n_test}``."""
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if len(set(y_train)) < 2 or len(y_test) == 0:
        raise EmbedEvaluationError(f"held-out probe: {len(set(y_train))} training classes, {len(y_test)} test synapses")
    model = _probe().fit(x_train, y_train)
    _, counts = np.unique(y_test, return_counts=True)
    return {"accuracy": float(np.mean(model.predict(x_test) == y_test)), "chance": 1.0 / len(set(y_train)),
            "majority": float(counts.max() / counts.sum()), "n_train": int(len(y_train)), "n_test": int(len(y_test))}


def _layout(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(np.asarray(x, np.float64))
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, len(x) - 1)), metric="cosine",
                        random_state=seed, n_jobs=1)
    return reducer.fit_transform(np.asarray(x, np.float32))


def plot_embedding(xy: np.ndarray, values, path, *, title: str, label: str) -> Path:
    """A scatter PNG of 2-D points ``xy`` coloured by ``values`` (categories, or numbers on a colour bar)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    vals = list(values)
    numeric = all(isinstance(v, float) for v in vals)
    if numeric:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=14, cmap="viridis")
        fig.colorbar(sc, ax=ax, label=label)
    else:
        cats = sorted({str(v) for v in vals})
        cmap = matplotlib.colormaps["tab10" if len(cats) <= 10 else "tab20"]
        for i, c in enumerate(cats):
            sel = np.array([str(v) == c for v in vals])
            ax.scatter(xy[sel, 0], xy[sel, 1], s=14, color=cmap(i % cmap.N), label=c if len(cats) <= 12 else None)
        if len(cats) <= 12:
            ax.legend(fontsize=7, markerscale=1.2, loc="best", title=label, title_fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=80))


def evaluate_embeddings(x: np.ndarray, docs: list[dict], *, parts: dict | None = None, folds: int = 5,
                        seed: int = 0) -> dict:
    """Statistics of embeddings ``x`` (rows in the order of ``docs``, which carry ``labels``): Hopkins,
    silhouette and probes against the ``transmitter`` label where present, ``held_out`` with ``parts``
    (``{synapse_id: train/validation/test}``)."""
    x = np.asarray(x, np.float32)
    out = {"num_synapses": int(len(x)), "dim": int(x.shape[1]), "hopkins": hopkins(x, seed=seed)}
    nt = [d["labels"].get("transmitter") for d in docs]
    known = np.array([t is not None for t in nt])
    if known.sum() >= 4 and len({t for t in nt if t}) >= 2:
        y = np.array([t for t in nt if t is not None])
        skel = [d["labels"].get("skeleton") for d in docs]
        groups = np.array(skel)[known] if all(s is not None for s in skel) else None
        out["silhouette_transmitter"] = silhouette(x[known], y)
        out["probe_cv"] = linear_probe(x[known], y, groups=groups, folds=folds, seed=seed)
        if parts:
            part = np.array([parts.get(d["synapse_id"]) for d in docs])
            tr, te = known & (part == "train"), known & (part == "test")
            if tr.any() and te.any():
                y_all = np.array([t if t is not None else "" for t in nt])
                out["held_out"] = held_out_probe(x[tr], y_all[tr], x[te], y_all[te])
    return out


def _label_values(docs, name):
    vals = [d["labels"].get(name) for d in docs]
    if any(v is None for v in vals) or len({str(v) for v in vals}) < 2:
        return None
    return [float(v) if name == "score" else str(v) for v in vals]


def _random_encoder_embeddings(settings, synapses, reader):
    """Features of the same cubes from an encoder of the same architecture with its initial (random) weights."""
    import keras

    from .predict import embed_cubes
    from .train import build_simclr

    keras.utils.set_random_seed(settings.train_config.seed)
    encoder, _, _ = build_simclr(settings.train_config, reader.channels)
    return embed_cubes(encoder, reader, synapses, settings.config.batch_size)


def evaluate_run(predict_dir, *, baseline: bool = False) -> dict:
    """Evaluate the embedding run in ``predict_dir``; write ``evaluation/embedding_evaluation.json`` and
    ``umap_<label>.png`` / ``pca_<label>.png``.  ``baseline`` adds the same statistics for an untrained
    encoder of the same architecture (``random_encoder``).  Returns the metrics plus ``out_dir``."""
    from .predict import RunSettings, read_embeddings
    from .train import open_cube_reader

    s = RunSettings(predict_dir)
    ids, emb, docs = read_embeddings(s.predict_dir)
    if len(ids) < 3:
        raise EmbedEvaluationError(f"{s.predict_dir}: {len(ids)} embeddings, need at least 3")
    parts = None
    if s.train_config.source == "transmitter" and s.train_config.split_name:
        from ..transmitters.splits import read_split

        with s.open_store() as store:
            _, parts = read_split(store, s.train_config.database, s.train_config.split_name)
    x = emb.astype(np.float32)
    metrics = evaluate_embeddings(x, docs, parts=parts, folds=s.config.probe_folds, seed=s.config.seed)
    metrics.update(run=s.run_name, checkpoint=s.checkpoint.name, collection=f"{s.database}.{s.collection}",
                   split=s.train_config.split_name, seed=s.config.seed)
    if s.config.transmitter_run:
        metrics["supervised"] = _compare_supervised(s.config.transmitter_run, x, docs, parts)
    if baseline:
        synapses = {syn.id: syn for syn in s.synapses()}
        ordered = [synapses[int(i)] for i in ids]
        reader = open_cube_reader(s.train_config, s.train_source)
        metrics["random_encoder"] = evaluate_embeddings(_random_encoder_embeddings(s, ordered, reader), docs,
                                                        parts=parts, folds=s.config.probe_folds, seed=s.config.seed)
    out = s.predict_dir / "evaluation"
    out.mkdir(exist_ok=True)
    pictures = []
    layouts = {}
    for name in ("transmitter", "skeleton", "score", "pre_segment", "post_segment"):
        values = _label_values(docs, name)
        if values is None:
            continue
        for method in ("umap", "pca"):
            if method not in layouts:
                layouts[method] = _layout(x, method, s.config.seed)
            title = f"{method.upper()} of {len(x)} embeddings ({s.run_name}, {s.checkpoint.name}), by {name}"
            pictures.append(str(plot_embedding(layouts[method], values, out / f"{method}_{name}.png",
                                               title=title, label=name)))
    metrics["pictures"] = pictures
    write_json(out / "embedding_evaluation.json", metrics)
    return dict(metrics, out_dir=str(out))


def _compare_supervised(transmitter_run, x, docs, parts) -> dict:
    """The VGG3D's accuracy on its run's synapses and the probe's (fitted on the split's train part) on them."""
    from ..transmitters.predict import read_predictions

    preds, _ = read_predictions(transmitter_run)
    truth = {p["synapse_id"]: p.get("label") for p in preds if p.get("label") is not None}
    index = {d["synapse_id"]: i for i, d in enumerate(docs)}
    test_ids = [sid for sid in truth if sid in index]
    supervised = float(np.mean([p["predicted"] == p["label"] for p in preds if p["synapse_id"] in index
                                and p["synapse_id"] in truth])) if test_ids else float("nan")
    train = [i for i, d in enumerate(docs) if d["labels"].get("transmitter") is not None
             and d["synapse_id"] not in truth and (parts is None or parts.get(d["synapse_id"]) == "train")]
    if not test_ids or not train:
        raise EmbedEvaluationError(f"{transmitter_run}: no synapses shared with the embeddings to compare on")
    probe = held_out_probe(x[train], [docs[i]["labels"]["transmitter"] for i in train],
                           x[[index[t] for t in test_ids]], [truth[t] for t in test_ids])
    return {"run": str(transmitter_run), "synapses": len(test_ids), "supervised_accuracy": supervised,
            "probe_accuracy": probe["accuracy"], "chance": probe["chance"]}
