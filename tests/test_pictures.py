"""The pictures synful writes, checked on the figure's content (axes scales, texts, legend entries, titles),
not on pixels: the score histogram, the precision-recall curve, `synful show` / the demo slices and the
transmitter confusion matrix."""

import numpy as np
import pytest

from synful.cli import main
from synful.evaluate import precision_recall_figure
from synful.extract.blockwise import score_histogram_figure
from synful.io.partners import empty_partners, write_partners
from synful.synthetic import write_synthetic
from synful.synthetic_io import show_figure
from synful.transmitters.evaluate import confusion_matrix_figure


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def _result(thr, precision, recall, predcount=5, **kw):
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"score_thr": thr, "precision": precision, "recall": recall, "fscore": f, "predcount": predcount,
            "matching": "location", **kw}


# ---------------------------------------------------------------------------------------------
# score histogram after extraction
# ---------------------------------------------------------------------------------------------

def test_score_histogram_has_a_log_count_axis():
    fig = score_histogram_figure(np.r_[np.full(1000, 0.5), [40.0]], 20, "run: 1001 partners")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and "log" in ax.get_ylabel()
    assert ax.get_title() == "run: 1001 partners" and len(ax.patches) == 20
    (ax,) = score_histogram_figure(np.zeros(0), 20, "empty").axes
    assert ax.get_yscale() == "log" and _texts(ax) == ["no partners"]


# ---------------------------------------------------------------------------------------------
# precision-recall curve
# ---------------------------------------------------------------------------------------------

def test_pr_curve_labels_every_threshold_when_few_and_marks_the_best():
    res = [_result(0.0, 0.5, 0.9), _result(2.0, 0.8, 0.8), _result(5.0, 0.95, 0.3)]
    (ax,) = precision_recall_figure(res, "run").axes
    labels = [t for t in _texts(ax) if not t.startswith("f=")]
    assert sorted(labels) == ["0", "5", "thr 2"]  # the best (thr 2, f 0.8) has its own label
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["score threshold sweep", "best f-score 0.800 (thr 2)"]
    assert ax.get_title() == "run (matching: location)"


def test_pr_curve_labels_a_readable_subset_when_many():
    res = [_result(float(t), 0.3 + 0.02 * t, 0.9 - 0.025 * t) for t in range(30)]
    (ax,) = precision_recall_figure(res).axes
    labels = [t for t in _texts(ax) if not t.startswith("f=")]
    best = max(res, key=lambda r: r["fscore"])["score_thr"]
    assert f"thr {best:g}" in labels and 8 <= len(labels) <= 11
    assert "0" in labels and "29" in labels  # both ends of the curve


def test_pr_curve_without_predictions_says_so_and_draws_no_point():
    note = "no predictions left: of 4, the filters removed filter_seg_ids 4, filter_same_id 0, ..."
    res = [_result(0.0, 0.0, 0.0, predcount=0, note=note), _result(1.0, 0.0, 0.0, predcount=0, note=note)]
    (ax,) = precision_recall_figure(res).axes
    assert ax.get_legend() is None
    assert all(line.get_color() == "0.85" for line in ax.get_lines())  # only the iso-f-score lines
    assert any("no predictions left" in t for t in _texts(ax))
    # thresholds left without predictions are left off the curve, with a note
    res = [_result(0.0, 0.5, 0.5), _result(1.0, 0.6, 0.4), _result(9.0, 0.0, 0.0, predcount=0, note=note)]
    (ax,) = precision_recall_figure(res).axes
    (curve,) = [line for line in ax.get_lines() if line.get_label() == "score threshold sweep"]
    assert len(curve.get_xdata()) == 2 and (0.0, 0.0) not in zip(curve.get_xdata(), curve.get_ydata())
    assert "thresholds >= 9: no predictions left" in _texts(ax)


# ---------------------------------------------------------------------------------------------
# synful show, demo slices
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def container(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("show") / "v.zarr", (8, 96, 96), seed=0)


def _legend(fig) -> list[str]:
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def _partners(rows) -> np.ndarray:
    """Partners from (pre (z, y, x), post (z, y, x)) nm rows, scores 1, 2, ..."""
    a = empty_partners(len(rows))
    for k, (pre, post) in enumerate(rows):
        a[k]["id"], a[k]["score"] = k, k + 1.0
        a[k]["pre_z"], a[k]["pre_y"], a[k]["pre_x"] = pre
        a[k]["post_z"], a[k]["post_y"], a[k]["post_x"] = post
    return a


def _predicted(container):
    """(ground truth, predictions) inside the 8 x 96 x 96 voxel (40, 4, 4) nm volume; one link crosses sections."""
    gt = _partners([((80, 100, 100), (80, 100, 160)), ((80, 200, 200), (120, 200, 260)),
                    ((160, 300, 100), (160, 300, 40)), ((80, 40, 300), (80, 90, 300))])
    pred = _partners([((80, 104, 100), (80, 100, 164)), ((160, 300, 104), (160, 300, 44)),
                      ((80, 250, 300), (80, 300, 300))])
    return gt, pred


