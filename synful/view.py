"""Look at volumes and partners in neuroglancer: ``synful view PATH...``.

:func:`build_viewer` starts a local neuroglancer viewer (the ``neuroglancer``
package serves its own bundled client, on 127.0.0.1 only) showing what the
paths hold; :func:`screenshot` loads it in headless Chromium and saves a PNG.

What each kind of path shows (layer names as in :data:`LayerInfo.name`):

- a prediction run (``03_predict/setup_t<T>_p<P>``, has ``predict_config.ini``):
  ``raw`` ([Prediction] raw_container / raw_dataset), ``indicator`` (the
  predicted synapse indicator as a probability, stored value x the dataset's
  ``scale`` attribute), ``vector magnitude`` (|partner vector| in nm, the
  vectors times their ``scale``), ``segmentation`` ([Extraction]
  seg_container), ``ground-truth labels`` (the neuron ids of the ground truth:
  [Evaluation] matching_seg_container, else the ``volumes/labels/neuron_ids``
  of the ground-truth container or the manifest sample), ``predicted
  partners`` (the run's store) and ``ground-truth partners``; with evaluation
  results (``summary.json`` in ``[Evaluation] results_dir`` or
  ``evaluation/``) also ``true positives``, ``false positives`` and ``false
  negatives`` at the evaluated threshold (the calibrated one, else the best);
- a training setup (has ``train_config.ini``): the latest snapshot
  ``snapshots/batch_<it>.zarr`` as a container;
- a container (zarr v2 / v3, N5, HDF5): every array in it (segmentations for
  integer ids of 16 bits or more, the magnitude for 3-channel vectors, the
  probability for arrays with a ``scale`` attribute) and its CREMI
  annotations as ``ground-truth partners``.

Several paths: every layer name is prefixed with ``<path name>: ``.

Partners are LINE annotations from the pre to the post site, coloured as in
the PNGs of :func:`synful.synthetic_io.show` (ground truth: yellow link, red
pre-site, cyan post-site; predictions: orange link, orange pre-site, magenta
post-site); true positives have a green link, false positives the predicted
colours, false negatives the ground-truth ones.  The annotation ``id`` is the
partner ``id`` (int64 written in decimal); properties: ``score`` (float32),
``transmitter`` (uint8 enum, only where the container names one per partner),
``cost`` (true positives: the match cost in nm); the pre and post segment ids
are the annotation's relationships ``pre_segment`` / ``post_segment`` (uint64,
exact, linked to the segmentation they came from; none where missing):
neuroglancer properties cannot hold 64-bit integers.

Partners are local annotations: the viewer state, and so the browser, holds
all of them (fine up to some 10^5 partners; a whole-brain collection needs a
precomputed annotation source instead).

Coordinates: the viewer's dimensions are ``z, y, x`` in nm with the first
image's voxel size; every volume keeps its own voxel size and offset (nm,
from the dataset's attributes); annotations are in nm.  Volumes are read
chunk by chunk as the client asks (:class:`LazyVolume`), never whole.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from .errors import SynfulError

__all__ = ["ViewError", "LayerInfo", "LazyVolume", "build_viewer", "screenshot", "open_browser", "find_browser",
           "evaluation_assignment", "layer_specs", "coordinate_space", "describe", "DIMENSION_NAMES"]

logger = logging.getLogger(__name__)

DIMENSION_NAMES = ("z", "y", "x")
#: the executables ``synful view --screenshot`` looks for on PATH (Debian's chromium and chromium-driver)
_BROWSER_NAMES = ("chromium", "chromium-browser")
_DRIVER_NAMES = ("chromedriver",)
#: link colour of true positives (the PNGs have no such kind)
_TRUE_POSITIVE_LINK = "limegreen"


class ViewError(SynfulError):
    """A path cannot be shown, or no browser is there to take a screenshot; the message names it."""


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of the viewer: ``kind`` is neuroglancer's layer type (``image``, ``segmentation``,
    ``annotation``); ``source`` names the container/dataset or the partners' origin; ``voxel_size`` and
    ``offset`` (nm, z, y, x) for volumes; ``count`` the annotations of an annotation layer."""

    name: str
    kind: str
    source: str
    visible: bool = True
    voxel_size: tuple[int, ...] | None = None
    offset: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    count: int | None = None