def test_show_overlays_predictions_and_ground_truth_with_a_legend(container):
    gt, pred = _predicted(container)
    fig = show_figure(container, partners=gt, predicted=pred, num_slices=2)
    kinds = ("ground truth", "predicted")
    assert _legend(fig) == [f"{k} {what}" for k in kinds for what in (
        "pre-site", "post-site", "link, both sites in this section", "link, other site in another section")]
    assert fig._suptitle.get_text() == "v.zarr: ground truth (4 partners) and predicted (3 partners)"
    # both kinds drawn: red / cyan ground-truth sites, orange / magenta predicted ones, a dashed link
    drawn = {(line.get_marker(), line.get_color()) for ax in fig.axes for line in ax.get_lines()}
    assert {("^", "red"), ("o", "cyan"), ("^", "orange"), ("s", "magenta")} <= drawn
    assert "--" in {line.get_linestyle() for ax in fig.axes for line in ax.get_lines()}
    # ground truth alone (no prediction styles in the legend), predictions alone, a score floor
    fig = show_figure(container, partners=gt, num_slices=2)
    assert all(t.startswith("ground truth") for t in _legend(fig))
    assert fig._suptitle.get_text() == "v.zarr: ground truth (4 partners)"
    fig = show_figure(container, predicted=pred, ground_truth=False, min_score=2.0, num_slices=2, title="demo")
    assert all(t.startswith("predicted") for t in _legend(fig))
    assert fig._suptitle.get_text() == "demo: predicted (2 partners), predictions scoring >= 2"


def test_cli_show_partners_are_predictions_over_the_ground_truth(container, tmp_path, capsys, monkeypatch):
    import synful.synthetic_io as sio

    gt, pred = _predicted(container)
    write_partners(gt, tmp_path / "gt.csv")
    write_partners(pred, tmp_path / "pred.csv")
    seen = {}
    real = sio.show_figure

    def spy(*a, **kw):
        seen["fig"] = real(*a, **kw)
        return seen["fig"]

    monkeypatch.setattr(sio, "show_figure", spy)
    png = tmp_path / "both.png"
    assert main(["show", str(container), "--partners", str(tmp_path / "pred.csv"), "--out", str(png),
                 "--slices", "2", "--ground-truth", str(tmp_path / "gt.csv")]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen["fig"]._suptitle.get_text() == "v.zarr: ground truth (4 partners) and predicted (3 partners)"
    assert main(["show", str(container), "--partners", str(tmp_path / "pred.csv"), "--no-ground-truth",
                 "--min-score", "3", "--out", str(png)]) == 0
    assert seen["fig"]._suptitle.get_text() == "v.zarr: predicted (1 partners), predictions scoring >= 3"
    capsys.readouterr()
    assert main(["show", str(container), "--no-ground-truth"]) == 2
    assert "--no-ground-truth needs --partners" in capsys.readouterr().err


def test_show_reads_a_prediction_run(container, tmp_path, monkeypatch):
    import synful.store as store_mod

    _, pred = _predicted(container)
    run = tmp_path / "setup_t0_p0"
    run.mkdir()
    (run / "predict_config.ini").write_text("")

    class FakeStore:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def query(self):
            return pred

    monkeypatch.setattr(store_mod, "open_run_store", lambda d: FakeStore())
    fig = show_figure(container, predicted=run, num_slices=2)
    assert "predicted (3 partners)" in fig._suptitle.get_text()
    fig = show_figure(container, predicted=empty_partners(0), num_slices=2)
    assert "predicted (0 partners)" in fig._suptitle.get_text()
    fig = show_figure(container, ground_truth=False, num_slices=2)  # nothing to draw: the raw, said in the title
    assert fig._suptitle.get_text() == "v.zarr: no partners" and not fig.legends


# ---------------------------------------------------------------------------------------------
# transmitter confusion matrix
# ---------------------------------------------------------------------------------------------

def test_confusion_matrix_title_names_run_checkpoint_and_split():
    m = [[3, 1], [0, 4]]
    (ax, _colorbar) = confusion_matrix_figure(m, ["gaba", "acetylcholine"], "synapses", run="exp_t0_p1",
                                              checkpoint="model_1000.weights.h5", split="skeleton test").axes
    assert ax.get_title() == ("synapses: accuracy 0.875\n"
                              "run exp_t0_p1\ncheckpoint model_1000.weights.h5\nsplit skeleton test")
    (ax, _colorbar) = confusion_matrix_figure(m, ["gaba", "acetylcholine"], "skeletons").axes
    assert ax.get_title() == "skeletons: accuracy 0.875"