class LazyVolume:
    """A read-only array view of a volume for ``neuroglancer.LocalVolume``, computed per requested block.

    ``array``: a funlib Array (:func:`synful.io.volumes.open_volume`; channels
    first).  The view has the array's spatial shape (z, y, x) and reads only
    the region a ``__getitem__`` asks for (the client asks chunk by chunk).
    ``scale``: stored value x scale (float32 out, e.g. a uint8 indicator to a
    probability).  ``magnitude``: the array has one channel axis of vector
    components and the view is their euclidean norm (float32, times
    ``scale``).  Otherwise the stored dtype is kept (float16 / float64 as
    float32).  ``name`` (container/dataset) names it in errors.
    """

    def __init__(self, array, *, scale: float | None = None, magnitude: bool = False, name: str = "volume"):
        self._data = array.data  # dask over zarr / tensorstore / HDF5: slicing reads only what is sliced
        spatial = tuple(int(s) for s in array.data.shape[-3:])
        channels = tuple(array.data.shape[:-3])
        if magnitude and len(channels) != 1:
            raise ViewError(f"{name}: a vector magnitude needs one channel axis, got shape "
                            f"{tuple(array.data.shape)}")
        if not magnitude and channels:
            raise ViewError(f"{name}: {len(channels)} channel axes (shape {tuple(array.data.shape)}); "
                            f"only scalar volumes or 3-vectors can be shown")
        self._magnitude = magnitude
        self._scale = None if scale is None else float(scale)
        self.shape = spatial
        self.ndim = 3
        stored = np.dtype(array.dtype)
        self.dtype = np.dtype(np.float32) if (magnitude or self._scale is not None or stored == np.float16
                                               or stored == np.float64) else stored

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if self._magnitude:
            v = np.asarray(self._data[(slice(None),) + key], dtype=np.float32)
            out = np.sqrt(np.sum(v * v, axis=0))
        else:
            out = np.asarray(self._data[key])
        if self._scale is not None:
            out = out.astype(np.float32) * np.float32(self._scale)
        return np.asarray(out, dtype=self.dtype)


# ---------------------------------------------------------------------------------------------------------------
# volumes


@dataclasses.dataclass
class _Spec:
    """A layer to build: a volume (container, dataset) or partners (an array)."""

    name: str
    kind: str                      # image | segmentation | annotation
    source: str
    visible: bool = True
    container: str | None = None
    dataset: str | None = None
    scale: float | None = None
    magnitude: bool = False
    shader: str | None = None
    partners: np.ndarray | None = None
    style: tuple | None = None
    transmitters: np.ndarray | None = None
    cost: np.ndarray | None = None
    linked: str | None = None      # name of the segmentation layer the segment ids come from


def _open(container, dataset):
    from .io.volumes import open_volume

    try:
        array = open_volume(container, dataset)
    except SynfulError as e:
        raise ViewError(str(e)) from None
    return array


def _geometry(array, where: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(voxel size, offset) in nm, (z, y, x), of a volume; its offset must lie on its voxel grid."""
    vs = tuple(int(v) for v in array.voxel_size)
    off = tuple(int(v) for v in array.roi.offset)
    if len(vs) != 3:
        raise ViewError(f"{where}: {len(vs)} spatial axes; only 3D volumes (z, y, x) can be shown")
    if any(o % v for o, v in zip(off, vs)):
        raise ViewError(f"{where}: offset {off} nm is not a multiple of the voxel size {vs} nm")
    return vs, off


def coordinate_space(voxel_size):
    """neuroglancer's ``CoordinateSpace`` of (z, y, x) in nm with ``voxel_size`` (nm) as scales."""
    import neuroglancer

    return neuroglancer.CoordinateSpace(names=list(DIMENSION_NAMES), units="nm",
                                        scales=[float(v) for v in voxel_size])


def _volume_layer(spec: _Spec):
    """(neuroglancer layer, LayerInfo) of a volume spec: a LocalVolume over a :class:`LazyVolume`."""
    import neuroglancer

    where = f"{spec.container}/{spec.dataset}"
    array = _open(spec.container, spec.dataset)
    vs, off = _geometry(array, where)
    view = LazyVolume(array, scale=spec.scale, magnitude=spec.magnitude, name=where)
    volume_type = "segmentation" if spec.kind == "segmentation" else "image"
    if volume_type == "segmentation" and view.dtype.kind not in "iu":
        raise ViewError(f"{where}: a segmentation needs integer ids, got dtype {view.dtype}")
    if volume_type == "segmentation" and view.dtype != np.uint64:
        view = _AsUint64(view)
    source = neuroglancer.LocalVolume(view, dimensions=coordinate_space(vs), volume_type=volume_type,
                                      voxel_offset=[o // v for o, v in zip(off, vs)])
    if volume_type == "segmentation":
        layer = neuroglancer.SegmentationLayer(source=source, selected_alpha=0.5, not_selected_alpha=0.15)
    else:
        layer = neuroglancer.ImageLayer(source=source, **({"shader": spec.shader} if spec.shader else {}))
    info = LayerInfo(spec.name, volume_type, where, spec.visible, vs, off, view.shape, str(view.dtype))
    return layer, info


class _AsUint64:
    """Integer segment ids as uint64 (neuroglancer's segmentation types are uint8..uint64; negative ids wrap)."""

    def __init__(self, view):
        self._view, self.shape, self.ndim, self.dtype = view, view.shape, 3, np.dtype(np.uint64)

    def __getitem__(self, key):
        return np.asarray(self._view[key]).astype(np.uint64)


#: image shaders: the indicator as a red-to-yellow heat overlay, the vector magnitude in nm as grey
_INDICATOR_SHADER = """#uicontrol invlerp normalized(range=[0, 1])
void main() {
  float p = normalized();
  emitRGBA(vec4(1.0, p, 0.0, p));
}
"""
_MAGNITUDE_SHADER = """#uicontrol invlerp normalized(range=[0, 800])
void main() { emitGrayscale(normalized()); }
"""


def _dataset_attrs(container, dataset) -> dict:
    """The JSON attributes of a zarr v2 / v3 or N5 dataset, or of an HDF5 dataset ({} when none)."""
    path = Path(container) / dataset
    for name, key in ((".zattrs", None), ("zarr.json", "attributes"), ("attributes.json", None)):
        if (path / name).is_file():
            attrs = json.loads((path / name).read_text())
            return attrs.get(key, {}) if key else attrs
    if Path(container).is_file():
        import h5py

        with h5py.File(container, "r") as f:
            return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in f[dataset].attrs.items()} \
                if dataset in f else {}
    return {}


def _scale_attr(container, dataset) -> float | None:
    """The dataset's ``scale`` attribute (stored x scale = value), None when it has none."""
    scale = _dataset_attrs(container, dataset).get("scale")
    return None if scale is None else float(scale)


def _list_datasets(container: Path) -> list[str]:
    """Every array in a container, as dataset paths (sorted): zarr v2 / v3, N5 directories or an HDF5 file."""
    if container.is_file():
        import h5py

        found = []
        with h5py.File(container, "r") as f:
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
        return sorted(found)
    found = []
    for root, dirs, files in os.walk(container):
        rel = Path(root).relative_to(container).as_posix()
        if rel == ".":
            continue
        here = Path(root)
        if (".zarray" in files
                or "attributes.json" in files and "dimensions" in _read_json(here / "attributes.json")
                or "zarr.json" in files and _read_json(here / "zarr.json").get("node_type") == "array"):
            found.append(rel)
            dirs[:] = []  # an array's chunk folders hold no arrays
    return sorted(found)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _container_volume_specs(container: Path) -> list[_Spec]:
    """Layers for every array of a container, by what it holds (module doc); CREMI annotations excluded."""
    specs = []
    for dataset in _list_datasets(container):
        if dataset.startswith("annotations"):
            continue
        array = _open(container, dataset)
        name = dataset[len("volumes/"):] if dataset.startswith("volumes/") else dataset
        shape = tuple(array.data.shape)
        channels = shape[:-3]
        dtype = np.dtype(array.dtype)
        scale = _scale_attr(container, dataset)
        if len(channels) == 1 and channels[0] == 3:
            specs.append(_Spec(f"{name} magnitude", "image", f"{container}/{dataset}", False, str(container),
                               dataset, scale=scale, magnitude=True, shader=_MAGNITUDE_SHADER))
        elif channels:
            logger.info("%s/%s: %d channel axes (shape %s), not shown", container, dataset, len(channels), shape)
        elif dtype.kind in "iu" and dtype.itemsize >= 2:
            specs.append(_Spec(name, "segmentation", f"{container}/{dataset}", True, str(container), dataset))
        else:
            raw = name == "raw"
            shader = _INDICATOR_SHADER if "indicator" in name else None
            specs.append(_Spec(name, "image", f"{container}/{dataset}", raw, str(container), dataset,
                               scale=scale if dtype.kind != "f" or scale not in (None, 1.0) else None,
                               shader=shader))
    # a volume's segmentations: the first visible, the rest hidden (they would cover each other)
    seen = False
    for s in specs:
        if s.kind == "segmentation":
            s.visible, seen = not seen, True
    return specs


# ---------------------------------------------------------------------------------------------------------------
# partners


def _rgb(colour: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return tuple(float(c) for c in to_rgb(colour))


def _styles() -> dict[str, tuple[str, str, str]]:
    """(link, pre-site, post-site) colours per kind of partner layer, from the PNGs' styles."""
    from .synthetic_io import _GROUND_TRUTH_STYLE, _PREDICTED_STYLE

    gt = (_GROUND_TRUTH_STYLE[0], _GROUND_TRUTH_STYLE[1][1], _GROUND_TRUTH_STYLE[2][1])
    pred = (_PREDICTED_STYLE[0], _PREDICTED_STYLE[1][1], _PREDICTED_STYLE[2][1])
    return {"ground truth": gt, "predicted": pred, "true positive": (_TRUE_POSITIVE_LINK, pred[1], pred[2]),
            "false positive": pred, "false negative": gt}


def _line_shader(style) -> str:
    link, pre, post = (_rgb(c) for c in style)

    def vec(c):
        return f"vec4({c[0]:.3f}, {c[1]:.3f}, {c[2]:.3f}, 1.0)"
    return (f"void main() {{\n  setLineColor({vec(link)});\n  setLineWidth(3.0);\n"
            f"  setEndpointMarkerColor({vec(pre)}, {vec(post)});\n  setEndpointMarkerSize(8.0, 8.0);\n}}\n")


def _partner_layer(spec: _Spec):
    """(LocalAnnotationLayer, LayerInfo) of PARTNER_DTYPE partners: one LINE annotation per partner, pre -> post,
    in nm (z, y, x); id, properties and relationships as the module doc says."""
    import neuroglancer

    from .io.partners import NO_ID

    p = spec.partners
    props = [neuroglancer.AnnotationPropertySpec(id="score", type="float32", description="partner score")]
    labels = None
    if spec.transmitters is not None:
        labels = sorted({str(t) for t in spec.transmitters if str(t)})
        props.append(neuroglancer.AnnotationPropertySpec(
            id="transmitter", type="uint8", description="neurotransmitter class (ground truth)",
            enum_values=list(range(len(labels) + 1)), enum_labels=["unknown"] + labels))
    if spec.cost is not None:
        props.append(neuroglancer.AnnotationPropertySpec(id="cost", type="float32",
                                                         description="match cost (nm)"))
    code = {name: i + 1 for i, name in enumerate(labels or [])}
    annotations = []
    for k, r in enumerate(p.tolist() if len(p) else []):
        rec = dict(zip(p.dtype.names, r))
        values = [float(rec["score"])]
        if spec.transmitters is not None:
            values.append(code.get(str(spec.transmitters[k]), 0))
        if spec.cost is not None:
            values.append(float(spec.cost[k]))
        segments = [[] if rec[f] == NO_ID else [np.uint64(rec[f] & 0xFFFFFFFFFFFFFFFF)]
                    for f in ("pre_seg_id", "post_seg_id")]
        annotations.append(neuroglancer.LineAnnotation(
            id=str(rec["id"]), point_a=[rec["pre_z"], rec["pre_y"], rec["pre_x"]],
            point_b=[rec["post_z"], rec["post_y"], rec["post_x"]], props=values, segments=segments))
    kwargs = {}
    if spec.linked:
        kwargs["linked_segmentation_layer"] = {"pre_segment": spec.linked, "post_segment": spec.linked}
    layer = neuroglancer.LocalAnnotationLayer(
        dimensions=coordinate_space((1, 1, 1)), annotation_properties=props,
        annotation_relationships=["pre_segment", "post_segment"], annotations=annotations,
        shader=_line_shader(spec.style), **kwargs)
    return layer, LayerInfo(spec.name, "annotation", spec.source, spec.visible, count=len(annotations))


def _container_partners(container: Path) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(partners, transmitter names or None) of a container's CREMI annotations; None when it has none."""
    from .io.cremi import PARTNERS, read_annotations, read_transmitters

    if not (container / PARTNERS).exists() and not container.is_file():
        return None
    try:
        partners = read_annotations(container)
    except SynfulError as e:
        if container.is_file():
            return None
        raise ViewError(f"{container}: cannot read its annotations: {e}") from None
    names = read_transmitters(container)
    return partners, (names if any(str(t) for t in names) else None)


# ---------------------------------------------------------------------------------------------------------------
# evaluation


def _evaluation_dir(run: Path, cfg, evaluation) -> Path:
    if evaluation is not None:
        return Path(evaluation)
    return Path(cfg.evaluation.results_dir) if cfg.evaluation.results_dir else run / "evaluation"


def evaluation_assignment(run, evaluation=None) -> dict | None:
    """The true positives, false positives and false negatives of a run's evaluation, partner by partner.

    ``evaluation``: the results folder (default: ``[Evaluation] results_dir``,
    else ``<run>/evaluation``); None is returned when it holds no
    ``summary.json``.  The evaluation files record counts only, so the
    assignment is recomputed with the settings recorded there, at its
    threshold (the calibrated one of a calibrated evaluation, else the best):
    the run's predictions (store or ``pred_synlinks``) filtered by
    :func:`synful.evaluate.filter_partners`, the ground truth as the
    evaluation read it, matched by :func:`synful.evaluate.match_partners`
    (with ``matching_seg_container`` ids where set).  The counts must equal the
    recorded ones, else :class:`ViewError` (the store or ground truth changed
    since).  Returns ``{"score_thr", "matching", "tp": (predictions, gt
    partners, costs nm), "fp": predictions, "fn": gt partners, "summary"}``
    (PARTNER_DTYPE arrays).  The FAFB protocol (``skeleton_ids``) is per
    neuron and not recomputed here: ViewError.
    """
    from .config import Evaluation, read_predict_config
    from .evaluate import filter_partners, match_partners
    from .evaluate.common import _file_ids, read_ground_truth
    from .evaluate.runs import _matching_seg_ids, _run_ground_truth, _run_predictions

    run = Path(run).resolve()
    ini = run / "predict_config.ini"
    cfg = read_predict_config(ini)
    folder = _evaluation_dir(run, cfg, evaluation)
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        return None
    try:
        summary = json.loads(summary_file.read_text())
        best, recorded = summary["best"], summary["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ViewError(f"{summary_file}: not an evaluation summary ({e})") from None
    fields = {f.name for f in dataclasses.fields(Evaluation)}
    settings = dataclasses.replace(cfg.evaluation, **{k: (tuple(v) if isinstance(v, list) else v)
                                                      for k, v in recorded.items() if k in fields})
    if settings.skeleton_ids:
        raise ViewError(f"{summary_file}: evaluated per neuron (skeleton_ids); its true / false positives are not "
                        f"shown")
    thr = float(best["score_thr"])
    pred, _, _, _ = _run_predictions(run, settings, cfg.extraction)
    if settings.gt_synlinks is not None:
        gt, gt_ids = read_ground_truth(settings.gt_synlinks), _file_ids(settings.gt_synlinks)
    else:
        gt, _, gt_ids = _run_ground_truth(cfg.prediction, f"{ini} [Evaluation] gt_synlinks")
    kept = filter_partners(pred, settings, thr)
    matched = kept
    ids = _matching_seg_ids(settings, kept, gt, gt_ids, f"{ini} [Evaluation] matching", {"predictions": "the store"})
    if ids is not None:
        matched = kept.copy()
        matched["pre_seg_id"], matched["post_seg_id"] = ids
    m = match_partners(matched, gt, settings)
    counts = (m.tp, m.fp, m.fn)
    if counts != (best["tpcount"], best["fpcount"], best["fncount"]):
        raise ViewError(f"{summary_file}: recorded tp/fp/fn {best['tpcount']}/{best['fpcount']}/{best['fncount']} "
                        f"at score threshold {thr:g}, recomputed {'/'.join(map(str, counts))}: the run's partners "
                        f"or its ground truth changed since; evaluate it again")
    tp_pred = np.zeros(len(kept), bool)
    tp_pred[m.matches["pred"]] = True
    tp_gt = np.zeros(len(gt), bool)
    tp_gt[m.matches["gt"]] = True
    return {"score_thr": thr, "matching": settings.matching, "summary": str(summary_file),
            "tp": (kept[m.matches["pred"]], gt[m.matches["gt"]], m.matches["cost"]),
            "fp": kept[~tp_pred], "fn": gt[~tp_gt]}


# ---------------------------------------------------------------------------------------------------------------
# what a path shows


def _run_specs(run: Path, evaluation=None) -> list[_Spec]:
    from .config import read_predict_config, read_train_config
    from .evaluate.common import read_ground_truth
    from .evaluate.runs import _run_ground_truth
    from .predict.plan import _raw_source
    from .store import open_run_store

    ini = run / "predict_config.ini"
    cfg = read_predict_config(ini)
    p, x, e = cfg.prediction, cfg.extraction, cfg.evaluation
    train_ini = Path(p.train_setup) / "train_config.ini"
    training = read_train_config(train_ini) if train_ini.is_file() else None
    if p.raw_container is None and training is None:
        raise ViewError(f"{ini} [Prediction] raw_container: None, and {train_ini} (naming the manifest) is missing")
    raw_container, raw_dataset, _ = _raw_source(p, training, str(ini)) if training else (p.raw_container,
                                                                                          p.raw_dataset, None)
    out = Path(p.out_container)
    specs = [_Spec("raw", "image", f"{raw_container}/{raw_dataset}", True, str(raw_container), raw_dataset)]
    for dataset, name, magnitude, shader in ((p.indicator_dataset, "indicator", False, _INDICATOR_SHADER),
                                             (p.vectors_dataset, "vector magnitude", True, _MAGNITUDE_SHADER)):
        if (out / dataset).exists():
            specs.append(_Spec(name, "image", f"{out}/{dataset}", False, str(out), dataset,
                               scale=_scale_attr(out, dataset) or 1.0, magnitude=magnitude, shader=shader))
        else:
            logger.info("%s/%s: not predicted yet, no %s layer", out, dataset, name)
    if x.seg_container is not None:
        specs.append(_Spec("segmentation", "segmentation", f"{x.seg_container}/{x.seg_dataset}", True,
                           str(x.seg_container), x.seg_dataset))
    gt_labels = _ground_truth_labels(cfg, training)
    if gt_labels is not None:
        specs.append(_Spec("ground-truth labels", "segmentation", f"{gt_labels[0]}/{gt_labels[1]}", False,
                           *gt_labels))
    with open_run_store(run) as store:
        pred = store.query()
        source = repr(store)
    seg_layer = "segmentation" if x.seg_container is not None else None
    specs.append(_Spec("predicted partners", "annotation", source, partners=pred, style=_styles()["predicted"],
                       linked=seg_layer))
    gt_container = None
    try:
        if e.gt_synlinks is not None:
            gt, gt_source = read_ground_truth(e.gt_synlinks), str(e.gt_synlinks)
            gt_container = Path(e.gt_synlinks) if Path(e.gt_synlinks).suffix in (".zarr", ".n5", ".h5", ".hdf",
                                                                                    ".hdf5") else None
        else:
            gt, gt_source, _ = _run_ground_truth(p, f"{ini} [Evaluation] gt_synlinks")
    except SynfulError as err:
        logger.warning("%s: no ground-truth partners shown: %s", run, err)
        gt = None
    if gt is not None:
        transmitters = None
        if gt_container is not None:
            found = _container_partners(gt_container)
            transmitters = found[1] if found else None
        linked = "ground-truth labels" if gt_labels is not None else None
        specs.append(_Spec("ground-truth partners", "annotation", gt_source, partners=gt,
                           style=_styles()["ground truth"], transmitters=transmitters, linked=linked))
    try:
        assignment = evaluation_assignment(run, evaluation)
    except SynfulError as err:  # a stale or per-neuron evaluation: the rest is still worth looking at
        logger.warning("no true / false positive layers: %s", err)
        assignment = None
    if assignment is not None:
        what = f"{assignment['summary']} at score threshold {assignment['score_thr']:g}"
        tp, tp_gt, cost = assignment["tp"]
        styles = _styles()
        specs += [_Spec("true positives", "annotation", what, False, partners=tp, style=styles["true positive"],
                        cost=cost, linked=seg_layer),
                  _Spec("false positives", "annotation", what, False, partners=assignment["fp"],
                        style=styles["false positive"], linked=seg_layer),
                  _Spec("false negatives", "annotation", what, False, partners=assignment["fn"],
                        style=styles["false negative"], linked=linked if gt is not None else None)]
    return specs


def _ground_truth_labels(cfg, training) -> tuple[str, str] | None:
    """(container, dataset) of the ground truth's neuron labels of a run, None when it names none."""
    from .io.cremi import NEURON_IDS
    from .io.manifest import read_manifest

    e, p = cfg.evaluation, cfg.prediction
    if e.matching_seg_container is not None:
        return str(e.matching_seg_container), e.matching_seg_dataset
    if e.gt_synlinks is not None:
        path = Path(e.gt_synlinks)
        return (str(path), NEURON_IDS) if (path / NEURON_IDS).exists() else None
    if training is None:
        return None
    samples = read_manifest(training.manifest)
    if p.raw_container is not None:
        raw = Path(p.raw_container).resolve()
        samples = [s for s in samples if Path(s.container).resolve() == raw]
    else:
        samples = [s for s in samples if s.split == p.split_part]
    if samples and samples[0].labels_dataset and (Path(samples[0].container) / samples[0].labels_dataset).exists():
        return samples[0].container, samples[0].labels_dataset
    return None


def _snapshot(setup: Path) -> Path:
    """The latest ``snapshots/batch_<it>.zarr`` of a training setup."""
    from .train import SNAPSHOT_DIR

    found = []
    for p in (setup / SNAPSHOT_DIR).glob("batch_*.zarr"):
        it = p.name[len("batch_"):-len(".zarr")]
        if it.isdigit():
            found.append((int(it), p))
    if not found:
        raise ViewError(f"{setup}: no snapshot in {setup / SNAPSHOT_DIR} (set [Training] snapshot_every and train)")
    return max(found)[1]


def _container_specs(container: Path) -> list[_Spec]:
    specs = _container_volume_specs(container)
    found = _container_partners(container)
    if found is not None:
        linked = next((s.name for s in specs if s.kind == "segmentation" and s.dataset.endswith("neuron_ids")), None)
        specs.append(_Spec("ground-truth partners", "annotation", f"{container}/annotations", partners=found[0],
                           style=_styles()["ground truth"], transmitters=found[1], linked=linked))
    if not specs:
        raise ViewError(f"{container}: no volume or annotations to show")
    return specs


def layer_specs(path, evaluation=None) -> list[_Spec]:
    """What ``path`` shows (module doc), before anything is opened in neuroglancer."""
    path = Path(path)
    if not path.exists():
        raise ViewError(f"{path}: not found")
    if (path / "predict_config.ini").is_file():
        return _run_specs(path.resolve(), evaluation)
    if (path / "train_config.ini").is_file():
        return _container_specs(_snapshot(path))
    if path.is_dir() and any((path / m).is_file() for m in (".zgroup", ".zarray", "zarr.json", "attributes.json")) \
            or path.is_file():
        return _container_specs(path)
    raise ViewError(f"{path}: neither a prediction run (predict_config.ini), a training setup (train_config.ini) "
                    f"nor a zarr / N5 / HDF5 container")


# ---------------------------------------------------------------------------------------------------------------
# the viewer


def build_viewer(paths, *, evaluation=None, bind_address: str = "127.0.0.1", port: int = 0, layout: str = "xy",
                 size=(1200, 800)):
    """A neuroglancer viewer showing ``paths`` (module doc); returns ``(viewer, [LayerInfo, ...])``.

    The server binds to ``bind_address`` (default 127.0.0.1 only) and
    ``port`` (0: any free one); ``viewer.get_viewer_url()`` is the page.  The
    client is neuroglancer's bundled copy: nothing is fetched from the
    internet.  The view starts at the first image's centre (z: the section
    with the most partner sites), ``layout`` ``xy`` (one cross-section) or any
    neuroglancer layout (``4panel``...), zoomed so that the image's y-x
    extent fits ``size`` (width, height pixels).  ``evaluation``: the results
    folder of a single run (default: its own).
    """
    import neuroglancer

    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    if not paths:
        raise ViewError("no path to show")
    neuroglancer.set_server_bind_address(bind_address, port)
    per_path = [layer_specs(p, evaluation) for p in paths]
    prefixes = _prefixes(paths) if len(paths) > 1 else [""]
    layers, infos = [], []
    for prefix, specs in zip(prefixes, per_path):
        for s in specs:
            s.name = prefix + s.name
            if s.linked:
                s.linked = prefix + s.linked
            layer, info = _partner_layer(s) if s.kind == "annotation" else _volume_layer(s)
            layers.append((s.name, layer, s.visible))
            infos.append(info)
    viewer = neuroglancer.Viewer()
    with viewer.txn() as st:
        images = [i for i in infos if i.voxel_size is not None]
        first = next((i for i in images if i.kind == "image"), images[0] if images else None)
        vs = first.voxel_size if first else (1, 1, 1)
        # display order x, y, z: neuroglancer's "xy" panel shows its first two dimensions (x right, y down,
        # as in the PNGs); every layer keeps its own z, y, x space
        st.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                     scales=[float(v) for v in vs[::-1]])
        for name, layer, visible in layers:
            st.layers.append(name=name, layer=layer, visible=visible)
        st.layout = layout
        st.show_axis_lines = False
        st.show_default_annotations = False
        if first is not None:
            st.position = _start_position(first, [s for specs in per_path for s in specs])[::-1]
            extent = np.asarray(first.shape, float) * np.asarray(first.voxel_size, float)
            # zoom: the whole y-x extent fits a panel of `size` pixels (scale: smallest voxel size per pixel)
            st.cross_section_scale = float(max(extent[2] / size[0], extent[1] / size[1]) / min(vs) * 1.15)
        st.selected_layer.visible = False
    return viewer, infos


def _prefixes(paths) -> list[str]:
    names = [p.resolve().name or str(p) for p in paths]
    return [f"{n}: " if names.count(n) == 1 else f"{n} ({k}): " for k, n in enumerate(names)]


def _start_position(image: LayerInfo, specs) -> list[float]:
    """The centre of ``image`` in its voxels (global coordinates), z at the section with the most partner sites."""
    vs, off, shape = (np.asarray(v, float) for v in (image.voxel_size, image.offset, image.shape))
    centre = off / vs + shape / 2
    sites = [np.concatenate([s.partners["pre_z"], s.partners["post_z"]]) for s in specs
             if s.kind == "annotation" and s.partners is not None and len(s.partners)]
    if sites:
        z = np.floor((np.concatenate(sites) - off[0]) / vs[0]).astype(np.int64)
        z = z[(z >= 0) & (z < shape[0])]
        if len(z):
            centre[0] = off[0] / vs[0] + np.bincount(z).argmax() + 0.5
    return [float(c) for c in centre]


# ---------------------------------------------------------------------------------------------------------------
# the browser


def find_browser(chromium: str | None = None, chromedriver: str | None = None) -> tuple[str, str]:
    """(chromium, chromedriver) executables: the given paths, else found on PATH; ViewError (one line) when
    either is missing.  Debian: ``apt-get install chromium chromium-driver``."""
    browser = chromium or next((p for p in map(shutil.which, _BROWSER_NAMES) if p), None)
    driver = chromedriver or next((p for p in map(shutil.which, _DRIVER_NAMES) if p), None)
    missing = [what for what, path in (("chromium", browser), ("chromedriver", driver))
               if not path or not Path(path).is_file()]
    if missing:
        raise ViewError(f"{' and '.join(missing)} not found on PATH: a screenshot needs a headless Chromium and its "
                        f"driver (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


def open_browser(viewer, *, chromium: str | None = None, chromedriver: str | None = None,
                 window_size=(1280, 960)):
    """A headless Chromium (selenium, neuroglancer's Webdriver) showing ``viewer``; use as a context manager.

    The driver is started from the given / found ``chromedriver`` path, so
    selenium's driver manager never runs (and downloads nothing); no host
    name resolves in the browser, so the page reaches 127.0.0.1 only.  WebGL
    is rendered in software (SwiftShader): no GPU needed.
    """
    import neuroglancer.webdriver

    browser, driver = find_browser(chromium, chromedriver)

    class _Chromium(neuroglancer.webdriver.Webdriver):
        def _init_chrome(self):
            import selenium.webdriver
            from selenium.webdriver.chrome.service import Service

            options = selenium.webdriver.ChromeOptions()
            options.binary_location = browser
            for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
                        "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        # no name resolves: the page can reach the viewer on 127.0.0.1 and nothing else
                        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                        f"--window-size={window_size[0]},{window_size[1]}"):
                options.add_argument(arg)
            self.driver = selenium.webdriver.Chrome(service=Service(executable_path=driver), options=options)

    return _Chromium(viewer, headless=True, print_logs=False, window_size=window_size)


def screenshot(viewer, out, size=(1200, 800), *, chromium: str | None = None, chromedriver: str | None = None,
               webdriver=None) -> Path:
    """Save an RGB PNG of ``viewer`` at ``size`` (width, height pixels) to ``out`` once all data are loaded.

    Opens a headless Chromium (:func:`open_browser`) unless ``webdriver`` (one
    already showing ``viewer``) is given.  Returns ``out``.
    """
    from .io.files import atomic_write

    w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise ViewError(f"screenshot size: expected positive width and height, got {w} x {h}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if webdriver is None:
        with open_browser(viewer, chromium=chromium, chromedriver=chromedriver) as wd:
            wd.sync()
            reply = viewer.screenshot(size=[w, h])
    else:
        webdriver.sync()
        reply = viewer.screenshot(size=[w, h])
    from PIL import Image

    # the browser's PNG is RGBA and barely compressed; the panel is opaque, so an optimised RGB PNG says the same
    image = Image.open(io.BytesIO(reply.screenshot.image)).convert("RGB")
    return atomic_write(out, lambda tmp: image.save(tmp, format="PNG", optimize=True))


def describe(infos) -> str:
    """One line per layer: name, type, what it shows."""
    lines = []
    for i in infos:
        if i.kind == "annotation":
            lines.append(f"  {i.name} ({i.kind}, {i.count} partners): {i.source}")
        else:
            lines.append(f"  {i.name} ({i.kind}, {'x'.join(map(str, i.shape))} voxels of "
                         f"{'x'.join(map(str, i.voxel_size))} nm, {i.dtype}): {i.source}")
    return "\n".join(lines)
